"""The futures' side of the dispatcher: every task leaves through here, once.

A task ends in exactly one of three ways: it is claimed (its future moves to
RUNNING) and then resolved with a result or an exception, or it is dropped as
cancelled. ``wait()`` and ``as_completed()`` count a cancelled future as done
only once its executor has called ``set_running_or_notify_cancel()`` on it, so
a cancelled task dropped any other way would hang them forever. The ledger also
keeps ``stats()``'s task counters, so each outcome is counted where it happens.

Owned by the I/O thread. It never holds a lock while it resolves a future: the
future's callbacks run user code, which may call ``submit()`` or ``shutdown()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stalwart import _claims
from stalwart._stats import ExecutorStats

if TYPE_CHECKING:
    from stalwart._inbox import Inbox
    from stalwart._slot import Task, WorkerSlot


class Ledger:
    """Claims, resolutions and cancellations of one executor's tasks."""

    def __init__(self) -> None:
        self.stats = ExecutorStats()

    def claim(self, task: Task) -> bool:
        """The call runs, ran or is about to: its future to RUNNING (idempotent).
        False if it had been cancelled (its waiters are then told)."""
        if not task.claimed:
            task.claimed = True
            task.started = _claims.claim_started(task.future)
            if not task.started:
                self.stats.tasks_cancelled += 1
        return task.started

    def drop_cancelled(self, task: Task) -> None:
        """A cancelled task leaves unrun; its waiters are told."""
        if not task.claimed:
            task.claimed = True
            task.started = task.future.set_running_or_notify_cancel()
            self.stats.tasks_cancelled += 1
            assert not task.started, "only cancelled tasks are dropped"
        task.call = None  # its shared memory, if any, goes now

    def resolve(self, task: Task, succeeded: bool, value: Any) -> None:
        if succeeded:
            task.call = None
            self.stats.tasks_completed += 1
            task.future.set_result(value)
        else:
            self.fail(task, value)

    def fail(self, task: Task, error: BaseException) -> None:
        task.call = None
        self.stats.count_failure(error)
        task.future.set_exception(error)

    # -- claims and cancellation in workers' backlogs -------------------------------------

    def claim_started(self, slots: list[WorkerSlot]) -> None:
        """Move the futures of calls the workers have started to RUNNING."""
        for slot in slots:
            if slot.in_flight:
                head = slot.in_flight[0]
                if not head.claimed and head.seq <= slot.claims.started():
                    self.claim(head)

    def settle_taken_back(self, inbox: Inbox) -> None:
        """Calls that ``cancel()`` revoked in a worker leave its backlog."""
        queue = inbox.taken_back
        while not queue.empty():
            task = queue.get_nowait()
            slot = task.slot
            if slot is None or task not in slot.in_flight:
                continue  # it had already left (its worker died, was stolen
                # from, or skipped it: see Replies)
            self.settle_revoked(slot, task, inbox)

    def settle_revoked(self, slot: WorkerSlot, task: Task, inbox: Inbox) -> None:
        """``task`` leaves ``slot``'s backlog unstarted: ``cancel()`` revoked it."""
        slot.in_flight.remove(task)
        slot.give_back(task)
        if task.future.cancelled():  # waits for cancel() to finish with it
            self.drop_cancelled(task)
        else:
            # cancel() was interrupted (Ctrl-C) between revoking the call
            # and cancelling its future: the call is still wanted.
            inbox.pending.appendleft(task)

    def cancel_unstarted(self, slots: list[WorkerSlot], inbox: Inbox) -> None:
        """shutdown(cancel_futures=True): cancel every call not started, queued
        here or sent ahead to a worker; those running finish.

        A worker still starting keeps the one call reserved for it, as the
        stdlib's call queue feeds its starting workers: that call runs (at most
        one per worker escapes, within the stdlib's max_workers + 1).
        """
        inbox.cancel_asked = False
        for slot in slots:
            reserved = 1 if slot.starting else 0
            for task in list(slot.in_flight)[reserved:]:
                task.future.cancel()  # revokes it in the worker if not started
        pending = inbox.pending
        for task in list(pending):
            task.future.cancel()
        self.settle_taken_back(inbox)
        self.drop_cancelled_head(inbox)
        inbox.cancel_done.set()

    def drop_cancelled_head(self, inbox: Inbox) -> None:
        """Drop the cancelled tasks at the front of the pending queue."""
        pending = inbox.pending
        while pending and pending[0].future.cancelled():
            self.drop_cancelled(pending.popleft())
