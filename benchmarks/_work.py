"""The functions the benchmarks submit.

They live in an importable module, not in a benchmark's ``__main__``, so every pool
pickles them by reference and the workers import them, as they would in real code.
"""

from __future__ import annotations

import os
import time


def tiny(i: int) -> int:
    """As little work as a task can do: the pool's own overhead is all there is."""
    return i


def worker_pid(delay_s: float = 0.0) -> int:
    """Which worker ran this (used to warm pools until every worker has answered)."""
    if delay_s:
        time.sleep(delay_s)
    return os.getpid()


def nap(index: int, seconds: float, crash_index: int, stamp_path: str) -> tuple:
    """Sleep, then return ``(index, pid)``; task ``crash_index`` segfaults instead.

    Before segfaulting it writes ``time.time()`` to ``stamp_path``, so the parent
    can time what happens after the crash.
    """
    if index == crash_index:
        _segfault(stamp_path)
    time.sleep(seconds)
    return index, os.getpid()


def _segfault(stamp_path: str) -> None:
    import ctypes
    import faulthandler
    import resource

    faulthandler.disable()  # no traceback spew on the benchmark's stderr
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file either
    with open(stamp_path, "w") as stamp:
        stamp.write(repr(time.time()))
    ctypes.string_at(0)


def length(data: bytes) -> int:
    """Return the size of the argument: its transfer is the whole cost."""
    return len(data)


def thread_id(delay_s: float = 0.0) -> int:
    """Which worker thread ran this (warms thread pools, as ``worker_pid`` does
    process pools: every thread of a process has the same pid)."""
    import threading

    if delay_s:
        time.sleep(delay_s)
    return threading.get_ident()


def io_wait(seconds: float) -> float:
    """Stands for a blocking I/O call: the thread waits without the GIL."""
    time.sleep(seconds)
    return seconds


def load_model(seconds: float) -> dict[str, float]:
    """Stands for an initializer that loads a model: it takes ``seconds`` once per
    worker and returns something small (what ``stalwart.worker_state()`` gives)."""
    time.sleep(seconds)
    return {"loaded_in_s": seconds}


def burn_cpu(seconds: float) -> float:
    """A CPU-bound task of known length: spin until this thread has used
    ``seconds`` of CPU time. CPU time, not wall time: on a CPU shared with other
    processes (a scheduler, a client) it takes longer, as real work would."""
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass
    return seconds


def array_sum(arr: object) -> float:
    """Read every element of a NumPy array and return their sum: the task cannot
    skip the data it was sent, and the sum tells which data that was."""
    import numpy as np

    return float(np.asarray(arr).sum())


def filled(items: int, value: float) -> object:
    """Build and return a float64 array of ``items`` copies of ``value``: cheap to
    make, so the transfer of the result is the cost."""
    import numpy as np

    return np.full(items, value, dtype=np.float64)


def read_one(arr: object, index: int) -> float:
    """Return one element of a big array: sending the array is the whole cost."""
    import numpy as np

    return float(np.asarray(arr)[index])
