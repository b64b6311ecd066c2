"""What a DaskExecutor runs inside dask workers: the task wrapper and the plugin.

Imported only where dask.distributed is installed (the DaskExecutor imports it
lazily, dask workers by reference when they unpickle the task or the plugin).

    run_task(call, plugin_name, timeout)        on a dask worker thread
      | plugin.worker_state(): the initializer, once per worker, on first use
      | plugin.clock(timeout): the watchdog reports the task if it overruns
      v
    _worker.run_call(call): unpickle, run, pickle the outcome
      --> reply bytes: the same RESULT / ERROR replies as a process pool's worker
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from stalwart import _forwarding, _pickling, _state, _worker
from stalwart.errors import InitializerError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from distributed import Worker

_UNSET = object()


def run_task(
    call: bytes, plugin_name: str, timeout: float | None, forward_output: bool = True
) -> bytes | tuple[bytes, list[tuple[Any, ...]], int]:
    """A DaskExecutor task, on a dask worker: returns the pickled reply; with
    ``forward_output``, also what the task printed and logged, and this
    worker's pid, if it did either (``_forwarding.captured``)."""
    plugin = get_worker().plugins.get(plugin_name)
    if not isinstance(plugin, ExecutorPlugin):
        error = BrokenProcessPool(
            f"dask worker {get_worker().address} has no {plugin_name!r} plugin: the "
            "DaskExecutor that sent this task has shut down, or the worker joined "
            "the cluster as the plugin was being registered. Submit it again."
        )
        return _worker.error_reply(0, error, 0.0)
    try:
        state = plugin.worker_state()
    except InitializerError as error:
        return _worker.error_reply(0, error, 0.0)
    with contextlib.ExitStack() as stack:
        events = stack.enter_context(_forwarding.captured()) if forward_output else []
        stack.enter_context(plugin.clock(timeout))
        stack.enter_context(_state.thread_worker_state(state))
        reply = _worker.run_call(0, call, by_value=True)  # in band: dask's transport
    assert isinstance(reply, bytes)
    return (reply, events, os.getpid()) if events else reply


class ExecutorPlugin(WorkerPlugin):
    """One DaskExecutor's presence on each dask worker.

    Holds that executor's initializer state for ``worker_state()`` (built on
    the first task the worker runs for it, dropped when the executor shuts
    down and unregisters the plugin) and watches the clock of its running tasks:
    a task past its ``task_timeout`` is reported on ``topic``, for the
    executor to fail it (and, on its own cluster, kill this worker).
    """

    def __init__(self, initializer_call: bytes | None, topic: str) -> None:
        self.initializer_call = initializer_call
        self.topic = topic

    # -- dask's plugin hooks (the instance arrives pickled, so state starts here)

    def setup(self, worker: Worker) -> None:
        self._worker = worker
        self._lock = threading.Lock()
        self._state: Any = _UNSET
        self._failure: tuple[str, str] | None = None
        self._deadlines: dict[str, tuple[float, float]] = {}  # key: (deadline, limit)
        self._changed = threading.Condition()
        self._watchdog: threading.Thread | None = None
        self._stopped = False

    def teardown(self, worker: Worker) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        with self._lock:
            self._state = _UNSET  # the model, connection... goes with the executor

    # -- initializer state ----------------------------------------------------------

    def worker_state(self) -> Any:
        """The initializer's result on this worker, built on first use.

        Raises InitializerError (every time, without running it again) if the
        initializer raised on this worker.
        """
        with self._lock:
            if self._state is _UNSET and self._failure is None:
                self._initialize()
            if self._failure is not None:
                summary, remote_traceback = self._failure
                raise InitializerError(
                    f"the initializer raised {summary} on dask worker "
                    f"{self._worker.address} (pid {os.getpid()}); every task this "
                    "executor sends there fails with this error. Fix the initializer "
                    "(its traceback is attached) and create a new executor.",
                    remote_traceback=remote_traceback,
                )
            return self._state

    def _initialize(self) -> None:
        if self.initializer_call is None:
            self._state = None
            return
        try:
            initializer, initargs, _ = _pickling.loads(self.initializer_call)
            self._state = initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 - logged, and sent to every task
            self._failure = _worker.initializer_failure(exc)

    # -- task timeouts ---------------------------------------------------------------

    @contextlib.contextmanager
    def clock(self, timeout: float | None) -> Iterator[None]:
        """Watch the running task's time while the block runs."""
        if timeout is None:
            yield
            return
        key = str(get_worker().get_current_task())
        with self._changed:
            self._deadlines[key] = (time.monotonic() + timeout, timeout)
            self._ensure_watchdog()
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._deadlines.pop(key, None)

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="stalwart-dask-watchdog", daemon=True
            )
            self._watchdog.start()

    def _watch(self) -> None:
        """Report each task that runs past its limit, once, on ``topic``."""
        with self._changed:
            while not self._stopped:
                now = time.monotonic()
                overdue = [k for k, (end, _) in self._deadlines.items() if end <= now]
                for key in overdue:
                    _, limit = self._deadlines.pop(key)
                    report = {
                        "key": key,
                        "worker": self._worker.address,
                        "pid": os.getpid(),
                        "timeout": limit,
                    }
                    self._worker.log_event(self.topic, report)
                nearest = min(
                    (end for end, _ in self._deadlines.values()), default=math.inf
                )
                self._changed.wait(
                    None if math.isinf(nearest) else max(0.0, nearest - now)
                )
        self._watchdog = None
