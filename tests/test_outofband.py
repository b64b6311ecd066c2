"""Where a pickled call's data travels (``_outofband``): in the stream, or in a
shared memory file, and what the receiver rebuilds from it.

Pure policy and mechanism, in one process: a file's descriptor is handed over
as a worker would receive it (a duplicate), so the receiver's side runs for real.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import pytest

from stalwart import _outofband, _pickling, _shared

np = pytest.importorskip("numpy")

BIG = _outofband.OUT_OF_BAND_BYTES


def echo(value: Any) -> Any:
    return value


def big(packed: bytes | _outofband.Packed) -> _outofband.Packed:
    assert isinstance(packed, _outofband.Packed), "a call with large data"
    return packed


def receive(packed: _outofband.Packed, *, private: bool = True) -> Any:
    """What a worker rebuilds from ``packed``: its file as the worker gets it."""
    mappings = _outofband.Mappings()
    segment = packed.segment
    if segment is not None:
        mappings.receive([segment.id], [], [os.dup(segment.fd)])
    shared = packed.shared
    mappings.receive([], [s.id for s in shared], [os.dup(s.fd) for s in shared])
    try:
        if _outofband.is_segment_frame(packed.data()):
            value, _ = mappings.load(packed.data(), private=private)
            return value
        return pickle.loads(packed.data())
    finally:
        mappings.close_unused()


def test_a_small_call_is_its_pickle_bytes() -> None:
    packed = _pickling.pack_call(echo, (np.zeros(10),), {})
    assert isinstance(packed, bytes)
    assert not _outofband.is_segment_frame(packed)
    fn, args, _ = pickle.loads(packed)
    assert fn is echo
    assert args[0].tolist() == [0.0] * 10


def test_a_big_array_goes_in_a_file_and_the_pipe_carries_a_few_bytes() -> None:
    array = np.arange(BIG // 8 * 4, dtype=np.float64)
    packed = big(_pickling.pack_call(echo, (array,), {}))
    assert packed.segment is not None
    assert packed.size < 200
    _, args, _ = receive(packed)
    assert np.array_equal(args[0], array)


def test_the_file_is_a_snapshot_taken_at_packing() -> None:
    array = np.zeros(BIG // 8 * 2)
    packed = big(_pickling.pack_call(echo, (array,), {}))
    array[0] = 42.0
    _, args, _ = receive(packed)
    assert args[0][0] == 0.0


def test_a_received_argument_is_writable_and_private() -> None:
    """Copy-on-write: the task may write to its argument, as with the stdlib,
    and the file (what a retry would send again) keeps the submitted data."""
    packed = big(_pickling.pack_call(echo, (np.zeros(BIG // 8 * 2),), {}))
    _, args, _ = receive(packed)
    args[0][0] = 7.0
    _, again, _ = receive(packed)
    assert again[0][0] == 0.0


def test_a_reply_mapped_shared_is_writable() -> None:
    buffers = _outofband.Buffers(shared_ok=False)
    data = pickle.dumps(np.ones(BIG // 8 * 2), 5, buffer_callback=buffers)
    packed = _outofband.pack([data], buffers.found, for_queue=False)
    assert packed is not None
    assert packed.segment is not None
    value = receive(packed, private=False)
    value[0] = 3.0
    assert value.sum() == value.size - 1 + 3.0


def test_big_bytes_are_kept_by_reference_not_copied() -> None:
    """Immutable, so holding the object is already a snapshot."""
    payload = os.urandom(BIG * 2)
    sink = _outofband.Sink()
    pickle.Pickler(sink, 5).dump(payload)
    assert any(chunk is payload for chunk in sink.chunks)


def test_a_big_stream_without_buffers_goes_in_a_file_while_files_are_few() -> None:
    payload = os.urandom(BIG * 2)
    packed = big(_pickling.pack_call(echo, (payload,), {}))
    assert packed.segment is not None
    assert receive(packed)[1][0] == payload


def test_past_the_queued_budget_a_big_stream_waits_as_references(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many big ``bytes`` calls queued: no file each (memory, descriptors),
    the stream goes through the pipe when sent; still exactly the call."""
    monkeypatch.setattr(
        _outofband, "open_segments", lambda: (1, _outofband.QUEUED_STREAM_BYTES)
    )
    payload = os.urandom(BIG * 2)
    packed = big(_pickling.pack_call(echo, (payload,), {}))
    assert packed.segment is None
    assert any(part is payload for part in packed.parts)
    assert pickle.loads(packed.data())[1][0] == payload


def test_with_no_descriptor_to_spare_big_buffers_go_in_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        _outofband, "open_segments", lambda: (_outofband.MAX_OPEN_SEGMENTS, 0)
    )
    array = np.arange(BIG // 8 * 2, dtype=np.float64)
    packed = big(_pickling.pack_call(echo, (array,), {}))
    assert packed.segment is None
    assert np.array_equal(pickle.loads(packed.data())[1][0], array)


def test_a_call_that_ends_closes_its_file() -> None:
    before, _ = _outofband.open_segments()
    packed = _pickling.pack_call(echo, (np.zeros(BIG // 8 * 2),), {})
    assert _outofband.open_segments()[0] == before + 1
    del packed
    assert _outofband.open_segments()[0] == before


def test_descriptors_that_no_call_used_are_closed() -> None:
    read_end, write_end = os.pipe()
    mappings = _outofband.Mappings()
    mappings.receive([5], [], [read_end])
    mappings.close_unused()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(read_end)
    os.close(write_end)


def test_inside_copying_once_a_buffer_sent_again_unchanged_is_copied_once() -> None:
    """joblib's backend: the same X to every fit costs one copy per Parallel
    call, and a changed X is copied again, never sent stale."""
    array = np.arange(BIG // 8 * 2, dtype=np.float64)
    copies = _shared.CopyOnce()
    with _shared.copying_once(copies):
        first = big(_pickling.pack_call(echo, (array,), {}))
        again = big(_pickling.pack_call(echo, (array,), {}))
        array[0] = -1.0
        changed = big(_pickling.pack_call(echo, (array,), {}))
    assert first.segment is None, "a reference only"
    assert len(first.shared) == 1
    assert again.shared == first.shared
    assert changed.shared != first.shared
    sent = receive(changed)[1][0]
    assert sent[0] == -1.0
    assert not sent.flags.writeable, "one copy for many tasks: read-only"
    assert receive(first)[1][0][0] == 0.0
    outside = big(_pickling.pack_call(echo, (array,), {}))
    assert outside.shared == ()
    assert outside.segment is not None


def test_copying_once_keeps_a_copy_while_its_object_lives_and_no_longer() -> None:
    copies = _shared.CopyOnce()
    array = np.ones(BIG // 8 * 2)
    with _shared.copying_once(copies):
        packed = big(_pickling.pack_call(echo, (array,), {}))
    segment_id = packed.shared[0].id
    del packed
    assert segment_id in _shared.alive_ids(), "kept for the next call passing it"
    del array
    assert segment_id not in _shared.alive_ids()


@pytest.mark.parametrize("numpy_loaded", [True, False])
def test_same_bytes_compares_every_byte(
    numpy_loaded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not numpy_loaded:
        monkeypatch.setitem(__import__("sys").modules, "numpy", None)
    data = bytearray(range(256)) * 4096
    same = bytes(data)
    assert _shared.same_bytes(memoryview(data), memoryview(same))
    data[-1] ^= 1
    assert not _shared.same_bytes(memoryview(data), memoryview(same))
    assert not _shared.same_bytes(memoryview(same), memoryview(same)[:-1])
