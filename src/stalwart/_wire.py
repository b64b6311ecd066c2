"""The messages between the parent and a worker, and their framing on the pipe.

Frames use ``multiprocessing.connection.Connection``'s own framing (a 4-byte
big-endian length, or -1 then an 8-byte length), so the worker side can use a
plain blocking ``Connection``. The parent side instead reads and writes the
raw, non-blocking socket: ``FrameReader`` parses every frame a single read
returned, which is what lets one I/O thread keep up with thousands of replies a
second, and a non-blocking write can never deadlock against a worker that is
itself blocked writing a large reply.

Parent -> worker: a batch of calls, run in order: a count, then a (task id,
sequence number, size) triple per call, then the calls' pickled bytes back to
back. The calls are not pickled again into the frame: the parent ``writev``s
the bytes that ``submit()`` made, and the worker unpickles each from a slice of
the frame. The sequence number is the call's place in that worker's claim table
(``_claims``): the worker skips a call the parent took back. An empty frame
means: finish and exit. A batch of no calls (RESET) means: you are being
parked, restore the working directory, environment and ``sys.path`` you had
after your initializer.

Worker -> parent: pickled tuples whose first item is the kind below. A worker
acknowledges each batch as it arrives (RECEIVED, with the batch's last sequence
number), then answers each call it runs, in order. ``decode_reply`` turns a
tuple into a typed record; anything else is refused there, so one odd reply can
fail one task, never the dispatcher.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures.process import _RemoteTraceback
from typing import TYPE_CHECKING, Any, NamedTuple

from stalwart import _pickling
from stalwart.errors import RemoteError

if TYPE_CHECKING:
    from collections.abc import Iterator

READY = 0  # (READY, pid): the initializer succeeded; send tasks
RESULT = 1  # (RESULT, task_id, value, busy_s)
RESULT_BYTES = (
    2  # (RESULT_BYTES, task_id, pickled_value, busy_s): value needed cloudpickle
)
ERROR = 3  # (ERROR, task_id, exception, remote_traceback_text, busy_s)
INIT_FAILED = 4  # (INIT_FAILED, summary, remote_traceback_text)
RECEIVED = 5  # (RECEIVED, last_seq): a batch arrived; the worker has read it

STOP = b""

_BATCH_COUNT = struct.Struct("!I")
_BATCH_ENTRY_SIZE = 24  # three unsigned 64-bit ints: task id, sequence, call size
_SHORT_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_SHORT_LIMIT = 0x7FFFFFFF


def frame_header(payload_size: int) -> bytes:
    """The header Connection.send_bytes would write before ``payload_size`` bytes."""
    if payload_size > _SHORT_LIMIT:
        return _SHORT_HEADER.pack(-1) + _LONG_HEADER.pack(payload_size)
    return _SHORT_HEADER.pack(payload_size)


def encode_batch(entries: list[tuple[int, int, bytes]]) -> list[bytes]:
    """One batch frame of (task id, sequence number, pickled call) entries, as
    chunks for ``os.writev``, header first; the calls are not copied."""
    numbers = [
        number for task_id, seq, call in entries for number in (task_id, seq, len(call))
    ]
    index = struct.pack(f"!I{len(numbers)}Q", len(entries), *numbers)
    size = len(index) + sum(len(call) for _, _, call in entries)
    return [frame_header(size), index, *(call for _, _, call in entries)]


RESET_FRAME = frame_header(_BATCH_COUNT.size) + _BATCH_COUNT.pack(0)
"""A batch of no calls: restore the environment (the worker is being parked)."""


def decode_batch(payload: bytes) -> Iterator[tuple[int, int, memoryview]]:
    """The (task id, sequence number, pickled call) entries of a batch frame,
    the calls as zero-copy slices."""
    (count,) = _BATCH_COUNT.unpack_from(payload)
    numbers = struct.unpack_from(f"!{3 * count}Q", payload, _BATCH_COUNT.size)
    view = memoryview(payload)
    offset = _BATCH_COUNT.size + _BATCH_ENTRY_SIZE * count
    for i in range(count):
        task_id, seq, size = numbers[3 * i : 3 * i + 3]
        yield task_id, seq, view[offset : offset + size]
        offset += size


class Answer(NamedTuple):
    """A worker's answer to one call (RESULT, RESULT_BYTES or ERROR)."""

    task_id: int
    busy_s: float
    reply: tuple[Any, ...]

    def outcome(self) -> tuple[bool, Any]:
        return outcome(self.reply)


class Received(NamedTuple):
    """The worker has read every call up to ``last_seq``."""

    last_seq: int


class Ready(NamedTuple):
    """The initializer succeeded: the worker takes calls."""


class InitFailed(NamedTuple):
    summary: str
    remote_traceback: str


Reply = Answer | Received | Ready | InitFailed


_ANSWERS = frozenset({RESULT, RESULT_BYTES, ERROR})


def decode_reply(reply: object) -> Reply:
    """A worker's unpickled message as a typed record; ValueError if it is none.
    (Small records, cheap to build: one is made per call.)"""
    if type(reply) is not tuple or not reply:
        raise ValueError(f"a worker sent {type(reply).__name__}, not a reply tuple")
    kind = reply[0]
    if kind in _ANSWERS and len(reply) in (4, 5):
        task_id, busy_s = reply[1], reply[-1]
        if isinstance(task_id, int) and isinstance(busy_s, float):
            return Answer(task_id, busy_s, reply)
    elif kind == RECEIVED and len(reply) == 2 and isinstance(reply[1], int):
        return Received(reply[1])
    elif kind == READY:
        return Ready()
    elif kind == INIT_FAILED and len(reply) == 3:
        return InitFailed(str(reply[1]), str(reply[2]))
    raise ValueError(f"a worker sent a reply stalwart does not know: kind {kind!r}")


