"""The dispatcher: one I/O thread that owns a process pool's workers.

It runs the loop, carries out the scheduler's decisions (``_scheduler``), reads
the workers' replies and settles the outcomes of their ends. User threads never
touch what is here; they reach it only through the inbox (``_inbox``), and
``cancel()`` through a worker's claim table (``_claims``). See ``_process`` for
the whole picture.

Per round of the loop::

    select() on: the wake-up pipe, every worker's pipe (read; write while its
                 outbox is non-empty), every worker's process sentinel
      -> replies:   answers resolve futures; RECEIVED drops pickled calls
      -> sentinels: a worker ended: crash, timeout, start failure, recycle
      -> taken back: calls that cancel() revoked leave their worker's backlog
      -> claims:    calls the workers started move their futures to RUNNING
      -> start workers as pending work needs them
      -> dispatch:  the scheduler's sends and steals
      -> shutdown(cancel_futures=True): cancel everything not started
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import selectors
import signal
import threading
import time
import weakref
from concurrent.futures import CancelledError
from multiprocessing.connection import wait as wait_for_sentinels
from typing import TYPE_CHECKING, Any

from stalwart import _claims, _outcomes, _pickling, _reuse, _scheduler, _spawn, _wire
from stalwart._inbox import Inbox, PoolState
from stalwart._slot import Task, WorkerSlot, WorkerState
from stalwart._stats import ExecutorStats
from stalwart.errors import PicklingError

if TYPE_CHECKING:
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing.context import BaseContext

    from stalwart._worker import WorkerConfig

logger = logging.getLogger("stalwart")

MAX_CONSECUTIVE_START_FAILURES = 3
"""Failed worker starts in a row after which the executor gives up: enough to ride
out a transient failure, few enough that a broken initializer is no fork storm."""

WORKER_EXIT_GRACE_S = 5.0
"""How long shutdown lets a worker finish exiting on its own before killing it."""

LIVENESS_CHECK_S = 1.0
"""When the I/O thread has had nothing to do for this long, it asks the OS
(waitpid) whether any worker died unnoticed (see _reap_silent_deaths)."""

CLAIM_POLL_S = 0.002
"""While a worker has read a call it has not yet been seen to start, the loop
looks again this often, so that ``running()`` turns True promptly."""


class Dispatcher:
    """Owns the workers, the pending queue's consumer side and the I/O thread.

    Kept apart from the executor object so the I/O thread holds no reference to
    it: an executor dropped without ``shutdown()`` is collected, which triggers a
    graceful shutdown here (as the stdlib does). Every attribute but ``inbox``,
    ``stats`` (read as a snapshot), ``thread`` and ``finished`` belongs to the
    I/O thread once it runs.
    """

    def __init__(
        self,
        inbox: Inbox,
        context: BaseContext,
        worker_config: WorkerConfig,
        retries: int,
        reuse: _reuse.ReusePolicy | None,
    ) -> None:
        self.inbox = inbox
        self.context = context
        self.worker_config = worker_config
        self.retries = retries
        self.by_value = worker_config.by_value
        self.reuse = reuse
        self.stats = ExecutorStats()
        self.ids = itertools.count()
        self.slots: list[WorkerSlot] = []
        self._slot_by_fd: dict[int, WorkerSlot] = {}  # pipe fd and sentinel -> slot
        self.workers_wanted = 0  # grows on demand up to max_workers
        self.deaths_to_replace = 0  # workers that died and were not replaced yet
        self.consecutive_start_failures = 0
        self.avg_busy_s: float | None = None
        self.timeouts_in_use = False  # some task has a task_timeout: watch the clock
        self.selector: selectors.BaseSelector | None = None
        self.thread: threading.Thread | None = None
        self.finished = threading.Event()  # the I/O thread is done with us

    # -- started from user threads (inbox.lock held) --------------------------------

    def ensure_thread(self) -> None:
        """Start the I/O thread (caller holds ``inbox.lock``), on the first task
        or on adopting warm workers; a ``reuse=True`` executor takes over an idle
        I/O thread that an earlier one left, if there is one."""
        if self.thread is not None:
            return
        self.selector = selectors.DefaultSelector()
        wake_r = self.inbox.open_wake_pipe()
        self.selector.register(wake_r, selectors.EVENT_READ, self._on_wake)
        if self.reuse is not None:
            for idle in _reuse.THREADS.adopt(IDLE_IO_THREAD, 1):
                self.thread = idle.thread
                live_dispatchers.add(self)
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
            self._close_io()
            raise RuntimeError(
                f"cannot schedule new futures: stalwart's dispatcher thread "
                f"could not start ({exc})"
            ) from exc
        self.thread = thread
        live_dispatchers.add(self)

    def adopt(self, parked: list[_reuse.ParkedProcess]) -> None:
        """Take over warm workers parked by an earlier executor (before any task)."""
        if not parked:
            return
        with self.inbox.lock:
            self.ensure_thread()  # their deaths must be noticed even before submit()
            for worker in parked:
                slot = WorkerSlot(
                    worker.process,
                    worker.conn,
                    worker.claims,
                    worker.tasks_left,
                    self._taken_back,
                )
                slot.move(WorkerState.RUNNING)  # its initializer ran long ago
                # Carry on from what its last executor learnt (the window starts
                # over by itself if the worker sat idle for long).
                slot.window, slot.idle_since = worker.window, worker.idle_since
                if self.avg_busy_s is None:
                    self.avg_busy_s = worker.avg_busy_s
                slot.next_seq = worker.next_seq
                slot.acked_seq = worker.next_seq - 1
                self._add_slot(slot)
                logger.debug("adopted warm worker %s", slot.pid)
            self.stats.workers_reused += len(parked)
            self.workers_wanted = len(self.slots)
            self.inbox.wake()

    def _taken_back(self, task: Task) -> None:
        """``cancel()`` revoked ``task`` in its worker (any thread)."""
        self.inbox.taken_back.put(task)
        self.inbox.wake()

    def join(self) -> None:
        """Wait until the I/O thread is done with this executor (workers stopped
        or parked); the thread itself may live on, idle, for the next one."""
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            self.finished.wait()

    # -- the I/O thread ----------------------------------------------------------------

    def run(self) -> bool:
        """The I/O thread's work for this executor; True if it ended as it should."""
        ended_well = False
        try:
            self._loop()
            ended_well = True
        except BaseException as exc:
            logger.exception("stalwart's dispatcher thread failed")
            self._break(_outcomes.dispatcher_failed(exc))
        finally:
            try:
                self._park_or_stop_workers(may_park=ended_well)
            except BaseException:
                logger.exception("stalwart's dispatcher thread failed to stop")
                ended_well = False
                _kill_all(self.slots)
            finally:
                self._close_io()
                with self.inbox.lock:
                    if self.inbox.state is not PoolState.BROKEN:
                        self.inbox.state = PoolState.CLOSED
                self.inbox.cancel_done.set()  # never leave shutdown() waiting
                self.finished.set()  # nor join()
        return ended_well

    def _loop(self) -> None:
        inbox = self.inbox
        assert self.selector is not None
        while True:
            events = self.selector.select(self._next_wake_s())
            for key, mask in events:
                key.data(key, mask)
            if not events:
                self._reap_silent_deaths()
            self._settle_taken_back()
            self._claim_started()
            if inbox.abort is not None:
                self._abort()
            self._retire_surplus()
            self._start_workers_as_needed()
            if inbox.state is PoolState.BROKEN:
                return
            self._dispatch()
            if inbox.cancel_asked:
                self._cancel_unstarted()
            if inbox.state is not PoolState.RUNNING and self._is_idle():
                return

    def _next_wake_s(self) -> float:
        wait_s = LIVENESS_CHECK_S
        if self.timeouts_in_use:
            wait_s = min(wait_s, self._kill_overdue_tasks())
        now = time.monotonic()
        thief = False
        for slot in self.slots:
            head = slot.in_flight[0] if slot.in_flight else None
            if head is not None and not head.claimed and slot.has_read(head):
                wait_s = min(wait_s, CLAIM_POLL_S)
            thief = thief or slot.is_idle()
        if thief and not self.inbox.pending:
            # An idle worker steals from a stalled one: look again when the
            # next running call would count as stalled.
            stall_s = _scheduler.stalled_after_s(self.avg_busy_s)
            for slot in self.slots:
                if slot.running_since is not None and len(slot.in_flight) > 1:
                    left = slot.running_since + stall_s - now
                    wait_s = min(wait_s, max(left, 0.001))
        return wait_s

    def _is_idle(self) -> bool:
        if any(slot.in_flight for slot in self.slots):
            return False
        # A worker still starting (its reserved call taken by an idle one) is
        # worth parking (reuse=True): let it finish starting rather than kill it.
        if (
            self.reuse is not None
            and self.inbox.abort is None
            and any(slot.state is WorkerState.STARTING for slot in self.slots)
        ):
            return False
        pending = self.inbox.pending
        while pending and pending[0].future.cancelled():
            self._drop_cancelled(self.inbox.release(pending.popleft()))
        return not pending

    def _on_wake(self, key: selectors.SelectorKey, mask: int) -> None:
        self.inbox.drain_wake_pipe()

    # -- starting and retiring workers ---------------------------------------------------

    def _start_workers_as_needed(self) -> None:
        inbox = self.inbox
        if inbox.state is not PoolState.RUNNING and not inbox.pending:
            return
        # Starting workers already hold a reserved task each (see _scheduler.room),
        # so what is still pending wants workers of its own.
        waiting = len(inbox.pending)
        if waiting and not any(not slot.in_flight for slot in self.slots):
            self.workers_wanted = max(self.workers_wanted, len(self.slots) + waiting)
        self.workers_wanted = min(self.workers_wanted, inbox.max_workers)
        try:
            while len(self._live_slots()) < self.workers_wanted:
                self._start_worker()
        except Exception as exc:  # noqa: BLE001 - reported on every future
            self._break(_outcomes.start_error(exc))

    def _live_slots(self) -> list[WorkerSlot]:
        return [slot for slot in self.slots if slot.state is not WorkerState.STOPPING]

    def _start_worker(self) -> None:
        claims = _claims.ClaimTable()
        config = dataclasses.replace(self.worker_config, claims=claims)
        parent_end, child_end = self.context.Pipe(duplex=True)
        try:
            process = _spawn.start_worker_process(self.context, child_end, config)
        except BaseException:
            parent_end.close()
            claims.close()
            raise
        finally:
            child_end.close()  # the child has its copy; ours would hide its EOF
        os.set_blocking(parent_end.fileno(), False)
        slot = WorkerSlot(
            process, parent_end, claims, self.worker_config.max_tasks, self._taken_back
        )
        self._add_slot(slot)
        self.stats.workers_started += 1
        if self.deaths_to_replace:
            self.deaths_to_replace -= 1
            self.stats.workers_replaced += 1
        logger.debug("started worker %s", process.pid)

    def _add_slot(self, slot: WorkerSlot) -> None:
        assert self.selector is not None
        self.slots.append(slot)
        self.selector.register(slot.fd, selectors.EVENT_READ, self._on_pipe)
        self.selector.register(slot.sentinel, selectors.EVENT_READ, self._on_sentinel)
        self._slot_by_fd[slot.fd] = slot
        self._slot_by_fd[slot.sentinel] = slot

    def _retire_surplus(self) -> None:
        """After a resize (get_reusable_executor): idle workers beyond
        max_workers exit; busy ones are sent nothing more once others suffice."""
        surplus = len(self._live_slots()) - self.inbox.max_workers
        for slot in list(self.slots):
            if surplus <= 0:
                return
            if slot.is_idle():
                self._stop(slot)
                surplus -= 1

    # -- dispatch ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        pending = self.inbox.pending
        slots = self._live_slots()
        plan = _scheduler.plan(slots, len(pending), self.avg_busy_s, time.monotonic())
        for slot, count, window in plan.sends:
            slot.window = window
            self._fill(slot, count)
        if plan.steals:
            for slot, count in plan.steals:
                self._steal(slot, count)
            # What came back goes to the idle workers now, not a round later.
            plan = _scheduler.plan(
                slots, len(pending), self.avg_busy_s, time.monotonic()
            )
            for slot, count, window in plan.sends:
                slot.window = window
                self._fill(slot, count)

    def _fill(self, slot: WorkerSlot, room: int) -> None:
        """Send `slot` up to `room` tasks from the front of the pending queue."""
        inbox = self.inbox
        pending = inbox.pending
        entries: list[tuple[int, int, bytes]] = []
        batch: list[Task] = []
        while room and pending:
            task = inbox.release(pending.popleft())
            if task.call is None and not self._serialize_again(task):
                continue
            assert task.call is not None
            task.slot = slot
            task.seq = slot.next_seq
            # From here on cancel() revokes it in the worker (see _claims).
            if not _claims.mark_sent_ahead(task.future, task):
                task.slot = None
                self._drop_cancelled(task)
                continue
            slot.next_seq += 1
            batch.append(task)
            entries.append((task.id, task.seq, task.call))
            if task.timeout is not None:
                self.timeouts_in_use = True
            room -= 1
        if not batch:
            return
        slot.in_flight.extend(batch)
        size = sum(len(call) for _, _, call in entries)
        slot.unacknowledged.append((batch[-1].seq, size))
        slot.unacknowledged_bytes += size
        if slot.tasks_left is not None:
            slot.tasks_left -= len(batch)
        self._send(slot, _wire.encode_batch(entries))

    def _serialize_again(self, task: Task) -> bool:
        """Re-pickle a task whose bytes were dropped (its worker read them, then
        died or gave it back); False if that fails now, and the task failed."""
        try:
            task.call = _pickling.serialize_call(
                task.fn, task.args, task.kwargs, by_value=self.by_value
            )
        except PicklingError as exc:  # an argument was changed since submit()
            if self._claim(task):
                self._fail(task, exc)
            return False
        return True

    def _steal(self, slot: WorkerSlot, count: int) -> None:
        """Take back up to ``count`` unstarted calls from the end of ``slot``'s
        backlog, for idle workers: to the front of the pending queue, in order."""
        taken: list[Task] = []
        while count and slot.in_flight:
            task = slot.in_flight[-1]
            wanted = _claims.take_back(task.future, slot.claims, task.seq)
            if wanted is None:
                break  # it started, so every call before it has too
            slot.in_flight.pop()
            self._leave_slot(slot, task)
            count -= 1
            if wanted:
                taken.append(task)
            else:
                self._drop_cancelled(task)
        self.inbox.pending.extendleft(reversed(taken))
        self.stats.tasks_rebalanced += len(taken)
        self._note_running(slot)

    def _leave_slot(self, slot: WorkerSlot, task: Task) -> None:
        """``task`` left ``slot`` unstarted: its budget returns to the worker."""
        task.slot = None
        if slot.tasks_left is not None:
            slot.tasks_left += 1
        if not slot.in_flight:
            slot.idle_since = time.monotonic()

    def _send(self, slot: WorkerSlot, chunks: list[bytes]) -> None:
        was_empty = not slot.outbox
        slot.outbox.extend(map(memoryview, chunks))
        if was_empty:
            self._flush(slot)
            if slot.outbox:
                assert self.selector is not None
                self.selector.modify(
                    slot.fd, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_pipe
                )

    def _flush(self, slot: WorkerSlot) -> None:
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

    # -- cancellation ------------------------------------------------------------------

    def _settle_taken_back(self) -> None:
        """Calls that ``cancel()`` revoked in a worker leave its backlog."""
        queue = self.inbox.taken_back
        while not queue.empty():
            task = queue.get_nowait()
            slot = task.slot
            if slot is None or task not in slot.in_flight:
                continue  # it had already left (its worker died, or we stole it)
            slot.in_flight.remove(task)
            self._leave_slot(slot, task)
            self._drop_cancelled(task)
            self._note_running(slot)

    def _cancel_unstarted(self) -> None:
        """shutdown(cancel_futures=True): cancel every call not started, queued
        here or sent ahead to a worker; those running finish."""
        self.inbox.cancel_asked = False
        for slot in self.slots:
            for task in list(slot.in_flight):
                task.future.cancel()  # revokes it in the worker if not started
        pending = self.inbox.pending
        for task in list(pending):
            task.future.cancel()
        self._settle_taken_back()
        while pending and pending[0].future.cancelled():
            self._drop_cancelled(self.inbox.release(pending.popleft()))
        self.inbox.cancel_done.set()

    def _claim_started(self) -> None:
        """Move the futures of calls the workers have started to RUNNING."""
        for slot in self.slots:
            if not slot.in_flight:
                continue
            head = slot.in_flight[0]
            if not head.claimed and head.seq <= slot.claims.started():
                self._claim(head)

    def _claim(self, task: Task) -> bool:
        """The call ran or will run now: its future to RUNNING (idempotent).

        Every task leaves the executor through here or ``_drop_cancelled``:
        ``wait()`` and ``as_completed()`` count a cancelled future as done only
        once its executor has called ``set_running_or_notify_cancel()`` on it.
        """
        if not task.claimed:
            task.claimed = True
            task.started = _claims.claim_started(task.future)
            if not task.started:
                self.stats.tasks_cancelled += 1
        return task.started

    def _drop_cancelled(self, task: Task) -> None:
        """A cancelled task leaves unrun; its waiters are told."""
        if not task.claimed:
            task.claimed = True
            task.started = task.future.set_running_or_notify_cancel()
            self.stats.tasks_cancelled += 1
            assert not task.started, "only cancelled tasks are dropped"

    # -- replies -----------------------------------------------------------------------

    def _on_pipe(self, key: selectors.SelectorKey, mask: int) -> None:
        slot = self._slot_by_fd.get(key.fd)
        if slot is None:
            return  # its sentinel fired earlier in the same select(): already gone
        if mask & selectors.EVENT_WRITE:
            self._flush(slot)
            if not slot.outbox:
                assert self.selector is not None
                self.selector.modify(slot.fd, selectors.EVENT_READ, self._on_pipe)
        if mask & selectors.EVENT_READ:
            self._read(slot, until_eof=False)

    def _read(self, slot: WorkerSlot, until_eof: bool) -> None:
        while True:
            try:
                frames, eof = slot.reader.read_from(slot.fd)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                frames, eof = [], True
            for frame in frames:
                self._on_frame(slot, frame)
            if eof:
                # The worker is exiting; its sentinel decides what happened.
                assert self.selector is not None
                if self.selector.get_map().get(slot.fd) is not None:
                    self.selector.unregister(slot.fd)
                return
            if not until_eof:
                return

    def _on_frame(
        self, slot: WorkerSlot, frame: bytes | bytearray | _wire.Unreadable
    ) -> None:
        """One message from a worker. Whatever is wrong with it fails one task."""
        try:
            if isinstance(frame, _wire.Unreadable):
                raise frame.error
            reply = _wire.decode_reply(pickle.loads(frame))
        except BaseException as exc:  # noqa: BLE001 - fails that task only
            del frame
            # Only an answer can fail to unpickle (a class the parent cannot
            # import, a __reduce__ that raises, no memory for it), and a worker
            # answers in order: it belongs to the oldest call in flight.
            task = self._answered(slot, None, None)
            if task is not None:
                self._resolve(
                    task, False, _outcomes.unreadable_result(slot.pid, task, exc)
                )
            return
        del frame
        if isinstance(reply, _wire.Answer):
            self._on_answer(slot, reply)
        elif isinstance(reply, _wire.Received):
            self._on_received(slot, reply.last_seq)
        elif isinstance(reply, _wire.Ready):
            if slot.state is WorkerState.STARTING:
                slot.move(WorkerState.RUNNING)
            self.consecutive_start_failures = 0
        else:
            slot.init_failure = (reply.summary, reply.remote_traceback)

    def _on_answer(self, slot: WorkerSlot, answer: _wire.Answer) -> None:
        task = self._answered(slot, answer.task_id, answer.busy_s)
        if task is None:
            return
        try:
            succeeded, value = answer.outcome()
        except BaseException as exc:  # noqa: BLE001 - fails that task only
            succeeded, value = False, _outcomes.unreadable_result(slot.pid, task, exc)
        self._resolve(task, succeeded, value)

    def _answered(
        self, slot: WorkerSlot, task_id: int | None, busy_s: float | None
    ) -> Task | None:
        """Pop the call a worker answered (the oldest in flight)."""
        if not slot.in_flight or (
            task_id is not None and slot.in_flight[0].id != task_id
        ):
            logger.warning(
                "worker %s answered call %s, which it was not running; ignored "
                "(a task that forked and returned twice?)",
                slot.pid,
                task_id,
            )
            return None
        task = slot.in_flight.popleft()
        self._claim(task)
        task.slot = None
        slot.window = min(_scheduler.MAX_DEPTH, slot.window + 1)
        if not slot.in_flight:
            slot.idle_since = time.monotonic()
        if busy_s is not None:
            avg = self.avg_busy_s
            self.avg_busy_s = busy_s if avg is None else 0.9 * avg + 0.1 * busy_s
        self._note_running(slot)
        return task

    def _on_received(self, slot: WorkerSlot, last_seq: int) -> None:
        """The worker read every call up to ``last_seq``: drop our copies of
        their bytes, so the parent does not hold every large argument until
        its result comes back."""
        slot.acked_seq = max(slot.acked_seq, last_seq)
        while slot.unacknowledged and slot.unacknowledged[0][0] <= last_seq:
            slot.unacknowledged_bytes -= slot.unacknowledged.popleft()[1]
        for task in slot.in_flight:
            if task.seq > last_seq:
                break
            task.call = None
        self._note_running(slot)

    def _note_running(self, slot: WorkerSlot) -> None:
        """The oldest call in flight runs from now, once the worker has read it
        (timeouts and stalls count from here)."""
        head = slot.in_flight[0] if slot.in_flight else None
        if head is None or not slot.has_read(head):
            slot.running, slot.running_since = None, None
        elif slot.running is not head:
            slot.running, slot.running_since = head, time.monotonic()

    # -- outcomes (counted for stats()) --------------------------------------------------

    def _resolve(self, task: Task, succeeded: bool, value: Any) -> None:
        if succeeded:
            self.stats.tasks_completed += 1
            task.future.set_result(value)
        else:
            self._fail(task, value)

    def _fail(self, task: Task, error: BaseException) -> None:
        self.stats.count_failure(error)
        task.future.set_exception(error)

    # -- task timeouts -------------------------------------------------------------------

    def _kill_overdue_tasks(self) -> float:
        """Kill each worker whose running call is past its timeout; return the
        seconds until the next deadline. The killed worker's sentinel then fires
        and _on_worker_exit fails the call with TaskTimeoutError."""
        next_deadline_s = LIVENESS_CHECK_S
        now = time.monotonic()
        for slot in list(self.slots):
            task, started = slot.running, slot.running_since
            if task is None or started is None or task.timeout is None:
                continue
            if slot.state not in (WorkerState.RUNNING, WorkerState.STOPPING):
                continue
            left_s = started + task.timeout - now
            if left_s > 0:
                next_deadline_s = min(next_deadline_s, left_s)
                continue
            # An answer already in the pipe wins: the call finished in time. A
            # worker that has died already is a crash, for its sentinel to report.
            self._read(slot, until_eof=True)
            if slot.process.exitcode is not None:
                continue
            if slot.running is task:
                slot.overdue = task
                slot.move(WorkerState.KILLING)
                _spawn.kill_worker_tree(slot.process)
            else:
                next_deadline_s = 0.0  # the next call started: look again at once
        return next_deadline_s

    # -- worker ends ---------------------------------------------------------------------

    def _on_sentinel(self, key: selectors.SelectorKey, mask: int) -> None:
        slot = self._slot_by_fd.get(key.fd)
        if slot is not None:
            self._on_worker_exit(slot)

    def _reap_silent_deaths(self) -> None:
        """Find workers that died without their sentinel firing.

        Under the plain ``fork`` start method a worker forked by another thread
        can inherit a copy of this worker's sentinel pipe, so the pipe only
        closes when that other process exits; ``waitpid`` (``exitcode``) is
        authoritative whatever file descriptors leaked.
        """
        for slot in list(self.slots):
            if slot.process.exitcode is not None:
                self._on_worker_exit(slot)

    def _on_worker_exit(self, slot: WorkerSlot) -> None:
        assert self.selector is not None
        if self.selector.get_map().get(slot.fd) is not None:
            self._read(slot, until_eof=True)  # what it sent before dying counts
        self._forget_slot(slot)
        slot.process.join()
        exitcode = slot.process.exitcode
        was = slot.state
        started = slot.claims.started()
        slot.move(WorkerState.EXITED)
        head = slot.in_flight[0] if slot.in_flight else None
        if was is WorkerState.STOPPING and head is None:
            pass  # retired on purpose: not replaced
        elif slot.tasks_left == 0 and exitcode == 0 and head is None:
            self.stats.workers_recycled += 1
        else:
            self.deaths_to_replace += 1
        if was is WorkerState.KILLING and head is not None and head is slot.overdue:
            slot.in_flight.popleft()
            head.slot = None
            error = _outcomes.timed_out(slot.pid, head)
            logger.warning("%s", error)
            self._fail(head, error)
        elif was is WorkerState.STARTING:
            self._requeue_unstarted(slot)
            self._on_start_failure(slot, exitcode)
        elif head is not None and head.seq <= started:
            self._on_crash(slot, exitcode)
        else:
            logger.debug("worker %s exited (exit code %s)", slot.pid, exitcode)
        # The rest never started (or, after a timeout, one was cut short at
        # the last instant): they run elsewhere, in order.
        self._requeue_unstarted(slot)
        slot.claims.close()

    def _on_crash(self, slot: WorkerSlot, exitcode: int | None) -> None:
        crashed = slot.in_flight.popleft()
        crashed.slot = None
        crashed.attempts += 1
        self._claim(crashed)
        logger.warning(
            "worker %s died (%s) while running %s; replacing it",
            slot.pid,
            _outcomes.exit_description(exitcode),
            crashed.describe(),
        )
        if crashed.attempts <= self.retries:
            self.stats.tasks_retried += 1
            self.inbox.pending.appendleft(crashed)
            return
        self._fail(crashed, _outcomes.crashed(slot.pid, exitcode, crashed))

    def _requeue_unstarted(self, slot: WorkerSlot) -> None:
        """Put a dead worker's remaining calls back at the front of the queue."""
        requeued: list[Task] = []
        for task in slot.in_flight:
            task.slot = None
            if _claims.withdraw(task.future):
                requeued.append(task)
            else:
                self._drop_cancelled(task)
        slot.in_flight.clear()
        self.inbox.pending.extendleft(reversed(requeued))

    def _on_start_failure(self, slot: WorkerSlot, exitcode: int | None) -> None:
        self.consecutive_start_failures += 1
        failures = self.consecutive_start_failures
        given_up = failures >= MAX_CONSECUTIVE_START_FAILURES
        error = _outcomes.start_failed(
            slot.pid, exitcode, slot.init_failure, failures, given_up
        )
        logger.warning("%s", error)
        if given_up:
            self._break(error)

    def _forget_slot(self, slot: WorkerSlot) -> None:
        self._unwatch(slot)
        self.slots.remove(slot)
        slot.conn.close()

    def _unwatch(self, slot: WorkerSlot) -> None:
        """Stop watching a worker's pipe and sentinel."""
        assert self.selector is not None
        for fd in (slot.fd, slot.sentinel):
            if self.selector.get_map().get(fd) is not None:
                self.selector.unregister(fd)
            self._slot_by_fd.pop(fd, None)

    # -- ending --------------------------------------------------------------------------

    def _break(self, error: BrokenProcessPool) -> None:
        """Fail every unresolved future with `error` and refuse new work.

        The futures are collected under the inbox lock and failed after it is
        released: their callbacks may call submit() or shutdown().
        """
        inbox = self.inbox
        with inbox.lock:
            inbox.broken = error
            inbox.state = PoolState.BROKEN
            tasks = [inbox.release(task) for task in inbox.pending]
            inbox.pending.clear()
        for slot in self.slots:
            tasks.extend(slot.in_flight)
            slot.in_flight.clear()
        for task in tasks:
            task.slot = None
            if self._claim(task):
                self._fail(task, error)

    def _abort(self) -> None:
        """Ctrl-C, kill_workers or terminate_workers(): kill the workers; calls
        they had started fail, every other call is cancelled."""
        abort = self.inbox.abort
        assert abort is not None
        for slot in list(self.slots):
            _kill(slot, abort.signum)
        for slot in self.slots:
            started = slot.claims.started()
            for task in slot.in_flight:
                task.slot = None
                if task.seq <= started and self._claim(task):
                    self._fail(
                        task,
                        CancelledError(
                            f"{task.describe()} was interrupted ({abort.reason}): "
                            "its worker was terminated"
                        ),
                    )
                elif _claims.withdraw(task.future):
                    task.future.cancel()
                    self._drop_cancelled(task)
                else:
                    self._drop_cancelled(task)
            slot.in_flight.clear()
        pending = self.inbox.pending
        while pending:
            task = self.inbox.release(pending.popleft())
            if task.future.cancel():
                self._drop_cancelled(task)
            elif self._claim(task):  # a retried call, running already
                self._fail(task, CancelledError(f"interrupted ({abort.reason})"))

    def _park_or_stop_workers(self, may_park: bool) -> None:
        """At the end: park the healthy idle workers (``reuse=True``), stop the rest.

        ``self.slots`` keeps each worker not yet parked or stopped, for run()'s
        last-resort kill should this fail.
        """
        reuse = self.reuse
        inbox = self.inbox
        if (
            reuse is not None
            and may_park
            and inbox.state is not PoolState.BROKEN
            and inbox.abort is None
        ):
            for slot in list(self.slots):
                if slot.can_park() and self._park(slot, reuse):
                    self.slots.remove(slot)
        self._stop_workers(list(self.slots))
        self.slots.clear()

    def _park(self, slot: WorkerSlot, reuse: _reuse.ReusePolicy) -> bool:
        """Hand one idle worker to the warm set; False if it must stop instead."""
        if interpreter_exiting():
            return False
        try:
            # Restore what its tasks may have changed (cwd, environment,
            # sys.path) before anyone adopts it. Its pipe is empty: it is idle.
            os.write(slot.fd, _wire.RESET_FRAME)
        except OSError:
            return False
        self._unwatch(slot)
        parked = _reuse.ParkedProcess(
            slot.process,
            slot.conn,
            slot.tasks_left,
            slot.claims,
            reuse.keepalive,
            window=slot.window,
            idle_since=slot.idle_since,
            avg_busy_s=self.avg_busy_s,
            next_seq=slot.next_seq,
        )
        if not _reuse.PROCESSES.park(reuse.key, parked, reuse.idle_timeout):
            self._add_slot_back(slot)
            return False
        self.stats.workers_parked += 1
        logger.debug("parked worker %s", slot.pid)
        return True

    def _add_slot_back(self, slot: WorkerSlot) -> None:
        self.slots.remove(slot)
        self._add_slot(slot)

    def _stop(self, slot: WorkerSlot) -> None:
        """Ask one worker to exit: STOP if it is ready, terminate if it is not."""
        if slot.state is WorkerState.RUNNING:
            # An explicit stop, not just EOF: under fork a worker holds a copy
            # of our end of its own pipe, so closing ours is no EOF to it.
            slot.move(WorkerState.STOPPING)
            self._send(slot, [_wire.frame_header(0)])
        elif slot.state is WorkerState.STARTING:
            slot.move(WorkerState.STOPPING)
            slot.process.terminate()  # still starting: nothing to finish

    def _stop_workers(self, slots: list[WorkerSlot]) -> None:
        for slot in slots:
            self._stop(slot)
            slot.conn.close()
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
            slot.claims.close()
        # Nothing may keep a dead worker's Process object: loky closes its
        # sentinel fd only when that object is collected.
        self._slot_by_fd.clear()

    def _close_io(self) -> None:
        if self.selector is not None:
            self.selector.close()
        self.inbox.close_wake_pipe()
        live_dispatchers.discard(self)


