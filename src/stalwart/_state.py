"""Where the initializer's return value lives, per worker process or thread.

Every executor's worker calls ``set_worker_state`` once after its initializer ran;
tasks read it back with ``stalwart.worker_state()``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

_NOT_A_WORKER = object()
_process_state: Any = _NOT_A_WORKER
_thread_state = threading.local()


def set_process_worker_state(state: Any) -> None:
    """Record the initializer's result for every task run in this worker process."""
    global _process_state
    _process_state = state


def set_thread_worker_state(state: Any) -> None:
    """Record the initializer's result for tasks run on the current worker thread."""
    _thread_state.value = state


@contextlib.contextmanager
def thread_worker_state(state: Any) -> Iterator[None]:
    """``worker_state()`` is ``state`` on this thread for the duration: for
    threads that run tasks of several executors in turn (a dask worker's)."""
    previous = getattr(_thread_state, "value", _NOT_A_WORKER)
    _thread_state.value = state
    try:
        yield
    finally:
        _thread_state.value = previous


def worker_state() -> Any:
    """Return what the executor's initializer returned, in this worker.

    The object never leaves the worker, so it need not be picklable: load a model,
    open a database connection or set up CUDA in the initializer and fetch it here::

        def load():
            return Model.from_disk("weights.bin")

        def predict(x):
            return stalwart.worker_state().predict(x)

        with stalwart.ProcessPoolExecutor(initializer=load) as ex:
            results = list(ex.map(predict, inputs))

    Returns None in a worker of an executor that has no initializer.

    Raises:
        RuntimeError: when called outside a task running on a stalwart worker.
    """
    state = getattr(_thread_state, "value", _NOT_A_WORKER)
    if state is _NOT_A_WORKER:
        state = _process_state
    if state is _NOT_A_WORKER:
        raise RuntimeError(
            "worker_state() only works inside a task running on a stalwart worker; "
            "in the parent process, call your initializer directly."
        )
    return state
