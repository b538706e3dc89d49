"""The peer codec: every message survives a round trip, and every bad field is the peer's fault."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer.strategies import configurations, messages, node_ids
from taskraft.peer import (
    END_OF_STREAM,
    LocalPeerError,
    PeerHandshake,
    PeerStreamReceiver,
    RemotePeerError,
    check_local_identity,
    check_raft_options,
    decode_handshake,
    decode_message,
    encode_handshake,
    encode_message,
    message_to_wire,
)
from taskraft.peer.limits import (
    BATCH_SIZE_MAX_BYTES,
    CONFIGURATION_MEMBERS_MAX,
    ENTRIES_PER_MESSAGE_MAX,
    ENTRY_DATA_SIZE_MAX_BYTES,
    HANDSHAKE_FRAME_SIZE_MAX_BYTES,
    HANDSHAKE_MAGIC,
    PEER_FRAME_SIZE_MAX_BYTES,
    SNAPSHOT_CHUNK_SIZE_MAX_BYTES,
    WIRE_INTEGER_MAX,
)
from taskraft.protocol.framing import encode_frame
from taskraft.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogIndex,
    Message,
    NodeId,
    RaftOptions,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMetadata,
    Term,
    TimeoutNow,
)
from taskraft.raft.log import RaftLog

A, B = NodeId("a"), NodeId("b")
CONFIGURATION = Configuration(
    voters=frozenset({A, B}),
    learners=frozenset({NodeId("c")}),
    addresses=((A, "a.example:7101"), (NodeId("c"), "10.0.0.3:7101")),
)

# One valid message of each type. AppendEntries has term 5 and entries of terms 2 to 5 after
# previous_log_term 2, so that each entry rule can be broken on its own.
EXAMPLES: list[Message] = [
    RequestVote(A, B, Term(3), LogIndex(7), Term(2), pre_vote=True),
    RequestVoteResponse(A, B, Term(3), granted=True),
    AppendEntries(
        A,
        B,
        Term(5),
        LogIndex(9),
        Term(2),
        (
            Entry(Term(2), LogIndex(10), EntryKind.COMMAND, b"task"),
            Entry(Term(5), LogIndex(11), EntryKind.NOOP),
            Entry(Term(5), LogIndex(12), EntryKind.CONFIGURATION, CONFIGURATION.encode()),
        ),
        LogIndex(8),
        read_round=4,
    ),
    AppendEntriesResponse(
        A,
        B,
        Term(5),
        success=False,
        rejected_index=LogIndex(9),
        conflict_index=LogIndex(6),
        conflict_term=Term(3),
    ),
    InstallSnapshot(
        A,
        B,
        Term(5),
        SnapshotMetadata(LogIndex(100), Term(4), CONFIGURATION),
        0,
        b"state",
        done=False,
    ),
    InstallSnapshotResponse(A, B, Term(5), LogIndex(100), 5, done=False),
    TimeoutNow(A, B, Term(5)),
    ReadIndexRequest(A, B, Term(5), request_id=2**62),
    ReadIndexResponse(A, B, Term(5), request_id=1, index=LogIndex(40), success=True),
]

# The wire layout: each message's name and, after its tag, each item's field name and kind.
NODE, INTEGER, OPTIONAL_INTEGER, BOOLEAN, ENTRIES, MEMBERS, ADDRESSES, CHUNK = (
    "node",
    "integer",
    "optional integer",
    "boolean",
    "entries",
    "members",
    "addresses",
    "chunk",
)
HEAD = [("sender", NODE), ("recipient", NODE), ("term", INTEGER)]
LAYOUTS: dict[type, tuple[str, list[tuple[str, str]]]] = {
    RequestVote: (
        "request_vote",
        [
            *HEAD,
            ("last_log_index", INTEGER),
            ("last_log_term", INTEGER),
            ("pre_vote", BOOLEAN),
            ("leadership_transfer", BOOLEAN),
        ],
    ),
    RequestVoteResponse: (
        "request_vote_response",
        [
            *HEAD,
            ("granted", BOOLEAN),
            ("pre_vote", BOOLEAN),
        ],
    ),
    AppendEntries: (
        "append_entries",
        [
            *HEAD,
            ("previous_log_index", INTEGER),
            ("previous_log_term", INTEGER),
            ("entries", ENTRIES),
            ("leader_commit", INTEGER),
            ("read_round", INTEGER),
            ("heartbeat", BOOLEAN),
        ],
    ),
    AppendEntriesResponse: (
        "append_entries_response",
        [
            *HEAD,
            ("success", BOOLEAN),
            ("match_index", INTEGER),
            ("rejected_index", INTEGER),
            ("conflict_index", INTEGER),
            ("conflict_term", OPTIONAL_INTEGER),
            ("read_round", INTEGER),
            ("heartbeat", BOOLEAN),
        ],
    ),
    InstallSnapshot: (
        "install_snapshot",
        [
            *HEAD,
            ("metadata.index", INTEGER),
            ("metadata.term", INTEGER),
            ("metadata.configuration.voters", MEMBERS),
            ("metadata.configuration.learners", MEMBERS),
            ("metadata.configuration.addresses", ADDRESSES),
            ("offset", INTEGER),
            ("data", CHUNK),
            ("done", BOOLEAN),
        ],
    ),
    InstallSnapshotResponse: (
        "install_snapshot_response",
        [
            *HEAD,
            ("snapshot_index", INTEGER),
            ("next_offset", INTEGER),
            ("done", BOOLEAN),
            ("refused", BOOLEAN),
        ],
    ),
    TimeoutNow: ("timeout_now", HEAD),
    ReadIndexRequest: ("read_index_request", [*HEAD, ("request_id", INTEGER)]),
    ReadIndexResponse: (
        "read_index_response",
        [
            *HEAD,
            ("request_id", INTEGER),
            ("index", INTEGER),
            ("success", BOOLEAN),
        ],
    ),
}

LONG_ID = "x" * 256
LONG_UTF8_ID = "é" * 128  # 128 characters, 256 bytes
# 2**20_000 is not a msgpack integer, but a caller may pass any Python value: its error message
# must not try to print all of its digits.
BAD_INTEGERS: list[object] = [
    None,
    True,
    False,
    -1,
    2**63,
    2**64 - 1,
    2**20_000,
    1.0,
    "1",
    b"\x01",
    [1],
]
BAD_VALUES: dict[str, list[object]] = {
    NODE: [None, 7, True, b"a", "", LONG_ID, LONG_UTF8_ID, "\udc80", ["a"]],
    INTEGER: BAD_INTEGERS,
    OPTIONAL_INTEGER: [value for value in BAD_INTEGERS if value is not None],
    BOOLEAN: [None, 0, 1, "true", b"", []],
    ENTRIES: [None, 3, b"", {}, [2], [2, 0]],
    MEMBERS: [
        None,
        "a",
        b"a",
        3,
        [1],
        [""],
        [LONG_ID],
        ["a", "a"],
        [f"n{n}" for n in range(CONFIGURATION_MEMBERS_MAX + 1)],
    ],
    ADDRESSES: [
        None,
        {"a": "h:1"},
        ["a"],
        ["a", 7],
        [7, "h:1"],
        ["a", ""],
        ["a", "h" * 301],
        ["a", "h:1", "a", "h:2"],
        ["stranger", "h:1"],
    ],
    CHUNK: [None, "data", 7, [], b"x" * (SNAPSHOT_CHUNK_SIZE_MAX_BYTES + 1)],
}


def field_cases() -> list[object]:
    cases = []
    for example in EXAMPLES:
        name, fields = LAYOUTS[type(example)]
        for position, (field, kind) in enumerate(fields, start=1):
            for number, bad in enumerate(BAD_VALUES[kind]):
                path = f"{name}.{field}"
                cases.append(pytest.param(example, position, path, bad, id=f"{path}-{number}"))
    return cases


def with_item(example: Message, position: int, value: object) -> list[object]:
    wire = message_to_wire(example)
    wire[position] = value
    return wire


def receive_all(receiver: PeerStreamReceiver, data: bytes) -> list[object]:
    receiver.receive_data(data)
    events: list[object] = []
    while (event := receiver.next_event()) is not None:
        events.append(event)
        if event is END_OF_STREAM:
            break
    return events


def new_receiver(local: NodeId = B, cluster_id: str | None = None) -> PeerStreamReceiver:
    return PeerStreamReceiver(local_node_id=local, cluster_id=cluster_id)


HANDSHAKE = encode_handshake(PeerHandshake(sender=A))


# -- round trips ------------------------------------------------------------------------------


def test_the_layouts_cover_every_message_type_and_field() -> None:
    assert {type(example) for example in EXAMPLES} == set(LAYOUTS)
    for example in EXAMPLES:
        _, fields = LAYOUTS[type(example)]
        assert len(message_to_wire(example)) == 1 + len(fields)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: type(example).__name__)
def test_each_example_round_trips_through_a_stream(example: Message) -> None:
    events = receive_all(new_receiver(), HANDSHAKE + encode_message(example) + b"")
    assert events == [PeerHandshake(sender=A), example]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    frame = encode_message(message)
    assert decode_message(message_to_wire(message)) == message
    receiver = new_receiver(local=NodeId("not a sender"), cluster_id="c")
    handshake = encode_handshake(PeerHandshake(sender=message.sender, cluster_id="c"))
    assert receive_all(receiver, handshake + frame)[1:] == [message]


@settings(max_examples=50)
@given(st.lists(messages, max_size=5))
def test_a_stream_fed_byte_by_byte_gives_the_same_events(batch: list[Message]) -> None:
    # The receiver checks that every message comes from the handshake's sender.
    batch = [message for message in batch if message.sender == A] or [EXAMPLES[0]]
    data = HANDSHAKE + b"".join(encode_message(message) for message in batch)
    receiver = new_receiver()
    events: list[object] = []
    for byte in data:
        events += receive_all(receiver, bytes([byte]))
    events += receive_all(receiver, b"")
    assert events == [PeerHandshake(sender=A), *batch, END_OF_STREAM]


def test_a_heartbeat_is_small() -> None:
    heartbeat = AppendEntries(
        NodeId("n1"),
        NodeId("n2"),
        Term(3),
        LogIndex(0),
        Term(0),
        (),
        LogIndex(4),
        7,
        heartbeat=True,
    )
    assert len(encode_message(heartbeat)) <= 24


def test_optional_conflict_term_round_trips_as_nil() -> None:
    response = AppendEntriesResponse(A, B, Term(2), success=False, conflict_term=None)
    assert message_to_wire(response)[8] is None
    assert decode_message(message_to_wire(response)) == response


# -- bad fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(("example", "position", "field", "bad"), field_cases())
def test_a_bad_value_in_any_field_is_a_remote_error_naming_it(
    example: Message, position: int, field: str, bad: object
) -> None:
    with pytest.raises(RemotePeerError) as raised:
        decode_message(with_item(example, position, bad))
    assert raised.value.field.startswith(field), raised.value


def entries_wire(*triples: tuple[object, object, object]) -> list[object]:
    return [item for triple in triples for item in triple]


APPEND = EXAMPLES[2]  # term 5, previous_log_index 9, previous_log_term 2
ENTRIES_POSITION = 6


@pytest.mark.parametrize(
    ("entries", "field"),
    [
        # Not whole (term, kind, data) triples.
        ([2, 0], "append_entries.entries"),
        (entries_wire((0, 0, b"")), "append_entries.entries[0].term"),
        # Below previous_log_term, above the message's term, decreasing.
        (entries_wire((1, 0, b"")), "append_entries.entries[0].term"),
        (entries_wire((6, 0, b"")), "append_entries.entries[0].term"),
        (entries_wire((4, 0, b""), (3, 0, b"")), "append_entries.entries[1].term"),
        (entries_wire((2, 3, b"")), "append_entries.entries[0].kind"),
        (entries_wire((2, -1, b"")), "append_entries.entries[0].kind"),
        (entries_wire((2, True, b"")), "append_entries.entries[0].kind"),
        (entries_wire((2, None, b"")), "append_entries.entries[0].kind"),
        (entries_wire((2, 0, "text")), "append_entries.entries[0].data"),
        (entries_wire((2, 0, None)), "append_entries.entries[0].data"),
        (
            entries_wire((2, 0, b"x" * (ENTRY_DATA_SIZE_MAX_BYTES + 1))),
            "append_entries.entries[0].data",
        ),
        (entries_wire(*[(2, 0, b"")] * (ENTRIES_PER_MESSAGE_MAX + 1)), "append_entries.entries"),
    ],
)
def test_bad_entries_are_remote_errors(entries: list[object], field: str) -> None:
    with pytest.raises(RemotePeerError) as raised:
        decode_message(with_item(APPEND, ENTRIES_POSITION, entries))
    assert raised.value.field == field, raised.value


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[" * 100_000,
        b"1" * 10_000,
        b"[]",
        b'{"voters": []}',
        b'{"voters": [], "learners": [], "extra": 1}',
        b'{"voters": "a", "learners": []}',
        b'{"voters": [1], "learners": []}',
        b'{"voters": [""], "learners": []}',
        b'{"voters": ["a", "a"], "learners": []}',
        b'{"voters": ["a"], "learners": ["a"]}',
        b'{"voters": ["a"], "learners": [], "addresses": []}',
        b'{"voters": ["a"], "learners": [], "addresses": {"a": 7}}',
        b'{"voters": ["a"], "learners": [], "addresses": {"a": ""}}',
        b'{"voters": ["a"], "learners": [], "addresses": {"b": "h:1"}}',
        b'{"voters": ["a"], "learners": [], "addresses": {"": "h:1"}}',
    ],
)
def test_configuration_entries_must_carry_a_configuration(data: bytes) -> None:
    entries = entries_wire((2, EntryKind.CONFIGURATION.value, data))
    with pytest.raises(RemotePeerError) as raised:
        decode_message(with_item(APPEND, ENTRIES_POSITION, entries))
    assert raised.value.field.startswith("append_entries.entries[0].data"), raised.value


def test_a_member_cannot_be_voter_and_learner() -> None:
    snapshot = EXAMPLES[4]
    wire = with_item(snapshot, 6, ["a", "b"])
    wire[7] = ["b"]
    with pytest.raises(RemotePeerError) as raised:
        decode_message(wire)
    assert raised.value.field == "install_snapshot.metadata.configuration"


def test_entries_offset_past_the_largest_index_are_refused() -> None:
    wire = with_item(APPEND, 4, WIRE_INTEGER_MAX)
    with pytest.raises(RemotePeerError) as raised:
        decode_message(wire)
    assert raised.value.field == "append_entries.entries"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (None, "message"),
        ({"tag": 1}, "message"),
        ([], "message"),
        (["1"], "message.tag"),
        ([True], "message.tag"),
        ([0], "message.tag"),
        ([10], "message.tag"),
        ([-1], "message.tag"),
        ([7, "a", "b"], "timeout_now"),
        ([7, "a", "b", 1, 2], "timeout_now"),
    ],
)
def test_malformed_messages_are_remote_errors(value: object, field: str) -> None:
    with pytest.raises(RemotePeerError) as raised:
        decode_message(value)
    assert raised.value.field == field


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=12) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)


@settings(max_examples=500)
@given(msgpack_values)
def test_any_value_is_a_message_or_a_remote_error(value: object) -> None:
    with contextlib.suppress(RemotePeerError):
        assert type(decode_message(value)) in LAYOUTS
    with contextlib.suppress(RemotePeerError):
        assert isinstance(decode_handshake(value), PeerHandshake)


@settings(max_examples=200)
@given(st.integers(1, 9), st.lists(msgpack_values, max_size=11))
def test_any_items_after_a_tag_are_a_message_or_a_remote_error(
    tag: int, items: list[object]
) -> None:
    with contextlib.suppress(RemotePeerError):
        assert type(decode_message([tag, *items])) in LAYOUTS


@settings(max_examples=300)
@given(st.sampled_from(EXAMPLES), st.data())
def test_one_replaced_item_is_a_message_or_a_remote_error(
    example: Message, data: st.DataObject
) -> None:
    wire = message_to_wire(example)
    position = data.draw(st.integers(0, len(wire) - 1))
    wire[position] = data.draw(msgpack_values)
    with contextlib.suppress(RemotePeerError):
        assert type(decode_message(wire)) in LAYOUTS


# -- the stream receiver ----------------------------------------------------------------------


def drain_until_failure(receiver: PeerStreamReceiver, data: bytes) -> list[object]:
    """Events until the stream needs more bytes, ends, or fails; the error is the last event."""
    events: list[object] = []
    try:
        for chunk in (data, b"") if data else (b"",):
            receiver.receive_data(chunk)
            while (event := receiver.next_event()) is not None:
                events.append(event)
                if event is END_OF_STREAM:
                    return events
    except RemotePeerError as error:
        events.append(error)
    return events


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_random_bytes_are_remote_errors_only(data: bytes) -> None:
    # Any other exception escapes drain_until_failure and fails the test; what it returns is
    # only what a receiver may produce.
    for stream in (data, HANDSHAKE + data):
        for event in drain_until_failure(new_receiver(), stream):
            assert (
                isinstance(event, PeerHandshake | RemotePeerError)
                or type(event) in LAYOUTS
                or (event is END_OF_STREAM)
            ), event


@settings(max_examples=300)
@given(st.data())
def test_corrupted_frames_are_messages_or_remote_errors(data: st.DataObject) -> None:
    stream = bytearray(HANDSHAKE + b"".join(encode_message(example) for example in EXAMPLES))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(stream) - 1))
        stream[position] = data.draw(st.integers(0, 255))
    for event in drain_until_failure(new_receiver(), bytes(stream)):
        assert (
            isinstance(event, PeerHandshake | RemotePeerError)
            or type(event) in LAYOUTS
            or (event is END_OF_STREAM)
        )


def test_junk_after_valid_frames_fails_after_them() -> None:
    stream = HANDSHAKE + encode_message(EXAMPLES[0]) + b"\x00\x00\x00\x02\xc1\xc1"
    events = drain_until_failure(new_receiver(), stream)
    assert events[:2] == [PeerHandshake(sender=A), EXAMPLES[0]]
    assert isinstance(events[2], RemotePeerError)
    assert events[2].field == "frame"


def test_a_failed_receiver_refuses_further_use() -> None:
    receiver = new_receiver()
    receiver.receive_data(b"\x00\x00\x00\x01\xc1")
    with pytest.raises(RemotePeerError):
        receiver.next_event()
    with pytest.raises(LocalPeerError):
        receiver.next_event()
    with pytest.raises(LocalPeerError):
        receiver.receive_data(b"more")


def test_a_connection_closed_without_a_byte_ends_quietly() -> None:
    assert receive_all(new_receiver(), b"") == [END_OF_STREAM]


def test_a_connection_closed_inside_the_handshake_is_a_remote_error() -> None:
    receiver = new_receiver()
    assert receive_all(receiver, HANDSHAKE[:-1]) == []
    with pytest.raises(RemotePeerError, match="inside the handshake"):
        receive_all(receiver, b"")


def test_a_large_first_frame_is_refused_from_its_length_prefix_alone() -> None:
    receiver = new_receiver()
    with pytest.raises(RemotePeerError) as raised:
        receive_all(receiver, struct.pack(">I", HANDSHAKE_FRAME_SIZE_MAX_BYTES + 1))
    assert raised.value.field == "handshake"


def test_a_frame_over_the_bound_is_refused_from_its_length_prefix_alone() -> None:
    receiver = new_receiver()
    with pytest.raises(RemotePeerError) as raised:
        receive_all(receiver, HANDSHAKE + struct.pack(">I", PEER_FRAME_SIZE_MAX_BYTES + 1))
    assert raised.value.field == "frame"
    assert receiver.buffered_bytes == 0


@pytest.mark.parametrize(
    ("handshake", "field"),
    [
        (["taskraft", 1, "a", None, None, None, None], "handshake"),
        ({"taskraft": 1}, "handshake"),
        ([HANDSHAKE_MAGIC], "handshake.version"),
        ([HANDSHAKE_MAGIC, 2, "a", None, None, None, None], "handshake.version"),
        ([HANDSHAKE_MAGIC, "1", "a", None, None, None, None], "handshake.version"),
        ([HANDSHAKE_MAGIC, 1, "a"], "handshake"),
        ([HANDSHAKE_MAGIC, 1, "a", None], "handshake"),
        ([HANDSHAKE_MAGIC, 1, "", None, None, None, None], "handshake.sender"),
        ([HANDSHAKE_MAGIC, 1, LONG_ID, None, None, None, None], "handshake.sender"),
        ([HANDSHAKE_MAGIC, 1, "a", 5, None, None, None], "handshake.cluster_id"),
        ([HANDSHAKE_MAGIC, 1, "a", "x" * 256, None, None, None], "handshake.cluster_id"),
        ([HANDSHAKE_MAGIC, 1, "a", None, b"h:1", None, None], "handshake.peer_address"),
        ([HANDSHAKE_MAGIC, 1, "a", None, None, 7, None], "handshake.client_address"),
        ([HANDSHAKE_MAGIC, 1, "a", None, None, None, "x" * 301], "handshake.http_address"),
    ],
)
def test_bad_handshakes_are_remote_errors(handshake: object, field: str) -> None:
    with pytest.raises(RemotePeerError) as raised:
        receive_all(new_receiver(), encode_frame(handshake))
    assert raised.value.field == field


def test_an_unsupported_version_says_which_versions_are_spoken() -> None:
    with pytest.raises(RemotePeerError, match="version 2 is not supported; this node speaks 1"):
        receive_all(new_receiver(), encode_frame([HANDSHAKE_MAGIC, 2, "a", None, "future"]))


def test_the_cluster_ids_must_match() -> None:
    handshake = encode_handshake(PeerHandshake(sender=A, cluster_id="blue"))
    assert receive_all(new_receiver(cluster_id="blue"), handshake) == [
        PeerHandshake(sender=A, cluster_id="blue")
    ]
    for local in ("green", None):
        with pytest.raises(RemotePeerError) as raised:
            receive_all(new_receiver(cluster_id=local), handshake)
        assert raised.value.field == "handshake.cluster_id"


def test_a_peer_cannot_claim_the_receivers_own_id() -> None:
    with pytest.raises(RemotePeerError) as raised:
        receive_all(new_receiver(local=A), HANDSHAKE)
    assert raised.value.field == "handshake.sender"


def test_every_message_must_come_from_the_handshakes_sender() -> None:
    impostor = TimeoutNow(NodeId("c"), B, Term(1))
    events = drain_until_failure(new_receiver(), HANDSHAKE + encode_message(impostor))
    assert events[0] == PeerHandshake(sender=A)
    assert isinstance(events[1], RemotePeerError)
    assert events[1].field == "timeout_now.sender"


# -- bounds -----------------------------------------------------------------------------------

LONGEST_ID = NodeId("é" * 127 + "n")


def round_trip_through_a_stream(message: Message) -> int:
    frame = encode_message(message)
    receiver = new_receiver(local=NodeId("elsewhere"))
    handshake = encode_handshake(PeerHandshake(sender=message.sender))
    assert receive_all(receiver, handshake + frame)[1:] == [message]
    return len(frame)


def test_the_largest_single_entry_fits_in_a_frame() -> None:
    entry = Entry(
        Term(WIRE_INTEGER_MAX),
        LogIndex(WIRE_INTEGER_MAX),
        EntryKind.COMMAND,
        b"\xab" * ENTRY_DATA_SIZE_MAX_BYTES,
    )
    message = AppendEntries(
        LONGEST_ID,
        LONGEST_ID,
        Term(WIRE_INTEGER_MAX),
        LogIndex(WIRE_INTEGER_MAX - 1),
        Term(WIRE_INTEGER_MAX),
        (entry,),
        LogIndex(WIRE_INTEGER_MAX),
        WIRE_INTEGER_MAX,
    )
    assert round_trip_through_a_stream(message) <= PEER_FRAME_SIZE_MAX_BYTES


def largest_terms_log(data_sizes: list[int]) -> RaftLog:
    term = Term(WIRE_INTEGER_MAX)
    entries = [
        Entry(term, LogIndex(index), EntryKind.COMMAND, b"\x00" * size)
        for index, size in enumerate(data_sizes, start=1)
    ]
    snapshot = Snapshot(SnapshotMetadata(LogIndex(0), Term(0), Configuration()))
    return RaftLog(snapshot, tuple(entries), LogIndex(0))


@pytest.mark.parametrize(
    "data_sizes",
    [[0] * (ENTRIES_PER_MESSAGE_MAX + 100), [1, 100, 1000, 10_000, 100_000] * 20],
    ids=["empty entries", "mixed sizes"],
)
def test_a_full_batch_of_the_core_fits_the_entry_and_byte_bounds(data_sizes: list[int]) -> None:
    """The core's own batching (RaftLog.slice) never builds a message the protocol refuses."""
    options = RaftOptions()
    log = largest_terms_log(data_sizes)
    entries = log.slice(1, log.last_index(), options.batch_size_max_bytes)
    assert len(entries) <= ENTRIES_PER_MESSAGE_MAX
    message = AppendEntries(
        LONGEST_ID,
        LONGEST_ID,
        Term(WIRE_INTEGER_MAX),
        LogIndex(0),
        Term(0),
        entries,
        LogIndex(WIRE_INTEGER_MAX),
        WIRE_INTEGER_MAX,
    )
    assert round_trip_through_a_stream(message) <= BATCH_SIZE_MAX_BYTES + 1024


