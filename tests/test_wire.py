"""Frames on a worker's pipe: ``multiprocessing.connection.Connection``'s framing.

A frame is a 4-byte big-endian signed length then the payload, or, for payloads
over 2 GiB, -1 then an 8-byte length. The worker writes with a plain
``Connection``; the parent parses the raw bytes with ``FrameReader``, however a
read happened to cut them. Payloads are compared as ``bytes(p)``: the reader may
hand out any bytes-like object.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any

import pytest

from stalwart import _outofband, _wire
from stalwart._wire import FrameReader, frame_header

if TYPE_CHECKING:
    from collections.abc import Iterable
    from multiprocessing.connection import Connection

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 30.0  # seconds; reached only when something hangs

PAYLOADS = [
    b"first",
    b"",
    bytes(range(256)),
    b"\xff\xff\xff\xff",  # a payload that looks like the long-form marker
    b"x" * 70_000,  # longer than one pipe read
]


def framed(payload: bytes) -> bytes:
    return frame_header(len(payload)) + payload


def long_form(payload: bytes) -> bytes:
    """The 12-byte header Connection writes only past 2 GiB, around a small payload."""
    return struct.pack("!i", -1) + struct.pack("!Q", len(payload)) + payload


def as_bytes(frames: Iterable[Any]) -> list[bytes]:
    """The payloads as bytes (an ``Unreadable`` in their place fails the test)."""
    return [bytes(frame) for frame in frames]


def feed_in_pieces(data: bytes, size: int) -> list[bytes]:
    reader = FrameReader()
    payloads = []
    for start in range(0, len(data), size):
        payloads += as_bytes(reader.feed(data[start : start + size]))
    return payloads


# ------------------------------------------------------------------- the header


@pytest.mark.parametrize("size", [0, 1, 255, 65_536, 0x7FFFFFFF])
def test_header_up_to_2_gib_is_a_4_byte_length(size: int) -> None:
    assert frame_header(size) == struct.pack("!i", size)


@pytest.mark.parametrize("size", [0x80000000, 5 * 2**30, 2**40])
def test_header_past_2_gib_is_minus_one_then_an_8_byte_length(size: int) -> None:
    assert frame_header(size) == struct.pack("!i", -1) + struct.pack("!Q", size)


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: f"{len(p)}B")
def test_header_is_what_connection_send_bytes_writes(payload: bytes) -> None:
    reader_end, writer_end = multiprocessing.Pipe(duplex=False)
    with reader_end, writer_end:
        raw = _send_and_read_raw(
            writer_end, reader_end, [payload], len(framed(payload))
        )
    assert raw == framed(payload)


# ----------------------------------------------------------------- the reader


def test_one_byte_at_a_time_gives_whole_payloads_in_order() -> None:
    data = b"".join(framed(p) for p in PAYLOADS)
    assert feed_in_pieces(data, 1) == PAYLOADS


@pytest.mark.parametrize("piece", [2, 3, 5, 4095, 65_537])
def test_any_cut_of_the_stream_gives_the_same_payloads(piece: int) -> None:
    data = b"".join(framed(p) for p in PAYLOADS)
    assert feed_in_pieces(data, piece) == PAYLOADS


def test_several_frames_in_one_feed_all_come_out() -> None:
    data = b"".join(framed(p) for p in PAYLOADS)
    assert as_bytes(FrameReader().feed(data)) == PAYLOADS


def test_a_feed_ending_mid_frame_keeps_the_rest_for_later() -> None:
    reader = FrameReader()
    data = framed(b"whole") + framed(b"split across feeds")
    cut = len(framed(b"whole")) + 6  # inside the second frame's payload
    assert as_bytes(reader.feed(data[:cut])) == [b"whole"]
    assert as_bytes(reader.feed(data[cut:])) == [b"split across feeds"]
    assert reader.feed(b"") == []


def test_empty_payload_is_a_frame_of_its_own() -> None:
    reader = FrameReader()
    assert as_bytes(reader.feed(framed(b""))) == [b""]
    assert as_bytes(reader.feed(framed(b"") * 3)) == [b"", b"", b""]


def test_a_header_alone_completes_nothing() -> None:
    reader = FrameReader()
    assert reader.feed(frame_header(3)) == []
    assert as_bytes(reader.feed(b"abc")) == [b"abc"]


def test_long_form_header_with_a_small_payload_is_accepted() -> None:
    data = framed(b"before") + long_form(b"small") + framed(b"after")
    expected = [b"before", b"small", b"after"]
    assert as_bytes(FrameReader().feed(data)) == expected
    assert feed_in_pieces(data, 1) == expected


def test_long_form_header_with_an_empty_payload_is_accepted() -> None:
    assert feed_in_pieces(long_form(b"") + framed(b"next"), 1) == [b"", b"next"]


def test_a_large_payload_cut_into_uneven_pieces_arrives_whole() -> None:
    large = os.urandom(3 * 2**20 + 7)  # several MiB: past any "large frame" limit
    data = framed(b"small") + framed(large) + framed(b"tail")
    assert feed_in_pieces(data, 65_537) == [b"small", large, b"tail"]


# ------------------------------------------------- against a real Connection


def _send_and_read_raw(
    writer_end: Connection,
    reader_end: Connection,
    payloads: Iterable[bytes],
    expected_size: int,
) -> bytes:
    """Send ``payloads`` with ``send_bytes`` (from a thread: a large one blocks
    until read) and read ``expected_size`` raw bytes from the other end's fd."""
    failures: list[BaseException] = []

    def send_all() -> None:
        try:
            for payload in payloads:
                writer_end.send_bytes(payload)
        except BaseException as exc:  # reported by the test, below
            failures.append(exc)

    sender = threading.Thread(target=send_all, name="test-wire-sender")
    sender.start()
    raw = bytearray()
    try:
        while len(raw) < expected_size:
            assert reader_end.poll(TIMEOUT), f"only {len(raw)} bytes arrived"
            raw += os.read(reader_end.fileno(), 65_536)
    finally:
        sender.join(TIMEOUT)
    assert not sender.is_alive(), "send_bytes never returned"
    assert not failures, failures
    return bytes(raw)


