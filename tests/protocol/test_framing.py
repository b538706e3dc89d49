"""FrameDecoder and encode_frame: bytes in any pieces, junk, truncation and hostile limits."""

from __future__ import annotations

import contextlib
import itertools
import struct

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskraft.protocol import (
    END_OF_STREAM,
    FRAME_SIZE_MAX_BYTES,
    Frame,
    FrameDecoder,
    LocalProtocolError,
    RemoteProtocolError,
    encode_frame,
)
from taskraft.protocol.limits import FRAME_PREFIX_BYTES, PAYLOAD_SIZE_MAX_BYTES

VALUES: list[object] = [
    None,
    0,
    -1,
    2**64 - 1,
    -(2**63),
    True,
    1.5,
    "",
    "héllo",
    b"",
    b"\x00\xff" * 100,
    [],
    [1, [2, [3]]],
    {},
    {"id": 7, "op": "status", "args": {}},
]


def drain(decoder: FrameDecoder) -> list[object]:
    """Every complete frame's value; END_OF_STREAM is appended when reached."""
    values: list[object] = []
    while True:
        frame = decoder.next_frame()
        if frame is None:
            return values
        if frame is END_OF_STREAM:
            values.append(END_OF_STREAM)
            return values
        assert isinstance(frame, Frame)
        values.append(frame.value)


def prefix(length: int) -> bytes:
    return struct.pack(">I", length)


def raw_frame(body: bytes) -> bytes:
    return prefix(len(body)) + body


def test_round_trip_of_each_value() -> None:
    for value in VALUES:
        decoder = FrameDecoder()
        decoder.receive_data(encode_frame(value))
        decoder.receive_data(b"")
        assert drain(decoder) == [value, END_OF_STREAM]


def test_nil_frame_is_distinct_from_no_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.next_frame() is None
    decoder.receive_data(encode_frame(None))
    assert decoder.next_frame() == Frame(None)
    assert decoder.next_frame() is None


def test_tuples_encode_as_arrays() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame((1, 2)))
    assert drain(decoder) == [[1, 2]]


def test_the_prefix_is_the_big_endian_body_length() -> None:
    frame = encode_frame("abc")
    assert frame[:4] == b"\x00\x00\x00\x04"
    assert frame[4:] == msgpack.packb("abc")


STREAM_VALUES: list[object] = [{"a": 1}, None, b"x" * 300, "tail", [1, 2, 3]]
STREAM = b"".join(encode_frame(value) for value in STREAM_VALUES)


def test_several_frames_in_one_chunk() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(STREAM)
    decoder.receive_data(b"")
    assert drain(decoder) == [*STREAM_VALUES, END_OF_STREAM]
    assert decoder.buffered_bytes == 0


def test_split_at_every_byte_boundary() -> None:
    for split in range(1, len(STREAM)):
        decoder = FrameDecoder()
        decoder.receive_data(STREAM[:split])
        received = drain(decoder)
        decoder.receive_data(STREAM[split:])
        received += drain(decoder)
        decoder.receive_data(b"")
        received += drain(decoder)
        assert received == [*STREAM_VALUES, END_OF_STREAM], split


def test_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    received: list[object] = []
    for index in range(len(STREAM)):
        decoder.receive_data(STREAM[index : index + 1])
        received += drain(decoder)
        assert decoder.buffered_bytes < FRAME_PREFIX_BYTES + 400
    decoder.receive_data(b"")
    received += drain(decoder)
    assert received == [*STREAM_VALUES, END_OF_STREAM]


def test_end_of_stream_is_reported_again_and_refuses_more_data() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"")
    assert decoder.next_frame() is END_OF_STREAM
    assert decoder.next_frame() is END_OF_STREAM
    with pytest.raises(LocalProtocolError, match="after the end of the stream"):
        decoder.receive_data(b"x")


def failure(data: bytes, *, end: bool = False, **limits: int) -> tuple[list[object], str]:
    """The values decoded before the failure, and the RemoteProtocolError's message."""
    decoder = FrameDecoder(**limits)
    decoder.receive_data(data)
    if end:
        decoder.receive_data(b"")
    received: list[object] = []
    with pytest.raises(RemoteProtocolError) as caught:
        while True:
            frame = decoder.next_frame()
            assert frame is not None and frame is not END_OF_STREAM, "no failure"
            assert isinstance(frame, Frame)
            received.append(frame.value)
    # After the failure the decoder refuses any use.
    with pytest.raises(LocalProtocolError):
        decoder.next_frame()
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"more")
    assert decoder.buffered_bytes == 0
    return received, str(caught.value)


def test_zero_length_frame() -> None:
    received, message = failure(encode_frame(1) + prefix(0) + encode_frame(2))
    assert received == [1]
    assert "zero-length frame" in message


