"""``stalwart.shared(obj)``: one read-only copy of large data for many tasks.

Every call gets its own snapshot of its arguments (``_outofband``): right, but
a 100 MiB array sent to a thousand tasks would be copied a thousand times.
``shared(obj)`` copies ``obj``'s large buffers once into a sealed anonymous
file and returns a copy of ``obj`` built on a read-only mapping of it. Passing
that copy (or a container holding it) to any number of tasks sends a reference:
each worker maps the file once and keeps it until the object is gone here.

Correct by construction: the file is sealed against writes and every mapping of
it is read-only, so no task can ever see data that changed after ``shared()``.
To send new data, call ``shared()`` again. What is shared is each buffer the
object hands to pickle (NumPy arrays, pandas columns, Arrow buffers) of at
least ``_outofband.OUT_OF_BAND_BYTES``; a slice or view of it is sent as an
ordinary argument.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import fcntl
import mmap
import os
import pickle
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart import _outofband, _pickling

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

T = TypeVar("T")

_SEALS = (
    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
    if hasattr(fcntl, "F_SEAL_WRITE")
    else 0
)

READ_ONLY_HINT = (
    "stalwart: this array's data is shared read-only by every task (it came "
    "from stalwart.shared(), or through the joblib backend, which sends a large "
    "array once per Parallel call); copy it first (arr.copy()) to change it "
    "in a task"
)


class SharedSegment:
    """A sealed file of ``shared()`` buffers. Owns its descriptor, closed when
    the last object built on it, and the last call referring to it, are gone."""

    __slots__ = ("__weakref__", "fd", "id", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.id = next(_outofband._ids)

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                _close(fd)


class SharedRef:
    """Where one buffer of a ``shared()`` object lies: file, offset, size."""

    __slots__ = ("offset", "segment", "size")

    def __init__(self, segment: SharedSegment, offset: int, size: int) -> None:
        self.segment = segment
        self.offset = offset
        self.size = size


_lock = threading.Lock()
# id(buffer exporter) -> (weak reference to it, where its buffer lies)
_registry: dict[int, tuple[weakref.ref[Any], SharedRef]] = {}
_alive: weakref.WeakValueDictionary[int, SharedSegment] = weakref.WeakValueDictionary()


def shared(obj: T) -> T:
    """Return a read-only copy of ``obj`` whose large buffers are in shared memory.

    Pass the copy to as many tasks as you like: each carries a reference, and a
    worker maps the data once. The copy cannot change (its arrays are read-only,
    here and in every worker), so every task sees the data as it was when
    ``shared()`` was called; call it again to send new data. Works with every
    executor: a thread pool simply passes the object.
    """
    found = _outofband.Buffers(shared_ok=False, min_bytes=0)
    stream = _pickling.dumps(obj, buffer_callback=found)
    buffers = [b for b in found.found if isinstance(b, pickle.PickleBuffer)]
    if not buffers:
        return pickle.loads(stream)  # type: ignore[no-any-return]
    refs, parts = _sealed_copy([buffer.raw() for buffer in buffers])
    copy = pickle.loads(stream, buffers=parts)
    _register(copy, refs)
    return copy  # type: ignore[no-any-return]


def _sealed_copy(
    views: list[memoryview],
) -> tuple[list[SharedRef], list[memoryview]]:
    """Copy ``views`` into one new sealed file: where each lies in it, and a
    read-only view of each copy (the file stays open while its refs live)."""
    size = sum(_outofband.aligned(view.nbytes) for view in views)
    fd = _outofband.memory_file(size, "stalwart-shared", sealable=True)
    segment = SharedSegment(fd, size)
    refs = []
    offset = 0
    for view in views:
        _outofband.write_at(fd, (view,), offset)
        refs.append(SharedRef(segment, offset, view.nbytes))
        offset += _outofband.aligned(view.nbytes)
    if _SEALS:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    mapping = memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_READ))
    with _lock:
        _alive[segment.id] = segment
    return refs, [mapping[ref.offset : ref.offset + ref.size] for ref in refs]


def _register(copy: object, refs: list[SharedRef]) -> None:
    """Note which objects of ``copy`` export each buffer, so that pickling
    them later sends a reference. Found by pickling ``copy`` once more, which
    hands over the same buffers in the same order without copying them."""
    finder = _Exporters()
    _pickling.dumps(copy, buffer_callback=finder)
    with _lock:
        for exporter, ref in zip(finder.found, refs, strict=False):
            key = id(exporter)
            try:
                _registry[key] = (weakref.ref(exporter, _forget(key)), ref)
            except TypeError:  # cannot be weakly referenced: sent by value
                continue


class _Exporters:
    """A ``buffer_callback`` that notes the object behind each buffer, in order."""

    def __init__(self) -> None:
        self.found: list[object] = []  # cleared by dumps() on a retry

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        self.found.append(buffer.raw().obj)
        return False


def _forget(key: int) -> Callable[[weakref.ref[Any]], None]:
    def forget(dead: weakref.ref[Any]) -> None:
        with _lock:
            entry = _registry.get(key)
            if entry is not None and entry[0] is dead:
                del _registry[key]

    return forget


def lookup(view: memoryview) -> SharedRef | None:
    """The shared place of a buffer being pickled, if it is one of ours whole."""
    if not _registry:
        return None
    exporter = view.obj
    entry = _registry.get(id(exporter))
    if entry is None or entry[0]() is not exporter:
        return None
    ref = entry[1]
    return ref if ref.size == view.nbytes else None


class CopyOnce:
    """Large buffers passed again and again, copied once: what joblib's
    backend needs, since scikit-learn passes the same ``X`` to every fit.

    Active while ``copying_once(this)`` is: a large buffer being pickled for a
    call is copied into a sealed file the first time its object is seen, and
    later calls passing the same object send a reference to that copy, after
    checking byte for byte that the object has not changed since (a memcmp, a
    fraction of a copy's cost). A changed buffer is copied again, never sent
    stale. Tasks see the copies read-only, as loky's memmapping gives them.
    The files live as long as this object.
    """

    def __init__(self) -> None:
        # id(buffer exporter) -> (weak reference to it, its copy's place, a view of it)
        self._copies: dict[int, tuple[weakref.ref[Any], SharedRef, memoryview]] = {}

    def ref_for(self, view: memoryview) -> SharedRef:
        """Where a copy of ``view``'s bytes, as they are now, lies."""
        exporter = view.obj
        entry = self._copies.get(id(exporter))
        if entry is not None:
            original, ref, copy = entry
            if original() is exporter and same_bytes(view, copy):
                return ref
        (ref,), (copy,) = _sealed_copy([view])
        key = id(exporter)
        try:
            original = weakref.ref(exporter, self._forget(key))
        except TypeError:  # cannot be weakly referenced: copied every time
            return ref
        self._copies[key] = (original, ref, copy)
        return ref

    def _forget(self, key: int) -> Callable[[weakref.ref[Any]], None]:
        """The object is gone, so is the use of its copy (unless the key has a
        new owner already)."""
        copies = weakref.ref(self)

        def forget(dead: weakref.ref[Any]) -> None:
            owner = copies()
            if owner is not None:
                entry = owner._copies.get(key)
                if entry is not None and entry[0] is dead:
                    del owner._copies[key]

        return forget


_copy_once: contextvars.ContextVar[CopyOnce | None] = contextvars.ContextVar(
    "stalwart_copy_once", default=None
)


@contextlib.contextmanager
def copying_once(copies: CopyOnce) -> Iterator[None]:
    """Within this block, calls pickled here copy large buffers through ``copies``."""
    token = _copy_once.set(copies)
    try:
        yield
    finally:
        _copy_once.reset(token)


def copy_once_ref(view: memoryview) -> SharedRef | None:
    """A large buffer being pickled for a call: its copy's place, inside
    ``copying_once``; else None (the call gets a copy of its own)."""
    copies = _copy_once.get()
    return None if copies is None else copies.ref_for(view)


def same_bytes(a: memoryview, b: memoryview) -> bool:
    """Whether two buffers hold the same bytes: libc's memcmp where their
    addresses can be had (NumPy), which runs at memory speed without the GIL."""
    if a.nbytes != b.nbytes:
        return False
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return a == b
    first, second = (numpy.frombuffer(v, numpy.uint8).ctypes.data for v in (a, b))
    return int(_memcmp(first, second, a.nbytes)) == 0


_memcmp = ctypes.CDLL(None).memcmp
_memcmp.restype = ctypes.c_int
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def alive_ids() -> set[int]:
    """The ids of shared files still in use here (workers may drop the rest)."""
    return set(_alive.keys())
