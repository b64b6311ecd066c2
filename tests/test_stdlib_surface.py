"""What code written for the stdlib's ProcessPoolExecutor reads and calls on it.

Monitoring code and libraries read ``_processes`` (pid -> process),
``_max_workers`` and ``_mp_context``; Python 3.14 added ``terminate_workers()``
and ``kill_workers()``. Each must mean here what it means there, with the
workers stalwart starts on demand and replaces.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import CancelledError, wait
from typing import Any

import psutil
import pytest

import stalwart
from tests import _tasks
from tests._leaks import worker_processes
from tests._tasks import TIMEOUT, block_until
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(90)


def _live_pids(ex: stalwart.ProcessPoolExecutor) -> set[int]:
    return set(ex._processes)


def test_processes_is_empty_until_work_starts_a_worker() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        assert ex._processes == {}
        worker = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
        processes = ex._processes
        assert worker in processes
        assert len(processes) <= 2


def test_processes_maps_each_live_worker_pid_to_a_process() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        worker = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
        processes = ex._processes
        assert worker in processes
        for pid, process in processes.items():
            assert process.pid == pid
            assert process.is_alive()
            assert process.exitcode is None
            for method in ("terminate", "kill", "join"):
                assert callable(getattr(process, method))
            assert psutil.pid_exists(pid)


def test_processes_shows_the_replacement_after_max_tasks_per_child() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1, max_tasks_per_child=2) as ex:
        first = [ex.submit(_tasks.pid).result(timeout=TIMEOUT) for _ in range(2)]
        assert len(set(first)) == 1, "a worker ran fewer than max_tasks_per_child"
        (old,) = set(first)
        new = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
        assert new != old, "the worker was not replaced after its 2 tasks"
        wait_until(
            lambda: _live_pids(ex) == {new},
            f"_processes to show only the replacement {new} (not {old})",
        )
        replacement = ex._processes[new]
        assert replacement.is_alive()


def test_mp_context_is_the_context_in_use() -> None:
    spawn = multiprocessing.get_context("spawn")
    with stalwart.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as ex:
        assert ex._mp_context is spawn
    with stalwart.ProcessPoolExecutor(max_workers=1, mp_context="spawn") as by_name:
        assert by_name._mp_context.get_start_method() == "spawn"
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        # The documented default: fork the caller where provably safe, else
        # fork a template interpreter that imported __main__ (docs/guides/how-it-works.md).
        assert ex._mp_context.get_start_method() == "stalwart"
        assert callable(ex._mp_context.Process)


def test_max_workers_is_the_resolved_count() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=3) as ex:
        assert ex._max_workers == 3
    with stalwart.ProcessPoolExecutor() as default:
        cpus = default._max_workers
    assert isinstance(cpus, int)
    assert cpus >= 1
    with stalwart.ProcessPoolExecutor(max_workers=-1) as ex:
        assert ex._max_workers == cpus
    with stalwart.ProcessPoolExecutor(max_workers=-2) as ex:
        assert ex._max_workers == max(cpus - 1, 1)


@pytest.mark.parametrize("stop", ["terminate_workers", "kill_workers"])
def test_stopping_the_workers_now_cancels_running_and_queued_work(
    stop: str, manager: Any
) -> None:
    others = {p.pid for p in psutil.Process().children(recursive=True)}
    ex = stalwart.ProcessPoolExecutor(max_workers=1)
    started, gate = manager.Event(), manager.Event()
    running = ex.submit(block_until, started, gate, "running")
    assert started.wait(TIMEOUT), "the gated task never started"
    queued = [ex.submit(pow, 2, i) for i in range(20)]

    getattr(ex, stop)()

    with pytest.raises(CancelledError):
        running.result(timeout=TIMEOUT)
    _, not_done = wait(queued, timeout=TIMEOUT)
    assert not not_done
    assert all(f.cancelled() for f in queued)
    wait_until(
        lambda: not worker_processes(exclude=others), f"{stop}() to end every worker"
    )
    wait_until(lambda: ex._processes == {}, "_processes to drop the ended workers")
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 2)
    ex.shutdown()


@pytest.mark.parametrize("how", ["kill", "terminate"])
@pytest.mark.parametrize("mp_context", [None, "spawn"])
def test_killing_a_worker_through_processes_fails_only_its_task(
    how: str, mp_context: str | None, manager: Any
) -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2, mp_context=mp_context) as ex:
        gate = manager.Event()
        started = [manager.Event(), manager.Event()]
        held = [ex.submit(block_until, s, gate, i) for i, s in enumerate(started)]
        try:
            assert all(s.wait(TIMEOUT) for s in started), "a gated task never started"
            processes = ex._processes
            assert len(processes) == 2
            victim = next(iter(processes.values()))
            getattr(victim, how)()
            # Polled, not join()ed: the pool's I/O thread reaps it meanwhile,
            # and of two threads waiting on one process only one sees it end.
            wait_until(lambda: not victim.is_alive(), f"worker {victim.pid} to die")
        finally:
            gate.set()  # the other task, and the with block, end either way
        outcomes = [f.exception(timeout=TIMEOUT) for f in held]
        crashed = [e for e in outcomes if e is not None]
        assert len(crashed) == 1, outcomes
        assert isinstance(crashed[0], stalwart.WorkerCrashedError)
        assert crashed[0].pid == victim.pid
        survivor = outcomes.index(None)
        assert held[survivor].result() == survivor
        # The pool carries on, and forgets the dead worker.
        more = [ex.submit(pow, 2, i) for i in range(20)]
        assert [f.result(timeout=TIMEOUT) for f in more] == [2**i for i in range(20)]
        wait_until(
            lambda: victim.pid not in ex._processes,
            f"_processes to drop the killed worker {victim.pid}",
        )
