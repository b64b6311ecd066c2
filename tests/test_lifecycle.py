"""Contract 9 and 12: workers live exactly as long as they should.

Tasks may open pools of their own; a worker dies with its parent even inside a
C call that holds the GIL; a parked worker outlives the thread that started it;
a raw ``os.fork()`` in the parent leaves the parent's workers alone; and an
interpreter that exits with live or parked workers exits promptly.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import stalwart
from tests._scripts import finish, start_script
from tests._tasks import TIMEOUT
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(90)


def run_nested_pools(n: int) -> tuple[int, int]:
    """A task that opens a stdlib pool and a stalwart pool of its own."""
    with cf.ProcessPoolExecutor(1) as stdlib_pool:
        from_stdlib = stdlib_pool.submit(pow, 2, n).result(timeout=TIMEOUT)
    with stalwart.ProcessPoolExecutor(1) as stalwart_pool:
        from_stalwart = stalwart_pool.submit(pow, 3, n).result(timeout=TIMEOUT)
    return from_stdlib, from_stalwart


def test_a_task_can_open_its_own_process_pools() -> None:
    with stalwart.ProcessPoolExecutor(1) as ex:
        assert ex.submit(run_nested_pools, 5).result(timeout=TIMEOUT) == (32, 243)


def remember(path: str) -> str:
    """An initializer whose argument makes a test's warm workers its own."""
    return path


def test_a_parked_worker_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    settings: dict[str, Any] = {
        "initializer": remember,
        "initargs": (str(tmp_path),),
        "reuse": True,
    }
    with stalwart.ProcessPoolExecutor(1, idle_timeout=10, **settings) as ex:
        first = ex.submit(os.getpid).result(timeout=TIMEOUT)
    wait_until(
        lambda: not any(t.name == "stalwart-dispatcher" for t in threading.enumerate()),
        "the executor's I/O thread to end",
    )
    with stalwart.ProcessPoolExecutor(1, idle_timeout=0.1, **settings) as ex:
        assert ex.submit(os.getpid).result(timeout=TIMEOUT) == first


# -- in a fresh interpreter -------------------------------------------------------


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_dies_with_its_parent_even_while_a_c_call_holds_the_gil(
    tmp_path: Path,
) -> None:
    script = start_script(
        tmp_path,
        """
        import ctypes, os, threading
        import stalwart

        def hold_the_gil(seconds):
            print("holding the GIL", flush=True)
            # libc's sleep() through PyDLL keeps the GIL: no Python thread of
            # this worker runs until it returns, as in a long regex or bignum.
            ctypes.PyDLL(None).sleep(seconds)

        if __name__ == "__main__":
            ex = stalwart.ProcessPoolExecutor(1)
            print(ex.submit(os.getpid).result(), flush=True)
            ex.submit(hold_the_gil, 60)
            threading.Event().wait()  # until killed
        """,
    )
    assert script.stdout is not None
    worker = int(script.stdout.readline() or 0)
    assert worker, script.stderr.read() if script.stderr else ""
    try:
        assert script.stdout.readline() == "holding the GIL\n"
        script.kill()
        script.wait(TIMEOUT)
        wait_until(lambda: is_gone(worker), "the orphaned worker to die", timeout=2)
    finally:
        if not is_gone(worker):
            psutil.Process(worker).kill()
        script.communicate(timeout=TIMEOUT)


def test_a_raw_fork_in_the_parent_leaves_its_workers_alone(tmp_path: Path) -> None:
    script = start_script(
        tmp_path,
        """
        import os, sys
        import psutil
        import stalwart

        def pid(_=None):
            return os.getpid()

        def child_work():
            return sum(range(10))

        if __name__ == "__main__":
            warm = {"reuse": True, "idle_timeout": 600}
            with stalwart.ProcessPoolExecutor(1, **warm) as ex:
                parked = ex.submit(pid).result()
            ex = stalwart.ProcessPoolExecutor(1)
            running = set(ex.map(pid, range(40)))

            child = os.fork()
            if child == 0:
                child_work()
                sys.exit(0)  # a normal exit: atexit handlers run in the child
            _, status = os.waitpid(child, 0)
            print("child exit code", os.waitstatus_to_exitcode(status))

            print("same worker", set(ex.map(pid, range(40))) == running)
            with stalwart.ProcessPoolExecutor(1, **warm) as again:
                print("adopted", again.submit(pid).result() == parked)
            for worker in running | {parked}:
                status = psutil.Process(worker).status()
                print(worker, "alive", status != psutil.STATUS_ZOMBIE)
            ex.shutdown()
        """,
    )
    out, err = finish(script, check=True)
    assert "Traceback" not in err, err
    assert "Exception ignored" not in err, err
    lines = out.splitlines()
    assert lines[:3] == ["child exit code 0", "same worker True", "adopted True"]
    assert lines[3:]
    assert all(line.endswith("alive True") for line in lines[3:]), out


def test_exit_with_live_and_parked_workers_is_prompt(tmp_path: Path) -> None:
    script = start_script(
        tmp_path,
        """
        import os
        import stalwart

        def pid(_=None):
            return os.getpid()

        if __name__ == "__main__":
            with stalwart.ProcessPoolExecutor(2, reuse=True, idle_timeout=600) as ex:
                parked = set(ex.map(pid, range(20)))
            warm = stalwart.get_reusable_executor(2, idle_timeout=600)
            held = set(warm.map(pid, range(20)))
            live = stalwart.ProcessPoolExecutor(2)  # never shut down
            running = set(live.map(pid, range(20)))
            queued = [live.submit(pow, 2, i) for i in range(100)]
            print(*parked | held | running, flush=True)
        """,
    )
    started = time.monotonic()
    out, err = finish(script, check=True)
    assert time.monotonic() - started < 10, "the interpreter took long to exit"
    assert "Traceback" not in err, err
    workers = [int(pid) for pid in out.split()]
    wait_until(lambda: all(map(is_gone, workers)), "the workers to exit", timeout=3)