@pytest.mark.parametrize("duplex", [True, False], ids=["socketpair", "os.pipe"])
def test_frames_from_connection_send_bytes_round_trip(duplex: bool) -> None:
    reader_end, writer_end = multiprocessing.Pipe(duplex=duplex)
    payloads = [*PAYLOADS, os.urandom(2**21)]
    expected_size = sum(len(framed(p)) for p in payloads)
    with reader_end, writer_end:
        raw = _send_and_read_raw(writer_end, reader_end, payloads, expected_size)
    assert len(raw) == expected_size
    assert as_bytes(FrameReader().feed(raw)) == payloads


def test_frames_read_as_they_arrive_round_trip() -> None:
    """Feed each raw read as it comes, as the parent's I/O loop does."""
    reader_end, writer_end = multiprocessing.Pipe()
    payloads = [f"reply {i}".encode() * (i + 1) for i in range(200)]
    got: list[bytes] = []
    reader = FrameReader()

    def send_all() -> None:
        for payload in payloads:
            writer_end.send_bytes(payload)

    sender = threading.Thread(target=send_all, name="test-wire-sender")
    with reader_end, writer_end:
        sender.start()
        try:
            while len(got) < len(payloads):
                assert reader_end.poll(TIMEOUT), f"only {len(got)} payloads arrived"
                data = os.read(reader_end.fileno(), 4096)
                got += as_bytes(reader.feed(data))
        finally:
            sender.join(TIMEOUT)
    assert got == payloads


# -- batches and replies ----------------------------------------------------------------


def packed(data: bytes) -> _outofband.Packed:
    return _outofband.Packed([data], len(data))


