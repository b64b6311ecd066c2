"""The messages between the parent and a worker, and their framing on the pipe.

Frames use ``multiprocessing.connection.Connection``'s own framing (a 4-byte
big-endian length, or -1 then an 8-byte length), so the worker side can use a
plain blocking ``Connection``. The parent side instead reads and writes the
raw, non-blocking socket: ``FrameReader`` parses every frame a single read
returned, which is what lets one I/O thread keep up with thousands of replies a
second, and a non-blocking write can never deadlock against a worker that is
itself blocked writing a large reply.

Parent -> worker: a batch of calls, run in order: a header (how many calls,
shared memory files attached, and shared files to forget), then a (task id,
sequence number, size) triple per call, the files' ids, the ids to forget, then
the calls' pickled bytes back to back. The calls are not pickled again into the
frame: the parent ``writev``s the bytes that ``submit()`` made, and the worker
unpickles each from a slice of the frame. A call with large buffers is a
segment frame instead (``_outofband``): its data is in a file whose descriptor
rides on the batch (SCM_RIGHTS), each call's own file first, then the
``shared()`` files this worker has not been sent yet. The sequence number is
the call's place in that worker's claim table (``_claims``): the worker skips a
call the parent took back. An empty frame means: finish and exit. A batch of no
calls (RESET) means: you are being parked, restore the working directory,
environment and ``sys.path`` you had after your initializer.

Worker -> parent: pickled tuples whose first item is the kind below. A worker
acknowledges each batch as it arrives (RECEIVED, with the batch's last sequence
number), then answers each call it runs, in order. ``decode_reply`` turns a
tuple into a typed record; anything else is refused there, so one odd reply can
fail one task, never the dispatcher.
"""

from __future__ import annotations

import collections
import os
import socket
import struct
import threading
from concurrent.futures.process import _RemoteTraceback
from typing import TYPE_CHECKING, Any, NamedTuple

from stalwart import _outofband, _pickling
from stalwart.errors import RemoteError

if TYPE_CHECKING:
    from collections.abc import Sequence

READY = 0  # (READY, pid): the initializer succeeded; send tasks
RESULT = 1  # (RESULT, task_id, value, busy_s)
RESULT_BYTES = (
    2  # (RESULT_BYTES, task_id, pickled_value, busy_s): value needed cloudpickle
)
ERROR = 3  # (ERROR, task_id, exception, remote_traceback_text, busy_s)
INIT_FAILED = 4  # (INIT_FAILED, summary, remote_traceback_text)
RECEIVED = 5  # (RECEIVED, last_seq): a batch arrived; the worker has read it
OUTPUT = 6  # (OUTPUT, stream, text): lines a task printed (_forwarding)
LOG = 7  # (LOG, record_fields): a record a task logged (_forwarding)
OVER_MEMORY = 8  # (OVER_MEMORY, rss_bytes): past max_memory_per_child; exiting
MAIN_FAILED = 9  # (MAIN_FAILED, summary, traceback, executor_at_import): exiting

STOP = b""

_BATCH_HEAD = struct.Struct("!IIII")  # calls, own files, shared files, forgotten
_BATCH_ENTRY_SIZE = 24  # three unsigned 64-bit ints: task id, sequence, call size
_SHORT_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_SHORT_LIMIT = 0x7FFFFFFF


def frame_header(payload_size: int) -> bytes:
    """The header Connection.send_bytes would write before ``payload_size`` bytes."""
    if payload_size > _SHORT_LIMIT:
        return _SHORT_HEADER.pack(-1) + _LONG_HEADER.pack(payload_size)
    return _SHORT_HEADER.pack(payload_size)


