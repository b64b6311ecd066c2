"""ProcessPoolExecutor: a process pool that owns its dispatch, so it never breaks.

Data flow::

    submit(fn, *args)                                       caller's thread
      | _pickling.serialize_call(): pickled once, here; PicklingError raised here
      | (past QUEUED_CALL_BYTES queued: only checked here, pickled when sent)
      v
    _Task(id, future, call bytes) --> pending deque ---(wake-up pipe)---+
                                                                         |
    I/O thread "stalwart-dispatcher" <-----------------------------------+
      | one selector over: the wake-up pipe, every worker's pipe (read, and
      | write while its outbox is non-empty), every worker's process sentinel
      | dispatch: idle workers first; each gets up to min(depth, its window)
      | tasks in one frame, and nothing queues behind a task running long
      v
    _WorkerSlot: in_flight deque ==pipe==> worker: run in order, one reply each
      ^                                                        |
      +====================== replies, parsed in bulk <========+
      | future.set_result() / set_exception(exc from worker traceback)
      v
    Future resolved: as_completed, wait, asyncio all see it

Because every worker has its own pipe and answers its tasks in order, the parent
always knows which tasks a worker holds and which one it is running: the oldest
unanswered one. That is what a shared-queue pool (the stdlib's, loky's) cannot
know, and why one dead worker breaks their whole pool.

How workers end, and what follows:

* Death while running a task (segfault, ``os._exit``, SIGKILL/OOM, abort): the
  sentinel fires; whatever the worker sent before dying is read first; the oldest
  unanswered task fails with ``WorkerCrashedError`` (or is re-run, ``retries``);
  the rest of its batch never started and goes back to the front of the pending
  queue; a replacement worker starts.
* Death while idle: replaced, silently.
* ``task_timeout``: the parent knows when each task started (the worker reads a
  batch only after answering the previous one), so once the running task is
  overdue the I/O thread kills the worker's process tree; the task fails with
  ``TaskTimeoutError``, the rest of its batch goes back to the pending queue,
  and a replacement starts.
* ``max_tasks_per_child``: a worker is sent exactly that many tasks, exits by
  itself after answering them, and is replaced (re-running the initializer).
* Initializer raised: the worker reports INIT_FAILED and exits; it is replaced;
  after ``MAX_CONSECUTIVE_START_FAILURES`` failed starts in a row no more are
  started, the executor is broken and every waiting future fails with
  ``InitializerError``.
* Shutdown: once nothing is pending or in flight the pipes are closed, workers
  exit on EOF, and stragglers are killed after ``WORKER_EXIT_GRACE_S``.
* Parent death: workers notice (``_worker``'s watchdog) and exit on their own.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import pickle
import selectors
import sys
import threading
import time
import weakref
from concurrent.futures import CancelledError, Executor, Future
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from multiprocessing import process as mp_process
from multiprocessing.connection import wait as wait_for_sentinels
from typing import TYPE_CHECKING, Any, TypeVar, cast

from stalwart import _map, _pickling, _reuse, _spawn, _wire
from stalwart._settings import PoolSettings
from stalwart._stats import ExecutorStats
from stalwart.errors import (
    InitializerError,
    PicklingError,
    TaskTimeoutError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess
    from types import TracebackType

    from typing_extensions import ParamSpec, Self

    from stalwart._worker import WorkerConfig

    P = ParamSpec("P")

R = TypeVar("R")

logger = logging.getLogger("stalwart")

MAX_CONSECUTIVE_START_FAILURES = 3
"""Failed worker starts in a row after which the executor gives up: enough to ride
out a transient failure, few enough that a broken initializer is no fork storm."""

TARGET_BACKLOG_S = 0.005
"""Work queued at each worker, in seconds of measured task time. Tiny tasks then
travel in batches (fewer pipe messages), while a worker never hoards more than a
few milliseconds of work that another worker could have run."""

STALLED_FACTOR = 4
"""A worker whose running task has run this many times the average task time
(and longer than TARGET_BACKLOG_S) is sent nothing more until it answers."""

IDLE_RESTART_S = 0.05
"""A worker idle for this long starts again from one task in flight (see
_WorkerSlot.window): a pause often means different work comes next."""

MAX_DEPTH = 256
"""Upper bound on tasks in flight per worker, whatever the measured task time."""

QUEUED_CALL_BYTES = 64 << 20
"""Pickled calls the pending queue keeps, in all. Once it holds this much, a
call is still checked in submit() (pickled into a sink that keeps nothing, so
the PicklingError comes from submit() as always) but pickled for real only when
a worker has room: 2,000 queued 1 MiB arguments would otherwise hold 2 GB."""

MAX_UNACKNOWLEDGED_BYTES = 32 << 20
"""Pickled calls sent to one worker and not yet read by it. Past this, large
arguments wait in the pending queue rather than pile up in the pipes."""

WORKER_EXIT_GRACE_S = 5.0
"""How long shutdown lets a worker finish exiting on its own before killing it."""

_LIVENESS_CHECK_S = 1.0
"""When the I/O thread has had nothing to do for this long, it asks the OS
(waitpid) whether any worker died unnoticed (see _reap_silent_deaths)."""

_TASK_REPLIES = frozenset({_wire.RESULT, _wire.RESULT_BYTES, _wire.ERROR})
_READ_SIZE = 1 << 20
_HIGHEST = pickle.HIGHEST_PROTOCOL


class _Task:
    """The parent's bookkeeping for one submitted call."""

    __slots__ = (
        "args",
        "attempts",
        "call",
        "claimed",
        "fn",
        "future",
        "held",
        "id",
        "kwargs",
        "started",
        "timeout",
    )

    def __init__(
        self,
        task_id: int,
        future: Future[Any],
        call: bytes | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self.id = task_id
        self.future = future
        self.call: bytes | None = call  # dropped once a worker has read it
        self.held = 0  # bytes of `call` counted against QUEUED_CALL_BYTES
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.attempts = 0  # how many times a worker died while running it
        self.started = False  # future moved to RUNNING (cannot be cancelled)
        self.claimed = False  # set_running_or_notify_cancel() was called
        self.timeout = timeout  # task_timeout, in seconds of running in a worker

    def describe(self) -> str:
        return _map.describe(self.fn, self.args, self.kwargs)

    def claim(self) -> bool:
        """Move the future to RUNNING; False if it was cancelled. Idempotent.

        Every task leaves the executor through here, run or not: ``wait()`` and
        ``as_completed()`` count a cancelled future as done only once its
        executor has called ``set_running_or_notify_cancel()`` on it, so a
        cancelled task dropped without this call would hang them forever.
        """
        if not self.claimed:
            self.claimed = True
            self.started = self.future.set_running_or_notify_cancel()
        return self.started


class _WorkerSlot:
    """One worker process, its pipe, and the tasks it holds, oldest first."""

    __slots__ = (
        "conn",
        "fd",
        "idle_since",
        "in_flight",
        "init_failure",
        "outbox",
        "process",
        "reader",
        "ready",
        "running_since",
        "sentinel",
        "tasks_left",
        "timed_out",
        "unacknowledged",
        "unacknowledged_bytes",
        "unacknowledged_tasks",
        "window",
    )

    def __init__(
        self, process: BaseProcess, conn: Connection, max_tasks: int | None
    ) -> None:
        self.process = process
        self.conn = conn
        self.fd = conn.fileno()
        self.sentinel: int = process.sentinel
        self.reader = _wire.FrameReader()
        self.outbox: collections.deque[memoryview] = collections.deque()
        self.in_flight: collections.deque[_Task] = collections.deque()
        # Batches sent but not yet acknowledged (RECEIVED): their tasks are in
        # `in_flight`, but the worker has not read them.
        self.unacknowledged: collections.deque[list[_Task]] = collections.deque()
        self.unacknowledged_bytes = 0
        self.unacknowledged_tasks = 0
        # When the oldest task in flight started running (monotonic), or None if
        # it has not (the worker has not read it yet). The worker reads a batch
        # only after answering the previous one, so a task starts when the reply
        # before it, or the acknowledgement of its batch, arrives.
        self.running_since: float | None = None
        self.timed_out: _Task | None = None  # killed for running past its timeout
        self.ready = False  # initializer done; may receive tasks
        # Tasks it may hold, however short the measured task time: grows by one
        # per answer (doubling per round trip) and starts again from one after
        # the worker sat idle, so a task time measured on earlier, shorter tasks
        # cannot pile a burst of long ones onto one worker (a task sent is never
        # taken back). TCP's slow start, for the same reason.
        self.window = 1
        self.idle_since = time.monotonic()
        self.tasks_left = max_tasks  # None: unlimited
        self.init_failure: tuple[str, str] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def room(self, depth: int, stalled_after_s: float, now: float) -> int:
        """How many more tasks this worker may be sent now."""
        if self.timed_out is not None:
            return 0  # being killed
        if not self.ready:
            # One task is reserved for a starting worker, which reads it once its
            # initializer is done (the stdlib's call queue likewise holds tasks
            # for workers still starting): it counts as running, so
            # shutdown(cancel_futures=True) right after submit() spares it.
            room = 0 if self.in_flight else 1
        elif self.unacknowledged_bytes >= MAX_UNACKNOWLEDGED_BYTES or self.is_stalled(
            stalled_after_s, now
        ):
            return 0
        else:
            if not self.in_flight and now - self.idle_since > IDLE_RESTART_S:
                self.window = 1
            room = min(depth, self.window) - len(self.in_flight)
        if self.tasks_left is not None:
            room = min(room, self.tasks_left)
        return max(0, room)

    def can_park(self) -> bool:
        """Healthy, idle and with tasks to spare: fit for the warm set."""
        return (
            self.ready
            and self.process.exitcode is None
            and not self.in_flight
            and not self.outbox
            and self.timed_out is None
            and (self.tasks_left is None or self.tasks_left > 0)
        )

    def is_stalled(self, stalled_after_s: float, now: float) -> bool:
        """Its running task has run longer than a whole backlog's worth of work.

        Whatever is queued behind a task waits for all of it, and a task sent
        cannot be taken back: a worker busy with a long (or stuck) task gets
        nothing more, so other workers run what it would have hoarded.
        """
        started = self.running_since
        return started is not None and now - started > stalled_after_s


class _Dispatcher:
    """Owns the workers, the pending queue and the I/O thread of one executor.

    Kept apart from the executor object so the I/O thread holds no reference to
    it: an executor dropped without ``shutdown()`` is collected, which triggers a
    graceful shutdown here (as the stdlib does).
    """

    def __init__(
        self,
        max_workers: int,
        context: BaseContext,
        worker_config: WorkerConfig,
        retries: int,
        reuse: _reuse.ReusePolicy | None,
    ) -> None:
        self.max_workers = max_workers
        self.context = context
        self.worker_config = worker_config
        self.retries = retries
        self.by_value = worker_config.by_value
        self.reuse = reuse
        self.stats = ExecutorStats()
        self.deaths_to_replace = 0  # workers that died and were not replaced yet

        self.pending: collections.deque[_Task] = collections.deque()
        # Bytes of pickled calls held by pending tasks: added by submit() under
        # the lock, released by the I/O thread; one writer each, no lost update.
        self.call_bytes_added = 0
        self.call_bytes_released = 0
        self.slots: list[_WorkerSlot] = []
        self._slot_by_fd: dict[int, _WorkerSlot] = {}  # pipe fd and sentinel -> slot
        self.workers_wanted = 0  # grows on demand up to max_workers; deaths replaced
        self.consecutive_start_failures = 0
        self.avg_busy_s: float | None = None
        self.timeouts_in_use = False  # some task has a task_timeout: watch the clock

        # Guards the shutdown/broken flags against submit(): once shutdown() has
        # returned, no task can slip into `pending` behind the I/O thread's back.
        self.lock = threading.Lock()
        self.shutdown_requested = False
        self.cancel_pending = False  # shutdown(cancel_futures=True) asked for it
        self.cancel_requested = threading.Event()  # ... and the I/O thread did it
        self.finished = threading.Event()  # the I/O thread is done with us
        self.abort_reason: str | None = None
        self.broken: BrokenProcessPool | None = None

        self.ids = itertools.count()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.wake_armed = False
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._on_wake)
        self.thread: threading.Thread | None = None

    # -- called from user threads -------------------------------------------

    def enqueue(self, task: _Task) -> None:
        """Queue a task (caller holds ``self.lock``) and wake the I/O thread."""
        self.ensure_thread()
        if task.timeout is not None:
            self.timeouts_in_use = True
        self.stats.tasks_submitted += 1
        self.pending.append(task)
        self.wake()

    def ensure_thread(self) -> None:
        """Start the I/O thread, on the first task or on adopting warm workers.

        A ``reuse=True`` executor takes over an idle I/O thread that an earlier
        one left (see _io_thread_main), if there is one, rather than starting one.
        """
        if self.thread is not None:
            return
        if self.reuse is not None:
            for idle in _reuse.THREADS.adopt(_IDLE_IO_THREAD, 1):
                self.thread = idle.thread
                _live_dispatchers.add(self)
                idle.hand_over(self)
                return
        thread = threading.Thread(
            target=_io_thread_main,
            args=([self],),
            name="stalwart-dispatcher",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # interpreter finalizing, or no threads left
            raise RuntimeError(
                f"cannot schedule new futures: stalwart's dispatcher thread "
                f"could not start ({exc})"
            ) from exc
        self.thread = thread
        _live_dispatchers.add(self)

    def adopt(self, parked: list[_reuse.ParkedProcess]) -> None:
        """Take over warm workers parked by an earlier executor (before any task)."""
        for worker in parked:
            slot = _WorkerSlot(worker.process, worker.conn, worker.tasks_left)
            slot.ready = True  # its initializer ran when it first started
            # Carry on from what its last executor learnt (the window starts
            # over by itself if the worker sat idle for long).
            slot.window, slot.idle_since = worker.window, worker.idle_since
            if self.avg_busy_s is None:
                self.avg_busy_s = worker.avg_busy_s
            self._add_slot(slot)
            logger.debug("adopted warm worker %s", slot.pid)
        self.stats.workers_reused += len(parked)
        self.workers_wanted = len(self.slots)
        if parked:
            # Their deaths must be noticed (and replaced) even before any submit().
            self.ensure_thread()

    def wake(self) -> None:
        # One byte per wake-up at most: `wake_armed` stays True until the I/O
        # thread has drained the pipe, and it drains before it looks at `pending`,
        # so a task appended after that look always finds the flag cleared.
        if not self.wake_armed:
            self.wake_armed = True
            # Full pipe: already awake. Closed: the thread has stopped.
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"\0")

    def request_shutdown(self, cancel_futures: bool, abort_reason: str | None) -> None:
        with self.lock:
            self.shutdown_requested = True
            if abort_reason is not None:
                self.abort_reason = abort_reason
            thread = self.thread
            cancel_here = thread is None or thread is threading.current_thread()
            if (cancel_futures or abort_reason is not None) and cancel_here:
                self._cancel_pending()
            elif cancel_futures:
                self.cancel_requested.clear()
                self.cancel_pending = True
            self.wake()
        if cancel_futures and not cancel_here:
            # The I/O thread first hands idle workers their next tasks, as the
            # stdlib's call queue would have, then cancels the rest; shutdown()
            # returns only once those futures are cancelled.
            assert thread is not None
            while not self.cancel_requested.wait(0.1) and not self.finished.is_set():
                pass

    def _cancel_pending(self) -> None:
        for task in list(self.pending):
            if not task.started:
                task.future.cancel()

    def join(self) -> None:
        """Wait until the I/O thread is done with this executor (workers stopped
        or parked); the thread itself may live on, idle, for the next one."""
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            self.finished.wait()

    # -- the I/O thread -------------------------------------------------------

    def run(self) -> bool:
        """The I/O thread's work for this executor; True if it ended as it should."""
        ended_well = False
        try:
            self._loop()
            ended_well = True
        except BaseException as exc:
            logger.exception("stalwart's dispatcher thread failed")
            error = BrokenProcessPool(
                f"stalwart's dispatcher thread failed with {exc!r}; this is a bug in "
                "stalwart, please report it with the traceback logged by 'stalwart'. "
                "The executor is broken: create a new one."
            )
            error.__cause__ = exc
            self._break(error)
        finally:
            try:
                self._park_or_stop_workers(may_park=ended_well)
                self._close()
            except BaseException:
                logger.exception("stalwart's dispatcher thread failed to stop")
                ended_well = False
                _kill_all(self.slots)
            finally:
                self.cancel_requested.set()  # never leave shutdown() waiting
                self.finished.set()  # nor join()
        return ended_well

    def _loop(self) -> None:
        # The thread starts with a wake-up pending (submit() queued a task), so
        # the first select() returns at once.
        while True:
            wait_s = _LIVENESS_CHECK_S
            if self.timeouts_in_use:
                wait_s = min(wait_s, self._kill_overdue_tasks())
            events = self.selector.select(wait_s)
            for key, mask in events:
                key.data(key, mask)
            if not events:
                self._reap_silent_deaths()
            if self.abort_reason is not None:
                self._abort_in_flight()
            # Before dispatch: a starting worker is given a reserved task, and
            # a cancel pass below must not run before the workers exist.
            self._start_workers_as_needed()
            if self._is_broken():
                return
            self._dispatch()
            if self.cancel_pending:
                self.cancel_pending = False
                self._cancel_pending()
                self.cancel_requested.set()
            if self.shutdown_requested and self._is_idle():
                return

    def _is_broken(self) -> bool:
        return self.broken is not None

    def _is_idle(self) -> bool:
        if any(slot.in_flight for slot in self.slots):
            return False
        while self.pending and self.pending[0].future.cancelled():
            self._claim(self._unqueue(self.pending.popleft()))
        return not self.pending

    def _on_wake(self, key: selectors.SelectorKey, mask: int) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self.wake_armed = False

    # -- starting workers -------------------------------------------------------

    def _start_workers_as_needed(self) -> None:
        if self.shutdown_requested and not self.pending:
            return
        # Starting workers already hold a reserved task each (see _WorkerSlot.room), so
        # what is still pending wants workers of its own.
        waiting = len(self.pending)
        if waiting and not any(not s.in_flight for s in self.slots):
            self.workers_wanted = min(
                self.max_workers, max(self.workers_wanted, len(self.slots) + waiting)
            )
        try:
            while len(self.slots) < self.workers_wanted:
                self._start_worker()
        except Exception as exc:  # noqa: BLE001 - reported on every future
            error = BrokenProcessPool(
                f"could not start a worker process: {exc!r}. The executor is "
                "broken; every waiting future fails with this error."
            )
            error.__cause__ = exc
            self._break(error)

    def _start_worker(self) -> None:
        parent_end, child_end = self.context.Pipe(duplex=True)
        try:
            process = _spawn.start_worker_process(
                self.context, child_end, self.worker_config
            )
        finally:
            child_end.close()  # the child has its copy; ours would hide its EOF
        os.set_blocking(parent_end.fileno(), False)
        self._add_slot(_WorkerSlot(process, parent_end, self.worker_config.max_tasks))
        self.stats.workers_started += 1
        if self.deaths_to_replace:
            self.deaths_to_replace -= 1
            self.stats.workers_replaced += 1
        logger.debug("started worker %s", process.pid)

    def _add_slot(self, slot: _WorkerSlot) -> None:
        self.slots.append(slot)
        self.selector.register(slot.fd, selectors.EVENT_READ, self._on_pipe)
        self.selector.register(slot.sentinel, selectors.EVENT_READ, self._on_sentinel)
        self._slot_by_fd[slot.fd] = slot
        self._slot_by_fd[slot.sentinel] = slot

    # -- dispatch ---------------------------------------------------------------

    def _depth(self) -> int:
        if self.avg_busy_s is None:
            return 1  # task length unknown: hold nothing back from other workers
        return max(1, min(MAX_DEPTH, int(TARGET_BACKLOG_S / (self.avg_busy_s + 1e-7))))

    def _dispatch(self) -> None:
        pending = self.pending
        if not pending:
            return
        depth = self._depth()
        stalled_after_s = max(TARGET_BACKLOG_S, STALLED_FACTOR * (self.avg_busy_s or 0))
        now = time.monotonic()
        idle: list[tuple[_WorkerSlot, int]] = []
        busy: list[tuple[_WorkerSlot, int]] = []
        for slot in self.slots:
            room = slot.room(depth, stalled_after_s, now)
            if room:
                (busy if slot.in_flight else idle).append((slot, room))
        # Idle workers first, then the least loaded: a task queued behind
        # another waits for it, so it goes where it will start soonest.
        busy.sort(key=lambda slot_room: len(slot_room[0].in_flight))
        for group in (idle, busy):
            for index, (slot, room) in enumerate(group):
                # Spread evenly over this group's workers: ceil division.
                share = -(-len(pending) // (len(group) - index))
                self._fill(slot, min(room, share))
                if not pending:
                    return

    def queued_call_bytes(self) -> int:
        """Bytes of pickled calls held by the pending queue (a moment ago)."""
        return self.call_bytes_added - self.call_bytes_released

    def _unqueue(self, task: _Task) -> _Task:
        """``task`` leaves the pending queue: its held bytes no longer count."""
        self.call_bytes_released += task.held
        task.held = 0
        return task

    def _fill(self, slot: _WorkerSlot, room: int) -> None:
        """Send `slot` up to `room` tasks from the front of the pending queue."""
        pending = self.pending
        batch: list[_Task] = []
        while room and pending:
            task = self._unqueue(pending.popleft())
            if not self._claim(task):
                continue  # cancelled while queued
            if task.call is None and not self._serialize_again(task):
                continue
            batch.append(task)
            room -= 1
        if batch:
            self._send_batch(slot, batch)

    def _send_batch(self, slot: _WorkerSlot, batch: list[_Task]) -> None:
        calls = [cast("bytes", task.call) for task in batch]
        chunks = _wire.encode_batch([task.id for task in batch], calls)
        slot.in_flight.extend(batch)
        slot.unacknowledged.append(batch)
        slot.unacknowledged_bytes += sum(map(len, calls))
        slot.unacknowledged_tasks += len(batch)
        if slot.tasks_left is not None:
            slot.tasks_left -= len(batch)
        self._send(slot, chunks)

    def _serialize_again(self, task: _Task) -> bool:
        """Re-pickle a task re-sent after its worker died (its bytes were dropped
        when the worker read them); False if that fails now, and the task failed."""
        try:
            task.call = _pickling.serialize_call(
                task.fn, task.args, task.kwargs, by_value=self.by_value
            )
        except PicklingError as exc:  # an argument was changed since submit()
            self._fail(task, exc)
            return False
        return True

    def _send(self, slot: _WorkerSlot, chunks: list[bytes]) -> None:
        was_empty = not slot.outbox
        slot.outbox.extend(map(memoryview, chunks))
        if was_empty:
            self._flush(slot)
            if slot.outbox:
                self.selector.modify(
                    slot.fd, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_pipe
                )

    def _flush(self, slot: _WorkerSlot) -> None:
        outbox = slot.outbox
        while outbox:
            try:
                written = os.writev(slot.fd, list(itertools.islice(outbox, 64)))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                outbox.clear()  # the worker is gone; its sentinel will tell us how
                return
            while written:
                head = outbox[0]
                if written >= len(head):
                    written -= len(head)
                    outbox.popleft()
                else:
                    outbox[0] = head[written:]
                    written = 0

    # -- replies ----------------------------------------------------------------

    def _on_pipe(self, key: selectors.SelectorKey, mask: int) -> None:
        slot = self._slot_by_fd.get(key.fd)
        if slot is None:
            return  # its sentinel fired earlier in the same select(): already gone
        if mask & selectors.EVENT_WRITE:
            self._flush(slot)
            if not slot.outbox:
                self.selector.modify(slot.fd, selectors.EVENT_READ, self._on_pipe)
        if mask & selectors.EVENT_READ:
            self._read(slot, until_eof=False)

    def _read(self, slot: _WorkerSlot, until_eof: bool) -> None:
        while True:
            try:
                data = os.read(slot.fd, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                # EOF: the worker is exiting; its sentinel decides what happened.
                if self.selector.get_map().get(slot.fd) is not None:
                    self.selector.unregister(slot.fd)
                return
            for frame in slot.reader.feed(data):
                try:
                    reply = pickle.loads(frame)
                except BaseException as exc:  # noqa: BLE001, PERF203 - fails that task only
                    self._on_unreadable_reply(slot, exc)
                else:
                    self._on_reply(slot, reply)
            if not until_eof:
                return

    def _on_reply(self, slot: _WorkerSlot, reply: tuple[Any, ...]) -> None:
        kind = reply[0]
        if kind in _TASK_REPLIES:
            task = self._answered(slot, reply[1], reply[-1])  # busy_s comes last
            try:
                succeeded, value = _wire.outcome(reply)
            except BaseException as exc:  # noqa: BLE001 - fails that task only
                self._fail_unreadable_result(slot, task, exc)
            else:
                if succeeded:
                    self._succeed(task, value)
                else:
                    self._fail(task, value)
        elif kind == _wire.RECEIVED:
            # The worker holds these calls now: drop our copies, so the parent
            # does not keep every large argument until its result comes back.
            batch = slot.unacknowledged.popleft()
            slot.unacknowledged_tasks -= len(batch)
            for task in batch:
                slot.unacknowledged_bytes -= len(task.call or b"")
                task.call = None
            slot.running_since = time.monotonic()  # its first task starts now
        elif kind == _wire.READY:
            slot.ready = True
            self.consecutive_start_failures = 0
        elif kind == _wire.INIT_FAILED:
            slot.init_failure = (reply[1], reply[2])

    def _on_unreadable_reply(self, slot: _WorkerSlot, exc: BaseException) -> None:
        # Only a result or an exception can fail to unpickle (a class the parent
        # cannot import, a __reduce__ that raises), and a worker answers in
        # order: this reply belongs to the oldest task in flight.
        self._fail_unreadable_result(slot, self._next_task_starts(slot), exc)

    def _fail_unreadable_result(
        self, slot: _WorkerSlot, task: _Task, exc: BaseException
    ) -> None:
        error = BrokenProcessPool(
            f"the result of {task.describe()} came back from worker {slot.pid} but "
            f"could not be unpickled in the parent: {exc!r}. Return types that the "
            "parent process can import and rebuild; the executor carries on."
        )
        error.__cause__ = exc
        self._fail(task, error)

    def _answered(self, slot: _WorkerSlot, task_id: int, busy_s: float) -> _Task:
        task = self._next_task_starts(slot)
        if task.id != task_id:  # cannot happen: a worker answers in order
            raise RuntimeError(
                f"worker {slot.pid} answered task {task_id}, expected {task.id}"
            )
        avg = self.avg_busy_s
        self.avg_busy_s = busy_s if avg is None else 0.9 * avg + 0.1 * busy_s
        return task

    def _next_task_starts(self, slot: _WorkerSlot) -> _Task:
        """The worker answered its oldest task: pop it; the next one starts now,
        if the worker has already read it (timeouts and stalls count from here)."""
        task = slot.in_flight.popleft()
        slot.window = min(MAX_DEPTH, slot.window + 1)
        if not slot.in_flight:
            slot.idle_since = time.monotonic()
        has_next = len(slot.in_flight) > slot.unacknowledged_tasks
        slot.running_since = time.monotonic() if has_next else None
        return task

    # -- outcomes (counted for stats()) -------------------------------------------

    def _succeed(self, task: _Task, value: Any) -> None:
        self.stats.tasks_completed += 1
        task.future.set_result(value)

    def _fail(self, task: _Task, error: BaseException) -> None:
        self.stats.count_failure(error)
        task.future.set_exception(error)

    def _claim(self, task: _Task) -> bool:
        """``task.claim()``, counting a cancelled task once."""
        if task.claimed:
            return task.started
        if not task.claim():
            self.stats.tasks_cancelled += 1
            return False
        return True

    # -- task timeouts ------------------------------------------------------------

    def _kill_overdue_tasks(self) -> float:
        """Kill each worker whose running task is past its timeout.

        Returns the seconds until the next running task's deadline, for the I/O
        thread's select(). The killed worker's sentinel then fires, and
        _on_worker_exit fails the task with TaskTimeoutError.
        """
        next_deadline_s = _LIVENESS_CHECK_S
        now = time.monotonic()
        for slot in list(self.slots):
            started = slot.running_since
            if started is None or slot.timed_out is not None or not slot.in_flight:
                continue
            task = slot.in_flight[0]
            if task.timeout is None:
                continue
            left_s = started + task.timeout - now
            if left_s > 0:
                next_deadline_s = min(next_deadline_s, left_s)
                continue
            # A reply already in the pipe wins: the task finished in time. A
            # worker that has died already is a crash, for its sentinel to report.
            self._read(slot, until_eof=True)
            if slot.process.exitcode is not None:
                continue
            if slot.in_flight and slot.in_flight[0] is task:
                slot.timed_out = task
                _spawn.kill_worker_tree(slot.process)
            elif slot.running_since is not None:
                next_deadline_s = 0.0  # the next task started: look again at once
        return next_deadline_s

    # -- worker death -----------------------------------------------------------

    def _on_sentinel(self, key: selectors.SelectorKey, mask: int) -> None:
        slot = self._slot_by_fd.get(key.fd)
        if slot is not None:
            self._on_worker_exit(slot)

    def _reap_silent_deaths(self) -> None:
        """Find workers that died without their sentinel firing.

        Under the plain ``fork`` start method a worker forked by another thread
        (another executor's) can inherit a copy of this worker's sentinel pipe,
        so the pipe only closes when that other process exits; ``waitpid``
        (``exitcode``) is authoritative whatever file descriptors leaked.
        """
        for slot in list(self.slots):
            if slot.process.exitcode is not None:
                self._on_worker_exit(slot)

    def _on_worker_exit(self, slot: _WorkerSlot) -> None:
        if self.selector.get_map().get(slot.fd) is not None:
            self._read(slot, until_eof=True)  # what it sent before dying counts
        self._forget_slot(slot)
        slot.process.join()
        exitcode = slot.process.exitcode
        recycled = slot.tasks_left == 0 and exitcode == 0 and not slot.in_flight
        if recycled:
            self.stats.workers_recycled += 1
        else:
            self.deaths_to_replace += 1
        if slot.timed_out is not None:
            self._on_timeout(slot, slot.timed_out)
        elif slot.init_failure is not None or not slot.ready:
            # Its reserved task was never read: first in line for the next worker.
            self._requeue_unstarted(slot)
            self._on_start_failure(slot, exitcode)
        elif len(slot.in_flight) > slot.unacknowledged_tasks:
            self._on_crash(slot, exitcode)
        else:
            # Died idle (perhaps just as we sent it work it never read): replace
            # it, and its unread tasks go to other workers, blameless.
            self._requeue_unstarted(slot)
            logger.debug("worker %s exited (exit code %s)", slot.pid, exitcode)

    def _requeue_unstarted(self, slot: _WorkerSlot) -> None:
        """Put a dead worker's remaining tasks back at the front of the queue, in
        order: it never started them (or, after a timeout, cut one short)."""
        self.pending.extendleft(reversed(slot.in_flight))
        slot.in_flight.clear()

    def _forget_slot(self, slot: _WorkerSlot) -> None:
        self._unwatch(slot)
        self.slots.remove(slot)
        slot.conn.close()

    def _unwatch(self, slot: _WorkerSlot) -> None:
        """Stop watching a worker's pipe and sentinel."""
        for fd in (slot.fd, slot.sentinel):
            if self.selector.get_map().get(fd) is not None:
                self.selector.unregister(fd)
            self._slot_by_fd.pop(fd, None)

    def _on_crash(self, slot: _WorkerSlot, exitcode: int | None) -> None:
        crashed = slot.in_flight.popleft()
        crashed.attempts += 1
        # The rest of its batch never started: first in line for other workers.
        self._requeue_unstarted(slot)
        signal_name = _spawn.signal_name(exitcode)
        logger.warning(
            "worker %s died (%s) while running %s; replacing it",
            slot.pid,
            signal_name or f"exit code {exitcode}",
            crashed.describe(),
        )
        if crashed.attempts <= self.retries:
            self.stats.tasks_retried += 1
            self.pending.appendleft(crashed)
            return
        self._fail(
            crashed,
            WorkerCrashedError(
                _crash_message(slot.pid, exitcode, signal_name, crashed),
                pid=slot.pid,
                exitcode=exitcode,
                signal=signal_name,
                task=crashed.describe(),
                attempts=crashed.attempts,
            ),
        )

    def _on_timeout(self, slot: _WorkerSlot, overdue: _Task) -> None:
        """The worker was killed because `overdue` ran past its timeout."""
        if slot.in_flight and slot.in_flight[0] is overdue:
            slot.in_flight.popleft()
            message = (
                f"task {overdue.id}, {overdue.describe()}, ran longer than its "
                f"task_timeout of {overdue.timeout:g} s, so its worker {slot.pid} was "
                "killed, together with any processes the task started. Only this "
                "task failed; a replacement worker was started. Raise task_timeout "
                "if the task needs more time."
            )
            logger.warning("%s", message)
            self._fail(
                overdue,
                TaskTimeoutError(
                    message,
                    timeout=overdue.timeout,
                    pid=slot.pid,
                    task=overdue.describe(),
                ),
            )
        # The tasks behind it never started (or, if the overdue one answered at
        # the last instant, the next one was cut short): they run elsewhere.
        self._requeue_unstarted(slot)

    def _on_start_failure(self, slot: _WorkerSlot, exitcode: int | None) -> None:
        self.consecutive_start_failures += 1
        failures = self.consecutive_start_failures
        given_up = failures >= MAX_CONSECUTIVE_START_FAILURES
        if slot.init_failure is not None:
            summary, remote_traceback = slot.init_failure
            error: BrokenProcessPool = InitializerError(
                f"the initializer raised {summary} in worker {slot.pid}"
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
        else:
            error = WorkerCrashedError(
                f"worker {slot.pid} exited before it was ready "
                f"({_exit_description(exitcode)}); {failures} in a row"
                + (
                    ", so no more are started and the executor is broken. "
                    "Look for the worker's traceback on stderr. A common cause: the "
                    "main script starts an executor at import time; put that code "
                    "under `if __name__ == '__main__':`, since workers import the "
                    "main module."
                    if given_up
                    else "; starting a replacement."
                ),
                pid=slot.pid,
                exitcode=exitcode,
                signal=_spawn.signal_name(exitcode),
            )
        logger.warning("%s", error)
        if given_up:
            self._break(error)

    # -- ending ------------------------------------------------------------------

    def _break(self, error: BrokenProcessPool) -> None:
        """Fail every unresolved future with `error` and refuse new work."""
        with self.lock:
            self.broken = error
            self.shutdown_requested = True
            tasks = [self._unqueue(task) for task in self.pending]
            self.pending.clear()
        for slot in self.slots:
            tasks.extend(slot.in_flight)
            slot.in_flight.clear()
        for task in tasks:
            if self._claim(task):
                self._fail(task, error)

    def _abort_in_flight(self) -> None:
        """Ctrl-C or interpreter exit on an interrupt: kill workers, fail their tasks."""
        reason = self.abort_reason
        for slot in list(self.slots):
            _spawn.kill_worker_tree(slot.process)
        for slot in self.slots:
            for task in slot.in_flight:
                self._fail(
                    task,
                    CancelledError(
                        f"{task.describe()} was interrupted ({reason}): its worker "
                        "was terminated"
                    ),
                )
            slot.in_flight.clear()
        while self.pending:
            task = self._unqueue(self.pending.popleft())
            task.future.cancel()  # False if it was running: a re-queued task
            if self._claim(task):
                self._fail(task, CancelledError(f"interrupted ({reason})"))

    def _park_or_stop_workers(self, may_park: bool) -> None:
        """At the end: park the healthy idle workers (``reuse=True``), stop the rest.

        ``self.slots`` keeps each worker not yet parked or stopped, for run()'s
        last-resort kill should this fail.
        """
        reuse = self.reuse
        if reuse is not None and may_park and not (self.broken or self.abort_reason):
            for slot in list(self.slots):
                if slot.can_park() and self._park(slot, reuse):
                    self.slots.remove(slot)
        self._stop_workers(list(self.slots))
        self.slots.clear()

    def _park(self, slot: _WorkerSlot, reuse: _reuse.ReusePolicy) -> bool:
        """Hand one idle worker to the warm set; False if it must stop instead."""
        if _interpreter_exiting:
            return False
        self._unwatch(slot)
        parked = _reuse.ParkedProcess(
            slot.process,
            slot.conn,
            slot.tasks_left,
            reuse.keepalive,
            window=slot.window,
            idle_since=slot.idle_since,
            avg_busy_s=self.avg_busy_s,
        )
        if not _reuse.PROCESSES.park(reuse.key, parked, reuse.idle_timeout):
            return False
        self.stats.workers_parked += 1
        logger.debug("parked worker %s", slot.pid)
        return True

    def _stop_workers(self, slots: list[_WorkerSlot]) -> None:
        for slot in slots:
            if slot.ready:
                # An explicit stop, not just EOF: under fork a worker holds a copy
                # of our end of its own pipe, so closing ours is no EOF to it.
                self._send(slot, [_wire.frame_header(0)])
                slot.conn.close()
            else:
                slot.process.terminate()  # still starting: nothing to finish
        deadline = time.monotonic() + WORKER_EXIT_GRACE_S
        alive = {slot.sentinel: slot for slot in slots}
        while alive:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for slot in alive.values():
                    logger.warning("worker %s did not exit; killing it", slot.pid)
                    _spawn.kill_worker_tree(slot.process)
                break
            # Short waits: under fork a sentinel may never fire (see
            # _reap_silent_deaths), so the exit code is checked as well.
            wait_for_sentinels(list(alive), min(remaining, 0.05))
            for sentinel, slot in list(alive.items()):
                if slot.process.exitcode is not None:
                    del alive[sentinel]
        for slot in slots:
            slot.process.join()
            if not slot.conn.closed:
                slot.conn.close()
        # Nothing may keep a dead worker's Process object: loky closes its
        # sentinel fd only when that object is collected.
        self._slot_by_fd.clear()

    def _close(self) -> None:
        self.selector.close()
        os.close(self.wake_r)
        with self.lock:
            os.close(self.wake_w)
            self.wake_armed = True  # nobody is listening any more
        _live_dispatchers.discard(self)


_IDLE_IO_THREAD = ("process", "idle I/O thread")
"""The warm-set key under which I/O threads of reuse=True executors wait."""

IO_THREAD_LINGER_S = 1.0
"""How long an idle I/O thread waits for the next reuse=True executor: with
blocks in a loop would otherwise start (and end) a thread each."""


def _io_thread_main(start: list[_Dispatcher]) -> None:
    """An I/O thread's life: run a dispatcher; after a reuse=True one, wait a
    moment for the next reuse=True executor to hand it another."""
    dispatcher: _Dispatcher | None = start.pop()
    while dispatcher is not None:
        reusable = dispatcher.run() and dispatcher.reuse is not None
        del dispatcher  # an idle thread keeps no executor's state alive
        if not reusable or _interpreter_exiting:
            return
        idle: _reuse.ParkedThread[_Dispatcher] = _reuse.ParkedThread(
            threading.current_thread(), None
        )
        if not _reuse.THREADS.park(_IDLE_IO_THREAD, idle):
            return
        dispatcher = _reuse.THREADS.wait_for_adoption(
            _IDLE_IO_THREAD, idle, IO_THREAD_LINGER_S
        )


class ProcessPoolExecutor(_map.MapMixin, Executor):
    """A drop-in ``concurrent.futures.ProcessPoolExecutor`` that never breaks.

    * ``submit()`` pickles the call once, in the caller: an unpicklable argument
      raises ``stalwart.PicklingError`` right there, naming the culprit's path.
    * A worker that dies fails only the task it was running
      (``stalwart.WorkerCrashedError``, with ``.pid``, ``.exitcode``, ``.signal``);
      ``retries=n`` re-runs such a task up to n times first. The executor replaces
      the worker and stays usable.
    * ``initializer``'s return value is what ``stalwart.worker_state()`` returns
      inside tasks on that worker, so models and connections are built once per
      worker and never pickled.

    Args:
        max_workers: ``None`` for every usable CPU (cgroup and affinity aware);
            a negative ``n`` means ``cpus + 1 + n`` (``-1`` all, ``-2`` all but one).
        mp_context: a multiprocessing context or a start-method name. The default,
            ``"loky_init_main"``, starts fresh interpreters (safe with threads and
            CUDA in the parent) that import your ``__main__`` as spawn does.
        initializer, initargs: run once in each worker; see ``worker_state()``.
        max_tasks_per_child: replace a worker after this many tasks.
        task_timeout: seconds a task may run in a worker (counted from when it
            starts, not from submit()); past that its worker is killed, with any
            processes the task started, the task fails with
            ``stalwart.TaskTimeoutError`` and a replacement worker starts.
            A timed-out task is not retried.
        retries: re-run a task whose worker died up to this many times.
        reuse: at ``shutdown()``, park the idle workers, initializer state and
            all, for the next ``reuse=True`` executor with the same settings to
            adopt at once (see ``stalwart.get_reusable_executor``). Workers are
            shared only between executors whose workers would be identical:
            same start method, initializer and initargs (as pickled),
            ``max_tasks_per_child``, working directory, ``sys.path`` and
            environment variables.
        idle_timeout: seconds a parked worker waits to be adopted before it
            exits (default 60); no effect without ``reuse=True``.
        check_pickle: accepted so that every executor takes the same keywords;
            a process pool always pickles the call in ``submit()``, so the check
            is always on here (``ThreadPoolExecutor`` makes it optional).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        reuse: bool = False,
        idle_timeout: float | None = None,
        check_pickle: bool = True,
    ) -> None:
        _refuse_while_bootstrapping()
        settings = PoolSettings.resolve(
            max_workers,
            mp_context,
            initializer,
            initargs,
            max_tasks_per_child=max_tasks_per_child,
            task_timeout=task_timeout,
            retries=retries,
            reuse=reuse,
            idle_timeout=idle_timeout,
        )
        self._open(settings)

    @classmethod
    def _from_settings(cls, settings: PoolSettings) -> Self:
        """An executor for settings already resolved (get_reusable_executor)."""
        _refuse_while_bootstrapping()
        executor = cls.__new__(cls)
        executor._open(settings)
        return executor

    def _open(self, settings: PoolSettings) -> None:
        self._settings = settings
        self._max_workers = settings.max_workers
        self._mp_context = settings.context
        self._task_timeout = settings.task_timeout
        self._by_value = settings.config.by_value
        self._dispatcher = dispatcher = _Dispatcher(
            settings.max_workers,
            settings.context,
            settings.config,
            settings.retries,
            settings.reuse,
        )
        if settings.reuse is not None:
            dispatcher.adopt(
                _reuse.PROCESSES.adopt(settings.reuse.key, settings.max_workers)
            )
        # Dropped without shutdown(): finish the submitted work, then stop (stdlib).
        self._finalizer = weakref.finalize(
            self, dispatcher.request_shutdown, False, None
        )
        self._finalizer.atexit = False

    def submit(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)`` in a worker; return its Future.

        Raises:
            stalwart.PicklingError: the call cannot be pickled (raised here, with
                the path to the unpicklable object).
            RuntimeError: the executor was shut down.
            BrokenProcessPool: the executor is broken (initializer keeps failing).
        """
        return self._submit(fn, args, kwargs, "submit", self._task_timeout)

    def _submit(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        action: str,
        task_timeout: float | None,
    ) -> Future[R]:
        dispatcher = self._dispatcher
        call: bytes | None = None
        if dispatcher.queued_call_bytes() < QUEUED_CALL_BYTES:
            call = _pickling.serialize_call(
                fn, args, kwargs, action=action, by_value=self._by_value
            )
        else:  # the queue holds enough bytes: check now, pickle when it is sent
            _pickling.check_call(
                fn, args, kwargs, action=action, by_value=self._by_value
            )
        with dispatcher.lock:
            if dispatcher.broken is not None:
                raise type(dispatcher.broken)(*dispatcher.broken.args)
            if dispatcher.shutdown_requested:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _interpreter_exiting:
                raise RuntimeError(
                    "cannot schedule new futures after interpreter shutdown"
                )
            future: Future[R] = Future()
            task = _Task(
                next(dispatcher.ids), future, call, fn, args, kwargs, task_timeout
            )
            if call is not None:
                task.held = len(call)
                dispatcher.call_bytes_added += task.held
            dispatcher.enqueue(task)
        return future

    def shutdown(
        self,
        wait: bool = True,
        *,
        cancel_futures: bool = False,
        kill_workers: bool = False,
    ) -> None:
        """Stop accepting work; running and queued work still completes.

        With ``reuse=True`` the idle workers are then parked, not stopped.

        Args:
            wait: block until all submitted work is done and the workers exited
                (or, with ``reuse=True``, were parked).
            cancel_futures: cancel every future that has not started running.
            kill_workers: kill the workers now, with any processes their tasks
                started: running tasks fail with ``CancelledError``, queued ones
                are cancelled, and nothing is parked.
        """
        if kill_workers:
            self._dispatcher.request_shutdown(True, "shutdown(kill_workers=True)")
        else:
            self._dispatcher.request_shutdown(cancel_futures, None)
        if wait:
            self._dispatcher.join()

    def stats(self) -> ExecutorStats:
        """What this executor did so far: tasks by outcome, workers by origin."""
        return self._dispatcher.stats.snapshot()

    def _accepts_work(self) -> bool:
        dispatcher = self._dispatcher
        return dispatcher.broken is None and not dispatcher.shutdown_requested

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: the user wants out now, not after the queued work.
            self._dispatcher.request_shutdown(True, "KeyboardInterrupt")
        self.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    @property
    def _broken(self) -> str | bool:
        """The stdlib's flag: a message once the executor is broken, else False."""
        broken = self._dispatcher.broken
        return False if broken is None else str(broken)

    def __repr__(self) -> str:
        state = (
            "broken"
            if self._dispatcher.broken
            else ("shut down" if self._dispatcher.shutdown_requested else "running")
        )
        return (
            f"<stalwart.ProcessPoolExecutor max_workers={self._max_workers} "
            f"start_method={self._mp_context.get_start_method()!r} {state}>"
        )


def _kill_all(slots: list[_WorkerSlot]) -> None:
    """Last resort when stopping failed: no worker may outlive its executor."""
    for slot in slots:
        with contextlib.suppress(Exception):
            _spawn.kill_worker_tree(slot.process)
            slot.process.join(WORKER_EXIT_GRACE_S)


def _exit_description(exitcode: int | None) -> str:
    name = _spawn.signal_name(exitcode)
    return f"killed by {name}" if name else f"exit code {exitcode}"


_CRASH_HINTS = {
    "SIGSEGV": "Segfaults usually come from C extensions; the worker's C stack is on "
    "stderr (faulthandler).",
    "SIGBUS": "Bus errors usually come from C extensions or memory-mapped files.",
    "SIGKILL": "SIGKILL usually means the OS ran out of memory (the OOM killer) or "
    "someone killed the worker.",
    "SIGABRT": "abort() usually comes from a failed assertion in C code; see stderr.",
}


def _crash_message(
    pid: int | None, exitcode: int | None, signal_name: str | None, task: _Task
) -> str:
    how = f"died from {signal_name}" if signal_name else f"exited with code {exitcode}"
    attempts = f" (attempt {task.attempts})" if task.attempts > 1 else ""
    hint = _CRASH_HINTS.get(signal_name or "", "")
    if not signal_name:
        hint = "A task (or a C extension) called os._exit() or exit()."
    return (
        f"worker {pid} {how} while running task {task.id}, {task.describe()}"
        f"{attempts}. Only this task failed; a replacement worker was started. {hint}"
    )


def _refuse_while_bootstrapping() -> None:
    if getattr(mp_process.current_process(), "_inheriting", False):
        raise RuntimeError(
            "a stalwart executor was created while a worker process was importing "
            "the main module. Workers import your main script the way "
            "multiprocessing's spawn does, so code that starts executors must sit "
            "under `if __name__ == '__main__':`."
        )


# -- interpreter exit -----------------------------------------------------------

_live_dispatchers: weakref.WeakSet[_Dispatcher] = weakref.WeakSet()
_interpreter_exiting = False


def _on_interpreter_exit() -> None:
    """Finish submitted work before exit, as the stdlib does; on Ctrl-C, don't."""
    global _interpreter_exiting
    _interpreter_exiting = True
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    dispatchers = list(_live_dispatchers)
    for dispatcher in dispatchers:
        dispatcher.request_shutdown(
            interrupted, "KeyboardInterrupt" if interrupted else None
        )
    try:
        for dispatcher in dispatchers:
            dispatcher.join()
    except KeyboardInterrupt:
        # Ctrl-C while exit waits for the submitted work: stop waiting, as
        # inside a `with` block (queued work cancelled, workers killed).
        for dispatcher in dispatchers:
            dispatcher.request_shutdown(True, "KeyboardInterrupt")
        for dispatcher in dispatchers:
            dispatcher.join()
        raise


def _forget_inherited_executors() -> None:
    """A forked child (a fork-context worker) owns none of its parent's executors.

    Without this, the worker's exit (``Process._bootstrap`` runs
    ``threading._shutdown()``, hence the hook above) would take the inherited
    dispatchers' locks, which another parent thread may have held at the moment
    of the fork: they stay locked forever in the child, and the worker never exits.
    """
    global _live_dispatchers
    _live_dispatchers = weakref.WeakSet()


os.register_at_fork(after_in_child=_forget_inherited_executors)
threading._register_atexit(_on_interpreter_exit)  # type: ignore[attr-defined]
