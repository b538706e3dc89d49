"""The command codec: every command survives a round trip, and bad bytes are a BadRequest."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskraft.errors import BadRequest
from taskraft.queue import (
    Ack,
    Command,
    CreateQueue,
    DeleteQueue,
    Dequeue,
    Enqueue,
    Extend,
    Nack,
    QueueKind,
    StampedCommand,
    Tick,
    decode_command,
    decode_entry,
    encode_command,
    encode_entry,
)

INTEGERS = st.integers(-(2**63), 2**64 - 1)
OPTIONAL_INTEGERS = st.none() | INTEGERS
TEXT = st.text(max_size=300)

COMMANDS: st.SearchStrategy[Command] = st.one_of(
    st.builds(
        CreateQueue,
        name=TEXT,
        kind=TEXT | st.sampled_from(QueueKind),
        max_size=OPTIONAL_INTEGERS,
        max_payload_bytes=OPTIONAL_INTEGERS,
        priority_range=st.none() | st.tuples(INTEGERS, INTEGERS),
        lease_ms_default=INTEGERS,
        max_deliveries=OPTIONAL_INTEGERS,
        dead_letter_queue=st.none() | TEXT,
    ),
    st.builds(DeleteQueue, TEXT),
    st.builds(
        Enqueue,
        queue=TEXT,
        priority=INTEGERS,
        payload=st.binary(max_size=2000),
        key=st.none() | TEXT,
        delay_ms=INTEGERS,
    ),
    st.builds(Dequeue, queue=TEXT, lease_ms=OPTIONAL_INTEGERS),
    st.builds(Ack, INTEGERS, INTEGERS),
    st.builds(Nack, INTEGERS, INTEGERS, INTEGERS),
    st.builds(Extend, INTEGERS, INTEGERS, INTEGERS),
    st.just(Tick()),
)


@given(COMMANDS)
def test_every_command_round_trips(command: Command) -> None:
    assert decode_command(encode_command(command)) == command


@given(COMMANDS, INTEGERS)
def test_every_entry_round_trips(command: Command, now_ms: int) -> None:
    assert decode_entry(encode_entry(command, now_ms=now_ms)) == StampedCommand(now_ms, command)


def test_the_encoding_is_compact() -> None:
    # Array, tag, version, priority, payload length, nil key and delay take 8 bytes; the queue
    # name (a 1-byte header and 7 characters) another 8.
    assert len(encode_command(Enqueue("default", 5, b"x" * 100))) == 100 + 8 + 8
    assert encode_command(Tick()) == bytes([0x92, 8, 1])


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_bad_request(data: bytes) -> None:
    for decode in (decode_command, decode_entry):
        with contextlib.suppress(BadRequest):
            decode(data)


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | INTEGERS | st.floats() | TEXT | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=10),
    max_leaves=30,
)


@given(st.integers(1, 8), st.integers(1, 2), st.lists(MSGPACK_VALUES, max_size=10))
def test_well_formed_msgpack_with_wrong_fields_is_a_bad_request(
    tag: int, version: int, fields: list[object]
) -> None:
    data = msgpack.packb([tag, version, *fields])
    try:
        command = decode_command(data)
    except BadRequest:
        return
    assert encode_command(command) == data


def valid_encodings() -> list[bytes]:
    return [
        encode_command(Enqueue("q", 1, b"payload", "key", 5)),
        encode_command(CreateQueue("q", "buckets", 1, 2, (0, 3), 4, 5, "dead")),
        encode_command(Ack(1, 2)),
        encode_entry(Dequeue("q", None), now_ms=7),
    ]


@pytest.mark.parametrize("data", valid_encodings())
def test_every_truncation_and_any_trailing_byte_is_a_bad_request(data: bytes) -> None:
    decode = decode_entry if data == valid_encodings()[-1] else decode_command
    decode(data)
    for length in range(len(data)):
        with pytest.raises(BadRequest):
            decode(data[:length])
    with pytest.raises(BadRequest):
        decode(data + b"\x00")


@pytest.mark.parametrize(
    "value",
    [
        [],
        [3],
        {"tag": 3},
        [99, 1],  # unknown tag
        [3, 2, "q", 1, b"", None, 0],  # unknown version
        [3, 1, "q", 1, b""],  # missing fields
        [3, 1, "q", 1, b"", None, 0, "extra"],
        [3, 1, "q", True, b"", None, 0],  # a bool is not an integer
        [3, 1, "q", 1.5, b"", None, 0],
        [3, 1, b"q", 1, b"", None, 0],  # bytes where a string belongs
        [3, 1, "q", 1, "text", None, 0],  # a string where bytes belong
        [1, 1, "q", "heap", None, None, [0], 1, None, None],  # a range of one element
        [1, 1, "q", "heap", None, None, [0, "1"], 1, None, None],
        [True, 1],
        [8, True],
        [8.0, 1],
    ],
)
def test_malformed_commands_are_bad_requests(value: object) -> None:
    with pytest.raises(BadRequest):
        decode_command(msgpack.packb(value, use_bin_type=True))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x93\x08\x01",  # an array announcing more elements than it has
        b"\xd9\x02\xff\xfe",  # invalid UTF-8 in a string
        b"\x91" * 100_000,  # nesting deeper than the decoder allows
        msgpack.packb(msgpack.ExtType(5, b"ext")),
        msgpack.packb([3, 1, "q", 1, msgpack.ExtType(1, b""), None, 0]),
    ],
)
def test_undecodable_bytes_are_bad_requests(data: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_command(data)
    with pytest.raises(BadRequest):
        decode_entry(data)


@pytest.mark.parametrize(
    "value",
    [[2, 1, [8, 1]], [1, 1, [8, 1], 0], [1, True, [8, 1]], [1, "now", [8, 1]], [1, 5, [99, 1]]],
)
def test_malformed_entries_are_bad_requests(value: object) -> None:
    with pytest.raises(BadRequest):
        decode_entry(msgpack.packb(value))


@pytest.mark.parametrize(
    "command",
    [
        Enqueue("q", 2**64, b""),
        Enqueue("q", True, b""),
        Enqueue("q", 0, bytearray(b"mutable")),  # type: ignore[arg-type]
        Enqueue("q", 0, b"", "\ud800"),  # a lone surrogate is not UTF-8
        Ack(-(2**63) - 1, 0),
        CreateQueue("q", priority_range=(0, 1, 2)),  # type: ignore[arg-type]
    ],
)
def test_commands_the_replicas_could_not_decode_are_never_encoded(command: Command) -> None:
    with pytest.raises(BadRequest):
        encode_command(command)
    with pytest.raises(BadRequest):
        encode_entry(command, now_ms=0)


def test_an_entry_needs_an_integer_time() -> None:
    with pytest.raises(BadRequest):
        encode_entry(Tick(), now_ms=1.5)  # type: ignore[arg-type]


def test_an_object_that_is_not_a_command_is_not_encoded() -> None:
    with pytest.raises(BadRequest):
        encode_command("tick")  # type: ignore[arg-type]
