"""Task timeouts for the thread pool: the watchdog thread that fails overdue
tasks on time and abandons the threads that run them.

A worker starting a task that has a ``task_timeout`` records the task and its
deadline on its ``Worker`` (``start_clock()``); the watchdog thread
"<prefix>_watchdog", one per pool and started with the first such task, waits on
``_Pool.deadlines_changed`` until the nearest deadline. An overdue task's
future fails with ``TaskTimeoutError``, its thread is abandoned (it runs on
until the call returns, then drops the result and exits) and a replacement is
planned.

Owns ``Watchdog.thread`` and ``Watchdog.wakes_at``, read and written under
``_Pool.lock`` by the worker that starts a clock (it may start the thread), the
watchdog itself, and ``_Pool.join()`` (which reads ``thread``). Everything else
it touches is the pool's or the worker's, under the same lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING

from stalwart.errors import TaskTimeoutError

if TYPE_CHECKING:
    from stalwart._thread import ThreadFuture, _Pool
    from stalwart._thread_worker import Worker

logger = logging.getLogger("stalwart")


class Watchdog:
    """One pool's watchdog thread and when it next wakes. Holds no pool: the
    pool is passed in, so that only the running thread keeps it alive."""

    __slots__ = ("thread", "wakes_at")

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.wakes_at = math.inf

    def start_clock(self, pool: _Pool, worker: Worker, item: ThreadFuture) -> None:
        """Give the watchdog the deadline of the task ``worker`` starts now. No lock."""
        assert item.timeout is not None
        with pool.lock:
            worker.item = item
            worker.deadline = deadline = time.monotonic() + item.timeout
            self._watch_deadline(pool, deadline)

    def _watch_deadline(self, pool: _Pool, deadline: float) -> None:
        """Make the watchdog wake up by `deadline`. Lock held."""
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._watch,
                args=(pool,),
                name=f"{pool.name_prefix}_watchdog",
                daemon=True,
            )
            self.thread.start()
        elif deadline < self.wakes_at:
            pool.deadlines_changed.notify_all()

    def _watch(self, pool: _Pool) -> None:
        """The watchdog: fail each task that runs past its deadline, on time."""
        while True:
            with pool.lock:
                overdue = _abandon_overdue_workers(pool)
                if not overdue:
                    if pool.should_exit() and not pool.workers:
                        self.wakes_at = math.inf
                        return
                    deadlines = [
                        w.deadline for w in pool.workers if w.deadline is not None
                    ]
                    self.wakes_at = min(deadlines, default=math.inf)
                    wait_s = self.wakes_at - time.monotonic()
                    pool.deadlines_changed.wait(None if math.isinf(wait_s) else wait_s)
                    continue
            # The overdue futures fail (logged, outside the lock: handlers are
            # user code) before a replacement can run the next task.
            for item, error in overdue:
                logger.warning("%s", error)
                item.set_exception(error)
            pool.settle()


def _abandon_overdue_workers(
    pool: _Pool,
) -> list[tuple[ThreadFuture, TaskTimeoutError]]:
    """Abandon the workers past their deadline; each one's future and the
    error it is to fail with. Lock held: the call is still attached."""
    now = time.monotonic()
    overdue = []
    for worker in list(pool.workers):
        if worker.deadline is None or worker.deadline > now:
            continue
        assert worker.item is not None
        overdue.append((worker.item, _overdue_error(worker, worker.item)))
        # Threads cannot be killed: this one runs on until the call returns,
        # then sees `abandoned`, drops the result and exits.
        worker.abandoned = True
        worker.item = worker.deadline = None
        pool.workers.discard(worker)
        pool.abandoned_to_replace += 1
        pool.stats.tasks_failed += 1
        pool.stats.tasks_timed_out += 1
    if overdue:
        pool.deadlines_changed.notify_all()  # join() need not wait for them
        pool.plan_workers()
    return overdue


def _overdue_error(worker: Worker, item: ThreadFuture) -> TaskTimeoutError:
    assert worker.thread is not None
    assert item.timeout is not None
    task = item.describe()
    message = (
        f"{task} ran longer than its task_timeout of {item.timeout:g} s "
        f"in worker thread {worker.thread.name!r}, so its future failed. A thread "
        "cannot be killed: it was abandoned (the call runs on in the background "
        "and its result will be discarded) and a replacement thread takes its "
        "place. Raise task_timeout if the task needs more time, or have the task "
        "check a deadline of its own; use stalwart.ProcessPoolExecutor to have "
        "overdue tasks killed."
    )
    return TaskTimeoutError(message, timeout=item.timeout, pid=None, task=task)
