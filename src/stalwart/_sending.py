"""Carrying out the scheduler's decisions: calls sent to workers, or taken back.

``fill`` sends a worker calls from the front of the pending queue in one batch
frame, each marked "sent ahead" in its future first, so that from the moment
it can reach the worker a ``cancel()`` revokes it there (``_claims``).
``steal`` takes back the unstarted end of a worker's backlog for idle workers.
Owned by the I/O thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart import _claims, _pickling, _wire
from stalwart.errors import PicklingError

if TYPE_CHECKING:
    from stalwart._inbox import Inbox
    from stalwart._ledger import Ledger
    from stalwart._pipes import Pipes
    from stalwart._slot import Task, WorkerSlot


class Sender:
    """Sends batches and takes back backlogs; notes whether timeouts are used."""

    def __init__(self, inbox: Inbox, ledger: Ledger, pipes: Pipes, by_value: bool):
        self.inbox = inbox
        self.ledger = ledger
        self.pipes = pipes
        self.by_value = by_value
        self.timeouts_in_use = False  # some task has a task_timeout: watch the clock

    def fill(self, slot: WorkerSlot, room: int) -> None:
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
                self.ledger.drop_cancelled(task)
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
        self.pipes.send(slot, _wire.encode_batch(entries))

    def _serialize_again(self, task: Task) -> bool:
        """Re-pickle a task whose bytes were dropped (its worker read them, then
        died or gave it back); False if that fails now, and the task failed."""
        try:
            task.call = _pickling.serialize_call(
                task.fn, task.args, task.kwargs, by_value=self.by_value
            )
        except PicklingError as exc:  # an argument was changed since submit()
            if self.ledger.claim(task):
                self.ledger.fail(task, exc)
            return False
        return True

    def steal(self, slot: WorkerSlot, count: int) -> None:
        """Take back up to ``count`` unstarted calls from the end of ``slot``'s
        backlog, for idle workers: to the front of the pending queue, in order."""
        taken: list[Task] = []
        while count and slot.in_flight:
            task = slot.in_flight[-1]
            wanted = _claims.take_back(task.future, slot.claims, task.seq)
            if wanted is None:
                break  # it started, so every call before it has too
            slot.in_flight.pop()
            slot.give_back(task)
            count -= 1
            if wanted:
                taken.append(task)
            else:
                self.ledger.drop_cancelled(task)
        self.inbox.pending.extendleft(reversed(taken))
        self.ledger.stats.tasks_rebalanced += len(taken)
