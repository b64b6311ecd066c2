"""A thread pool's worker thread: its life and its per-task loop.

::

    worker_thread(): initialize() once -> worker_state()
      +-> Worker.serve(pool): per task, claim the future (RUNNING), run fn,
      |     one trip through _Pool.lock to count the outcome and take the next
      |     queued future (or go idle, or leave), then resolve the future
      +-> the pool is done with it: exit, or with reuse=True park in
            _reuse.THREADS until a new pool adopts it, and serve that one

Owns ``Worker``, one per thread and pool served. Its thread owns it, except for
what others reach under ``_Pool.lock`` (see ``Worker``). The pool's shared
state (the queue, the idle workers, the counts) stays the pool's: a worker
reads and writes it under ``_Pool.lock`` only, but for the two peeks ``_Pool``
allows.
"""

from __future__ import annotations

import enum
import threading
from typing import TYPE_CHECKING, Any

from stalwart import _reuse, _state, _thread_breakage

if TYPE_CHECKING:
    from collections.abc import Callable

    from stalwart._thread import ThreadFuture, _Pool


class Step(enum.Enum):
    """A worker's next step when it is not a task (None: wait, idle)."""

    LEAVE = "leave"  # the pool is done with it: park or retire, once it resolved
    ENDED = "ended"  # retired already (max_tasks_per_child): the thread exits


class Worker:
    """One worker thread: the task it runs, and how it is handed the next one.

    Its thread owns it, except for what others reach under ``_Pool.lock``:
    whoever takes it off ``_Pool.idle_workers`` writes ``next_item`` and then
    releases ``wakeup``; the watchdog reads ``item`` and ``deadline`` and sets
    ``abandoned``; ``shutdown(cancel_futures=True)`` reads ``next_item``. The
    thread clears ``next_item`` without the lock once it claimed the future: a
    stale read then only makes shutdown cancel a running future, which fails.
    """

    __slots__ = (
        "abandoned",
        "deadline",
        "item",
        "next_item",
        "tasks_left",
        "thread",
        "wakeup",
    )

    def __init__(self, tasks_left: int | None) -> None:
        self.thread: threading.Thread | None = None
        self.item: ThreadFuture | None = None  # running now, with a task_timeout
        self.deadline: float | None = None  # monotonic; when `item` times out
        self.tasks_left = tasks_left  # None: unlimited
        self.abandoned = False  # timed out: its result is discarded, it exits
        # What it runs next, not claimed yet: taken from the queue, or handed
        # over while idle (None then: look again). Its future is still
        # cancellable, so shutdown(cancel_futures=True) looks here too.
        self.next_item: ThreadFuture | None = None
        # Held while the thread is idle; releasing it wakes the thread. A plain
        # C lock: the cheapest hand-off there is (a Condition is Python code).
        self.wakeup = threading.Lock()
        self.wakeup.acquire()

    def initialize(self, pool: _Pool) -> bool:
        """Run the initializer in this new worker thread; False if it raised."""
        state = None
        if pool.initializer is not None:
            succeeded, state = _call(pool.initializer, pool.initargs, {})
            if not succeeded:
                _thread_breakage.initializer_failed(pool, self, state)
                # The pool keeps the exception, whose traceback keeps this
                # frame and its callers': none may hold the pool or the thread.
                del self, pool, state
                return False
        _state.set_thread_worker_state(state)
        return True

    def serve(self, pool: _Pool) -> Parking | None:
        """Run tasks until the pool no longer needs this thread; then either
        where to park it (``reuse=True``) or None: the thread exits.

        The per-task path, kept to one trip through the lock: wait for a
        hand-off (idle) or take the queued item, claim its future, run it, then
        under the lock count the outcome and choose the next step, and only
        then resolve the future.
        """
        lock = pool.lock
        with lock:
            pool.starting -= 1
            step = self._next_step(pool)
        while True:
            if step is None:
                # Idle, on `idle_workers` until whoever takes it from there
                # releases `wakeup`: with an item, or None to look again.
                self.wakeup.acquire()
                step = self.next_item
                if step is None:
                    with lock:
                        step = self._next_step(pool)
                    continue
            elif step is Step.LEAVE:
                # Only now, with its last future resolved: shutdown(wait=True)
                # returns once no thread of the pool is left, so every future
                # must be done by then.
                with lock:
                    return pool.park_or_retire(self)
            elif step is Step.ENDED:
                return None
            future = step
            del step
            value: Any = None
            succeeded: bool | None = None  # None: cancelled while queued, not run
            # Claimed outside the lock: on a cancelled future this notifies its
            # waiters, and no lock may be held where the future's code runs.
            claimed = future.set_running_or_notify_cancel()
            self.next_item = None
            if claimed:
                if future.timeout is not None:
                    pool.watchdog.start_clock(pool, self, future)
                succeeded, value = _call(future.fn, future.args, future.kwargs)
            with lock:
                abandoned = self.abandoned
                if abandoned:
                    pass
                elif (
                    succeeded
                    and pool.queue
                    and self.tasks_left is None
                    and self.deadline is None
                ):
                    # The common case, inline (two calls fewer per task): what
                    # _finish() does for a task that ran without a deadline,
                    # with no recycling to count and more work queued.
                    pool.stats.tasks_completed += 1
                    self.next_item = step = pool.queue.popleft()
                else:
                    step = self._finish(pool, succeeded)
            # Dropped only now: the watchdog describes an overdue call while
            # its deadline is set, which the lock round above cleared.
            future.drop_call()
            if abandoned:
                # Timed out: its future failed already; this result is discarded.
                del future, value
                return None
            if pool.unstarted or pool.doomed:
                pool.settle()
            if succeeded:
                future.set_result(value)
            elif succeeded is not None:
                future.set_exception(value)
            # A failure's traceback keeps this frame (the caller of _call) alive:
            # it must not hold the future, or the two would form a reference
            # cycle. Dropped before the next wait, too: the caller alone decides
            # how long the result stays alive (stdlib).
            del future, value

    def _next_step(self, pool: _Pool) -> ThreadFuture | Step | None:
        """This worker's next item; None: it is idle now; or leave. Lock held."""
        if pool.queue:
            self.next_item = item = pool.queue.popleft()
            return item
        if pool.should_exit():
            return Step.LEAVE
        pool.idle_workers.append(self)
        return None

    def _finish(
        self, pool: _Pool, succeeded: bool | None
    ) -> ThreadFuture | Step | None:
        """Count a task's outcome (None: cancelled, not run); then this worker's
        next step. Lock held.

        Runs before the task's future resolves: a caller that submits on
        seeing the result finds this thread idle (the stdlib reuses it too).
        """
        self.item = self.deadline = None
        stats = pool.stats
        if succeeded is None:
            stats.tasks_cancelled += 1
            return self._next_step(pool)
        if succeeded:
            stats.tasks_completed += 1
        else:
            stats.tasks_failed += 1
        if self.tasks_left is not None:
            self.tasks_left -= 1
            if self.tasks_left == 0:
                stats.workers_recycled += 1
                # Retired now, so that its replacement starts at once; join()
                # still waits for the thread itself, which resolves first.
                pool.retire(self)
                pool.plan_workers()
                return Step.ENDED
        return self._next_step(pool)


