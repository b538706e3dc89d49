"""The command codec: every command survives a round trip, and bad bytes are a BadRequest."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskraft.errors import BadRequest
from taskraft.peer import limits as peer_limits
from taskraft.protocol import limits as protocol_limits
from taskraft.queue import (
    Ack,
    AckMany,
    Command,
    CreateQueue,
    DeleteQueue,
    Dequeue,
    DequeueMany,
    Enqueue,
    EnqueueMany,
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
from taskraft.queue.limits import DELAY_MS_MAX, PAYLOAD_SIZE_MAX_BYTES

INTEGERS = st.integers(-(2**63), 2**64 - 1)
OPTIONAL_INTEGERS = st.none() | INTEGERS
TEXT = st.text(max_size=300)


@st.composite
def enqueue_many(draw: st.DrawFn) -> EnqueueMany:
    count = draw(st.integers(0, 6))

    def column(values: st.SearchStrategy[object]) -> tuple[object, ...]:
        return tuple(draw(st.lists(values, min_size=count, max_size=count)))

    return EnqueueMany(
        draw(TEXT),
        column(INTEGERS),  # type: ignore[arg-type]
        column(st.binary(max_size=300)),  # type: ignore[arg-type]
        column(st.none() | TEXT),  # type: ignore[arg-type]
        column(INTEGERS),  # type: ignore[arg-type]
    )


@st.composite
def ack_many(draw: st.DrawFn) -> AckMany:
    pairs = draw(st.lists(st.tuples(INTEGERS, INTEGERS), max_size=6))
    return AckMany(tuple(pair[0] for pair in pairs), tuple(pair[1] for pair in pairs))


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
    enqueue_many(),
    st.builds(DequeueMany, TEXT, INTEGERS, OPTIONAL_INTEGERS, OPTIONAL_INTEGERS),
    ack_many(),
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
    # A batch: array, tag, version and the queue name (11 bytes) and four column headers (3
    # bytes each), then per task a small priority, a payload header, a nil key and a zero delay.
    batch = EnqueueMany.of("default", [(5, b"x" * 100, None, 0)] * 100)
    assert len(encode_command(batch)) == 11 + 4 * 3 + 100 * (1 + 2 + 100 + 1 + 1)


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


@given(st.integers(1, 11), st.integers(1, 2), st.lists(MSGPACK_VALUES, max_size=10))
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
        encode_command(EnqueueMany.of("q", [(1, b"payload", "key", 5), (-2, b"", None, 0)])),
        encode_command(DequeueMany("q", 10, None, 4096)),
        encode_command(AckMany((1, 2), (3, 4))),
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
        [9, 1, "q", [1], [b""], [None], [0], "extra"],
        [9, 1, "q", [1], [b""], [None]],  # a column missing
        [9, 1, "q", [1, 2], [b"", b""], [None], [0, 0]],  # columns of different lengths
        [9, 1, "q", (1,), b"", [None], [0]],  # bytes where a column belongs
        [9, 1, "q", [True], [b""], [None], [0]],  # a bool in an integer column
        [9, 1, "q", [1], [""], [None], [0]],  # a string in the payload column
        [9, 1, "q", [1], [b""], [b"k"], [0]],  # bytes in the key column
        [9, 1, "q", [1], [b""], [None], [None]],  # nil in the delay column
        [9, 1, "q", [[1]], [b""], [None], [0]],  # an array in a column
        [9, 1, b"q", [1], [b""], [None], [0]],
        [10, 1, "q", 1, None],
        [10, 1, "q", None, None, None],  # max_tasks is required
        [10, 1, "q", 1, 1.5, None],
        [10, 1, "q", 1, None, "4096"],
        [11, 1, [1, 2], [3]],
        [11, 1, [1], [True]],
        [11, 1, [1]],
        [11, 1, 1, 2],
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
        EnqueueMany.of("q", [(0, b"", None, 0), (2**64, b"", None, 0)]),
        EnqueueMany.of("q", [(0, b"", None, True)]),  # a bool is not an integer
        EnqueueMany.of("q", [(0, bytearray(b"mutable"), None, 0)]),  # type: ignore[list-item]
        EnqueueMany.of("q", [(0, b"", "\ud800", 0)]),
        EnqueueMany("q", (0, 1), (b"",), (None,), (0,)),  # columns of different lengths
        DequeueMany("q", 2**64),
        DequeueMany("q", 1, None, 1.5),  # type: ignore[arg-type]
        AckMany((1, 2), (3,)),
        AckMany((1,), (-(2**63) - 1,)),
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


def test_the_largest_batches_the_protocol_allows_fit_in_a_log_entry() -> None:
    # A follower refuses entries past ENTRY_DATA_SIZE_MAX_BYTES, and would refuse them forever.
    key = "\U0001f600" * (protocol_limits.KEY_MAX_BYTES // 4) + "k" * 3
    name = "~" * protocol_limits.QUEUE_NAME_MAX_BYTES
    count = protocol_limits.BATCH_TASKS_MAX
    size = protocol_limits.BATCH_PAYLOAD_BYTES_MAX // count
    largest = [
        EnqueueMany.of(name, [(-(2**63), b"x" * size, key, DELAY_MS_MAX)] * count),
        EnqueueMany.of(name, [(-(2**63), b"x" * PAYLOAD_SIZE_MAX_BYTES, key, DELAY_MS_MAX)]),
        AckMany((2**64 - 1,) * count, (2**64 - 1,) * count),
        DequeueMany(name, 2**63 - 1, 2**63 - 1, 2**63 - 1),
    ]
    for command in largest:
        entry = encode_entry(command, now_ms=2**63 - 1)
        assert len(entry) < peer_limits.ENTRY_DATA_SIZE_MAX_BYTES // 2 + 4096