def test_oversized_length_prefix_is_refused_before_the_body_is_kept() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame("ok") + prefix(2**32 - 1) + b"\x00" * 1000)
    # The declared body is never buffered: only the complete frame before the bad prefix is.
    assert decoder.buffered_bytes == len(encode_frame("ok"))
    for _ in range(100):
        decoder.receive_data(b"\x00" * 100_000)
    assert decoder.buffered_bytes == len(encode_frame("ok"))
    assert decoder.next_frame() == Frame("ok")
    with pytest.raises(RemoteProtocolError, match="exceeds the maximum"):
        decoder.next_frame()


def test_oversized_prefix_arriving_alone_costs_nothing() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(prefix(FRAME_SIZE_MAX_BYTES + 1))
    decoder.receive_data(b"\x01\x02\x03")
    assert decoder.buffered_bytes == 0
    with pytest.raises(RemoteProtocolError, match=f"maximum of {FRAME_SIZE_MAX_BYTES} bytes"):
        decoder.next_frame()


def test_frame_of_exactly_the_maximum_size_is_accepted() -> None:
    body = msgpack.packb(b"x" * 50)
    limit = len(body)
    decoder = FrameDecoder(frame_size_max_bytes=limit)
    decoder.receive_data(raw_frame(body) + prefix(limit + 1))
    assert decoder.next_frame() == Frame(b"x" * 50)
    with pytest.raises(RemoteProtocolError, match="exceeds the maximum"):
        decoder.next_frame()


def test_default_frame_holds_a_maximal_payload_with_room_to_spare() -> None:
    request = {
        "id": 2**64 - 1,
        "op": "enqueue",
        "args": {
            "queue": "q" * 255,
            "payload": b"\xff" * PAYLOAD_SIZE_MAX_BYTES,
            "priority": -(2**63),
            "key": "\U0001f600" * 63 + "abc",
            "delay_ms": 2**32 - 1,
        },
    }
    frame = encode_frame(request)
    assert len(frame) - FRAME_PREFIX_BYTES < PAYLOAD_SIZE_MAX_BYTES + 1024
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    assert drain(decoder) == [request]


def test_buffered_bytes_never_exceed_one_incomplete_frame() -> None:
    body = msgpack.packb(b"y" * 1000)
    decoder = FrameDecoder(frame_size_max_bytes=len(body))
    stream = raw_frame(body) * 5
    for start in range(0, len(stream), 7):
        decoder.receive_data(stream[start : start + 7])
        drain(decoder)
        assert decoder.buffered_bytes < FRAME_PREFIX_BYTES + len(body)


def test_junk_after_a_valid_frame() -> None:
    received, message = failure(encode_frame({"a": 1}) + b"\xde\xad\xbe\xef junk")
    assert received == [{"a": 1}]
    assert "exceeds the maximum" in message


def test_truncated_frame_at_end_of_stream() -> None:
    frame = encode_frame([1, 2, 3, "four"])
    for cut in range(FRAME_PREFIX_BYTES, len(frame)):
        received, message = failure(encode_frame("first") + frame[:cut], end=True)
        assert received == ["first"]
        assert "end of stream in the middle of a frame" in message
        assert f"({cut - FRAME_PREFIX_BYTES} of {len(frame) - FRAME_PREFIX_BYTES} bytes)" in message


def test_end_of_stream_inside_a_length_prefix() -> None:
    for cut in range(1, FRAME_PREFIX_BYTES):
        _, message = failure(encode_frame(1)[:cut], end=True)
        assert f"inside a length prefix ({cut} of 4 bytes)" in message


def test_truncated_frame_without_end_of_stream_waits() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame("abc")[:-1])
    assert decoder.next_frame() is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xc1", "invalid msgpack"),  # a byte msgpack never uses
        (b"\x93\x01\x02", "invalid msgpack"),  # an array of 3 holding only 2 items
        (b"\xa5abc", "invalid msgpack"),  # a str of 5 bytes cut after 3
        (b"\x01\x02", "trailing bytes inside a frame"),
        (msgpack.packb({"a": 1}) + b"\xc0", "trailing bytes inside a frame"),
        (b"\xa2\xff\xfe", "invalid msgpack"),  # not UTF-8
        (msgpack.packb({1: "a"}), "invalid msgpack"),  # integer map key
        (msgpack.packb({b"k": "a"}), "map keys must be str"),
        (b"\x82\xa1k\x01\xa1k\x02", "appears twice"),
        (msgpack.packb(msgpack.ExtType(1, b"abc")), "invalid msgpack"),
        (b"\xc7\x00\x05", "extension type 5"),  # an extension of zero bytes
        (b"\xd6\xff\x00\x00\x00\x00", "invalid msgpack"),  # a timestamp
        (b"\xdb\xff\xff\xff\xff", "invalid msgpack"),  # str32 declaring 4 GiB
        (b"\xc6\xff\xff\xff\xff", "invalid msgpack"),  # bin32 declaring 4 GiB
    ],
)
def test_invalid_msgpack_inside_a_frame(body: bytes, expected: str) -> None:
    received, message = failure(encode_frame("before") + raw_frame(body))
    assert received == ["before"]
    assert expected in message


