"""Functions that tests submit: module-level, so workers import them by reference."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, NoReturn

import stalwart

TIMEOUT = 30.0  # seconds; reached only when something hangs


def echo(value: Any) -> Any:
    return value


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def block_until(started: Any, gate: Any, value: Any) -> Any:
    started.set()
    if not gate.wait(TIMEOUT):
        raise TimeoutError("test gate never opened")
    return value


def die(how: str) -> None:
    """Kill the worker process running this task, in one of several real ways."""
    faulthandler.disable()  # an expected crash: keep the log quiet
    if how == "exit":
        os._exit(3)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "abort":
        os.abort()
    if how == "segv":
        ctypes.string_at(0)
    raise ValueError(f"unknown way to die: {how}")


def die_once(marker_path: str) -> str:
    """Die the first time (leaving a marker file), succeed when re-run."""
    if not os.path.exists(marker_path):
        with open(marker_path, "w") as marker:
            marker.write(str(os.getpid()))
        die("sigkill")
    return "second attempt"


def raise_value_error(message: str) -> None:
    raise ValueError(message)  # line checked by the remote traceback test


class UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_error() -> None:
    raise UnpicklableError("carries a lock")


class NeedsTwoArgsError(Exception):
    """Pickles fine, but cannot be rebuilt from its pickle. (Plain pickle would
    call __init__ with one argument, but tblib, which dask installs, rebuilds
    such exceptions anyway: so the rebuild itself refuses.)"""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} {b}")

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _refuse_to_rebuild, (str(self),)


def _refuse_to_rebuild(message: str) -> NoReturn:
    raise TypeError(f"NeedsTwoArgsError({message!r}) cannot be rebuilt")


def raise_needs_two_args() -> None:
    raise NeedsTwoArgsError("first", "second")


def return_lock() -> Any:
    return {"ok": 1, "lock": threading.Lock()}


def return_lambda() -> Any:
    return lambda x: x + 1


# -- initializers --------------------------------------------------------------

_initialized_pid: int | None = None


def init_model(name: str) -> dict[str, Any]:
    """Stands for loading a model: returns an unpicklable object, once per worker."""
    global _initialized_pid
    _initialized_pid = os.getpid()
    return {"name": name, "pid": os.getpid(), "lock": threading.RLock(), "calls": 0}


def use_model(x: int) -> tuple[str, int, int]:
    model = stalwart.worker_state()
    model["calls"] += 1
    with model["lock"]:
        return model["name"], model["pid"], x * 2


def state_calls() -> int:
    calls: int = stalwart.worker_state()["calls"]
    return calls


def get_worker_state() -> Any:
    return stalwart.worker_state()


def init_fail(message: str) -> None:
    raise OSError(message)


def init_count(path: str) -> int:
    """Append this worker's pid to `path`: how many times the initializer ran."""
    with open(path, "a") as log:
        log.write(f"{os.getpid()}\n")
    return os.getpid()


def read_initialized_pid() -> int | None:
    return _initialized_pid


def pid_after_barrier(barrier: Any) -> int:
    barrier.wait()
    return os.getpid()


# -- slow tasks (for task_timeout) -------------------------------------------------


def nap(seconds: float, value: Any = None) -> Any:
    """A task that takes `seconds` of wall time: the workload, not a synchronisation."""
    time.sleep(seconds)
    return value


def log_run_then_hang(path: str) -> None:
    """Append a line to `path` each time this runs, then never finish."""
    with open(path, "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(TIMEOUT * 10)


def start_child_then_hang(pid_path: str) -> None:
    """Start a long-lived child process, record its pid, then never finish."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pid_path + ".tmp", "w") as out:
        out.write(str(child.pid))
    os.replace(pid_path + ".tmp", pid_path)  # the reader never sees half a pid
    time.sleep(TIMEOUT * 10)


def nap_then_pid(seconds: float) -> int:
    """Take `seconds`, then say which worker ran this."""
    time.sleep(seconds)
    return os.getpid()


def init_log_then_fail(path: str) -> None:
    """An initializer that records each attempt, then raises."""
    init_count(path)
    raise OSError("no GPU found")


def die_until(log_path: str, deaths: int) -> int:
    """Kill the worker running this the first `deaths` times; then return the run count."""
    with open(log_path, "a") as log:
        log.write(f"{os.getpid()}\n")
    with open(log_path) as log:
        runs = len(log.readlines())
    if runs <= deaths:
        die("sigkill")
    return runs