def test_the_largest_snapshot_chunk_fits_in_a_frame() -> None:
    members = [NodeId(f"{n:03}" + "é" * 126) for n in range(CONFIGURATION_MEMBERS_MAX)]
    configuration = Configuration(voters=frozenset(members[:7]), learners=frozenset(members[7:]))
    metadata = SnapshotMetadata(LogIndex(WIRE_INTEGER_MAX), Term(WIRE_INTEGER_MAX), configuration)
    message = InstallSnapshot(
        LONGEST_ID,
        LONGEST_ID,
        Term(WIRE_INTEGER_MAX),
        metadata,
        WIRE_INTEGER_MAX,
        b"\xcd" * SNAPSHOT_CHUNK_SIZE_MAX_BYTES,
        done=True,
    )
    assert round_trip_through_a_stream(message) <= PEER_FRAME_SIZE_MAX_BYTES


def test_the_default_raft_options_fit_the_protocol() -> None:
    check_raft_options(RaftOptions())
    with pytest.raises(ValueError, match="batch_size_max_bytes"):
        check_raft_options(RaftOptions(batch_size_max_bytes=BATCH_SIZE_MAX_BYTES + 1))
    with pytest.raises(ValueError, match="snapshot_chunk_size_max_bytes"):
        check_raft_options(
            RaftOptions(snapshot_chunk_size_max_bytes=SNAPSHOT_CHUNK_SIZE_MAX_BYTES + 1)
        )


