"""Large data out of band: big buffers cross in shared memory, never through the pipe.

::

    sender: submit() in the parent, or a task's reply in the worker
        pickle, protocol 5 (PEP 574), into a Sink:
          every PickleBuffer of OUT_OF_BAND_BYTES or more (NumPy, pandas,
          Arrow...) stays out of the stream; big ``bytes`` are kept by reference
        │
        ├─ nothing big: the stream is the frame, as ever
        └─ big buffers (or a big stream): stream and buffers are copied into one
           anonymous memory file (``memfd_create``), and the pipe carries a short
           *segment frame* (the layout), the file's descriptor attached (SCM_RIGHTS)
    receiver
        maps the file, unpickles the stream from the mapping, the buffers as
        views of it: a 100 MiB array arrives without a copy

**Snapshot.** The buffers are copied into the file when the call is pickled,
in ``submit()``: changing an array afterwards never changes what the task sees,
and a call re-sent after a crash or to another worker sends the same file.

**Nothing leaks.** The file has no name. It lives while a descriptor or a
mapping refers to it; the kernel drops it when the last process holding one
ends, however it ends. Where ``memfd_create`` is missing, an unlinked temporary
file stands in (``tempfile.TemporaryFile``): no name either.

**Writable, privately.** A worker maps a call's file copy-on-write: arrays
arrive writable, as the stdlib's do, and a task that writes to one changes its
own pages only. The parent maps a reply's file shared: the worker has closed
its end, so the parent's result owns those pages and costs its size once.
Objects made by ``stalwart.shared()`` are the exception (``_shared``): one
read-only file for many tasks.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import pickle
import socket
import struct
import tempfile
import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from stalwart._shared import SharedRef, SharedSegment

OUT_OF_BAND_BYTES = 1 << 20
"""A buffer this large or larger travels in shared memory; so does a whole
stream this large (joblib memmaps arrays from 1 MB, for the same reason: below
that, the pipe costs less than a file and its mapping)."""

QUEUED_STREAM_BYTES = 64 << 20
"""A call with no big buffer but a big stream (large ``bytes``, ``str``, lists)
gets a file of its own only while the live files hold less than this: past it,
its stream goes through the pipe when a worker takes it, its big ``bytes``
kept by reference meanwhile (immutable, so still a snapshot, and free)."""

MAX_OPEN_SEGMENTS = 512
"""Live files (one descriptor each) this process keeps for calls not yet
answered, and at most a quarter of its descriptor limit. Past it, a call's big
buffers are copied into its stream instead, which goes through the pipe:
slower, but no call fails for want of a descriptor."""

SEGMENT_MARK = 0x01
"""First byte of a segment frame. A pickle stream starts with PROTO (0x80)."""

SEGMENT_FRAME_START = bytes([SEGMENT_MARK])

_ALIGN = 64  # buffers start at this alignment in the file (cache lines, SIMD loads)
_HEAD = struct.Struct("!BQQI")  # mark, own segment id (0: none), stream size, buffers
_ENTRY = struct.Struct("!QQQ")  # segment id, offset, size (one per buffer)
_WRITE_BATCH = 512  # iovecs per pwritev (IOV_MAX is 1024 on Linux)
_FD_BYTES = struct.calcsize("i")
MAX_FDS_PER_FRAME = 64
"""A batch frame carries at most this many descriptors (SCM_MAX_FD is 253)."""
ANCILLARY_SPACE = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * _FD_BYTES)


# ------------------------------------------------------------------- the files


_ids = itertools.count(1)
_open_lock = threading.Lock()
_open_count = 0
_open_bytes = 0


class Segment:
    """An anonymous memory file holding one call's (or reply's) stream and
    buffers. Owns its descriptor: ``close()``, or losing the last reference,
    closes it; the memory lives on in any process that still maps it."""

    __slots__ = ("fd", "frame", "id", "size")

    def __init__(self, fd: int, size: int, segment_id: int) -> None:
        self.fd = fd
        self.size = size
        self.id = segment_id
        self.frame = b""  # the segment frame the pipe carries in its place

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            _count_closed(self.size)
            os.close(fd)

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(Exception):  # also at interpreter exit
                _count_closed(self.size)
            _close(fd)


def _count_closed(size: int) -> None:
    global _open_count, _open_bytes
    with _open_lock:
        _open_count -= 1
        _open_bytes -= size


def _segment_limit() -> int:
    """MAX_OPEN_SEGMENTS, or a quarter of the descriptor limit if lower."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return MAX_OPEN_SEGMENTS
    if soft == getattr(resource, "RLIM_INFINITY", -1) or soft <= 0:
        return MAX_OPEN_SEGMENTS
    return max(8, min(MAX_OPEN_SEGMENTS, soft // 4))


def open_segments() -> tuple[int, int]:
    """(files, bytes) this process holds for calls and replies in flight."""
    return _open_count, _open_bytes


def memory_file(size: int, name: str, *, sealable: bool = False) -> int:
    """A descriptor of a new anonymous file of ``size`` bytes, close-on-exec."""
    create = getattr(os, "memfd_create", None)
    if create is not None:
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealable else 0)
        fd: int = create(name, flags)
    else:  # no memfd (macOS): a temporary file that never has a name
        with tempfile.TemporaryFile(prefix="stalwart-") as file:
            fd = os.dup(file.fileno())
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_at(fd: int, pieces: Iterable[memoryview | bytes], offset: int) -> int:
    """Write ``pieces`` back to back into ``fd`` from ``offset``; return the end.
    The copy runs without the GIL (``pwritev``)."""
    pending = [memoryview(piece).cast("B") for piece in pieces]
    pending = [piece for piece in pending if piece.nbytes]
    while pending:
        if _pwritev is not None:
            written = _pwritev(fd, pending[:_WRITE_BATCH], offset)
        else:  # no pwritev (older macOS): one piece at a time
            written = os.pwrite(fd, pending[0], offset)
        if written <= 0:
            raise OSError(f"could not write to a shared memory file at {offset}")
        offset += written
        consume(pending, written)
    return offset


def consume(pieces: list[memoryview], count: int) -> None:
    """Drop the first ``count`` bytes of ``pieces`` (a partial write's worth)."""
    while count:
        head = pieces[0]
        if count >= head.nbytes:
            count -= head.nbytes
            del pieces[0]
        else:
            pieces[0] = head[count:]
            count = 0


_pwritev = getattr(os, "pwritev", None)


def aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


# --------------------------------------------------------------------- pickling


class BufferCallback(Protocol):
    """A pickler's ``buffer_callback`` that notes what it kept out of band."""

    found: list[Any]  # cleared when a pickling is tried again

    def __call__(self, buffer: pickle.PickleBuffer) -> bool: ...


class Buffers:
    """A pickler's ``buffer_callback``: keeps every buffer of ``min_bytes`` or
    more out of the stream (in ``found``, in order); a buffer of a
    ``stalwart.shared()`` object becomes a reference to its file."""

    __slots__ = ("found", "min_bytes", "shared_ok")

    def __init__(
        self, *, shared_ok: bool = True, min_bytes: int = OUT_OF_BAND_BYTES
    ) -> None:
        self.found: list[pickle.PickleBuffer | SharedRef] = []
        self.shared_ok = shared_ok  # a reply never refers to the worker's shared()
        self.min_bytes = min_bytes  # smaller buffers stay in the stream

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        """True: keep ``buffer`` in the stream; False: it travels out of band."""
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if view.nbytes < self.min_bytes:
            return True
        ref = None
        if self.shared_ok:
            from stalwart import _shared

            ref = _shared.lookup(view) or _shared.copy_once_ref(view)
        self.found.append(buffer if ref is None else ref)
        return False


class Sink:
    """A file for a pickler that keeps big ``bytes`` by reference.

    The pickler hands a large payload to ``write`` as the object itself:
    ``bytes`` are kept as they are (immutable, so a snapshot for free),
    anything else is copied now, for the same reason. For a call whose stream
    is big and must wait in the pipe's queue: it then costs no copy.
    """

    __slots__ = ("buffers", "chunks", "size")

    def __init__(self, buffers: Buffers | None = None) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.buffers = buffers

    def write(self, data: Any) -> int:
        chunk = data if type(data) is bytes else bytes(data)
        self.chunks.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def reset(self) -> None:
        """Forget what a failed pickling wrote (it is tried again)."""
        self.chunks.clear()
        self.size = 0
        if self.buffers is not None:
            self.buffers.found.clear()


class Packed:
    """A pickled call or reply with large data, ready for the pipe: ``parts``
    (a segment frame, or a big stream in pieces), the file whose descriptor
    goes with them, and the shared files it refers to. (A small one is just
    its ``bytes``.)"""

    __slots__ = ("parts", "segment", "shared", "size")

    def __init__(
        self,
        parts: list[bytes],
        size: int,
        segment: Segment | None = None,
        shared: tuple[SharedSegment, ...] = (),
    ) -> None:
        self.parts = parts
        self.size = size
        self.segment = segment
        self.shared = shared

    def data(self) -> bytes:
        """The parts as one bytes object (a small call, or a test)."""
        parts = self.parts
        return parts[0] if len(parts) == 1 else b"".join(parts)


def pack(
    chunks: list[bytes],
    buffers: list[pickle.PickleBuffer | SharedRef],
    *,
    for_queue: bool,
) -> Packed | None:
    """A pickle stream (``chunks``) and its out-of-band ``buffers`` as a
    ``Packed``: in the stream if all is small, in a shared memory file if not.
    ``for_queue``: a call that may wait in a queue (the file budgets apply).
    None: its big buffers must go in band after all (no descriptor to spare):
    pickle it again without them."""
    size = sum(len(chunk) for chunk in chunks) if len(chunks) != 1 else len(chunks[0])
    if not buffers and size < OUT_OF_BAND_BYTES:
        return Packed(chunks, size)
    own = [buffer for buffer in buffers if isinstance(buffer, pickle.PickleBuffer)]
    if for_queue:
        count, held = open_segments()
        if count >= _segment_limit() and (own or size >= OUT_OF_BAND_BYTES):
            return Packed(chunks, size) if not buffers else None
        if not buffers and held >= QUEUED_STREAM_BYTES:
            return Packed(chunks, size)
    in_file = bool(own) or size >= OUT_OF_BAND_BYTES
    try:
        segment = _write_segment(chunks, size, own) if in_file else None
    except OSError as exc:
        if exc.errno in (errno.ENOMEM, errno.ENOSPC, errno.EFBIG):
            raise MemoryError(
                f"no memory for a {_mib(size, own)} shared memory file: {exc}"
            ) from exc
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        return None if buffers else Packed(chunks, size)  # no descriptor to spare
    frame = _segment_frame(chunks, size, buffers, segment)
    return Packed([frame], len(frame), segment, tuple(_shared_of(buffers)))


def _mib(size: int, own: list[pickle.PickleBuffer]) -> str:
    size += sum(buffer.raw().nbytes for buffer in own)
    return f"{size / 2**20:.1f} MiB"


def _shared_of(buffers: list[pickle.PickleBuffer | SharedRef]) -> list[SharedSegment]:
    seen: dict[int, SharedSegment] = {}
    for buffer in buffers:
        if not isinstance(buffer, pickle.PickleBuffer):
            seen.setdefault(buffer.segment.id, buffer.segment)
    return list(seen.values())


def _write_segment(
    chunks: list[bytes], stream_size: int, own: list[pickle.PickleBuffer]
) -> Segment:
    """Copy the stream, then each of ``own``'s buffers, into a new file."""
    global _open_count, _open_bytes
    size = aligned(stream_size) + sum(aligned(b.raw().nbytes) for b in own)
    fd = memory_file(size, "stalwart-data")
    segment = Segment(fd, size, next(_ids))
    with _open_lock:
        _open_count += 1
        _open_bytes += size
    try:
        write_at(fd, chunks, 0)
        offset = aligned(stream_size)
        for buffer in own:
            view = buffer.raw()
            write_at(fd, (view,), offset)
            offset += aligned(view.nbytes)
    except BaseException:
        segment.close()
        raise
    return segment


def _segment_frame(
    chunks: list[bytes],
    stream_size: int,
    buffers: list[pickle.PickleBuffer | SharedRef],
    segment: Segment | None,
) -> bytes:
    """The layout the pipe carries in place of the stream (and the stream
    itself, if it is not in the file)."""
    entries = []
    offset = aligned(stream_size)
    for buffer in buffers:
        if isinstance(buffer, pickle.PickleBuffer):
            assert segment is not None
            size = buffer.raw().nbytes
            entries.append(_ENTRY.pack(segment.id, offset, size))
            offset += aligned(size)
        else:
            entries.append(_ENTRY.pack(buffer.segment.id, buffer.offset, buffer.size))
    own_id = 0 if segment is None else segment.id
    head = _HEAD.pack(SEGMENT_MARK, own_id, stream_size, len(buffers))
    inline = [] if segment is not None else chunks
    frame = b"".join([head, *entries, *inline])
    if segment is not None:
        segment.frame = frame
    return frame


def is_segment_frame(data: bytes | bytearray | memoryview) -> bool:
    return len(data) > 0 and data[0] == SEGMENT_MARK


# -------------------------------------------------------------------- receiving


class Mappings:
    """The files a receiver has been sent: one call's or reply's own file, by
    id, until it is unpickled; and the read-only files of ``shared()`` objects,
    kept until the parent says they are gone."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}  # segment id -> descriptor, not yet mapped
        self.shared: dict[int, mmap.mmap] = {}  # shared segment id -> mapping

    def receive(
        self, own_ids: Iterable[int], shared_ids: Iterable[int], fds: list[int]
    ) -> None:
        """Descriptors that arrived with a frame, paired with their ids: the
        calls' own files first, then shared files (mapped now, kept)."""
        ids = [*((i, False) for i in own_ids), *((i, True) for i in shared_ids)]
        for named, fd in itertools.zip_longest(ids, fds):
            if fd is None:
                continue
            if named is None:
                os.close(fd)  # more descriptors than the frame names: none of ours
                continue
            segment_id, is_shared = named
            if not is_shared:
                self.fds[segment_id] = fd
                continue
            try:
                self.shared[segment_id] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                pass  # a call that needs it fails, saying so
            finally:
                os.close(fd)

    def forget(self, ids: Iterable[int]) -> None:
        for segment_id in ids:
            self.shared.pop(segment_id, None)

    def close_unused(self) -> None:
        """Close the files of calls that were skipped (taken back, cancelled)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def _own(self, segment_id: int, access: int) -> mmap.mmap:
        fd = self.fds.pop(segment_id)
        try:
            return mmap.mmap(fd, 0, access=access)
        except OSError as exc:
            if exc.errno != errno.ENOMEM:
                raise
            size = os.fstat(fd).st_size
            raise MemoryError(
                f"no room to map {size / 2**20:.1f} MiB of shared memory: {exc}"
            ) from exc
        finally:
            os.close(fd)

    def _shared(self, segment_id: int) -> mmap.mmap:
        mapping = self.shared.get(segment_id)
        if mapping is None:
            raise OSError(
                f"shared memory file {segment_id} (from stalwart.shared()) could "
                "not be mapped in this worker"
            )
        return mapping

    def load(self, frame: bytes | bytearray | memoryview, *, private: bool) -> Any:
        """Unpickle what a segment frame describes. ``private``: map the file
        copy-on-write (a call in a worker), else shared (a reply, ours alone).
        Returns (object, whether it holds read-only shared() buffers)."""
        view = memoryview(frame)
        _, own_id, stream_size, count = _HEAD.unpack_from(view)
        access = mmap.ACCESS_COPY if private else mmap.ACCESS_WRITE
        own = self._own(own_id, access) if own_id else None
        buffers: list[memoryview] = []
        used_shared = False
        position = _HEAD.size
        for _ in range(count):
            segment_id, offset, size = _ENTRY.unpack_from(view, position)
            position += _ENTRY.size
            if segment_id == own_id:
                assert own is not None
                mapping = own
            else:
                mapping = self._shared(segment_id)
                used_shared = True
            buffers.append(memoryview(mapping)[offset : offset + size])
        if own is not None:
            with memoryview(own) as whole, whole[:stream_size] as stream:
                value = pickle.loads(stream, buffers=buffers)
        else:
            value = pickle.loads(
                view[position : position + stream_size], buffers=buffers
            )
        return value, used_shared


def load_reply(frame: bytes | bytearray, fds: list[int]) -> Any:
    """A worker's reply that came as a segment frame, its file in ``fds``."""
    mappings = Mappings()
    _, own_id, _, _ = _HEAD.unpack_from(frame)
    mappings.receive([own_id] if own_id else [], [], fds)
    try:
        value, _ = mappings.load(frame, private=False)
    finally:
        mappings.close_unused()
    return value


# --------------------------------------------------- descriptors over the socket


def fds_from(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors in a ``recvmsg`` result's ancillary data."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD_BYTES
            fds.extend(struct.unpack(f"{usable // _FD_BYTES}i", data[:usable]))
    return fds


def rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """Ancillary data that sends ``fds`` (SCM_RIGHTS)."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]


def close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
