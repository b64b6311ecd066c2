"""The messages between the parent and a worker, and their framing on the pipe.

Frames use ``multiprocessing.connection.Connection``'s own framing (a 4-byte
big-endian length, or -1 then an 8-byte length), so the worker side can use a
plain blocking ``Connection``. The parent side instead reads and writes the
raw, non-blocking socket: ``FrameReader`` parses every frame a single read
returned, which is what lets one I/O thread keep up with thousands of replies a
second, and a non-blocking write can never deadlock against a worker that is
itself blocked writing a large reply.

Parent -> worker: a batch of calls, run in order: a count, then a (task id,
size) pair per call, then the calls' pickled bytes back to back. The calls are
not pickled again into the frame: the parent ``writev``s the bytes that
``submit()`` made, and the worker unpickles each from a slice of the frame. An
empty frame means: finish and exit.

Worker -> parent: pickled tuples whose first item is the kind below. A worker
acknowledges each batch as it arrives (RECEIVED), then answers each task; so a
worker that dies before acknowledging a batch never started any of its tasks.
"""

from __future__ import annotations

import struct
from concurrent.futures.process import _RemoteTraceback
from typing import TYPE_CHECKING, Any

from stalwart import _pickling

if TYPE_CHECKING:
    from collections.abc import Iterator

READY = 0  # (READY, pid): the initializer succeeded; send tasks
RESULT = 1  # (RESULT, task_id, value, busy_s)
RESULT_BYTES = (
    2  # (RESULT_BYTES, task_id, pickled_value, busy_s): value needed cloudpickle
)
ERROR = 3  # (ERROR, task_id, exception, remote_traceback_text, busy_s)
INIT_FAILED = 4  # (INIT_FAILED, summary, remote_traceback_text)
RECEIVED = 5  # (RECEIVED,): a batch arrived; its first task is starting

STOP = b""

_BATCH_COUNT = struct.Struct("!I")
_BATCH_ENTRY_SIZE = 16  # two unsigned 64-bit ints: task id, call size
_SHORT_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_SHORT_LIMIT = 0x7FFFFFFF


def frame_header(payload_size: int) -> bytes:
    """The header Connection.send_bytes would write before ``payload_size`` bytes."""
    if payload_size > _SHORT_LIMIT:
        return _SHORT_HEADER.pack(-1) + _LONG_HEADER.pack(payload_size)
    return _SHORT_HEADER.pack(payload_size)


def encode_batch(task_ids: list[int], calls: list[bytes]) -> list[bytes]:
    """One batch frame as chunks for ``os.writev``, header first; calls not copied."""
    sizes = map(len, calls)
    entries = [value for pair in zip(task_ids, sizes, strict=True) for value in pair]
    index = struct.pack(f"!I{len(entries)}Q", len(task_ids), *entries)
    size = len(index) + sum(map(len, calls))
    return [frame_header(size), index, *calls]


def decode_batch(payload: bytes) -> Iterator[tuple[int, memoryview]]:
    """The (task id, pickled call) pairs of a batch frame, as zero-copy slices."""
    (count,) = _BATCH_COUNT.unpack_from(payload)
    entries = struct.unpack_from(f"!{2 * count}Q", payload, _BATCH_COUNT.size)
    view = memoryview(payload)
    offset = _BATCH_COUNT.size + _BATCH_ENTRY_SIZE * count
    for i in range(count):
        size = entries[2 * i + 1]
        yield entries[2 * i], view[offset : offset + size]
        offset += size


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
    error: BaseException = reply[2]
    error.__cause__ = _RemoteTraceback(reply[3])
    return False, error


class FrameReader:
    """Accumulates raw bytes and yields each complete frame's payload."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add what one read returned; return the payloads it completed."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
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
            if end - start - header < size:
                break
            body_start = start + header
            frames.append(bytes(buffer[body_start : body_start + size]))
            start = body_start + size
        if start:
            del buffer[:start]
        return frames
