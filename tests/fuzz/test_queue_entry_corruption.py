"""The queue's log entry codec fed damaged entries.

tests/queue/test_queue_codec.py feeds `decode_entry` random bytes and well-formed msgpack with
wrong fields; here valid entries are damaged (flipped bytes, cut short, garbage appended), which
reaches the deeper decoders far more often. Every result is a command that encodes and decodes
back to itself, or `BadRequest`.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuzz.budget import fuzz_settings
from fuzz.corruption import corrupted
from taskraft.errors import BadRequest
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
    Tick,
    decode_command,
    decode_entry,
    encode_command,
    encode_entry,
)

IDS = st.integers(0, 2**64 - 1)
NAMES = st.text(max_size=12)
ROWS = st.tuples(
    st.integers(-100, 100), st.binary(max_size=20), st.none() | NAMES, st.integers(0, 1000)
)
COMMANDS: st.SearchStrategy[Command] = st.one_of(
    st.builds(CreateQueue, name=NAMES),
    st.builds(DeleteQueue, NAMES),
    st.builds(
        Enqueue,
        queue=NAMES,
        priority=st.integers(-100, 100),
        payload=st.binary(max_size=40),
        key=st.none() | NAMES,
        delay_ms=st.integers(0, 1000),
    ),
    st.builds(Dequeue, queue=NAMES, lease_ms=st.none() | st.integers(1, 10_000)),
    st.builds(Ack, IDS, IDS),
    st.builds(Nack, IDS, IDS, st.integers(0, 1000)),
    st.builds(Extend, IDS, IDS, st.integers(1, 10_000)),
    st.just(Tick()),
    st.builds(EnqueueMany.of, NAMES, st.lists(ROWS, max_size=4)),
    st.builds(DequeueMany, NAMES, st.integers(1, 10), st.none() | st.integers(1, 10_000)),
    st.lists(st.tuples(IDS, IDS), max_size=4).map(
        lambda pairs: AckMany(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    ),
)


@fuzz_settings(300)
@given(command=COMMANDS, now_ms=st.integers(0, 2**63 - 1), data=st.data())
def test_a_damaged_entry_decodes_to_a_stable_command_or_is_a_bad_request(
    command: Command, now_ms: int, data: st.DataObject
) -> None:
    damaged = data.draw(corrupted(encode_entry(command, now_ms=now_ms)), label="entry")
    try:
        stamped = decode_entry(damaged)
    except BadRequest:
        return
    again = decode_entry(encode_entry(stamped.command, now_ms=stamped.now_ms))
    assert again == stamped


@fuzz_settings(300)
@given(command=COMMANDS, data=st.data())
def test_a_damaged_command_decodes_to_a_stable_command_or_is_a_bad_request(
    command: Command, data: st.DataObject
) -> None:
    damaged = data.draw(corrupted(encode_command(command)), label="command")
    try:
        decoded = decode_command(damaged)
    except BadRequest:
        return
    assert decode_command(encode_command(decoded)) == decoded