def test_collections_beyond_the_limit_are_refused() -> None:
    for value in ([0] * 17, {str(index): 0 for index in range(17)}):
        _, message = failure(encode_frame(value), collection_length_max=16)
        assert "exceeds max" in message
    decoder = FrameDecoder(collection_length_max=16)
    decoder.receive_data(encode_frame([0] * 16))
    assert drain(decoder) == [[0] * 16]


def test_huge_collection_headers_in_a_small_frame_are_refused() -> None:
    # array32 and map32 declaring 2**32 - 1 items in a 5-byte frame.
    for header in (b"\xdd", b"\xdf"):
        _, message = failure(raw_frame(header + b"\xff\xff\xff\xff"))
        assert "exceeds max" in message


def test_nesting_beyond_the_limit_is_refused() -> None:
    def nested(depth: int) -> object:
        value: object = 0
        for _ in range(depth):
            value = [value]
        return value

    decoder = FrameDecoder(nesting_depth_max=8)
    decoder.receive_data(encode_frame(nested(8)))
    assert drain(decoder) == [nested(8)]
    _, message = failure(encode_frame(nested(9)), nesting_depth_max=8)
    assert "deeper than 8 levels" in message
    _, message = failure(encode_frame({"a": {"b": [{"c": [[[[[1]]]]]}]}}), nesting_depth_max=8)
    assert "deeper than 8 levels" in message
    # Thousands of levels in a few kilobytes, beyond what msgpack itself unpacks.
    for depth in (1000, 5000):
        _, message = failure(raw_frame(b"\x91" * depth + b"\xc0"))
        assert "deeper than" in message or "invalid msgpack" in message


def test_encode_frame_refuses_what_the_peer_would_refuse() -> None:
    with pytest.raises(LocalProtocolError, match="exceeds the maximum of 10 bytes"):
        encode_frame(b"x" * 10, frame_size_max_bytes=10)
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode_frame(object())
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode_frame(2**64)


@pytest.mark.parametrize("bound", [0, -1, 2**32])
def test_frame_bound_must_fit_the_prefix(bound: int) -> None:
    with pytest.raises(ValueError, match="frame_size_max_bytes"):
        FrameDecoder(frame_size_max_bytes=bound)
    with pytest.raises(ValueError, match="frame_size_max_bytes"):
        encode_frame(1, frame_size_max_bytes=bound)


FUZZ_FRAME_SIZE_MAX_BYTES = 64


def valid_frames() -> st.SearchStrategy[bytes]:
    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=8)
        | st.binary(max_size=8),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=4), children, max_size=3)
        ),
        max_leaves=5,
    )
    return values.map(msgpack.packb).filter(lambda body: len(body) <= 64).map(raw_frame)


@st.composite
def hostile_streams(draw: st.DrawFn) -> list[bytes]:
    """A stream of valid frames, random bytes and bit flips, cut into random pieces."""
    parts = draw(st.lists(valid_frames() | st.binary(max_size=80), max_size=8))
    stream = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 3))):
        if stream:
            index = draw(st.integers(0, len(stream) - 1))
            stream[index] ^= 1 << draw(st.integers(0, 7))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bounds = [0, *cuts, len(stream)]
    pieces = [bytes(stream[start:end]) for start, end in itertools.pairwise(bounds)]
    # An empty piece would mean the end of the stream.
    return [piece for piece in pieces if piece]


@settings(max_examples=250, deadline=None)
@given(chunks=hostile_streams(), end=st.booleans())
def test_fuzz_decoder_raises_only_remote_protocol_errors_and_stays_bounded(
    chunks: list[bytes], end: bool
) -> None:
    decoder = FrameDecoder(frame_size_max_bytes=FUZZ_FRAME_SIZE_MAX_BYTES)
    try:
        for chunk in [*chunks, b""] if end else chunks:
            decoder.receive_data(chunk)
            drain(decoder)
            assert decoder.buffered_bytes < FRAME_PREFIX_BYTES + FUZZ_FRAME_SIZE_MAX_BYTES
    except RemoteProtocolError:
        assert decoder.buffered_bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bodies_inside_well_formed_frames(body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(raw_frame(body) if body else b"")
    with contextlib.suppress(RemoteProtocolError):
        drain(decoder)
