"""How a thread pool breaks, and what it does with the work it then cannot run.

A pool breaks when its initializer raises in a worker thread, or when no
worker thread could be started while work is queued. From then on
``submit()`` raises the pool's ``Breakage.error()``, the queued futures move
to ``_Pool.doomed`` and fail with that error, and every worker thread exits
once its running task is done.

The state is the pool's (``_Pool.broken``, ``_Pool.doomed``), read and written
under ``_Pool.lock`` by whichever thread breaks the pool (a worker whose
initializer raised, a submitter or worker that could not start a thread) or
fails the doomed futures (any thread that next calls ``_Pool.settle()``).
``broken`` is also read without the lock for the executor's ``_broken``, and
``doomed`` by a worker's peek after each task; see ``_Pool``. No future is
failed under the lock: its callbacks run user code, which may call submit().
"""

from __future__ import annotations

import logging
import traceback
from concurrent.futures.thread import BrokenThreadPool
from typing import TYPE_CHECKING

from stalwart.errors import InitializerError

if TYPE_CHECKING:
    from stalwart._thread import _Pool
    from stalwart._thread_worker import Worker

_STDLIB_LOGGER = logging.getLogger("concurrent.futures")
"""Where the stdlib thread pool logs a failed initializer (at CRITICAL); we log
there too, so logging set up for the stdlib pool keeps seeing it."""


class _ThreadInitializerError(InitializerError, BrokenThreadPool):
    """The initializer raised in a worker thread; the thread pool is broken.

    Both an ``InitializerError`` (what stalwart's process pool raises, so
    ``except stalwart.InitializerError`` works for every executor kind) and a
    ``BrokenThreadPool`` (what the stdlib thread pool raises, so code written
    for it keeps working).
    """


class Breakage:
    """Why a pool broke; builds a fresh exception for each future it fails."""

    __slots__ = ("cause", "message", "remote_traceback")

    def __init__(
        self, message: str, cause: BaseException, remote_traceback: str | None
    ) -> None:
        self.message = message
        self.cause = cause
        self.remote_traceback = remote_traceback  # set: the initializer failed

    def error(self) -> BrokenThreadPool:
        error: BrokenThreadPool
        if self.remote_traceback is not None:
            error = _ThreadInitializerError(
                self.message, remote_traceback=self.remote_traceback
            )
        else:
            error = BrokenThreadPool(self.message)
        error.__cause__ = self.cause
        return error


def no_thread_started(failure: Exception) -> Breakage:
    """The pool has work queued and no thread left to run it."""
    return Breakage(
        f"no worker thread could be started ({failure!r}), so the thread pool "
        "is broken and every queued future fails with this error. Too many "
        "threads run in this process, or the interpreter is shutting down.",
        failure,
        None,
    )


def initializer_failed(pool: _Pool, worker: Worker, exc: BaseException) -> None:
    """Break the pool for the initializer that raised ``exc`` in ``worker``'s
    thread, which exits; fail what was queued. Lock NOT held."""
    assert worker.thread is not None
    name = getattr(pool.initializer, "__qualname__", repr(pool.initializer))
    message = (
        f"the initializer {name}() raised {exc!r} in worker thread "
        f"{worker.thread.name!r}, so the thread pool is broken: every queued "
        "task fails with this error and submit() refuses new work. Fix the "
        "initializer (its traceback is attached) and create a new executor."
    )
    _STDLIB_LOGGER.critical("%s", message, exc_info=exc)
    remote_traceback = "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)
    )
    with pool.lock:
        pool.starting -= 1
        pool.retire(worker)
        if pool.broken is None:
            break_pool(pool, Breakage(message, exc, remote_traceback))
    pool.settle()


def break_pool(pool: _Pool, breakage: Breakage) -> None:
    """Refuse new work; queued futures go to `doomed`. Lock held.

    Running tasks finish; their threads then exit.
    """
    pool.broken = breakage
    pool.doomed.extend(pool.queue)
    pool.queue.clear()
    pool.wake_idle_workers()
    pool.deadlines_changed.notify_all()


def fail_doomed(pool: _Pool) -> None:
    """Fail the futures a break left behind. Lock NOT held: callbacks run
    user code, which may call submit()."""
    with pool.lock:
        items, pool.doomed = pool.doomed, []
        breakage = pool.broken
    if not items:
        return
    for item in items:
        item.drop_call()
    failing = [item for item in items if item.set_running_or_notify_cancel()]
    # One lock round for the counts; the futures resolve outside it.
    with pool.lock:
        pool.stats.tasks_failed += len(failing)
        pool.stats.tasks_cancelled += len(items) - len(failing)
    for item in failing:
        assert breakage is not None
        item.set_exception(breakage.error())
