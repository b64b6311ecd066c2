"""What the user is told when a worker ends badly: one error per kind of end.

The dispatcher decides *which* task an ending concerns (``_dispatcher``); this
module words the error, so that every message answers what happened, to which
task and worker, and what to do next.
"""

from __future__ import annotations

import traceback
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from typing import TYPE_CHECKING

from stalwart import _map, _spawn, _wire
from stalwart.errors import InitializerError, TaskTimeoutError, WorkerCrashedError

if TYPE_CHECKING:
    from stalwart._slot import Task

_CRASH_HINTS = {
    "SIGSEGV": "Segfaults usually come from C extensions; the worker's C stack is on "
    "stderr (faulthandler).",
    "SIGBUS": "Bus errors usually come from C extensions or memory-mapped files.",
    "SIGKILL": "Something sent it SIGKILL: the kernel's OOM killer, another "
    "process, or a supervisor.",
    "SIGABRT": "abort() usually comes from a failed assertion in C code; see stderr.",
}


def exit_description(exitcode: int | None) -> str:
    name = _spawn.signal_name(exitcode)
    return f"killed by {name}" if name else f"exit code {exitcode}"


def crashed(
    pid: int | None, exitcode: int | None, task: Task, why: str | None = None
) -> WorkerCrashedError:
    """The worker died while running ``task``; ``why`` it died, where known
    (a SIGKILL's verdict: the OOM killer or not, ``_memory``)."""
    signal_name = _spawn.signal_name(exitcode)
    how = f"died from {signal_name}" if signal_name else f"exited with code {exitcode}"
    attempts = f" (attempt {task.attempts})" if task.attempts > 1 else ""
    hint = why or _CRASH_HINTS.get(signal_name or "", "")
    if not signal_name:
        hint = "A task (or a C extension) called os._exit() or exit()."
    return WorkerCrashedError(
        f"worker {pid} {how} while running {task.describe()}{attempts}. "
        f"{_only_this(task)}; a replacement worker was started. {hint}",
        pid=pid,
        exitcode=exitcode,
        signal=signal_name,
        task=task.describe(),
        attempts=task.attempts,
    )


def _only_this(task: Task) -> str:
    """Who failed with it: the task, or every call of a map's chunk."""
    chunk = _map.chunk_length(task.fn, task.args)
    if chunk is None:
        return "Only this task failed"
    return f"Only the {chunk} calls of this chunk failed (chunksize= sets how many)"


def timed_out(pid: int | None, task: Task) -> TaskTimeoutError:
    """``task`` ran past its task_timeout and its worker was killed."""
    chunk = _map.chunk_length(task.fn, task.args)
    timeout = task.timeout or 0.0
    limit = f"its task_timeout of {timeout:g} s"
    if chunk is not None:
        limit += f" ({chunk} calls x the map's {timeout / chunk:g} s)"
    message = (
        f"{task.describe()} ran longer than {limit}, so its worker {pid} was "
        "killed, together with any processes the task started. "
        f"{_only_this(task)}; a replacement worker was started. Raise "
        "task_timeout if the task needs more time."
    )
    return TaskTimeoutError(
        message, timeout=task.timeout, pid=pid, task=task.describe()
    )


def start_failed(
    pid: int | None,
    exitcode: int | None,
    init_failure: tuple[str, str] | None,
    failures: int,
    given_up: bool,
    main_failure: _wire.MainFailed | None = None,
) -> BrokenProcessPool:
    """A worker died, or its initializer raised, before it was ready;
    ``main_failure``: what it said when importing the main script failed."""
    if main_failure is not None:
        return _main_failed(pid, exitcode, main_failure, failures, given_up)
    if init_failure is not None:
        summary, remote_traceback = init_failure
        error: BrokenProcessPool = InitializerError(
            f"the initializer raised {summary} in worker {pid}"
            + (
                f"; {failures} workers in a row failed the same way, so no more "
                "are started and the executor is broken. Fix the initializer "
                "(its traceback is attached) and create a new executor."
                if given_up
                else "; a replacement worker is being started."
            ),
            remote_traceback=remote_traceback,
        )
        error.__cause__ = _RemoteTraceback(remote_traceback)  # type: ignore[arg-type]
        return error
    return WorkerCrashedError(
        f"worker {pid} exited before it was ready "
        f"({exit_description(exitcode)}); {failures} in a row"
        + (
            ", so no more are started and the executor is broken. Look for "
            "the worker's traceback on stderr: if it ends in stalwart's "
            "'executor was created while a worker process was importing the "
            "main module', put the script's code under `if __name__ == "
            "'__main__':`."
            if given_up
            else "; starting a replacement."
        ),
        pid=pid,
        exitcode=exitcode,
        signal=_spawn.signal_name(exitcode),
    )


def _main_failed(
    pid: int | None,
    exitcode: int | None,
    failure: _wire.MainFailed,
    failures: int,
    given_up: bool,
) -> WorkerCrashedError:
    if failure.executor_at_import:
        what = (
            "because the script creates an executor at import time: workers "
            "import your main script the way multiprocessing's spawn does, so "
            "code that starts executors must sit under `if __name__ == "
            "'__main__':`"
        )
    else:
        what = (
            f"it raised {failure.summary} (its traceback is attached); workers "
            "import your main script the way multiprocessing's spawn does, so "
            "the script must import cleanly in a fresh process, with its work "
            "under `if __name__ == '__main__':`"
        )
    then = (
        f"{failures} workers in a row failed the same way, so no more are "
        "started and the executor is broken"
        if given_up
        else "starting a replacement"
    )
    error = WorkerCrashedError(
        f"worker {pid} could not import the main script, {what}. {then}.",
        pid=pid,
        exitcode=exitcode,
        signal=_spawn.signal_name(exitcode),
    )
    error.__cause__ = _RemoteTraceback(failure.remote_traceback)  # type: ignore[arg-type]
    return error


def unreadable_result(
    pid: int | None, task: Task, exc: BaseException
) -> BrokenProcessPool:
    """``task``'s answer arrived but could not be rebuilt in the parent."""
    error = BrokenProcessPool(
        f"the result of {task.describe()} came back from worker {pid} but could "
        f"not be unpickled in the parent: {exc!r}. Return types that the parent process "
        "can import and rebuild (and that fit in its memory); the executor carries on."
    )
    error.__cause__ = _detached(exc)
    return error


def dispatcher_failed(exc: BaseException) -> BrokenProcessPool:
    """The I/O thread itself failed: a bug; every outstanding future gets this."""
    error = BrokenProcessPool(
        f"stalwart's dispatcher thread failed with {exc!r}; this is a bug in "
        "stalwart, please report it with the traceback logged by 'stalwart'. "
        "The executor is broken: create a new one."
    )
    error.__cause__ = _detached(exc)
    return error


def start_error(exc: Exception) -> BrokenProcessPool:
    """A worker process could not even be started (no fork, no fds...)."""
    error = BrokenProcessPool(
        f"could not start a worker process: {exc!r}. The executor is "
        "broken; every waiting future fails with this error."
    )
    error.__cause__ = _detached(exc)
    return error


def _detached(exc: BaseException) -> BaseException:
    """``exc`` without its live traceback, its text kept as its cause.

    The traceback's frames reach back through the I/O thread's stack (on 3.10
    a frame holds its caller), so an error kept by the user would keep the
    dispatcher and its thread object alive as long as the future lives.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc = exc.with_traceback(None)
    exc.__context__ = None
    if exc.__cause__ is None:
        exc.__cause__ = _RemoteTraceback(f'\n"""\n{text}"""')  # type: ignore[arg-type]
    return exc