def encode_batch(
    entries: list[tuple[int, int, bytes | _outofband.Packed]],
    own_ids: Sequence[int] = (),
    shared_ids: Sequence[int] = (),
    forget_ids: Sequence[int] = (),
) -> list[bytes]:
    """One batch frame of (task id, sequence number, pickled call) entries, as
    chunks for ``os.writev``, header first; the calls are not copied. The ids
    name the files whose descriptors go with the frame, in that order."""
    numbers = [
        number
        for task_id, seq, call in entries
        for number in (task_id, seq, call_size(call))
    ]
    numbers += [*own_ids, *shared_ids, *forget_ids]
    index = _BATCH_HEAD.pack(
        len(entries), len(own_ids), len(shared_ids), len(forget_ids)
    ) + struct.pack(f"!{len(numbers)}Q", *numbers)
    chunks = [b"", index]
    for _, _, call in entries:
        if isinstance(call, bytes):
            chunks.append(call)
        else:
            chunks += call.parts
    chunks[0] = frame_header(sum(map(len, chunks)))
    return chunks


def call_size(call: bytes | _outofband.Packed) -> int:
    """Bytes a call takes in its batch frame."""
    return len(call) if isinstance(call, bytes) else call.size


RESET_FRAME = frame_header(_BATCH_HEAD.size) + _BATCH_HEAD.pack(0, 0, 0, 0)
"""A batch of no calls: restore the environment (the worker is being parked)."""


class Batch(NamedTuple):
    """A decoded batch frame: its calls as zero-copy slices, and file ids."""

    calls: list[tuple[int, int, memoryview]]  # (task id, sequence number, call)
    own_ids: tuple[int, ...]
    shared_ids: tuple[int, ...]
    forget_ids: tuple[int, ...]


def decode_batch(payload: bytes | bytearray) -> Batch:
    """The entries of a batch frame, the calls as zero-copy slices."""
    count, owns, shares, forgets = _BATCH_HEAD.unpack_from(payload)
    total = 3 * count + owns + shares + forgets
    numbers = struct.unpack_from(f"!{total}Q", payload, _BATCH_HEAD.size)
    view = memoryview(payload)
    offset = _BATCH_HEAD.size + 8 * total
    calls = []
    for i in range(count):
        task_id, seq, size = numbers[3 * i : 3 * i + 3]
        calls.append((task_id, seq, view[offset : offset + size]))
        offset += size
    ids = numbers[3 * count :]
    return Batch(calls, ids[:owns], ids[owns : owns + shares], ids[owns + shares :])


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


class Output(NamedTuple):
    """Lines a task wrote to ``sys.stdout`` (1) or ``sys.stderr`` (2)."""

    stream: int
    text: str


class Log(NamedTuple):
    """A record a task logged, as ``_forwarding.record_as_dict`` made it."""

    fields: dict[str, Any]


class MainFailed(NamedTuple):
    """The worker could not import the main script; it exits. With
    ``executor_at_import``, because the script starts an executor at import
    time (no ``if __name__ == '__main__':`` guard)."""

    summary: str
    remote_traceback: str
    executor_at_import: bool


class OverMemory(NamedTuple):
    """The worker is past ``max_memory_per_child`` after a task: it exits."""

    rss_bytes: int


