"""Contract 4: a task past task_timeout is killed with its children; nothing else is."""

from __future__ import annotations

import concurrent.futures
import os
import pickle
from pathlib import Path

import psutil
import pytest

import stalwart
from tests import _tasks
from tests._tasks import TIMEOUT
from tests.conftest import wait_until


def test_an_overdue_task_fails_with_task_timeout_error_and_the_pool_carries_on() -> (
    None
):
    with stalwart.ProcessPoolExecutor(max_workers=1, task_timeout=0.5) as ex:
        first_pid = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
        overdue = ex.submit(_tasks.nap, TIMEOUT * 10)
        with pytest.raises(stalwart.TaskTimeoutError) as info:
            overdue.result(timeout=TIMEOUT)
        replacement_pid = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
    error = info.value
    assert isinstance(error, TimeoutError)  # old `except TimeoutError` still works
    # ... and `except concurrent.futures.TimeoutError` (another class on 3.10)
    assert isinstance(error, concurrent.futures.TimeoutError)
    assert error.timeout == 0.5
    assert error.pid == first_pid
    assert error.task == f"nap({TIMEOUT * 10!r})"
    assert "task_timeout of 0.5 s" in str(error)
    assert replacement_pid != first_pid
    assert not psutil.pid_exists(first_pid) or (
        psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE
    )


def test_the_timer_starts_when_the_task_starts_not_when_it_was_queued() -> None:
    # Four 0.4 s tasks on one worker: the last one waits 1.2 s in the queue,
    # longer than the limit, and must still succeed.
    with stalwart.ProcessPoolExecutor(max_workers=1, task_timeout=1.5) as ex:
        futures = [ex.submit(_tasks.nap, 0.4, i) for i in range(4)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == [0, 1, 2, 3]


def test_time_spent_in_the_initializer_does_not_count(tmp_path: Path) -> None:
    with stalwart.ProcessPoolExecutor(
        max_workers=1, initializer=_tasks.nap, initargs=(1.0,), task_timeout=0.5
    ) as ex:
        assert ex.submit(_tasks.echo, "quick").result(timeout=TIMEOUT) == "quick"


def test_tasks_beside_and_behind_an_overdue_one_are_undisturbed() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2, task_timeout=0.5) as ex:
        before = [ex.submit(pow, 2, i) for i in range(200)]
        overdue = ex.submit(_tasks.nap, TIMEOUT * 10)
        after = [ex.submit(pow, 3, i) for i in range(200)]
        with pytest.raises(stalwart.TaskTimeoutError):
            overdue.result(timeout=TIMEOUT)
        assert [f.result(timeout=TIMEOUT) for f in before] == [2**i for i in range(200)]
        assert [f.result(timeout=TIMEOUT) for f in after] == [3**i for i in range(200)]


def test_processes_started_by_an_overdue_task_are_killed_too(tmp_path: Path) -> None:
    pid_path = str(tmp_path / "child.pid")
    with stalwart.ProcessPoolExecutor(max_workers=1, task_timeout=1.0) as ex:
        future = ex.submit(_tasks.start_child_then_hang, pid_path)
        with pytest.raises(stalwart.TaskTimeoutError):
            future.result(timeout=TIMEOUT)
    child_pid = int(Path(pid_path).read_text())

    def child_gone() -> bool:
        try:
            return psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(child_gone, f"the task's child process {child_pid} to be killed")


def test_a_timed_out_task_is_not_retried(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    with stalwart.ProcessPoolExecutor(max_workers=1, task_timeout=0.5, retries=3) as ex:
        with pytest.raises(stalwart.TaskTimeoutError):
            ex.submit(_tasks.log_run_then_hang, str(log)).result(timeout=TIMEOUT)
    assert len(log.read_text().splitlines()) == 1


def test_map_task_timeout_overrides_the_executors_for_its_calls() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_tasks.nap, [0.01, TIMEOUT * 10], [1, 2], task_timeout=0.5)
        assert next(results) == 1
        with pytest.raises(stalwart.TaskTimeoutError):
            next(results)
        # The executor itself has no limit: a plain submit() is never cut short.
        assert ex.submit(_tasks.nap, 0.6, "slow").result(timeout=TIMEOUT) == "slow"


def test_map_task_timeout_scales_with_the_chunk() -> None:
    # Three 0.3 s items per chunk take 0.9 s, more than the 0.5 s per item limit
    # on any one call but within the chunk's 1.5 s.
    with stalwart.ProcessPoolExecutor(max_workers=1, task_timeout=0.5) as ex:
        results = ex.map(_tasks.nap, [0.3] * 3, range(3), chunksize=3)
        assert list(results) == [0, 1, 2]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_task_timeout_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="task_timeout must be > 0"):
        stalwart.ProcessPoolExecutor(task_timeout=bad)


@pytest.mark.parametrize("bad", ["1", True])
def test_task_timeout_must_be_a_number(bad: object) -> None:
    with pytest.raises(TypeError, match="task_timeout must be None or a number"):
        stalwart.ProcessPoolExecutor(task_timeout=bad)  # type: ignore[arg-type]


def test_task_timeout_error_survives_pickling() -> None:
    error = stalwart.TaskTimeoutError("late", timeout=2.0, pid=os.getpid(), task="f()")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.args, copy.timeout, copy.pid, copy.task) == (
        ("late",),
        2.0,
        os.getpid(),
        "f()",
    )
