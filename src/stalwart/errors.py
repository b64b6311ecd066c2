"""Exception types raised by stalwart executors.

Each refines the stdlib type that old code already catches, so
``except BrokenProcessPool`` or ``except TimeoutError`` keeps working::

    BrokenProcessPool (concurrent.futures.process)
     ├── WorkerCrashedError   a worker died while running this task
     └── InitializerError     the initializer keeps failing; the executor is broken
    TimeoutError
     └── TaskTimeoutError     a task ran past task_timeout and its worker was killed
    pickle.PicklingError
     └── PicklingError        a call or a result cannot cross the process boundary
    Exception
     └── RemoteError          a task raised an exception that could not be pickled
"""

from __future__ import annotations

import concurrent.futures
import pickle
import sys
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "InitializerError",
    "PicklingError",
    "RemoteError",
    "TaskTimeoutError",
    "WorkerCrashedError",
]


class WorkerCrashedError(BrokenProcessPool):
    """The worker process running this task died (segfault, ``os._exit``, SIGKILL, OOM).

    Only this task failed; the executor replaced the worker and stays usable.

    Attributes:
        pid: the dead worker's process id.
        exitcode: its exit code (negative: killed by a signal), or None if unknown.
        signal: the signal's name, e.g. ``"SIGSEGV"``, or None for a plain exit.
        task: a short repr of the task, e.g. ``"crash(3)"``.
        attempts: how many times the task was started before giving up.
    """

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        exitcode: int | None = None,
        signal: str | None = None,
        task: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        self.task = task
        self.attempts = attempts

    def __reduce__(self) -> tuple[object, ...]:
        kwargs = {
            "pid": self.pid,
            "exitcode": self.exitcode,
            "signal": self.signal,
            "task": self.task,
            "attempts": self.attempts,
        }
        return (_rebuild_with_kwargs, (type(self), self.args, kwargs))


class InitializerError(BrokenProcessPool):
    """The executor's initializer raised in a worker.

    The worker's traceback is attached as ``__cause__`` and kept in ``.remote_traceback``.
    """

    def __init__(self, message: str, *, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        kwargs = {"remote_traceback": self.remote_traceback}
        return (_rebuild_with_kwargs, (type(self), self.args, kwargs))


if sys.version_info >= (3, 11):
    _Timeout = TimeoutError  # concurrent.futures.TimeoutError is this one
else:

    class _Timeout(concurrent.futures.TimeoutError, TimeoutError):
        """On 3.10, ``concurrent.futures.TimeoutError`` is a class of its own:
        ``except`` either one must catch a task's timeout."""


class TaskTimeoutError(_Timeout):
    """A task ran longer than ``task_timeout``; its worker was killed and replaced.

    Attributes:
        timeout: the limit, in seconds, that the task exceeded.
        pid: the killed worker's process id (None in a thread pool).
        task: a short repr of the task, e.g. ``"train(3)"``.
    """

    def __init__(
        self,
        message: str,
        *,
        timeout: float | None = None,
        pid: int | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.pid = pid
        self.task = task

    def __reduce__(self) -> tuple[object, ...]:
        kwargs = {"timeout": self.timeout, "pid": self.pid, "task": self.task}
        return (_rebuild_with_kwargs, (type(self), self.args, kwargs))


class PicklingError(pickle.PicklingError):
    """A call, or a task's result, cannot be pickled to cross the process boundary.

    Raised by ``submit()``/``map()`` in the caller (never later from ``result()``), or
    as the failure of a task whose return value cannot be sent back.

    Attributes:
        path: where the culprit sits, e.g. ``"args[0].model._lock"``.
        unpicklable_type: the culprit's type, e.g. ``_thread.RLock``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        unpicklable_type: type | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.unpicklable_type = unpicklable_type

    def __reduce__(self) -> tuple[object, ...]:
        # Types are pickled by reference, and some cannot be (``_thread.lock`` on
        # 3.11): then the type travels by name only, in the message.
        unpicklable_type = self.unpicklable_type
        try:
            pickle.dumps(unpicklable_type)
        except Exception:  # noqa: BLE001 - any failure: send the name only
            unpicklable_type = None
        kwargs = {"path": self.path, "unpicklable_type": unpicklable_type}
        return (_rebuild_with_kwargs, (type(self), self.args, kwargs))


class RemoteError(Exception):
    """A task raised an exception that could not be pickled back to the caller.

    Attributes:
        type_name: the qualified name of the original exception type.
        message: ``str()`` of the original exception.
        remote_traceback: the formatted traceback from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(type_name, message, remote_traceback)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return (
            f"{self.type_name}: {self.message}\n"
            "(the task raised this exception in a worker, but it could not be "
            "pickled back, so it arrives as stalwart.RemoteError)"
        )


def _rebuild_with_kwargs(
    cls: type[BaseException], args: tuple[object, ...], kwargs: dict[str, object]
) -> BaseException:
    return cls(*args, **kwargs)