def _kill(slot: WorkerSlot, signum: int) -> None:
    """SIGKILL a worker's whole tree (what its task started too); another
    signal (terminate_workers: SIGTERM) goes to the worker alone, as the
    stdlib's terminate() does."""
    if signum == signal.SIGKILL:
        _spawn.kill_worker_tree(slot.process)
    else:
        with contextlib.suppress(OSError):
            slot.process.terminate()


def _kill_all(slots: list[WorkerSlot]) -> None:
    """Last resort when stopping failed: no worker may outlive its executor."""
    for slot in slots:
        with contextlib.suppress(Exception):
            _spawn.kill_worker_tree(slot.process)
            slot.process.join(WORKER_EXIT_GRACE_S)


# -- the I/O thread's life ---------------------------------------------------------------

IDLE_IO_THREAD = ("process", "idle I/O thread")
"""The warm-set key under which I/O threads of reuse=True executors wait."""

IO_THREAD_LINGER_S = 1.0
"""How long an idle I/O thread waits for the next reuse=True executor: with
blocks in a loop would otherwise start (and end) a thread each."""


def _io_thread_main(start: list[Dispatcher]) -> None:
    """An I/O thread's life: run a dispatcher; after a reuse=True one, wait a
    moment for the next reuse=True executor to hand it another."""
    dispatcher: Dispatcher | None = start.pop()
    while dispatcher is not None:
        reusable = dispatcher.run() and dispatcher.reuse is not None
        del dispatcher  # an idle thread keeps no executor's state alive
        if not reusable or interpreter_exiting():
            return
        idle: _reuse.ParkedThread[Dispatcher] = _reuse.ParkedThread(
            threading.current_thread(), None
        )
        if not _reuse.THREADS.park(IDLE_IO_THREAD, idle):
            return
        dispatcher = _reuse.THREADS.wait_for_adoption(
            IDLE_IO_THREAD, idle, IO_THREAD_LINGER_S
        )


live_dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
_exiting = [False]


def interpreter_exiting() -> bool:
    return _exiting[0]


def mark_interpreter_exiting() -> None:
    _exiting[0] = True


def _forget_inherited_dispatchers() -> None:
    """A forked child owns none of its parent's executors (see _process)."""
    global live_dispatchers
    live_dispatchers = weakref.WeakSet()


os.register_at_fork(after_in_child=_forget_inherited_dispatchers)
