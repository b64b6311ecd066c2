"""The messages between the parent and a worker, and their framing on the pipe.

Frames use ``multiprocessing.connection.Connection``'s own framing (a 4-byte
big-endian length, or -1 then an 8-byte length), so the worker side can use a
plain blocking ``Connection``. The parent side instead reads and writes the
raw, non-blocking socket: ``FrameReader`` parses every frame a single read
returned, which is what lets one I/O thread keep up with thousands of replies a
second, and a non-blocking write can never deadlock against a worker that is
itself blocked writing a large reply.

Parent -> worker: a pickled ``list[tuple[task_id, call_bytes]]`` (a batch of
calls, run in order), or pickled ``None`` (finish and exit).

Worker -> parent: pickled tuples whose first item is the kind below. A worker
acknowledges each batch as it arrives (RECEIVED), then answers each task; so a
worker that dies before acknowledging a batch never started any of its tasks.
"""

from __future__ import annotations

import struct

READY = 0  # (READY, pid): the initializer succeeded; send tasks
RESULT = 1  # (RESULT, task_id, value, busy_s)
RESULT_BYTES = (
    2  # (RESULT_BYTES, task_id, pickled_value, busy_s): value needed cloudpickle
)
ERROR = 3  # (ERROR, task_id, exception, remote_traceback_text, busy_s)
INIT_FAILED = 4  # (INIT_FAILED, summary, remote_traceback_text)
RECEIVED = 5  # (RECEIVED,): a batch arrived; its first task is starting

_SHORT_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_SHORT_LIMIT = 0x7FFFFFFF


def frame_header(payload_size: int) -> bytes:
    """The header Connection.send_bytes would write before ``payload_size`` bytes."""
    if payload_size > _SHORT_LIMIT:
        return _SHORT_HEADER.pack(-1) + _LONG_HEADER.pack(payload_size)
    return _SHORT_HEADER.pack(payload_size)


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
