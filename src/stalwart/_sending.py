"""Carrying out the scheduler's decisions: calls sent to workers, or taken back.

``fill`` sends a worker calls from the front of the pending queue in one batch
frame, each marked "sent ahead" in its future first, so that from the moment
it can reach the worker a ``cancel()`` revokes it there (``_claims``).
``steal`` takes back the unstarted end of a worker's backlog for idle workers.
Owned by the I/O thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart import _claims, _outofband, _shared, _wire

if TYPE_CHECKING:
    from stalwart._inbox import Inbox
    from stalwart._ledger import Ledger
    from stalwart._pipes import HasFd, Pipes
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
        pending = self.inbox.pending
        entries: list[tuple[int, int, bytes | _outofband.Packed]] = []
        batch: list[Task] = []
        files = _Files(slot)
        while room and pending:
            call = pending[0].call
            assert call is not None, "a pending task keeps its call"
            if not isinstance(call, bytes) and not files.take(call):
                break  # this frame carries enough descriptors: the next one
            task = pending.popleft()
            task.slot = slot
            task.seq = slot.next_seq
            # From here on cancel() revokes it in the worker (see _claims).
            if not _claims.mark_sent_ahead(task.future, task):
                task.slot = None
                self.ledger.drop_cancelled(task)
                continue
            slot.next_seq += 1
            batch.append(task)
            entries.append((task.id, task.seq, call))
            if task.timeout is not None:
                self.timeouts_in_use = True
            room -= 1
        if not batch:
            return
        slot.in_flight.extend(batch)
        size = sum(_wire.call_size(call) for _, _, call in entries)
        slot.unacknowledged.append((batch[-1].seq, size))
        slot.unacknowledged_bytes += size
        if slot.tasks_left is not None:
            slot.tasks_left -= len(batch)
        frame = _wire.encode_batch(
            entries, files.own_ids, files.shared_ids, files.forgotten()
        )
        self.pipes.send(slot, frame, files.files)

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


class _Files:
    """The shared memory files one batch frame carries to one worker: each
    call's own file, and the ``shared()`` files the worker has not had yet."""

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot
        self.own_files: list[_outofband.Segment] = []
        self.own_ids: list[int] = []
        self.shared_files: list[_shared.SharedSegment] = []
        self.shared_ids: list[int] = []

    @property
    def files(self) -> list[HasFd]:
        """In the order the worker pairs them with ids: own files, then shared."""
        return [*self.own_files, *self.shared_files]

    def take(self, call: _outofband.Packed) -> bool:
        """Add ``call``'s files; False if the frame has no room for them
        (never for the first call: a call needs few)."""
        segment = call.segment
        sent = self.slot.shared_sent
        new_shared = [s for s in call.shared if s.id not in sent]
        needed = len(new_shared) + (segment is not None)
        if not needed:
            return True
        count = len(self.own_ids) + len(self.shared_ids)
        if count and count + needed > _outofband.MAX_FDS_PER_FRAME:
            return False
        if segment is not None:
            self.own_files.append(segment)
            self.own_ids.append(segment.id)
        for shared in new_shared:
            self.shared_files.append(shared)
            self.shared_ids.append(shared.id)
            sent.add(shared.id)
        return True

    def forgotten(self) -> list[int]:
        """``shared()`` files gone here, which the worker may drop."""
        sent = self.slot.shared_sent
        if not sent:
            return []
        gone = sent - _shared.alive_ids()
        sent -= gone
        return sorted(gone)
