"""Contract 3: a dead worker fails only its own task; the executor never breaks."""

from __future__ import annotations

import collections
import ctypes
import faulthandler
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import pytest

import stalwart
from tests import _tasks
from tests._tasks import TIMEOUT
from tests.conftest import wait_until


@pytest.mark.parametrize(
    ("how", "signal_name", "exitcode"),
    [
        ("segv", "SIGSEGV", -signal.SIGSEGV),
        ("sigkill", "SIGKILL", -signal.SIGKILL),
        ("abort", "SIGABRT", -signal.SIGABRT),
        ("exit", None, 3),
    ],
)
def test_dead_worker_fails_only_its_task(
    how: str, signal_name: str | None, exitcode: int
) -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        others = [ex.submit(pow, 2, i) for i in range(50)]
        victim = ex.submit(_tasks.die, how)
        more = [ex.submit(pow, 3, i) for i in range(50)]
        with pytest.raises(stalwart.WorkerCrashedError) as info:
            victim.result(timeout=TIMEOUT)
        assert [f.result(timeout=TIMEOUT) for f in others] == [2**i for i in range(50)]
        assert [f.result(timeout=TIMEOUT) for f in more] == [3**i for i in range(50)]
        assert ex.submit(abs, -1).result(timeout=TIMEOUT) == 1
    error = info.value
    assert error.signal == signal_name
    assert error.exitcode == exitcode
    assert isinstance(error.pid, int)
    assert error.task == f"die({how!r})"
    assert f"worker {error.pid}" in str(error)
    assert "Only this task failed" in str(error)


def test_worker_crashed_error_is_caught_by_old_broken_pool_handlers() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(BrokenProcessPool):
            ex.submit(_tasks.die, "exit").result(timeout=TIMEOUT)


def test_crash_amid_batched_tiny_tasks_loses_nothing_else() -> None:
    """Tasks queued behind the crashed one on the same worker are re-sent, not failed."""
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        before = [ex.submit(_tasks.add, i, 0) for i in range(3000)]
        victim = ex.submit(_tasks.die, "sigkill")
        after = [ex.submit(_tasks.add, i, 0) for i in range(3000)]
        with pytest.raises(stalwart.WorkerCrashedError):
            victim.result(timeout=TIMEOUT)
        assert [f.result(timeout=TIMEOUT) for f in before + after] == [
            *range(3000),
            *range(3000),
        ]


def test_an_idle_worker_that_dies_is_replaced_silently() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        first_pid = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
        os.kill(first_pid, signal.SIGKILL)
        wait_until(
            lambda: not psutil.pid_exists(first_pid) or _is_zombie(first_pid),
            "the killed worker to die",
        )
        assert ex.submit(_tasks.add, 1, 1).result(timeout=TIMEOUT) == 2
        assert ex.submit(_tasks.pid).result(timeout=TIMEOUT) != first_pid


def test_work_sent_to_a_worker_that_just_died_idle_is_not_blamed() -> None:
    """Killed idle, then handed work before the parent noticed: re-sent, no error."""
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        for _ in range(5):
            victim = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
            os.kill(victim, signal.SIGKILL)
            futures = [ex.submit(_tasks.add, i, 1) for i in range(20)]
            assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(1, 21))


def test_several_crashes_in_a_row_never_break_the_executor() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        victims = [ex.submit(_tasks.die, "segv") for _ in range(5)]
        for victim in victims:
            with pytest.raises(stalwart.WorkerCrashedError):
                victim.result(timeout=TIMEOUT)
        assert ex.submit(_tasks.add, 2, 2).result(timeout=TIMEOUT) == 4


def test_retries_rerun_a_task_whose_worker_died(tmp_path: Path) -> None:
    marker = tmp_path / "died-once"
    with stalwart.ProcessPoolExecutor(max_workers=1, retries=1) as ex:
        future = ex.submit(_tasks.die_once, str(marker))
        assert future.result(timeout=TIMEOUT) == "second attempt"
    assert marker.exists()


def test_retries_give_up_and_say_how_many_attempts_were_made() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1, retries=2) as ex:
        with pytest.raises(stalwart.WorkerCrashedError) as info:
            ex.submit(_tasks.die, "exit").result(timeout=TIMEOUT)
    assert info.value.attempts == 3
    assert "attempt 3" in str(info.value)


def test_a_task_that_raises_is_never_retried(tmp_path: Path) -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1, retries=3) as ex:
        with pytest.raises(ValueError, match="once"):
            ex.submit(_tasks.raise_value_error, "once").result(timeout=TIMEOUT)


class _CrashWhenUnpickled:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_tasks.die, ("segv",))


class _CrashWhenPickled:
    def __reduce__(self) -> tuple[Any, ...]:
        faulthandler.disable()
        ctypes.string_at(0)
        raise AssertionError("unreachable")


def return_crash_when_pickled() -> _CrashWhenPickled:
    return _CrashWhenPickled()


def test_crash_while_the_worker_unpickles_the_call_fails_that_task() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(stalwart.WorkerCrashedError):
            ex.submit(_tasks.echo, _CrashWhenUnpickled()).result(timeout=TIMEOUT)
        assert ex.submit(_tasks.echo, "next").result(timeout=TIMEOUT) == "next"


def test_crash_while_the_worker_pickles_the_result_fails_that_task() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(stalwart.WorkerCrashedError) as info:
            ex.submit(return_crash_when_pickled).result(timeout=TIMEOUT)
        assert info.value.signal == "SIGSEGV"
        assert ex.submit(_tasks.echo, "next").result(timeout=TIMEOUT) == "next"


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_crashed_workers_tasks_are_shared_out_not_piled_on_one_worker() -> None:
    """After tiny tasks (a short measured task time), a burst of longer ones is
    sent a few at a time, so when one worker dies the tasks it held are shared
    between the survivor and the replacement instead of queueing at the survivor."""
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        list(ex.map(abs, range(8)))
        naps = [ex.submit(_tasks.nap_then_pid, 0.05) for _ in range(20)]
        victim = ex.submit(_tasks.die, "segv")
        naps += [ex.submit(_tasks.nap_then_pid, 0.05) for _ in range(40)]
        with pytest.raises(stalwart.WorkerCrashedError):
            victim.result(timeout=TIMEOUT)
        ran_on = collections.Counter(f.result(timeout=TIMEOUT) for f in naps)
    assert len(ran_on) == 3, ran_on  # two first workers and the replacement
    assert min(ran_on.values()) >= 3, ran_on
