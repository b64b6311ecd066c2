"""``executor.stats()``: what an executor did with its tasks and its workers.

Counters only, kept by the executor as things happen, so that users (and tests)
can see reuse, crashes and recycling without reading private attributes. Every
executor kind keeps the same fields; a field that cannot happen on a kind (a
thread never crashes on its own) stays 0 there.
"""

from __future__ import annotations

import bisect
import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stalwart.errors import TaskTimeoutError, WorkerCrashedError

if TYPE_CHECKING:
    from collections.abc import Callable

SLOWEST_KEPT = 5
"""How many of the slowest tasks ``stats()`` names."""

ENDED_WORKERS_KEPT = 32
"""Ended workers whose figures ``stats()`` keeps (the most recent): with
``max_tasks_per_child=1`` an executor may start millions."""


@dataclass
class WorkerStats:
    """One worker's figures, in ``ExecutorStats.workers``.

    Attributes:
        pid: the worker's process id.
        started_because: why it started: ``"start"`` (the pool grew to meet
            work), ``"adopted"`` (a warm worker from an earlier ``reuse=True``
            executor), ``"replaces a crashed worker"``, ``"replaces a timed-out
            worker"``, ``"replaces a worker at max_tasks_per_child"``,
            ``"replaces a worker past max_memory_per_child"``.
        ended_because: why it ended: ``"crashed"``, ``"timed out"``,
            ``"max_tasks_per_child"``, ``"max_memory_per_child"``, ``"parked"``,
            ``"shut down"``, ``"retired"`` (the pool shrank); None while it runs.
        tasks: tasks it ran (answered).
        busy_s: seconds it spent running them.
        idle_s: seconds it was alive and not running a task.
        memory: its resident memory (bytes) when last sampled; None if unknown.
        peak_memory: the highest resident memory sampled (bytes); None if unknown.
    """

    pid: int | None
    started_because: str
    ended_because: str | None = None
    tasks: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0
    memory: int | None = None
    peak_memory: int | None = None
    started_at: float = field(default_factory=time.monotonic, repr=False)
    ended_at: float | None = field(default=None, repr=False)

    def note_memory(self, rss: int | None) -> None:
        if rss is not None:
            self.memory = rss
            if self.peak_memory is None or rss > self.peak_memory:
                self.peak_memory = rss

    def snapshot(self, now: float) -> WorkerStats:
        copied = copy.copy(self)
        alive_s = (
            self.ended_at if self.ended_at is not None else now
        ) - self.started_at
        copied.idle_s = max(0.0, alive_s - self.busy_s)
        return copied


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
    workers: list[WorkerStats] = field(default_factory=list)
    slowest_tasks: list[tuple[float, str]] = field(default_factory=list)

    def count_failure(self, error: BaseException) -> None:
        """A task's future got ``error``: count it, by kind."""
        self.tasks_failed += 1
        if isinstance(error, WorkerCrashedError):
            self.tasks_crashed += 1
        elif isinstance(error, TaskTimeoutError):
            self.tasks_timed_out += 1

    def note_task_time(self, busy_s: float, describe: Callable[[], str]) -> None:
        """A task ran for ``busy_s``: kept (``describe()`` named) if it is
        among the slowest. Cheap for the others: one comparison."""
        slowest = self.slowest_tasks
        if len(slowest) >= SLOWEST_KEPT and busy_s <= slowest[-1][0]:
            return
        keys = [-seconds for seconds, _ in slowest]
        slowest.insert(bisect.bisect_right(keys, -busy_s), (busy_s, describe()))
        del slowest[SLOWEST_KEPT:]

    def worker_ended(self, worker: WorkerStats, because: str) -> None:
        worker.ended_because = because
        worker.ended_at = time.monotonic()
        ended = [w for w in self.workers if w.ended_at is not None]
        if len(ended) > ENDED_WORKERS_KEPT:
            self.workers.remove(ended[0])

    def snapshot(self) -> ExecutorStats:
        """A copy, so the caller's view does not change under them."""
        copied = copy.copy(self)
        now = time.monotonic()
        copied.workers = [worker.snapshot(now) for worker in list(self.workers)]
        copied.slowest_tasks = list(self.slowest_tasks)
        return copied

    def __str__(self) -> str:
        """A readable summary: tasks, workers (one line each), slowest tasks."""
        lines = [
            f"tasks: {self.tasks_submitted} submitted, {self.tasks_completed} "
            f"completed, {self.tasks_failed} failed ({self.tasks_crashed} crashed, "
            f"{self.tasks_timed_out} timed out), {self.tasks_cancelled} cancelled; "
            f"{self.tasks_retried} retried, {self.tasks_rebalanced} rebalanced",
            f"workers: {self.workers_started} started, {self.workers_reused} "
            f"adopted warm, {self.workers_replaced} replaced, "
            f"{self.workers_recycled} recycled, {self.workers_over_memory} over "
            f"memory, {self.workers_parked} parked",
        ]
        if self.workers:
            lines.append(
                f"  {'pid':>8} {'tasks':>7} {'busy s':>8} {'idle s':>8} "
                f"{'memory':>9} {'peak':>9}  started because / ended because"
            )
            for w in self.workers:
                ended = f" / {w.ended_because}" if w.ended_because else ""
                lines.append(
                    f"  {w.pid or '?':>8} {w.tasks:>7} {w.busy_s:>8.2f} "
                    f"{w.idle_s:>8.2f} {_size(w.memory):>9} "
                    f"{_size(w.peak_memory):>9}  {w.started_because}{ended}"
                )
        if self.slowest_tasks:
            lines.append("slowest tasks:")
            lines += [f"  {s:8.3f} s  {what}" for s, what in self.slowest_tasks]
        return "\n".join(lines)


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f} MiB"
