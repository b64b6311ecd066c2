"""Dispatch policy: how many pending calls each worker gets, and what is taken back.

Pure: it reads each worker's load, the number of pending calls, the measured
task time and a clock, and returns decisions; the I/O thread carries them out.
So every rule here is unit-tested with a fake clock (tests/test_scheduler.py).

The rules, and the failure each prevents:

* **Batches sized by time.** A worker holds at most ``depth`` calls, enough for
  ``TARGET_BACKLOG_S`` of measured work: tiny tasks travel many to a message,
  long ones one at a time.
* **Slow start.** A worker's ``window`` grows by one per answer and starts over
  from one after it sat idle (TCP's slow start): a task time measured on earlier,
  shorter tasks cannot pile a burst of long ones onto one worker.
* **Idle workers first, then the least loaded**, the pending calls spread evenly.
* **Nothing queued behind a long task.** A worker whose running call has run
  ``STALLED_FACTOR`` times the average is sent nothing more.
* **Work stealing.** Calls sent ahead are revocable (``_claims``). A worker that
  is idle while another holds unstarted calls worth more than
  ``TARGET_BACKLOG_S`` takes half of them (all, if the other is stalled or still
  starting): an idle worker never waits while another has a backlog, whatever
  was learnt about task times before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

TARGET_BACKLOG_S = 0.005
"""Work queued at each worker, in seconds of measured task time. Tiny tasks then
travel in batches (fewer pipe messages), while a worker never holds more than a
few milliseconds of work that another worker could have run."""

STALLED_FACTOR = 4
"""A worker whose running call has run this many times the average task time
(and longer than TARGET_BACKLOG_S) is sent nothing more until it answers."""

IDLE_RESTART_S = 0.05
"""A worker idle for this long starts again from one call in flight: a pause
often means different work comes next."""

MAX_DEPTH = 256
"""Upper bound on calls in flight per worker, whatever the measured task time."""

MAX_UNACKNOWLEDGED_BYTES = 32 << 20
"""Pickled calls sent to one worker and not yet read by it. Past this, large
arguments wait in the pending queue rather than pile up in the pipes."""


class WorkerLoad(Protocol):
    """What the scheduler reads of one worker (``_slot.WorkerSlot``)."""

    @property
    def accepting(self) -> bool:
        """Ready and not being stopped or killed: may be sent calls."""

    @property
    def starting(self) -> bool:
        """Still running its initializer: holds at most one reserved call."""

    @property
    def in_flight_count(self) -> int:
        """Calls sent and neither answered nor taken back."""

    @property
    def unstarted_count(self) -> int:
        """Of those, the calls the worker has certainly not started."""

    @property
    def running_since(self) -> float | None:
        """When its oldest call started (as the parent saw it), or None."""

    @property
    def window(self) -> int: ...

    @property
    def idle_since(self) -> float: ...

    @property
    def tasks_left(self) -> int | None: ...

    @property
    def unacknowledged_bytes(self) -> int: ...

    @property
    def capacity(self) -> int:
        """Calls it may still be sent before its revocation ring would wrap."""


W = TypeVar("W", bound=WorkerLoad)


@dataclass
class Plan(Generic[W]):
    """The scheduler's decisions for one round."""

    sends: list[tuple[W, int, int]] = field(default_factory=list)
    """(worker, calls to send from the front of the pending queue, its window
    from now on)."""

    steals: list[tuple[W, int]] = field(default_factory=list)
    """(worker, calls to take back from the end of its backlog): they go back to
    the front of the pending queue, for the idle workers of the next round."""


def depth(avg_busy_s: float | None) -> int:
    """Calls in flight per worker for this average task time."""
    if avg_busy_s is None:
        return 1  # task length unknown: hold nothing back from other workers
    return max(1, min(MAX_DEPTH, int(TARGET_BACKLOG_S / (avg_busy_s + 1e-7))))


def stalled_after_s(avg_busy_s: float | None) -> float:
    """How long a call may run before its worker counts as stalled."""
    return max(TARGET_BACKLOG_S, STALLED_FACTOR * (avg_busy_s or 0.0))


def is_stalled(worker: WorkerLoad, avg_busy_s: float | None, now: float) -> bool:
    started = worker.running_since
    return started is not None and now - started > stalled_after_s(avg_busy_s)


def window_now(worker: WorkerLoad, now: float) -> int:
    """Its window, started over from one if it has sat idle a while."""
    if not worker.in_flight_count and now - worker.idle_since > IDLE_RESTART_S:
        return 1
    return worker.window


def room(worker: WorkerLoad, avg_busy_s: float | None, now: float) -> int:
    """How many more calls this worker may be sent now."""
    if worker.starting:
        # One call is reserved for a starting worker, read once its initializer
        # is done (the stdlib's call queue likewise holds calls for workers
        # still starting); another worker that goes idle may take it back.
        free = 0 if worker.in_flight_count else 1
    elif (
        not worker.accepting
        or worker.unacknowledged_bytes >= MAX_UNACKNOWLEDGED_BYTES
        or is_stalled(worker, avg_busy_s, now)
    ):
        return 0
    else:
        limit = min(depth(avg_busy_s), window_now(worker, now))
        free = limit - worker.in_flight_count
    if worker.tasks_left is not None:
        free = min(free, worker.tasks_left)
    return max(0, min(free, worker.capacity))


def plan(
    workers: list[W], pending: int, avg_busy_s: float | None, now: float
) -> Plan[W]:
    """Who gets how many of ``pending`` calls, and what idle workers take back."""
    result: Plan[W] = Plan()
    idle: list[tuple[W, int]] = []
    busy: list[tuple[W, int]] = []
    for worker in workers:
        free = room(worker, avg_busy_s, now)
        if free:
            (busy if worker.in_flight_count else idle).append((worker, free))
    # Idle workers first, then the least loaded: a call queued behind another
    # waits for it, so it goes where it will start soonest.
    busy.sort(key=lambda worker_free: worker_free[0].in_flight_count)
    left = pending
    idle_unserved = 0
    for group in (idle, busy):
        for index, (worker, free) in enumerate(group):
            share = -(-left // (len(group) - index))  # spread evenly: ceil
            count = min(free, share)
            if count:
                result.sends.append((worker, count, window_now(worker, now)))
                left -= count
            elif group is idle:
                idle_unserved += 1
    if idle_unserved:
        result.steals = _steals(workers, idle_unserved, avg_busy_s, now)
    return result


def _steals(
    workers: list[W], thieves: int, avg_busy_s: float | None, now: float
) -> list[tuple[W, int]]:
    """Backlogs worth taking from, most unstarted work first, one per idle worker."""
    victims: list[tuple[float, W, int]] = []
    for worker in workers:
        unstarted = worker.unstarted_count
        if not unstarted:
            continue
        if worker.starting or is_stalled(worker, avg_busy_s, now):
            victims.append((float("inf"), worker, unstarted))
            continue
        backlog_s = unstarted * (avg_busy_s or 0.0)
        if backlog_s > TARGET_BACKLOG_S:
            victims.append((backlog_s, worker, -(-unstarted // 2)))
    victims.sort(key=lambda victim: victim[0], reverse=True)
    return [(worker, count) for _, worker, count in victims[:thieves]]