Reply = Answer | Received | Ready | InitFailed | Output | Log | OverMemory | MainFailed


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
    elif kind == OUTPUT and len(reply) == 3 and isinstance(reply[2], str):
        return Output(reply[1], reply[2])
    elif kind == LOG and len(reply) == 2 and isinstance(reply[1], dict):
        return Log(reply[1])
    elif kind == OVER_MEMORY and len(reply) == 2 and isinstance(reply[1], int):
        return OverMemory(reply[1])
    elif kind == MAIN_FAILED and len(reply) == 4:
        return MainFailed(str(reply[1]), str(reply[2]), bool(reply[3]))
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
    """Reads frames from a non-blocking socket and yields each complete payload.

    Small frames are parsed in bulk from whatever one read returned (thousands
    of replies a second); a large one gets a buffer of exactly its size, filled
    in place. If that buffer cannot be had, the frame's bytes are skipped and an
    ``Unreadable`` takes its place: one task fails, the pipe stays in step.
    Descriptors that arrive (a reply's shared memory file) wait in ``fds``, in
    order, for the segment frame that names them.
    """

    __slots__ = ("_buffer", "_large", "_large_filled", "_skip", "fds")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._large: bytearray | None = None  # a large payload being filled
        self._large_filled = 0
        self._skip = 0  # bytes of an unreadable frame still to discard
        self.fds: collections.deque[int] = collections.deque()

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

    def read_from(
        self, sock: socket.socket
    ) -> tuple[list[bytes | bytearray | Unreadable], bool]:
        """Read what ``sock`` has now; return the completed payloads and whether
        the pipe reached EOF. Raises BlockingIOError only if nothing was read."""
        frames: list[bytes | bytearray | Unreadable] = []
        space = _outofband.ANCILLARY_SPACE
        while True:
            large = self._large
            try:
                if large is not None:
                    count, ancillary, _, _ = sock.recvmsg_into(
                        [memoryview(large)[self._large_filled :]], space
                    )
                    if ancillary:
                        self.fds.extend(_outofband.fds_from(ancillary))
                    if count:
                        self._large_filled += count
                        self._finish_large(frames)
                else:
                    size = max(_READ_SIZE, min(self._skip, LARGE_FRAME))
                    data, ancillary, _, _ = sock.recvmsg(size, space)
                    if ancillary:
                        self.fds.extend(_outofband.fds_from(ancillary))
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

    def take_fd(self) -> int:
        """The next descriptor that arrived (a segment frame's file)."""
        if not self.fds:
            raise OSError("a worker's shared memory file did not arrive with its reply")
        return self.fds.popleft()

    def close(self) -> None:
        """Close descriptors nobody took (their worker ended first)."""
        _outofband.close_all(self.fds)
        self.fds.clear()

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


_SMALL_FRAME = 16384  # smaller frames are sent header and all in one write


class BlockingFrames:
    """The worker's end of its pipe: whole frames in, whole frames out, with
    the descriptors that ride on them (a plain ``Connection`` would drop them)."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, os.dup(fd))
        self.sock.settimeout(None)  # blocking, whatever the default timeout says
        self._fds: list[int] = []
        self._sending = threading.Lock()

    def receive(self) -> tuple[bytearray, list[int]]:
        """The next frame and the descriptors that came with it. Raises
        EOFError when the parent has closed the pipe."""
        header = self._exactly(4)
        (size,) = _SHORT_HEADER.unpack(header)
        if size == -1:
            (size,) = _LONG_HEADER.unpack(self._exactly(8))
        payload = self._exactly(size)
        fds, self._fds = self._fds, []
        return payload, fds

    def _exactly(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            count, ancillary, _, _ = self.sock.recvmsg_into(
                [view[filled:]], _outofband.ANCILLARY_SPACE
            )
            if ancillary:
                self._fds.extend(_outofband.fds_from(ancillary))
            if not count:
                raise EOFError
            filled += count
        return buffer

    def send(self, parts: list[bytes], fds: list[int] | None = None) -> None:
        """Send one frame made of ``parts``, ``fds`` attached to its first byte.
        Thread-safe: a task's threads may print while the worker answers."""
        if not fds and len(parts) == 1 and len(parts[0]) < _SMALL_FRAME:
            with self._sending:
                self.sock.sendall(frame_header(len(parts[0])) + parts[0])  # one write
            return
        size = sum(len(part) for part in parts)
        pieces = [memoryview(frame_header(size))]
        pieces += [memoryview(part) for part in parts if part]
        ancillary = _outofband.rights(fds) if fds else []
        with self._sending:
            while pieces:
                sent = self.sock.sendmsg(pieces, ancillary)
                ancillary = []  # sent with the first byte
                _outofband.consume(pieces, sent)

    def close(self) -> None:
        _outofband.close_all(self._fds)
        self.sock.close()