def test_a_batch_round_trips_ids_sequence_numbers_and_calls() -> None:
    calls = [b"first", b"", b"x" * 70_000]
    entries = [
        (7, 1, packed(calls[0])),
        (8, 2, packed(calls[1])),
        (9, 3, packed(calls[2])),
    ]
    chunks = _wire.encode_batch(entries)
    (payload,) = FrameReader().feed(b"".join(chunks))
    batch = _wire.decode_batch(payload)
    decoded = [(i, seq, bytes(call)) for i, seq, call in batch.calls]
    assert decoded == [(7, 1, calls[0]), (8, 2, calls[1]), (9, 3, calls[2])]
    assert batch.own_ids == batch.shared_ids == batch.forget_ids == ()


def test_a_batch_names_the_files_that_ride_on_it_in_order() -> None:
    """Own files, then shared ones, then the shared ids the worker may drop:
    the worker pairs descriptors with ids by this order."""
    chunks = _wire.encode_batch([(1, 1, packed(b"call"))], [11, 12], [21], [31, 32])
    (payload,) = FrameReader().feed(b"".join(chunks))
    batch = _wire.decode_batch(payload)
    assert [bytes(call) for _, _, call in batch.calls] == [b"call"]
    assert (batch.own_ids, batch.shared_ids, batch.forget_ids) == (
        (11, 12),
        (21,),
        (31, 32),
    )


def test_the_reset_frame_is_a_batch_of_no_calls() -> None:
    (payload,) = FrameReader().feed(_wire.RESET_FRAME)
    assert _wire.decode_batch(payload).calls == []


def test_descriptors_arrive_with_their_frame_and_wait_in_order() -> None:
    """A descriptor sent on a frame's first byte reaches the reader, which
    keeps it until the frame that names it is handled."""
    parent, child = socket.socketpair()
    worker = _wire.BlockingFrames(child.fileno())
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"through the descriptor")
        worker.send([b"plain"])
        worker.send([b"with a file"], [read_end])
        parent.setblocking(False)
        reader = FrameReader()
        frames: list[Any] = []
        while len(frames) < 2:
            ready, _, _ = select.select([parent], [], [], TIMEOUT)
            assert ready, f"only {len(frames)} of 2 frames arrived"
            frames += reader.read_from(parent)[0]
        assert as_bytes(frames) == [b"plain", b"with a file"]
        received = reader.take_fd()
        assert os.read(received, 100) == b"through the descriptor"
        os.close(received)
        with pytest.raises(OSError, match="did not arrive"):
            reader.take_fd()
    finally:
        worker.close()
        for end in (parent, child):
            end.close()
        for fd in (read_end, write_end):
            os.close(fd)


@pytest.mark.parametrize(
    "reply",
    [5, (), ("nonsense",), (_wire.RESULT, "not an id", 1, 0.1), (_wire.RECEIVED,)],
)
def test_a_reply_of_an_unknown_shape_is_refused_not_trusted(reply: object) -> None:
    with pytest.raises(ValueError, match="worker sent"):
        _wire.decode_reply(reply)


def test_an_error_that_rebuilt_as_a_non_exception_still_fails_as_an_exception() -> None:
    succeeded, error = _wire.outcome((_wire.ERROR, 1, 5, "traceback text", 0.1))
    assert not succeeded
    assert isinstance(error, BaseException)
    assert "int" in str(error)


def test_a_frame_too_large_to_hold_becomes_unreadable_and_the_stream_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No memory for one large reply fails that reply; the frames after it
    still arrive whole (the pipe stays in step)."""
    real_bytearray = bytearray

    def no_room_for_large(*args: Any) -> bytearray:
        if args and isinstance(args[0], int) and args[0] >= _wire.LARGE_FRAME:
            raise MemoryError
        return real_bytearray(*args)

    monkeypatch.setattr(_wire, "bytearray", no_room_for_large, raising=False)
    large = b"L" * (_wire.LARGE_FRAME + 10)
    stream = frame_header(len(large)) + large + frame_header(5) + b"after"
    reader = FrameReader()
    frames: list[Any] = []
    for start in range(0, len(stream), 4096):
        frames.extend(reader.feed(stream[start : start + 4096]))
    assert isinstance(frames[0], _wire.Unreadable)
    assert isinstance(frames[0].error, MemoryError)
    assert [bytes(f) for f in frames[1:]] == [b"after"]
