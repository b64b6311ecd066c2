"""The pipe loop's mechanism: one selector over every worker's pipe and sentinel.

Pure mechanism, owned by the I/O thread: it knows how to wait, write and read,
not what a message means. ``wait()`` returns what happened (frames that
arrived, workers that ended); the dispatcher decides what follows.

* Writes are non-blocking ``writev``s of an outbox of chunks (the pickled calls
  as ``submit()`` made them, never copied); a worker's pipe is watched for
  writability only while its outbox is not empty. A worker blocked writing a
  large reply can therefore never deadlock against us writing to it.
* Reads parse every frame one read returned (``_wire.FrameReader``), so one
  thread keeps up with thousands of replies a second.
* Descriptors of shared memory files (``_outofband``) ride on the first byte
  of their frame (``sendmsg``, SCM_RIGHTS). The outbox holds duplicates, so a
  task that ends meanwhile cannot close, nor a new file reuse, what is sent.
"""

from __future__ import annotations

import itertools
import os
import selectors
from typing import TYPE_CHECKING, Protocol, cast

from stalwart import _outofband

if TYPE_CHECKING:
    from stalwart import _wire
    from stalwart._inbox import Inbox
    from stalwart._slot import WorkerSlot

    Frame = bytes | bytearray | _wire.Unreadable


class HasFd(Protocol):
    """A shared memory file (``_outofband.Segment``, ``_shared.SharedSegment``):
    open for as long as something holds it."""

    fd: int


class WithFds:
    """An outbox chunk that starts a frame carrying the descriptors of
    ``files``; holding them keeps each open until it is sent, even if its task
    ends meanwhile (cancelled), so no closed or reused number is ever sent."""

    __slots__ = ("files", "view")

    def __init__(self, view: memoryview, files: list[HasFd]) -> None:
        self.view = view
        self.files = files

    def close(self) -> None:
        self.files = []


def _close_outbox(slot: WorkerSlot) -> None:
    for chunk in slot.outbox:
        if isinstance(chunk, WithFds):
            chunk.close()
    slot.outbox.clear()
    slot.outbox_fds = 0


class Pipes:
    """The selector, the wake-up pipe's read end, and which fd is whose."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.selector = selectors.DefaultSelector()
        self.selector.register(inbox.open_wake_pipe(), selectors.EVENT_READ, None)
        self._slot_by_fd: dict[int, WorkerSlot] = {}  # pipe fd and sentinel -> slot

    def watch(self, slot: WorkerSlot) -> None:
        self.selector.register(slot.fd, selectors.EVENT_READ, slot)
        self.selector.register(slot.sentinel, selectors.EVENT_READ, slot)
        self._slot_by_fd[slot.fd] = slot
        self._slot_by_fd[slot.sentinel] = slot

    def unwatch(self, slot: WorkerSlot) -> None:
        """Stop watching a worker's pipe and sentinel (parked, or ended)."""
        for fd in (slot.fd, slot.sentinel):
            if self.selector.get_map().get(fd) is not None:
                self.selector.unregister(fd)
            self._slot_by_fd.pop(fd, None)

    def forget(self, slot: WorkerSlot) -> None:
        self.unwatch(slot)
        _close_outbox(slot)
        slot.reader.close()
        slot.sock.close()
        slot.conn.close()

    def wait(
        self, timeout: float
    ) -> tuple[list[tuple[WorkerSlot, Frame]], list[WorkerSlot], bool]:
        """Wait up to ``timeout`` s; return (frames that arrived, in order, with
        their worker; workers whose process ended; whether anything happened)."""
        events = self.selector.select(timeout)
        frames: list[tuple[WorkerSlot, Frame]] = []
        ended: list[WorkerSlot] = []
        for key, mask in events:
            slot = self._slot_by_fd.get(key.fd)
            if key.data is None:
                self.inbox.drain_wake_pipe()
            elif slot is None:
                continue  # its sentinel fired earlier in this round: already gone
            elif key.fd == slot.sentinel:
                ended.append(slot)
            else:
                if mask & selectors.EVENT_WRITE:
                    self.flush(slot)
                if mask & selectors.EVENT_READ:
                    frames.extend((slot, frame) for frame in self.read(slot, False))
        return frames, ended, bool(events)

    def read(self, slot: WorkerSlot, until_eof: bool) -> list[Frame]:
        """What the worker has sent (all of it, up to EOF, if ``until_eof``)."""
        frames: list[Frame] = []
        while True:
            try:
                more, eof = slot.reader.read_from(slot.sock)
            except (BlockingIOError, InterruptedError):
                return frames
            except OSError:
                more, eof = [], True
            frames.extend(more)
            if eof:
                # The worker is exiting; its sentinel decides what happened.
                if self.selector.get_map().get(slot.fd) is not None:
                    self.selector.unregister(slot.fd)
                    self._slot_by_fd.pop(slot.fd, None)
                return frames
            if not until_eof:
                return frames

    def is_open(self, slot: WorkerSlot) -> bool:
        """Whether the worker's pipe is still watched (not at EOF yet)."""
        return self.selector.get_map().get(slot.fd) is not None

    def send(
        self, slot: WorkerSlot, chunks: list[bytes], files: list[HasFd] | None = None
    ) -> None:
        """Queue a frame (``chunks``, header first), the descriptors of
        ``files`` riding on it."""
        was_empty = not slot.outbox
        views = [memoryview(chunk) for chunk in chunks]
        if files:
            slot.outbox.append(WithFds(views[0], files))
            slot.outbox_fds += 1
            views = views[1:]
        slot.outbox.extend(views)
        if was_empty:
            self.flush(slot)

    def flush(self, slot: WorkerSlot) -> None:
        """Write what the pipe takes now; watch it for room if some is left."""
        outbox = slot.outbox
        while outbox:
            try:
                written = self._write_some(slot)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                _close_outbox(slot)  # the worker is gone; its sentinel tells how
                break
            while written:
                head = cast("memoryview", outbox[0])  # sent: plain bytes now
                if written >= len(head):
                    written -= len(head)
                    outbox.popleft()
                else:
                    outbox[0] = head[written:]
                    written = 0
        if self.is_open(slot):
            events = selectors.EVENT_READ
            if outbox:
                events |= selectors.EVENT_WRITE
            if self.selector.get_key(slot.fd).events != events:
                self.selector.modify(slot.fd, events, slot)

    @staticmethod
    def _write_some(slot: WorkerSlot) -> int:
        """One ``writev`` (or ``sendmsg``, when the head carries descriptors)
        of the outbox's first chunks, up to the next chunk with descriptors."""
        outbox = slot.outbox
        if not slot.outbox_fds:  # the common case: no descriptor waits
            return os.writev(slot.fd, list(itertools.islice(outbox, 64)))  # type: ignore[arg-type]
        head = outbox[0]
        views: list[memoryview] = []
        for chunk in outbox:
            if isinstance(chunk, WithFds):
                if views:
                    break
                views.append(chunk.view)
            else:
                views.append(chunk)
            if len(views) == 64:
                break
        if not isinstance(head, WithFds):
            return os.writev(slot.fd, views)
        fds = [file.fd for file in head.files]
        written = slot.sock.sendmsg(views, _outofband.rights(fds))
        head.close()  # in the worker's hands now (they came with the first byte)
        outbox[0] = head.view
        slot.outbox_fds -= 1
        return written

    def close(self) -> None:
        self.selector.close()
        self._slot_by_fd.clear()
        self.inbox.close_wake_pipe()
