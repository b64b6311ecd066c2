"""``executor.stats()``: what an executor did with its tasks and its workers.

Counters only, kept by the executor as things happen, so that users (and tests)
can see reuse, crashes and recycling without reading private attributes. Every
executor kind keeps the same fields; a field that cannot happen on a kind (a
thread never crashes on its own) stays 0 there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from stalwart.errors import TaskTimeoutError, WorkerCrashedError


@dataclass
class ExecutorStats:
    """A snapshot of an executor's counters, returned by ``executor.stats()``.

    A *task* is one ``submit()`` call, or one chunk of a ``map()``. Every task
    that has finished is counted once in ``tasks_completed``, ``tasks_failed`` or
    ``tasks_cancelled``; the other task fields give detail.

    Attributes:
        tasks_submitted: tasks accepted by ``submit()`` or ``map()``.
        tasks_completed: tasks whose future got a result.
        tasks_failed: tasks whose future got an exception, whatever the cause
            (the task raised, its worker died, it timed out, the executor broke).
        tasks_cancelled: tasks cancelled before they started.
        tasks_crashed: tasks failed with ``WorkerCrashedError``: their worker died
            while running them, more often than ``retries`` allows.
        tasks_retried: times a task was run again because its worker died.
        tasks_timed_out: tasks failed with ``TaskTimeoutError``.
        tasks_rebalanced: tasks taken back, not yet started, from a busy
            worker's backlog so that an idle worker could run them.
        workers_started: workers this executor started itself (replacements and
            recycled ones included), not counting adopted ones.
        workers_reused: warm workers adopted from an earlier ``reuse=True``
            executor, initializer state and all.
        workers_replaced: workers started to take the place of one that died, was
            killed (``task_timeout``) or, for threads, was abandoned.
        workers_recycled: workers that exited after ``max_tasks_per_child`` tasks.
        workers_over_memory: workers replaced because their resident memory was
            past ``max_memory_per_child`` after a task.
        workers_parked: idle workers handed to the warm set at shutdown
            (``reuse=True``), for the next executor with the same settings.
    """

    tasks_submitted: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    tasks_cancelled: int = 0
    tasks_crashed: int = 0
    tasks_retried: int = 0
    tasks_timed_out: int = 0
    tasks_rebalanced: int = 0
    workers_started: int = 0
    workers_reused: int = 0
    workers_replaced: int = 0
    workers_recycled: int = 0
    workers_over_memory: int = 0
    workers_parked: int = 0

    def count_failure(self, error: BaseException) -> None:
        """A task's future got ``error``: count it, by kind."""
        self.tasks_failed += 1
        if isinstance(error, WorkerCrashedError):
            self.tasks_crashed += 1
        elif isinstance(error, TaskTimeoutError):
            self.tasks_timed_out += 1

    def snapshot(self) -> ExecutorStats:
        """A copy, so the caller's view does not change under them."""
        return copy.copy(self)