class Parking:
    """Where a worker thread waits for its next pool, and for how long."""

    __slots__ = ("handle", "reuse")

    def __init__(
        self, reuse: _reuse.ReusePolicy, handle: _reuse.ParkedThread[Any]
    ) -> None:
        self.reuse = reuse
        self.handle = handle

    def wait_for_adoption(self) -> tuple[_Pool, Worker] | None:
        assignment: tuple[_Pool, Worker] | None = _reuse.THREADS.wait_for_adoption(
            self.reuse.key, self.handle, self.reuse.idle_timeout
        )
        return assignment


def worker_thread(start: list[tuple[_Pool, Worker]]) -> None:
    """A worker thread's life: initialize once, serve its pool; with
    ``reuse=True``, park when that pool shuts down and serve the next pool that
    adopts it, ``worker_state()`` and all."""
    pool, worker = start.pop()
    if not worker.initialize(pool):
        del pool, worker  # see initialize(): this frame outlives the thread
        return
    while True:
        parking = worker.serve(pool)
        del pool, worker  # a parked thread keeps no pool alive
        if parking is None:
            return
        assignment = parking.wait_for_adoption()
        del parking
        if assignment is None:
            return  # idle for too long, or the interpreter is exiting
        pool, worker = assignment


def _call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """``(True, fn(*args, **kwargs))``, or ``(False, the exception it raised)``.

    A frame of its own: the exception's traceback keeps the frame that caught
    it alive, and this one holds no worker, pool or future, so a failed task
    creates no reference cycle that would keep a finished thread or its pool
    alive until the next garbage collection.
    """
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the call's outcome, reported
        return False, exc
