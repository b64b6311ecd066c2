"""What the workers say: each frame decoded into a typed reply and acted on.

A worker answers its calls in order, so an answer always belongs to the oldest
call in flight on that worker. Whatever is wrong with one frame (a result the
parent cannot unpickle, a reply of an unknown shape, no memory to hold it)
fails that one call, never the dispatcher. Owned by the I/O thread.
"""

from __future__ import annotations

import logging
import pickle
import time
from typing import TYPE_CHECKING

from stalwart import _forwarding, _outcomes, _outofband, _scheduler, _wire
from stalwart._slot import WorkerState

if TYPE_CHECKING:
    from stalwart._inbox import Inbox
    from stalwart._ledger import Ledger
    from stalwart._slot import Task, WorkerSlot

logger = logging.getLogger("stalwart")


class Replies:
    """Acts on workers' messages; keeps the measured average task time."""

    def __init__(self, ledger: Ledger, inbox: Inbox) -> None:
        self.ledger = ledger
        self.inbox = inbox
        self.avg_busy_s: float | None = None  # what the scheduler sizes batches by
        self.consecutive_start_failures = 0  # reset by each READY
        self.prefix_output = False  # "[worker 123] " before each line a task prints

    def on_frame(
        self, slot: WorkerSlot, frame: bytes | bytearray | _wire.Unreadable
    ) -> None:
        try:
            if isinstance(frame, _wire.Unreadable):
                raise frame.error
            if frame[:1] == _outofband.SEGMENT_FRAME_START:
                fd = slot.reader.take_fd()
                reply = _wire.decode_reply(_outofband.load_reply(frame, [fd]))
            else:
                reply = _wire.decode_reply(pickle.loads(frame))
        except BaseException as exc:  # noqa: BLE001 - fails that task only
            del frame
            # Only an answer can fail to unpickle (a class the parent cannot
            # import, a __reduce__ that raises, no memory for it), and a worker
            # answers in order: it belongs to the oldest call in flight.
            task = self._answered(slot, None, None)
            if task is not None:
                error = _outcomes.unreadable_result(slot.pid, task, exc)
                self.ledger.resolve(task, False, error)
            return
        del frame
        if isinstance(reply, _wire.Answer):
            self._on_answer(slot, reply)
        elif isinstance(reply, _wire.Received):
            self._on_received(slot, reply.last_seq)
        elif isinstance(reply, _wire.Output):
            if self.prefix_output:
                stream = reply.stream
                slot.mid_line[stream] = _forwarding.deliver_output(
                    stream,
                    reply.text,
                    f"[worker {slot.pid}] ",
                    slot.mid_line.get(stream, False),
                )
            else:
                _forwarding.deliver_output(reply.stream, reply.text)
        elif isinstance(reply, _wire.Log):
            _forwarding.deliver_record(reply.fields, slot.pid)
        elif isinstance(reply, _wire.Ready):
            if slot.state is WorkerState.STARTING:
                slot.move(WorkerState.RUNNING)
            self.consecutive_start_failures = 0
            if slot.memory is not None:  # its first figure for stats()
                slot.figures.note_memory(slot.memory.refresh())
        elif isinstance(reply, _wire.MainFailed):
            slot.main_failure = reply
        elif isinstance(reply, _wire.OverMemory):
            slot.over_memory = reply.rss_bytes
            slot.figures.note_memory(reply.rss_bytes)
            slot.tasks_left = 0  # it exits: send it nothing more
        else:
            slot.init_failure = (reply.summary, reply.remote_traceback)

    def _on_answer(self, slot: WorkerSlot, answer: _wire.Answer) -> None:
        task = self._answered(slot, answer.task_id, answer.busy_s)
        if task is None or not task.started:
            return  # not ours, or its future was cancelled: nobody waits for it
        try:
            succeeded, value = answer.outcome()
        except BaseException as exc:  # noqa: BLE001 - fails that task only
            succeeded, value = False, _outcomes.unreadable_result(slot.pid, task, exc)
        self.ledger.resolve(task, succeeded, value)

    def _answered(
        self, slot: WorkerSlot, task_id: int | None, busy_s: float | None
    ) -> Task | None:
        """Pop the call a worker answered (the oldest in flight)."""
        if task_id is not None:
            self._settle_skipped(slot, task_id)
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
        self.ledger.claim(task)
        task.slot = None
        slot.window = min(_scheduler.MAX_DEPTH, slot.window + 1)
        if not slot.in_flight:
            slot.idle_since = time.monotonic()
        if busy_s is not None:
            avg = self.avg_busy_s
            self.avg_busy_s = busy_s if avg is None else 0.9 * avg + 0.1 * busy_s
            figures = slot.figures
            figures.tasks += 1
            figures.busy_s += busy_s
            self.ledger.stats.note_task_time(busy_s, task.describe)
        slot.note_running()
        return task

    def _settle_skipped(self, slot: WorkerSlot, task_id: int) -> None:
        """The calls ahead of ``task_id`` were skipped by the worker.

        A worker runs its calls in order and skips only those whose ``cancel()``
        revoked them; the user's thread tells us so through ``taken_back``, but
        the worker's next answer may arrive first. Settled here, as
        ``taken_back`` would, so that the answer finds its call at the head.
        """
        in_flight = slot.in_flight
        if not in_flight or in_flight[0].id == task_id:
            return
        if all(task.id != task_id for task in in_flight):
            return  # not ours at all: warned about by the caller
        while in_flight[0].id != task_id:
            self.ledger.settle_revoked(slot, in_flight[0], self.inbox)

    def _on_received(self, slot: WorkerSlot, last_seq: int) -> None:
        """The worker read every call up to ``last_seq``. (Each keeps its
        pickled call until it ends: sent again, it must send the same data.
        Large data is in shared memory the worker maps anyway: free to keep.)"""
        slot.acked_seq = max(slot.acked_seq, last_seq)
        while slot.unacknowledged and slot.unacknowledged[0][0] <= last_seq:
            slot.unacknowledged_bytes -= slot.unacknowledged.popleft()[1]
        slot.note_running()