# -- local errors -----------------------------------------------------------------------------


def test_entries_with_a_gap_are_a_local_error() -> None:
    gap = AppendEntries(
        A, B, Term(2), LogIndex(3), Term(1), (Entry(Term(2), LogIndex(5)),), LogIndex(0)
    )
    with pytest.raises(LocalPeerError, match="does not follow"):
        encode_message(gap)


def test_data_over_the_bounds_is_a_local_error() -> None:
    entry = Entry(Term(2), LogIndex(4), data=b"x" * (ENTRY_DATA_SIZE_MAX_BYTES + 1))
    with pytest.raises(LocalPeerError, match="entries"):
        encode_message(AppendEntries(A, B, Term(2), LogIndex(3), Term(1), (entry,), LogIndex(0)))
    chunk = InstallSnapshot(
        A,
        B,
        Term(2),
        SnapshotMetadata(LogIndex(1), Term(1), CONFIGURATION),
        0,
        b"x" * (SNAPSHOT_CHUNK_SIZE_MAX_BYTES + 1),
        done=True,
    )
    with pytest.raises(LocalPeerError, match=r"install_snapshot\.data"):
        encode_message(chunk)


def test_local_identity_is_checked_like_a_peers() -> None:
    check_local_identity("n1", "cluster")
    for node_id, cluster_id in (("", None), (LONG_ID, None), ("n1", ""), ("n1", LONG_ID)):
        with pytest.raises(ValueError):
            check_local_identity(node_id, cluster_id)
    with pytest.raises(ValueError):
        check_local_identity("n1", None, client_address="x" * 301)


ADDRESS_TEXT = st.none() | st.text(min_size=1, max_size=64)


@given(node_ids, st.none() | st.text(min_size=1, max_size=32), ADDRESS_TEXT, ADDRESS_TEXT)
def test_handshakes_round_trip(
    sender: NodeId, cluster_id: str | None, peer_address: str | None, http_address: str | None
) -> None:
    handshake = PeerHandshake(
        sender=sender,
        cluster_id=cluster_id,
        peer_address=peer_address,
        client_address=http_address,
        http_address=http_address,
    )
    receiver = new_receiver(local=NodeId("elsewhere"), cluster_id=cluster_id)
    if sender == "elsewhere":
        return
    assert receive_all(receiver, encode_handshake(handshake)) == [handshake]


@given(configurations())
def test_configurations_round_trip_in_snapshots(configuration: Configuration) -> None:
    metadata = SnapshotMetadata(LogIndex(5), Term(2), configuration)
    message = InstallSnapshot(A, B, Term(3), metadata, 0, b"", done=True)
    assert decode_message(message_to_wire(message)) == message
