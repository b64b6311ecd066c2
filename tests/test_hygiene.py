"""After shutdown() an executor leaves nothing behind: no process, thread or fd."""

from __future__ import annotations

import os
import sys
import threading

import pytest

import stalwart
from tests import _tasks
from tests._leaks import open_fds
from tests._tasks import TIMEOUT
from tests.conftest import wait_until

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc"
)


def _use_an_executor(mp_context: str, wait: bool) -> stalwart.ProcessPoolExecutor:
    """Run work that touches every path: results, a crash, a timeout, a recycle."""
    ex = stalwart.ProcessPoolExecutor(
        2, mp_context=mp_context, task_timeout=0.3, max_tasks_per_child=50
    )
    futures = [ex.submit(pow, 2, i) for i in range(120)]
    crashed = ex.submit(_tasks.die, "sigkill")
    overdue = ex.submit(_tasks.nap, TIMEOUT * 10)
    assert [f.result(timeout=TIMEOUT) for f in futures] == [2**i for i in range(120)]
    assert isinstance(crashed.exception(timeout=TIMEOUT), stalwart.WorkerCrashedError)
    assert isinstance(overdue.exception(timeout=TIMEOUT), stalwart.TaskTimeoutError)
    ex.shutdown(wait=wait)
    return ex  # kept alive by the test: a shut-down executor must hold nothing


@pytest.mark.parametrize(
    ("mp_context", "wait"),
    [
        ("loky_init_main", True),
        ("loky_init_main", False),
        ("spawn", True),
        ("forkserver", False),
    ],
)
def test_shutdown_releases_every_fd_and_thread(mp_context: str, wait: bool) -> None:
    if mp_context == "forkserver" and sys.platform != "linux":
        pytest.skip("forkserver is Linux-only here")
    # Process-wide helpers (resource trackers, the forkserver) start on first use
    # and stay until exit by design: let them start before counting.
    _use_an_executor(mp_context, wait=True)
    fds_before = open_fds()
    threads_before = threading.active_count()

    executors = [_use_an_executor(mp_context, wait=wait) for _ in range(2)]

    def leaked_fds() -> dict[int, str]:
        now = open_fds()
        return {
            fd: target for fd, target in now.items() if fds_before.get(fd) != target
        }

    # shutdown(wait=False) returns before the I/O thread has closed everything.
    try:
        wait_until(lambda: not leaked_fds(), "the executor's fds to be closed", 10)
    except AssertionError:
        pytest.fail(f"fds left open after shutdown(): {leaked_fds()}")
    wait_until(
        lambda: threading.active_count() == threads_before,
        f"threads to exit (now {threading.enumerate()})",
        10,
    )
    assert all("shut down" in repr(ex) for ex in executors)


def test_executors_that_never_ran_a_task_hold_no_fds() -> None:
    """An executor opens its pipes with its first task; one that never ran a
    task, shut down or just dropped, leaves no fd (each used to leak two)."""
    import gc

    with stalwart.ProcessPoolExecutor(2):
        pass  # imports and process-wide state settle before counting
    fds_before = open_fds()

    for _ in range(200):
        with stalwart.ProcessPoolExecutor(2):
            pass
    for _ in range(50):
        stalwart.ProcessPoolExecutor(2)  # dropped without shutdown()
    gc.collect()

    def grown() -> dict[int, str]:
        return {fd: t for fd, t in open_fds().items() if fds_before.get(fd) != t}

    # Polled: other threads of the test process (dask's system monitor reading
    # /proc) hold an fd for an instant now and then.
    try:
        wait_until(lambda: not grown(), "the fds to be as before", 5)
    except AssertionError:
        leaked = grown()
        pytest.fail(f"{len(leaked)} fds left open, e.g. {sorted(leaked.items())[:6]}")
