"""os.fork() in a process that has a thread pool (servers and test runners do).

The child inherits the executor but none of its threads: there it is inert.
shutdown() and leaving a ``with`` block return at once, as the stdlib's do, and
submit() says to create a new executor in the child. Each test runs the
child's part in a real forked child, which reports through its exit code; an
alarm ends the child should that part hang, and the parent waits for it with
a deadline.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
import warnings
from typing import TYPE_CHECKING, Any

import pytest

import stalwart
from tests import _tasks
from tests._tasks import TIMEOUT
from tests.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
]

CHILD_ALARM_S = 10
"""The child's backstop: SIGALRM ends it if its part hangs (it takes ms)."""


def run_in_fork(child_part: Callable[[], None]) -> None:
    """Run `child_part` in a forked child; fail the test if it raised or hung."""
    code = exit_code_in_fork(child_part)
    if code == -signal.SIGALRM:
        pytest.fail(f"the forked child hung: SIGALRM ended it after {CHILD_ALARM_S} s")
    assert code == 0, f"the forked child failed with exit code {code} (see stderr)"


def exit_code_in_fork(child_part: Callable[[], None]) -> int:
    """Run `child_part` in a forked child; its exit code: 0 if it returned, 1 if
    it raised (traceback on stderr), -SIGALRM if it hung."""
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process is risky:
        # exactly the situation under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's
            signal.alarm(CHILD_ALARM_S)
            child_part()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    statuses: list[int] = []

    def child_exited() -> bool:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            statuses.append(status)
        return bool(reaped)

    try:
        wait_until(child_exited, "the forked child to exit", CHILD_ALARM_S + TIMEOUT)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(statuses[0])


@pytest.fixture
def busy_executor() -> Iterator[tuple[stalwart.ThreadPoolExecutor, threading.Event]]:
    """A pool whose thread runs a task, with three more queued, at the fork;
    the parent finishes the work afterwards, to show it was left intact."""
    ex = stalwart.ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()
    started = threading.Event()
    running = ex.submit(_tasks.block_until, started, gate, "ran")
    assert started.wait(TIMEOUT)
    queued = [ex.submit(pow, 2, i) for i in range(3)]
    try:
        yield ex, gate
    finally:
        gate.set()
    assert running.result(timeout=TIMEOUT) == "ran"
    assert [f.result(timeout=TIMEOUT) for f in queued] == [1, 2, 4]
    ex.shutdown(wait=True)


def shut_down(ex: stalwart.ThreadPoolExecutor) -> None:
    ex.shutdown()


def shut_down_cancelling(ex: stalwart.ThreadPoolExecutor) -> None:
    ex.shutdown(wait=True, cancel_futures=True, kill_workers=True)


def leave_with_block(ex: stalwart.ThreadPoolExecutor) -> None:
    with ex:
        pass


@pytest.mark.parametrize(
    "leave",
    [shut_down, shut_down_cancelling, leave_with_block],
    ids=lambda f: f.__name__,
)
def test_an_inherited_executor_shuts_down_at_once_in_a_forked_child(
    busy_executor: tuple[stalwart.ThreadPoolExecutor, threading.Event],
    leave: Callable[[stalwart.ThreadPoolExecutor], None],
) -> None:
    ex, _ = busy_executor

    def child() -> None:
        leave(ex)
        leave(ex)  # and again: still nothing to wait for

    run_in_fork(child)


def test_submit_on_an_inherited_executor_says_to_create_a_new_one(
    busy_executor: tuple[stalwart.ThreadPoolExecutor, threading.Event],
) -> None:
    ex, _ = busy_executor
    parent = os.getpid()

    def child() -> None:
        for call in (lambda: ex.submit(pow, 2, 2), lambda: list(ex.map(abs, [1]))):
            with pytest.raises(RuntimeError) as caught:
                call()
            message = str(caught.value)
            assert f"parent process {parent}" in message, message
            assert "new executor in the child" in message, message
        assert ex.stats().tasks_submitted == 4  # the parent's, read without a lock

    run_in_fork(child)


def test_a_new_executor_in_a_forked_child_works(tmp_path: Any) -> None:
    # With reuse=True the parent has a thread parked under the same key: the
    # child must start its own, not adopt one that exists only in the parent.
    settings: dict[str, Any] = {
        "max_workers": 1,
        "initializer": str,
        "initargs": (str(tmp_path),),
        "reuse": True,
        "idle_timeout": TIMEOUT,
    }
    with stalwart.ThreadPoolExecutor(**settings) as ex:
        assert ex.submit(stalwart.worker_state).result(timeout=TIMEOUT) == str(tmp_path)

    def child() -> None:
        with stalwart.ThreadPoolExecutor(**settings) as fresh:
            state = fresh.submit(stalwart.worker_state).result(timeout=TIMEOUT)
        assert state == str(tmp_path)
        assert fresh.stats().workers_reused == 0

    try:
        run_in_fork(child)
    finally:
        # Adopt the parent's parked thread and end it, for the leak check.
        last = stalwart.ThreadPoolExecutor(**settings)
        last.shutdown(wait=True, kill_workers=True)
