"""The dispatcher: one I/O thread that owns a process pool's workers.

It runs the loop and starts workers; the other parts each own one concern:
``_scheduler`` decides who gets what, ``_sending`` carries that out (sends
batches, takes backlogs back), ``_pipes`` waits, reads and writes,
``_replies`` acts on what workers say, ``_endings`` settles how workers end,
``_ledger`` claims, resolves and cancels futures, ``_parking`` parks or stops
the workers at the end. User threads never touch any of it; they reach it only
through the inbox (``_inbox``), and ``cancel()`` through a worker's claim table
(``_claims``). See ``_process`` for the whole picture.

Per round of the loop::

    Pipes.wait(): the wake-up pipe, every worker's pipe and process sentinel
      -> frames:     Replies: answers resolve futures, RECEIVED drops calls
      -> sentinels:  Endings: crash, timeout, start failure, recycle
      -> taken back: calls that cancel() revoked leave their worker's backlog
      -> claims:     calls the workers started move their futures to RUNNING
      -> start (or retire) workers as pending work (or a resize) needs
      -> dispatch:   the scheduler's sends, and steals for idle workers
      -> shutdown(cancel_futures=True): cancel everything not started
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

from stalwart import (
    _claims,
    _forking,
    _forwarding,
    _memory,
    _outcomes,
    _parking,
    _reuse,
    _scheduler,
    _startup,
    _template,
)
from stalwart._endings import LIVENESS_CHECK_S, Endings
from stalwart._inbox import Inbox, PoolState
from stalwart._ledger import Ledger
from stalwart._pipes import Pipes
from stalwart._replies import Replies
from stalwart._sending import Sender
from stalwart._slot import Task, WorkerSlot, WorkerState

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from stalwart._stats import ExecutorStats
    from stalwart._worker import WorkerConfig

logger = logging.getLogger("stalwart")

MEMORY_SAMPLE_S = 0.25
"""How often the I/O thread reads each worker's resident memory while it
runs tasks (~2.5 µs a worker, from /proc)."""

CLAIM_POLL_S = 0.002
"""While a worker has read a call it has not yet been seen to start, the loop
looks again this often, so that ``running()`` turns True promptly."""


class Dispatcher:
    """Owns the workers, the pending queue's consumer side and the I/O thread.

    Kept apart from the executor object so the I/O thread holds no reference to
    it: an executor dropped without ``shutdown()`` is collected, which triggers a
    graceful shutdown here (as the stdlib does). Every attribute but ``inbox``,
    ``stats`` (read as a snapshot), ``thread`` and ``finished`` belongs to the
    I/O thread once it runs; ``ensure_thread`` and ``adopt`` run under
    ``inbox.lock`` before it does.
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
        self.reuse = reuse
        self.ids = itertools.count()
        self.slots: list[WorkerSlot] = []
        self.ledger = Ledger()
        self.replies = Replies(self.ledger, inbox)
        self.workers_wanted = 0  # grows on demand up to max_workers
        # The I/O side exists only with the I/O thread (an executor that never
        # ran a call holds no file descriptor).
        self.pipes: Pipes | None = None
        self.endings: Endings | None = None
        self.sender: Sender | None = None
        self.thread: threading.Thread | None = None
        self._next_memory_sample = 0.0
        self.finished = threading.Event()  # the I/O thread is done with us

    @property
    def stats(self) -> ExecutorStats:
        return self.ledger.stats

    # -- started from user threads (inbox.lock held) --------------------------------

    def ensure_thread(self) -> None:
        """Start the I/O thread (caller holds ``inbox.lock``), on the first task
        or on adopting warm workers; a ``reuse=True`` executor takes over an idle
        I/O thread that an earlier one left, if there is one."""
        if self.thread is not None:
            return
        self.pipes = pipes = Pipes(self.inbox)
        self.endings = Endings(
            self.inbox, pipes, self.ledger, self.replies, self.slots, self.retries
        )
        self.sender = Sender(
            self.inbox, self.ledger, pipes, self.worker_config.by_value
        )
        if self.reuse is not None:
            for idle in _reuse.THREADS.adopt(IDLE_IO_THREAD, 1):
                self.thread = idle.thread
                live_dispatchers.add(self)
                idle.hand_over(self)
                return
        self._fork_workers_from_caller()
        thread = threading.Thread(
            target=_io_thread_main,
            args=([self],),
            name="stalwart-dispatcher",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # interpreter finalizing, or no threads left
            pipes.close()
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
                if self.replies.avg_busy_s is None:
                    self.replies.avg_busy_s = worker.avg_busy_s
                slot.next_seq = worker.next_seq
                slot.memory = worker.memory
                slot.acked_seq = worker.next_seq - 1
                self._add_slot(slot, "adopted")
                logger.debug("adopted warm worker %s", slot.pid)
            self.stats.workers_reused += len(parked)
            self.workers_wanted = len(self.slots)
            self.inbox.wake()

    def _taken_back(self, task: Task) -> None:
        """``cancel()`` revoked ``task`` in its worker (any thread)."""
        self.inbox.taken_back.put(task)
        with self.inbox.lock:  # wake() only under it: the pipe may be closing
            self.inbox.wake()

    def join(self) -> None:
        """Wait until the I/O thread is done with this executor (workers stopped
        or parked); the thread itself may live on, idle, for the next one."""
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            self.finished.wait()
            if self.reuse is None:
                # It ends now: once it is gone from the kernel's thread list,
                # the next executor may fork this process again.
                thread.join()
                if thread.native_id is not None:
                    _forking.wait_until_gone([thread.native_id])

    # -- the I/O thread ----------------------------------------------------------------

    def run(self) -> bool:
        """The I/O thread's work for this executor; True if it ended as it should."""
        pipes, endings = self.pipes, self.endings
        assert pipes is not None
        assert endings is not None
        ended_well = False
        try:
            self._loop(pipes, endings)
            ended_well = True
        except BaseException as exc:
            logger.exception("stalwart's dispatcher thread failed")
            endings.break_pool(_outcomes.dispatcher_failed(exc))
        finally:
            inbox = self.inbox
            try:
                may_park = (
                    ended_well
                    and inbox.state is not PoolState.BROKEN
                    and inbox.abort is None
                )
                _parking.park_or_stop(
                    self.slots,
                    pipes,
                    self.reuse if may_park else None,
                    self.stats,
                    self.replies.avg_busy_s,
                    interpreter_exiting(),
                )
            except BaseException:
                logger.exception("stalwart's dispatcher thread failed to stop")
                ended_well = False
                _parking.kill_all(self.slots)
            finally:
                pipes.close()
                live_dispatchers.discard(self)
                with inbox.lock:
                    if inbox.state is not PoolState.BROKEN:
                        inbox.state = PoolState.CLOSED
                inbox.cancel_done.set()  # never leave shutdown() waiting
                self.finished.set()  # nor join()
        return ended_well

    def _loop(self, pipes: Pipes, endings: Endings) -> None:
        inbox, ledger, replies = self.inbox, self.ledger, self.replies
        while True:
            frames, ended, woken = pipes.wait(self._next_wake_s(endings))
            for slot, frame in frames:
                replies.on_frame(slot, frame)
            for slot in ended:
                if slot in self.slots:
                    endings.on_worker_exit(slot)
            if not woken:
                endings.reap_silent_deaths()
            ledger.settle_taken_back(inbox)
            ledger.claim_started(self.slots)
            if inbox.abort is not None:
                endings.abort()
            self._retire_surplus(pipes)
            self._start_workers_as_needed(endings)
            if inbox.state is PoolState.BROKEN:
                return
            self._dispatch()
            if inbox.cancel_asked:
                ledger.cancel_unstarted(self.slots, inbox)
            if inbox.state is not PoolState.RUNNING and self._is_idle():
                return

    def _next_wake_s(self, endings: Endings) -> float:
        wait_s = LIVENESS_CHECK_S
        if any(slot.running is not None for slot in self.slots):
            wait_s = self._sample_memory()
        if self.sender is not None and self.sender.timeouts_in_use:
            wait_s = min(wait_s, endings.kill_overdue_tasks())
        thief = False
        for slot in self.slots:
            head = slot.in_flight[0] if slot.in_flight else None
            if head is not None and not head.claimed and slot.has_read(head):
                wait_s = min(wait_s, CLAIM_POLL_S)
            thief = thief or slot.is_idle()
        if thief and not self.inbox.pending:
            # An idle worker steals from a stalled one: look again when the
            # next running call would count as stalled.
            now = time.monotonic()
            stall_s = _scheduler.stalled_after_s(self.replies.avg_busy_s)
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
        self.ledger.drop_cancelled_head(self.inbox)
        return not self.inbox.pending

    # -- starting and retiring workers ---------------------------------------------------

    def _start_workers_as_needed(self, endings: Endings) -> None:
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
                self._start_worker(endings)
        except Exception as exc:  # noqa: BLE001 - reported on every future
            endings.break_pool(_outcomes.start_error(exc))

    def _live_slots(self) -> list[WorkerSlot]:
        return [slot for slot in self.slots if slot.state is not WorkerState.STOPPING]

    def _fork_workers_from_caller(self) -> None:
        """Where forking this process is provably safe (``_forking``), start
        every worker now, by forking the caller, before the I/O thread starts:
        the stdlib's fork speed, where fork cannot hurt. Later workers, and all
        of them where it is not safe, start as ``_startup.plan`` says."""
        hazard = _startup.caller_fork_hazard(self.context)
        if hazard is not None:
            if _startup.may_fork_caller(self.context):
                logger.debug("not forking the caller: %s", hazard)
            return
        endings = self.endings
        assert endings is not None
        # What every worker imports as it starts, imported once, here: the
        # forks inherit it.
        from stalwart import _lifeline  # noqa: F401

        try:
            for _ in range(self.inbox.max_workers):
                self._start_worker(endings, _startup.FORK_CALLER)
        except Exception as exc:  # noqa: BLE001 - the I/O thread starts the rest
            logger.debug("forking the caller failed (%s); using the template", exc)
        self.workers_wanted = len(self.slots)
        if self.worker_config.max_tasks is not None:
            _template.template.start_soon()  # its replacements will come from there

    def _start_worker(
        self, endings: Endings, start: _startup.WorkerStart | None = None
    ) -> None:
        if start is None:
            start = _startup.plan(self.context)
        claims = _claims.ClaimTable(start.context)
        config = dataclasses.replace(
            self.worker_config,
            claims=claims,
            log_levels=_forwarding.parent_log_levels(),
        )
        parent_end, child_end = start.context.Pipe(duplex=True)
        try:
            process = start.start(child_end, config)
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
        because = "start"
        if endings.start_reasons:
            because = endings.start_reasons.popleft()
        self._add_slot(slot, because)
        self.stats.workers_started += 1
        if endings.deaths_to_replace:
            endings.deaths_to_replace -= 1
            self.stats.workers_replaced += 1
        logger.debug("started worker %s: %s", process.pid, start.how)

    def _add_slot(self, slot: WorkerSlot, because: str) -> None:
        assert self.pipes is not None
        self.slots.append(slot)
        self.pipes.watch(slot)
        slot.figures.started_because = because
        self.stats.workers.append(slot.figures)
        if slot.memory is not None:  # adopted: its figures start from now
            slot.figures.note_memory(slot.memory.refresh())
        elif slot.pid is not None:
            slot.memory = _memory.MemoryWatch(slot.pid)

    def _sample_memory(self) -> float:
        """Each worker's resident memory, every ``MEMORY_SAMPLE_S`` (for
        stats(), and the figures of an OOM kill's message); the seconds until
        the next sample."""
        now = time.monotonic()
        left_s = self._next_memory_sample - now
        if left_s > 0:
            return left_s
        for slot in self.slots:
            if slot.memory is not None:
                slot.figures.note_memory(slot.memory.refresh())
        self._next_memory_sample = now + MEMORY_SAMPLE_S
        return MEMORY_SAMPLE_S

    def _retire_surplus(self, pipes: Pipes) -> None:
        """After a resize (get_reusable_executor): idle workers beyond
        max_workers exit; busy ones are sent nothing more once others suffice."""
        if len(self.slots) <= self.inbox.max_workers:
            return  # the common case, every round: nothing to count
        surplus = len(self._live_slots()) - self.inbox.max_workers
        for slot in list(self.slots):
            if surplus <= 0:
                return
            if slot.is_idle():
                _parking.stop(slot, pipes)
                surplus -= 1

    # -- dispatch ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        sender = self.sender
        assert sender is not None
        pending = self.inbox.pending
        slots = self._live_slots()
        avg_busy_s = self.replies.avg_busy_s
        plan = _scheduler.plan(slots, len(pending), avg_busy_s, time.monotonic())
        for slot, count, window in plan.sends:
            slot.window = window
            sender.fill(slot, count)
        if plan.steals:
            for slot, count in plan.steals:
                sender.steal(slot, count)
            # What came back goes to the idle workers now, not a round later.
            plan = _scheduler.plan(slots, len(pending), avg_busy_s, time.monotonic())
            for slot, count, window in plan.sends:
                slot.window = window
                sender.fill(slot, count)


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
