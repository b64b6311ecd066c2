"""Contract 6 and 7: warm workers kept across executors, state and all; stats().

Each test parks workers under settings of its own (an initializer logging to the
test's own tmp_path), so no test can adopt another's workers, and with a short
idle_timeout, so that the leak check after each test sees them exit.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import psutil
import pytest

import stalwart
from tests import _kind_tasks as tasks
from tests import _tasks, _trust_tasks
from tests._leaks import worker_processes
from tests._tasks import TIMEOUT
from tests.conftest import open_executor, wait_until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.not_on_dask(
        "reuse parks process and thread workers; on dask it has no effect"
    ),
]

IDLE_S = 1.0
"""Parked workers' idle_timeout in these tests: long enough to be adopted by the
next block, short enough that they are gone before the leak check gives up."""


def warm(kind: str, log: Path, **kwargs: Any) -> Any:
    """An executor of `kind` whose workers count their calls (see count_call)."""
    kwargs.setdefault("idle_timeout", IDLE_S)
    kwargs.setdefault("reuse", True)
    return open_executor(
        kind, initializer=tasks.init_counter, initargs=(str(log),), **kwargs
    )


def run_block(kind: str, log: Path, n: int = 8, **kwargs: Any) -> tuple[Any, list]:
    """One `with` block of `n` calls; returns (its stats, the calls' results)."""
    with warm(kind, log, **kwargs) as ex:
        calls = list(ex.map(tasks.count_call, range(n)))
    return ex.stats(), calls


def workers_of(calls: list[tuple[str, str, int]]) -> set[str]:
    return {worker for worker, _, _ in calls}


def pids_of(calls: list[tuple[str, str, int]]) -> set[int]:
    return {int(worker.split("-")[0]) for worker in workers_of(calls)}


def gone(pids: set[int]) -> bool:
    """Every pid has exited and was reaped. (A zombie is not enough: a killed
    process shows as one while its other threads are still being torn down.)"""
    return not any(psutil.pid_exists(pid) for pid in pids)


# -- both kinds ---------------------------------------------------------------------


def test_the_next_block_adopts_the_workers_with_their_state(
    kind: str, tmp_path: Path
) -> None:
    log = tmp_path / "inits"
    first, first_calls = run_block(kind, log)
    second, second_calls = run_block(kind, log)

    # No worker was started, nor initialized, for the second block.
    assert len(tasks.ran(str(log))) == first.workers_started
    assert first.workers_parked == first.workers_started >= 1
    assert second.workers_started == 0
    assert second.workers_reused == first.workers_parked
    # Their state lived on: each worker's call count continues where it stopped.
    last_count = {w: c for w, _, c in first_calls}
    for worker, built_in, count in second_calls:
        assert worker == built_in
        assert count > last_count.get(worker, 0)


def test_executors_with_other_settings_never_share_workers(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "inits"
    _, parked_calls = run_block(kind, log)
    other_runs = [
        run_block(kind, tmp_path / "other-initargs"),
        run_block(kind, log, max_tasks_per_child=1000),
    ]
    if kind == "process":
        other_runs.append(run_block(kind, log, mp_context="spawn"))
        monkeypatch.setenv("STALWART_TEST_FLAVOUR", "another")  # shapes a process
        other_runs.append(run_block(kind, log))
    for stats, calls in other_runs:
        assert stats.workers_reused == 0
        assert not workers_of(calls) & workers_of(parked_calls)


def test_parked_workers_exit_after_their_idle_timeout(
    kind: str, tmp_path: Path
) -> None:
    log = tmp_path / "inits"
    before = workers_alive(kind)
    first, _ = run_block(kind, log, idle_timeout=0.3)
    assert first.workers_parked >= 1
    # Every parked worker, including any that ran none of the calls.
    wait_until(lambda: not workers_alive(kind) - before, "parked workers to exit")
    second, _ = run_block(kind, log, idle_timeout=0.3)
    assert second.workers_reused == 0
    assert second.workers_started >= 1


def workers_alive(kind: str) -> set[int]:
    """Child process pids (process kind) or thread idents (thread kind) alive now."""
    if kind == "process":
        return {p.pid for p in worker_processes()}
    return {thread.ident or 0 for thread in threading.enumerate()}


def test_max_tasks_per_child_still_recycles_adopted_workers(
    kind: str, tmp_path: Path
) -> None:
    log = tmp_path / "inits"
    kwargs = {"max_workers": 1, "max_tasks_per_child": 3}
    first, first_calls = run_block(kind, log, n=2, **kwargs)
    assert first.workers_parked == 1  # one task left in its budget
    second, second_calls = run_block(kind, log, n=3, **kwargs)
    assert second.workers_reused == 1
    assert [count for _, _, count in second_calls] == [3, 1, 2]
    assert second_calls[0][0] == first_calls[0][0]  # the adopted worker's last task
    assert second_calls[1][0] != first_calls[0][0]  # then a fresh one
    assert second.workers_recycled == 1
    assert len(tasks.ran(str(log))) == 2
    assert second.workers_parked == 1  # the fresh one, with one task to spare


def test_reuse_false_neither_parks_nor_adopts(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "inits"
    run_block(kind, log)  # parks, reuse=True
    with open_executor(
        kind, initializer=tasks.init_counter, initargs=(str(log),)
    ) as ex:
        list(ex.map(tasks.count_call, range(8)))
    stats = ex.stats()
    assert stats.workers_reused == 0
    assert stats.workers_parked == 0


def test_idle_timeout_is_checked_and_needs_reuse_to_matter(
    kind: str, tmp_path: Path
) -> None:
    for reuse in (True, False):
        with pytest.raises(ValueError, match="idle_timeout must be > 0"):
            open_executor(kind, reuse=reuse, idle_timeout=0)
        with pytest.raises(TypeError, match="idle_timeout must be None or a number"):
            open_executor(kind, reuse=reuse, idle_timeout="5")
    stats, _ = run_block(kind, tmp_path / "inits", reuse=False)
    assert stats.workers_parked == 0  # reuse=False: idle_timeout has no effect


def test_stats_count_what_happened_to_the_tasks(kind: str, manager: Any) -> None:
    gate = manager.Event()
    with open_executor(kind, max_workers=1) as ex:
        # First, while the task time is unknown: nothing queues behind the blocker.
        blocker = ex.submit(tasks.wait_for, gate, 0)
        queued = ex.submit(tasks.square, 4)
        assert queued.cancel()
        gate.set()
        blocker.result(TIMEOUT)
        assert ex.submit(tasks.square, 3).result(TIMEOUT) == 9
        with pytest.raises(ValueError, match="item 2 is bad"):
            ex.submit(tasks.fail_on, 2, 2).result(TIMEOUT)
        list(ex.map(tasks.square, range(10), chunksize=5))  # two tasks
    stats = ex.stats()
    assert stats.tasks_submitted == 6
    assert stats.tasks_completed == 4
    assert stats.tasks_failed == 1
    assert stats.tasks_cancelled == 1
    assert stats.workers_started == 1
    assert (stats.tasks_crashed, stats.tasks_retried, stats.tasks_timed_out) == (
        0,
        0,
        0,
    )


def test_a_two_task_job_starts_two_workers_not_max_workers(kind: str) -> None:
    with open_executor(kind, max_workers=8) as ex:
        futures = [ex.submit(tasks.worker_name, i) for i in range(2)]
        names = {f.result(TIMEOUT) for f in futures}
    assert ex.stats().workers_started <= 2
    assert len(names) <= 2


# -- process workers ------------------------------------------------------------------


def test_a_worker_that_dies_while_parked_is_replaced_not_adopted(
    tmp_path: Path,
) -> None:
    log = tmp_path / "inits"
    with warm("process", log, max_workers=2) as ex:
        list(ex.map(tasks.count_call, range(20)))
        pids = set(ex._processes)  # the workers it is about to park
    assert ex.stats().workers_parked == len(pids) == 2
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: gone({victim}), "the parked worker to die")
    second, second_calls = run_block("process", log, n=20, max_workers=2)
    assert second.workers_reused == 1
    assert victim not in pids_of(second_calls)
    assert pids_of(second_calls) & (pids - {victim})


def test_parked_workers_exit_on_kill_workers(tmp_path: Path, manager: Any) -> None:
    started, gate = manager.Event(), manager.Event()
    log = tmp_path / "inits"
    _, calls = run_block("process", log, max_workers=2, idle_timeout=60)
    ex = warm("process", log, max_workers=2, idle_timeout=60)
    assert ex.stats().workers_reused == 2
    running = ex.submit(_tasks.block_until, started, gate, "never")
    queued = [ex.submit(_tasks.echo, i) for i in range(10)]
    assert started.wait(TIMEOUT)
    ex.shutdown(wait=True, kill_workers=True)
    gate.set()
    with pytest.raises(cf.CancelledError):
        running.result(TIMEOUT)
    assert all(f.done() for f in queued)
    assert ex.stats().workers_parked == 0
    wait_until(lambda: gone(pids_of(calls)), "killed workers to exit")


def test_a_crash_in_an_adopted_worker_is_isolated_and_replaced(tmp_path: Path) -> None:
    log = tmp_path / "inits"
    run_block("process", log, max_workers=2)
    with warm("process", log, max_workers=2) as ex:
        victim = ex.submit(_tasks.die, "segv")
        others = [ex.submit(tasks.square, i) for i in range(20)]
        with pytest.raises(stalwart.WorkerCrashedError):
            victim.result(TIMEOUT)
        assert [f.result(TIMEOUT) for f in others] == [i * i for i in range(20)]
    stats = ex.stats()
    assert stats.workers_reused == 2
    assert stats.tasks_crashed == 1
    assert stats.workers_replaced <= 1  # the replacement starts only if needed
    # The survivor is parked; a replacement too, if it was ready by then.
    assert 1 <= stats.workers_parked <= 1 + stats.workers_replaced


def test_process_stats_count_crashes_retries_and_timeouts(tmp_path: Path) -> None:
    marker = str(tmp_path / "died-once")
    with stalwart.ProcessPoolExecutor(max_workers=1, retries=1, task_timeout=1.0) as ex:
        survived = ex.submit(_tasks.die_once, marker).result(TIMEOUT)
        with pytest.raises(stalwart.WorkerCrashedError):
            ex.submit(_tasks.die, "exit").result(TIMEOUT)
        with pytest.raises(stalwart.TaskTimeoutError):
            ex.submit(_tasks.nap, 30, None).result(TIMEOUT)
    stats = ex.stats()
    assert survived
    assert stats.tasks_retried == 2  # die_once once, die once before giving up
    assert stats.tasks_crashed == 1
    assert stats.tasks_timed_out == 1
    assert stats.tasks_failed == 2
    assert stats.tasks_completed == 1
    # Four deaths; each replacement starts when work is waiting for it.
    assert stats.workers_replaced >= 3
    assert stats.workers_started == 1 + stats.workers_replaced


def counted_warm_settings(log: str) -> dict[str, Any]:
    return {
        "initializer": tasks.init_counter,
        "initargs": (log,),
        "idle_timeout": IDLE_S,
    }


def test_get_reusable_executor_returns_the_same_warm_executor(tmp_path: Path) -> None:
    log = str(tmp_path / "inits")
    kwargs = counted_warm_settings(log)
    ex = stalwart.get_reusable_executor(max_workers=2, **kwargs)
    assert stalwart.get_reusable_executor(max_workers=2, **kwargs) is ex
    calls = list(ex.map(tasks.count_call, range(20)))
    ex.shutdown()  # parks its workers: they stay warm

    again = stalwart.get_reusable_executor(max_workers=2, **kwargs)
    assert again is not ex
    assert again.stats().workers_reused == 2
    more_calls = list(again.map(tasks.count_call, range(20)))
    assert len(tasks.ran(log)) == 2  # no worker started, no initializer re-run
    again.shutdown(kill_workers=True)
    wait_until(lambda: gone(pids_of(calls + more_calls)), "killed workers to exit")


def test_get_reusable_executor_resizes_in_place_and_never_breaks_a_holder(
    tmp_path: Path, manager: Any
) -> None:
    started, gate = manager.Event(), manager.Event()
    log = str(tmp_path / "inits")
    kwargs = counted_warm_settings(log)
    ex = stalwart.get_reusable_executor(max_workers=2, **kwargs)
    running = ex.submit(_tasks.block_until, started, gate, "finished")
    assert started.wait(TIMEOUT)
    assert stalwart.get_reusable_executor(max_workers=1, **kwargs) is ex  # resized
    assert ex._max_workers == 1
    other = stalwart.get_reusable_executor(
        max_workers=1, initializer=tasks.init_counter, initargs=(log + "-b",)
    )
    assert other is not ex
    assert other.stats().workers_reused == 0  # the initializer's args changed
    # The first holder's executor still runs: nothing shut it down.
    squared = ex.submit(tasks.square, 3)
    gate.set()
    assert running.result(TIMEOUT) == "finished"
    assert squared.result(TIMEOUT) == 9
    other.shutdown(kill_workers=True)
    ex.shutdown(kill_workers=True)


def test_get_reusable_executor_from_many_threads_with_other_sizes() -> None:
    """Eight threads, each asking for its own max_workers ten times and using
    what it got: every call works (loky resizes in place; so do we)."""

    def use(size: int) -> list[int]:
        results = []
        for i in range(10):
            ex = stalwart.get_reusable_executor(max_workers=size)
            results.append(ex.submit(tasks.square, i).result(TIMEOUT))
        return results

    with cf.ThreadPoolExecutor(8) as threads:
        outcomes = list(threads.map(use, [1, 2, 3, 4, 1, 2, 3, 4]))
    assert outcomes == [[i * i for i in range(10)]] * 8
    stalwart.get_reusable_executor().shutdown(kill_workers=True)


def test_a_parked_worker_forgets_what_its_tasks_did_to_its_environment() -> None:
    """cwd, environment variables and sys.path are restored before adoption."""
    cwd = os.getcwd()
    with stalwart.ProcessPoolExecutor(1, reuse=True) as ex:
        pid = ex.submit(_trust_tasks.change_environment).result(TIMEOUT)
    with stalwart.ProcessPoolExecutor(1, reuse=True) as again:
        seen = again.submit(_trust_tasks.environment_seen).result(TIMEOUT)
        assert again.stats().workers_reused == 1
        again.shutdown(kill_workers=True)
    assert seen == (pid, cwd, None, False)


def test_get_reusable_executor_refuses_reuse_false() -> None:
    with pytest.raises(TypeError):
        stalwart.get_reusable_executor(reuse=False)  # type: ignore[call-arg]
