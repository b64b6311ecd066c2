"""How workers end, and what follows for the calls they held.

A worker's claim table (``_claims``) says which call it had started, so each
ending has an exact answer (words from ``_outcomes``):

* killed for running past ``task_timeout`` (KILLING): that call fails with
  ``TaskTimeoutError``;
* died while STARTING: a failed start; after ``MAX_CONSECUTIVE_START_FAILURES``
  in a row the pool breaks (no fork storm);
* died holding a call it had started: a crash; the call is re-run (``retries``)
  or fails with ``WorkerCrashedError``;
* otherwise (idle, retired, recycled): nothing failed.

In every case the calls it had not started go back, in order, to the front of
the pending queue. This module also ends the pool itself: ``break_pool`` (an
error fails every outstanding call) and ``abort`` (Ctrl-C, ``kill_workers``).
Owned by the I/O thread; futures are resolved with no lock held.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import time
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING

from stalwart import _claims, _outcomes, _spawn
from stalwart._inbox import PoolState
from stalwart._slot import WorkerState

if TYPE_CHECKING:
    from concurrent.futures.process import BrokenProcessPool

    from stalwart._inbox import Inbox
    from stalwart._ledger import Ledger
    from stalwart._pipes import Pipes
    from stalwart._replies import Replies
    from stalwart._slot import Task, WorkerSlot

logger = logging.getLogger("stalwart")

MAX_CONSECUTIVE_START_FAILURES = 3
"""Failed worker starts in a row after which the executor gives up: enough to ride
out a transient failure, few enough that a broken initializer is no fork storm."""

LIVENESS_CHECK_S = 1.0
"""When the I/O thread has had nothing to do for this long, it asks the OS
(waitpid) whether any worker died unnoticed (see reap_silent_deaths)."""


class Endings:
    """Settles each worker's end; see the module docstring."""

    def __init__(
        self,
        inbox: Inbox,
        pipes: Pipes,
        ledger: Ledger,
        replies: Replies,
        slots: list[WorkerSlot],
        retries: int,
    ) -> None:
        self.inbox = inbox
        self.pipes = pipes
        self.ledger = ledger
        self.replies = replies
        self.slots = slots  # the dispatcher's list: ended workers leave it here
        self.retries = retries
        self.deaths_to_replace = 0  # workers that died and were not replaced yet
        # Why the next workers will start (stats()): what ended their forerunners.
        self.start_reasons: collections.deque[str] = collections.deque()

    # -- task timeouts ---------------------------------------------------------------

    def kill_overdue_tasks(self) -> float:
        """Kill each worker whose running call is past its timeout; return the
        seconds until the next deadline. The killed worker's sentinel then fires
        and on_worker_exit fails the call with TaskTimeoutError."""
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
            self._take_last_words(slot)
            if slot.process.exitcode is not None:
                continue
            if slot.running is task:
                slot.overdue = task
                slot.move(WorkerState.KILLING)
                _spawn.kill_worker_tree(slot.process)
            else:
                next_deadline_s = 0.0  # the next call started: look again at once
        return next_deadline_s

    # -- worker ends -------------------------------------------------------------------

    def reap_silent_deaths(self) -> None:
        """Find workers that died without their sentinel firing.

        Under the plain ``fork`` start method a worker forked by another thread
        can inherit a copy of this worker's sentinel pipe, so the pipe only
        closes when that other process exits; ``waitpid`` (``exitcode``) is
        authoritative whatever file descriptors leaked.
        """
        for slot in list(self.slots):
            if slot.process.exitcode is not None:
                self.on_worker_exit(slot)

    def _take_last_words(self, slot: WorkerSlot) -> None:
        """Act on everything the worker sent (before dying, or being killed)."""
        if self.pipes.is_open(slot):
            for frame in self.pipes.read(slot, until_eof=True):
                self.replies.on_frame(slot, frame)

    def on_worker_exit(self, slot: WorkerSlot) -> None:
        self._take_last_words(slot)
        self.pipes.forget(slot)
        self.slots.remove(slot)
        slot.process.join()
        exitcode = slot.process.exitcode
        was = slot.state
        started = slot.claims.started()
        slot.move(WorkerState.EXITED)
        head = slot.in_flight[0] if slot.in_flight else None
        stats = self.ledger.stats
        if was is WorkerState.STOPPING and head is None:
            stats.worker_ended(slot.figures, "retired")  # on purpose: not replaced
        elif slot.over_memory is not None and exitcode == 0:
            stats.workers_over_memory += 1
            self._replace(
                slot,
                "max_memory_per_child",
                "replaces a worker past max_memory_per_child",
            )
            logger.info(
                "worker %s left after a task with %.1f MiB resident, past "
                "max_memory_per_child; replacing it",
                slot.pid,
                slot.over_memory / 2**20,
            )
        elif slot.tasks_left == 0 and exitcode == 0 and head is None:
            stats.workers_recycled += 1
            stats.worker_ended(slot.figures, "max_tasks_per_child")
            self.start_reasons.append("replaces a worker at max_tasks_per_child")
        elif was is WorkerState.KILLING and head is not None and head is slot.overdue:
            self._replace(slot, "timed out", "replaces a timed-out worker")
        elif was is WorkerState.STARTING:
            self._replace(
                slot, "failed to start", "replaces a worker that failed to start"
            )
        elif head is not None and head.seq <= started:
            self._replace(slot, "crashed", "replaces a crashed worker")
        else:
            self._replace(slot, f"exited ({_outcomes.exit_description(exitcode)})")
        if was is WorkerState.KILLING and head is not None and head is slot.overdue:
            slot.in_flight.popleft()
            self.ledger.claim(head)  # it ran: RUNNING, if no poll had seen it yet
            head.slot = None
            error = _outcomes.timed_out(slot.pid, head)
            logger.warning("%s", error)
            self.ledger.fail(head, error)
        elif was is WorkerState.STARTING:
            self._requeue_unstarted(slot)
            self._on_start_failure(slot, exitcode)
        elif head is not None and head.seq <= started:
            self._on_crash(slot, exitcode)
        elif (
            exitcode == -signal.SIGKILL
            and was is not WorkerState.STOPPING
            and self.inbox.abort is None
        ):
            logger.warning(
                "worker %s was killed while it ran no task; replacing it. %s",
                slot.pid,
                _why_killed(slot, exitcode),
            )
        else:
            logger.debug("worker %s exited (exit code %s)", slot.pid, exitcode)
        # The rest never started (or, after a timeout, one was cut short at
        # the last instant): they run elsewhere, in order.
        self._requeue_unstarted(slot)
        slot.claims.close()
        if slot.memory is not None:
            slot.memory.close()

    def _replace(self, slot: WorkerSlot, ended: str, successor: str = "") -> None:
        """``slot``'s worker ended (``ended``, for stats()); its successor
        starts because of it (``successor``, or the same words)."""
        self.deaths_to_replace += 1
        self.ledger.stats.worker_ended(slot.figures, ended)
        self.start_reasons.append(successor or ended)

    def _on_crash(self, slot: WorkerSlot, exitcode: int | None) -> None:
        crashed = slot.in_flight.popleft()
        crashed.slot = None
        crashed.attempts += 1
        self.ledger.claim(crashed)
        why = _why_killed(slot, exitcode)
        logger.warning(
            "worker %s died (%s) while running %s; replacing it.%s",
            slot.pid,
            _outcomes.exit_description(exitcode),
            crashed.describe(),
            f" {why}" if why else "",
        )
        if crashed.attempts <= self.retries:
            self.ledger.stats.tasks_retried += 1
            crashed.future.retries = crashed.attempts  # type: ignore[attr-defined]
            self.inbox.pending.appendleft(crashed)
            return
        self.ledger.fail(crashed, _outcomes.crashed(slot.pid, exitcode, crashed, why))

    def _requeue_unstarted(self, slot: WorkerSlot) -> None:
        """Put a dead worker's remaining calls back at the front of the queue."""
        requeued: list[Task] = []
        for task in slot.in_flight:
            task.slot = None
            if _claims.withdraw(task.future):
                requeued.append(task)
            else:
                self.ledger.drop_cancelled(task)
        slot.in_flight.clear()
        self.inbox.pending.extendleft(reversed(requeued))

    def _on_start_failure(self, slot: WorkerSlot, exitcode: int | None) -> None:
        self.replies.consecutive_start_failures += 1
        failures = self.replies.consecutive_start_failures
        given_up = failures >= MAX_CONSECUTIVE_START_FAILURES
        error = _outcomes.start_failed(
            slot.pid,
            exitcode,
            slot.init_failure,
            failures,
            given_up,
            slot.main_failure,
        )
        logger.warning("%s", error)
        if given_up:
            self.break_pool(error)

    # -- the pool's own end ----------------------------------------------------------

    def break_pool(self, error: BrokenProcessPool) -> None:
        """Fail every unresolved future with `error` and refuse new work.

        The futures are collected under the inbox lock and failed after it is
        released: their callbacks may call submit() or shutdown().
        """
        inbox = self.inbox
        with inbox.lock:
            inbox.broken = error
            inbox.state = PoolState.BROKEN
            tasks = list(inbox.pending)
            inbox.pending.clear()
        for slot in self.slots:
            tasks.extend(slot.in_flight)
            slot.in_flight.clear()
        for task in tasks:
            task.slot = None
            if self.ledger.claim(task):
                self.ledger.fail(task, error)

    def abort(self) -> None:
        """Ctrl-C, kill_workers or terminate_workers(): kill the workers; calls
        they had started fail, every other call is cancelled."""
        abort = self.inbox.abort
        assert abort is not None
        ledger = self.ledger
        for slot in list(self.slots):
            _kill(slot, abort.signum)
        for slot in self.slots:
            started = slot.claims.started()
            for task in slot.in_flight:
                task.slot = None
                if task.seq <= started and ledger.claim(task):
                    ledger.fail(
                        task,
                        CancelledError(
                            f"{task.describe()} was interrupted ({abort.reason}): "
                            "its worker was terminated"
                        ),
                    )
                    continue
                if _claims.withdraw(task.future):
                    task.future.cancel()
                ledger.drop_cancelled(task)
            slot.in_flight.clear()
        pending = self.inbox.pending
        while pending:
            task = pending.popleft()
            if task.future.cancel():
                ledger.drop_cancelled(task)
            elif ledger.claim(task):  # a retried call, running already
                ledger.fail(task, CancelledError(f"interrupted ({abort.reason})"))


def _why_killed(slot: WorkerSlot, exitcode: int | None) -> str | None:
    """For a worker that died of a SIGKILL stalwart did not send: whether the
    kernel's OOM killer sent it, with the figures (``_memory``)."""
    if exitcode != -signal.SIGKILL or slot.memory is None:
        return None
    return slot.memory.explain_sigkill()


def _kill(slot: WorkerSlot, signum: int) -> None:
    """SIGKILL a worker's whole tree (what its task started too); another
    signal (terminate_workers: SIGTERM) goes to the worker alone, as the
    stdlib's terminate() does."""
    if signum == signal.SIGKILL:
        _spawn.kill_worker_tree(slot.process)
    else:
        with contextlib.suppress(OSError):
            slot.process.terminate()
