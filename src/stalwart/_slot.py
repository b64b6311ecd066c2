"""One worker process as the parent sees it: its life, its pipe, the calls it holds.

A worker's life is a place, not a set of flags::

    STARTING --READY--> RUNNING --task overdue--> KILLING --+
        |                  |  \\--retired, or shutdown--> STOPPING --+
        |                  |                                       +--> EXITED
        +------------------+------- the process ends --------------+

Only the dispatcher's I/O thread reads or writes a slot; the one exception is
``take_back()``, which a user thread's ``cancel()`` calls: it touches only the
claim table (locked) and the thread-safe ``taken_back`` queue.
"""

from __future__ import annotations

import collections
import enum
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from stalwart import _claims, _map, _wire
from stalwart._stats import WorkerStats

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from stalwart import _outofband
    from stalwart._memory import MemoryWatch
    from stalwart._pipes import WithFds


class WorkerState(enum.Enum):
    STARTING = "starting"  # initializer running; holds at most a reserved call
    RUNNING = "running"  # ready: idle or busy, by what it holds
    KILLING = "killing"  # its call ran past task_timeout; the kill is sent
    STOPPING = "stopping"  # asked to exit (retired, or the executor ends)
    EXITED = "exited"  # the process has ended; the slot is being cleared


_LEGAL_MOVES = {
    WorkerState.STARTING: {
        WorkerState.RUNNING,
        WorkerState.STOPPING,
        WorkerState.EXITED,
    },
    WorkerState.RUNNING: {
        WorkerState.KILLING,
        WorkerState.STOPPING,
        WorkerState.EXITED,
    },
    WorkerState.KILLING: {WorkerState.EXITED},
    WorkerState.STOPPING: {WorkerState.KILLING, WorkerState.EXITED},
    WorkerState.EXITED: set(),
}


class Task:
    """The parent's bookkeeping for one submitted call."""

    __slots__ = (
        "args",
        "attempts",
        "call",
        "claimed",
        "fn",
        "future",
        "id",
        "kwargs",
        "seq",
        "slot",
        "started",
        "timeout",
    )

    def __init__(
        self,
        task_id: int,
        future: Future[Any],
        call: bytes | _outofband.Packed,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self.id = task_id
        self.future = future
        # The call as submit() pickled it (its snapshot), kept until the
        # task ends: a call sent again (taken back, retried) sends the same.
        self.call: bytes | _outofband.Packed | None = call
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.attempts = 0  # how many times a worker died while running it
        self.claimed = False  # its future left PENDING through the executor
        self.started = False  # ... to RUNNING (False: it had been cancelled)
        self.timeout = timeout  # task_timeout, in seconds of running in a worker
        self.slot: WorkerSlot | None = None  # the worker holding it, if any
        self.seq = 0  # its sequence number in that worker (see _claims)

    def describe(self) -> str:
        return _map.describe(self.fn, self.args, self.kwargs)

    def take_back(self) -> bool:
        """``cancel()`` on its future: revoke it in its worker (see _claims)."""
        slot = self.slot
        if slot is None or not slot.claims.revoke(self.seq):
            return False
        slot.taken_back(self)
        return True


class WorkerSlot:
    """One worker process, its pipe, and the calls it holds, oldest first."""

    def __init__(
        self,
        process: BaseProcess,
        conn: Connection,
        claims: _claims.ClaimTable,
        max_tasks: int | None,
        taken_back: Callable[[Task], None],
    ) -> None:
        self.process = process
        self.conn = conn
        self.fd = conn.fileno()
        # The same pipe as a socket: descriptors travel with frames (SCM_RIGHTS).
        self.sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM, 0, os.dup(self.fd)
        )
        self.sock.setblocking(False)
        self.shared_sent: set[int] = set()  # shared() files this worker was sent
        self.sentinel: int = process.sentinel
        self.claims = claims
        self.taken_back = taken_back  # tells the dispatcher; thread-safe
        self.state = WorkerState.STARTING
        self.reader = _wire.FrameReader()
        self.outbox: collections.deque[memoryview | WithFds] = collections.deque()
        self.outbox_fds = 0  # chunks in the outbox that carry descriptors
        self.in_flight: collections.deque[Task] = collections.deque()
        self.next_seq = 1  # the sequence number of the next call sent
        self.acked_seq = 0  # the worker has read every call up to this one
        # Batches sent but not yet acknowledged: (last seq, bytes of calls).
        self.unacknowledged: collections.deque[tuple[int, int]] = collections.deque()
        self.unacknowledged_bytes = 0
        self.running: Task | None = None  # the call it runs, as far as we know
        self.running_since: float | None = None
        self.overdue: Task | None = None  # killed for running past its timeout
        self.window = 1  # see _scheduler: slow start
        self.idle_since = time.monotonic()
        self.tasks_left = max_tasks  # None: unlimited
        self.init_failure: tuple[str, str] | None = None
        self.main_failure: _wire.MainFailed | None = None  # importing __main__
        self.over_memory: int | None = None  # its RSS, when it left for max_memory
        self.mid_line: dict[int, bool] = {}  # its output stream ended mid-line
        self.figures = WorkerStats(process.pid, "start")  # for stats()
        self.memory: MemoryWatch | None = None  # its RSS, and why a SIGKILL came

    def move(self, state: WorkerState) -> None:
        if state not in _LEGAL_MOVES[self.state]:
            raise RuntimeError(
                f"worker {self.pid} cannot go from {self.state.value} to {state.value}"
            )
        self.state = state

    @property
    def pid(self) -> int | None:
        return self.process.pid

    # -- what the scheduler reads (_scheduler.WorkerLoad) -----------------------------

    @property
    def accepting(self) -> bool:
        return self.state is WorkerState.RUNNING

    @property
    def starting(self) -> bool:
        return self.state is WorkerState.STARTING

    @property
    def in_flight_count(self) -> int:
        return len(self.in_flight)

    @property
    def unstarted_count(self) -> int:
        in_flight = self.in_flight
        if not in_flight:
            return 0
        started = self.claims.started()
        if in_flight[0].seq > started:
            return len(in_flight)  # the common case: nothing started, or one
        return sum(1 for task in in_flight if task.seq > started)

    @property
    def capacity(self) -> int:
        """Calls that may still be sent before the claim ring could wrap onto a
        call the worker has not passed yet."""
        return _claims.RING - (self.next_seq - 1 - self.claims.started())

    # -- bookkeeping -------------------------------------------------------------------

    def has_read(self, task: Task) -> bool:
        return task.seq <= self.acked_seq

    def give_back(self, task: Task) -> None:
        """``task`` left this worker unstarted (taken back): its budget returns."""
        task.slot = None
        if self.tasks_left is not None:
            self.tasks_left += 1
        if not self.in_flight:
            self.idle_since = time.monotonic()
        self.note_running()

    def note_running(self) -> None:
        """The oldest call in flight runs from now, once the worker has read it
        (timeouts and stalls count from here)."""
        head = self.in_flight[0] if self.in_flight else None
        if head is None or not self.has_read(head):
            self.running, self.running_since = None, None
        elif self.running is not head:
            self.running, self.running_since = head, time.monotonic()

    def is_idle(self) -> bool:
        return self.state is WorkerState.RUNNING and not self.in_flight

    def can_park(self) -> bool:
        """Healthy, idle and with tasks to spare: fit for the warm set."""
        return (
            self.is_idle()
            and self.process.exitcode is None
            and not self.outbox
            and (self.tasks_left is None or self.tasks_left > 0)
        )