def outcome(reply: tuple[Any, ...]) -> tuple[bool, Any]:
    """A RESULT, RESULT_BYTES or ERROR reply as ``(True, value)`` or
    ``(False, exception)``, the worker's traceback attached as the cause.

    Raises what unpickling a RESULT_BYTES value raised (a class this process
    cannot import): the caller fails that task only.
    """
    kind = reply[0]
    if kind == RESULT:
        return True, reply[2]
    if kind == RESULT_BYTES:
        return True, _pickling.loads(reply[2])
    error = reply[2]
    if not isinstance(error, BaseException):
        # Its class rebuilt itself as something else (a __reduce__ returning,
        # say, an int): say what came, rather than raise a non-exception.
        error = RemoteError(
            "unknown",
            f"the task raised an exception that arrived as {type(error).__name__} "
            f"{error!r}: its __reduce__ does not rebuild an exception",
            str(reply[3]),
        )
    error = without_rebuilt_traceback(error)
    error.__cause__ = _RemoteTraceback(reply[3])
    return False, error


def without_rebuilt_traceback(error: BaseException) -> BaseException:
    """``error`` as plain pickle rebuilds it: no ``__traceback__``, no ``__context__``.

    tblib (which dask installs) pickles both, and rebuilds the traceback by
    raising here, in the I/O thread: its frames would keep the dispatcher's
    stack (worker process objects and their pipes among it) alive for as long
    as the user keeps the error. The worker's traceback travels as text, the
    cause, as the stdlib's does.
    """
    error.__context__ = None
    return error.with_traceback(None)


class Unreadable:
    """Stands in for a frame that could not be read whole (no memory for it):
    the reply of the oldest call in flight, which fails with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


LARGE_FRAME = 1 << 20
"""A frame at least this large is read straight into a buffer of its own size,
not accumulated: a 700 MB result then costs 700 MB in the parent, not twice or
three times that."""

_READ_SIZE = 1 << 16


class FrameReader:
    """Reads frames from a non-blocking fd and yields each complete payload.

    Small frames are parsed in bulk from whatever one read returned (thousands
    of replies a second); a large one gets a buffer of exactly its size, filled
    in place. If that buffer cannot be had, the frame's bytes are skipped and an
    ``Unreadable`` takes its place: one task fails, the pipe stays in step.
    """

    __slots__ = ("_buffer", "_large", "_large_filled", "_skip")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._large: bytearray | None = None  # a large payload being filled
        self._large_filled = 0
        self._skip = 0  # bytes of an unreadable frame still to discard

    def feed(self, data: bytes) -> list[bytes | bytearray | Unreadable]:
        """Add bytes read from the pipe; return the payloads they completed."""
        frames: list[bytes | bytearray | Unreadable] = []
        view = memoryview(data)
        while view:
            view = self._absorb_large(view, frames)
            if not view:
                break
            self._buffer += view
            view = memoryview(b"")
            self._parse(frames)
        return frames

    def read_from(self, fd: int) -> tuple[list[bytes | bytearray | Unreadable], bool]:
        """Read what ``fd`` has now; return the completed payloads and whether
        the pipe reached EOF. Raises BlockingIOError only if nothing was read."""
        frames: list[bytes | bytearray | Unreadable] = []
        while True:
            large = self._large
            try:
                if large is not None:
                    count = os.readv(fd, [memoryview(large)[self._large_filled :]])
                    if count:
                        self._large_filled += count
                        self._finish_large(frames)
                else:
                    data = os.read(fd, max(_READ_SIZE, min(self._skip, LARGE_FRAME)))
                    count = len(data)
                    if count:
                        frames.extend(self.feed(data))
            except (BlockingIOError, InterruptedError):
                if frames:
                    return frames, False
                raise
            if not count:
                return frames, True
            if frames:
                return frames, False

    def _absorb_large(
        self, view: memoryview, frames: list[bytes | bytearray | Unreadable]
    ) -> memoryview:
        """Give leading bytes to a frame being skipped or filled in place."""
        if self._skip:
            taken = min(self._skip, len(view))
            self._skip -= taken
            return view[taken:]
        large = self._large
        if large is not None:
            taken = min(len(large) - self._large_filled, len(view))
            large[self._large_filled : self._large_filled + taken] = view[:taken]
            self._large_filled += taken
            self._finish_large(frames)
            return view[taken:]
        return view

    def _finish_large(self, frames: list[bytes | bytearray | Unreadable]) -> None:
        large = self._large
        if large is not None and self._large_filled == len(large):
            frames.append(large)
            self._large = None
            self._large_filled = 0

    def _parse(self, frames: list[bytes | bytearray | Unreadable]) -> None:
        buffer = self._buffer
        start = 0
        end = len(buffer)
        while end - start >= 4:
            (size,) = _SHORT_HEADER.unpack_from(buffer, start)
            header = 4
            if size == -1:
                if end - start < 12:
                    break
                (size,) = _LONG_HEADER.unpack_from(buffer, start + 4)
                header = 12
            body_start = start + header
            available = end - body_start
            if available >= size:
                frames.append(bytes(buffer[body_start : body_start + size]))
                start = body_start + size
                continue
            if size >= LARGE_FRAME:
                self._start_large(size, memoryview(buffer)[body_start:end], frames)
                start = end
            break
        if start:
            del buffer[:start]

    def _start_large(
        self,
        size: int,
        head: memoryview,
        frames: list[bytes | bytearray | Unreadable],
    ) -> None:
        try:
            large = bytearray(size)
        except MemoryError as exc:
            frames.append(Unreadable(exc))
            self._skip = size - len(head)
            head.release()
            return
        large[: len(head)] = head
        self._large_filled = len(head)
        head.release()
        self._large = large
