"""The peer protocol as a library that does no I/O: Raft messages to frames and back.

Nodes carry Raft messages to each other over TCP in the length-prefixed msgpack frames of the
client protocol (`taskraft.protocol.framing`), with the peer protocol's own bounds
(`taskraft.peer.limits`). Like the client protocol it contains no socket, no asyncio and no
clock: bytes go in through `PeerStreamReceiver.receive_data`, handshakes and messages come out of
`next_event`, and `encode_handshake` / `encode_message` turn values into whole frames. The
transport, the tests and any other driver run the same code.

A connection carries messages one way. Its first frame is the handshake, an array
`["taskraft-peer", version, sender, cluster_id, peer_address, client_address, http_address]`
(the last four may be nil; the addresses are where the sender listens for peers, clients and
HTTP, so that a node that joins can answer before it knows the membership, and a follower can
point clients at its leader); every later frame is one message, an array whose first item is
the message's tag and whose other items are the message's fields in a fixed order (see
`_MESSAGE_FORMATS` and `message_to_wire`), for example
`[8, sender, recipient, term, request_id]` for a ReadIndexRequest. Positional arrays keep a
heartbeat at about 20 bytes; the version in the handshake is what allows a later layout.

With a cluster secret, three small frames come between the handshake and the first message
(`taskraft.peer.auth`): the connecting side's challenge `["taskraft-peer-challenge", nonce]`
right after its handshake, the accepting side's answer `["taskraft-peer-response", nonce,
proof]` (the only frame that side ever writes), and the connecting side's
`["taskraft-peer-proof", proof]`; nonces and proofs are binaries of exactly 32 bytes. The
receiver of a connection that must authenticate (`PeerStreamReceiver(require_proof=True)`)
returns the challenge and the proof as events and decodes no message until its driver has
checked the proof and said so (`proof_verified`).

Two layouts are flattened, so that no frame nests arrays more than two deep
(`WIRE_NESTING_DEPTH_MAX`): an AppendEntries sends its entries as one flat array of
`term, kind, data` triples, each entry's index following from `previous_log_index` (the core
only ever sends consecutive entries, so a peer cannot send a gap), and an InstallSnapshot
carries its metadata as `index, term, voters, learners, addresses` among its own fields, the
addresses as one flat array of `node, address` pairs.

Decoding trusts nothing: every field's type and range is checked, and anything wrong raises
`RemotePeerError` naming the field, never another exception. Beyond types and ranges it refuses
what would break the core's assumptions: entry terms that decrease or exceed the message's
term, configuration entries whose data is not a configuration, a member listed twice.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from taskraft.peer.errors import LocalPeerError, RemotePeerError
from taskraft.peer.limits import (
    ADDRESS_SIZE_MAX_BYTES,
    AUTH_FRAME_SIZE_MAX_BYTES,
    AUTH_NONCE_SIZE_BYTES,
    AUTH_PROOF_SIZE_BYTES,
    BATCH_SIZE_MAX_BYTES,
    CHALLENGE_MAGIC,
    CLUSTER_ID_SIZE_MAX_BYTES,
    CONFIGURATION_MEMBERS_MAX,
    ENTRIES_PER_MESSAGE_MAX,
    ENTRY_DATA_SIZE_MAX_BYTES,
    HANDSHAKE_FRAME_SIZE_MAX_BYTES,
    HANDSHAKE_MAGIC,
    NODE_ID_SIZE_MAX_BYTES,
    PEER_FRAME_SIZE_MAX_BYTES,
    PEER_PROTOCOL_VERSION,
    PROOF_MAGIC,
    RESPONSE_MAGIC,
    SNAPSHOT_CHUNK_SIZE_MAX_BYTES,
    SUPPORTED_PEER_PROTOCOL_VERSIONS,
    WIRE_COLLECTION_LENGTH_MAX,
    WIRE_INTEGER_MAX,
    WIRE_NESTING_DEPTH_MAX,
)
from taskraft.protocol.exceptions import LocalProtocolError, RemoteProtocolError
from taskraft.protocol.fields import shorten, wire_type_name
from taskraft.protocol.framing import (
    END_OF_STREAM,
    EndOfStream,
    Frame,
    FrameDecoder,
    encode_frame,
)
from taskraft.protocol.limits import FRAME_PREFIX_BYTES
from taskraft.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from taskraft.raft.options import RaftOptions
from taskraft.raft.types import (
    Configuration,
    Entry,
    EntryKind,
    LogIndex,
    NodeId,
    SnapshotMetadata,
    Term,
)

_PREFIX: Final = struct.Struct(">I")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerHandshake:
    """The first frame of every peer connection: who connects, speaking which version.

    `cluster_id`, when the cluster has one, keeps a node of another cluster (a stale address, a
    copied configuration) from ever delivering a message here. The addresses (`host:port`) are
    where the sender listens: for peers, so that a node that has just joined and knows no
    configuration yet can answer its leader; for clients and HTTP, so that the receiver can
    redirect clients to the sender when it leads.
    """

    sender: NodeId
    cluster_id: str | None = None
    peer_address: str | None = None
    client_address: str | None = None
    http_address: str | None = None
    version: int = PEER_PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class PeerChallenge:
    """With a cluster secret, the connecting side's second frame: its fresh nonce."""

    nonce: bytes


@dataclass(frozen=True, slots=True)
class PeerChallengeResponse:
    """The accepting side's only frame: its own fresh nonce and its proof."""

    nonce: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class PeerProof:
    """The connecting side's proof, its third frame; messages follow it."""

    proof: bytes


PeerEvent = PeerHandshake | PeerChallenge | PeerProof | Message | EndOfStream


# -- encoding ----------------------------------------------------------------------------------


def encode_handshake(handshake: PeerHandshake) -> bytes:
    """The handshake frame a node sends first on every connection it opens."""
    value = [
        HANDSHAKE_MAGIC,
        handshake.version,
        handshake.sender,
        handshake.cluster_id,
        handshake.peer_address,
        handshake.client_address,
        handshake.http_address,
    ]
    return _frame(value, HANDSHAKE_FRAME_SIZE_MAX_BYTES)


def encode_challenge(challenge: PeerChallenge) -> bytes:
    """The challenge frame a node sends after its handshake when the cluster has a secret."""
    _check_local_binary(challenge.nonce, "challenge.nonce", AUTH_NONCE_SIZE_BYTES)
    return _frame([CHALLENGE_MAGIC, challenge.nonce], AUTH_FRAME_SIZE_MAX_BYTES)


def encode_challenge_response(response: PeerChallengeResponse) -> bytes:
    """The accepting side's answer to a challenge: its nonce and its proof."""
    _check_local_binary(response.nonce, "challenge_response.nonce", AUTH_NONCE_SIZE_BYTES)
    _check_local_binary(response.proof, "challenge_response.proof", AUTH_PROOF_SIZE_BYTES)
    return _frame([RESPONSE_MAGIC, response.nonce, response.proof], AUTH_FRAME_SIZE_MAX_BYTES)


def encode_proof(proof: PeerProof) -> bytes:
    """The connecting side's proof, sent once it has checked the accepting side's."""
    _check_local_binary(proof.proof, "proof.proof", AUTH_PROOF_SIZE_BYTES)
    return _frame([PROOF_MAGIC, proof.proof], AUTH_FRAME_SIZE_MAX_BYTES)


def _check_local_binary(value: bytes, path: str, size_bytes: int) -> None:
    if type(value) is not bytes or len(value) != size_bytes:
        raise LocalPeerError(f"{path}: must be exactly {size_bytes} bytes")


def encode_message(message: Message) -> bytes:
    """The whole frame (length prefix and body) carrying `message`.

    Raises LocalPeerError for a message the protocol cannot carry (entries that are not
    consecutive, entry or chunk data over its bound, a frame over PEER_FRAME_SIZE_MAX_BYTES):
    a bug on this side, which peers would otherwise refuse on every retry.
    """
    return _frame(message_to_wire(message), PEER_FRAME_SIZE_MAX_BYTES)


def message_to_wire(message: Message) -> list[object]:
    """The msgpack value, an array starting with the tag, that carries `message`."""
    message_format = _FORMATS_BY_TYPE.get(type(message))
    if message_format is None:
        raise LocalPeerError(f"{type(message).__name__} is not a Raft message")
    head: list[object] = [message_format.tag, message.sender, message.recipient, message.term]
    if isinstance(message, RequestVote):
        fields: list[object] = [
            message.last_log_index,
            message.last_log_term,
            message.pre_vote,
            message.leadership_transfer,
        ]
    elif isinstance(message, RequestVoteResponse):
        fields = [message.granted, message.pre_vote]
    elif isinstance(message, AppendEntries):
        fields = _wire_append_entries(message)
    elif isinstance(message, AppendEntriesResponse):
        fields = [
            message.success,
            message.match_index,
            message.rejected_index,
            message.conflict_index,
            message.conflict_term,
            message.read_round,
            message.heartbeat,
        ]
    elif isinstance(message, InstallSnapshot):
        fields = _wire_install_snapshot(message)
    elif isinstance(message, InstallSnapshotResponse):
        fields = [message.snapshot_index, message.next_offset, message.done, message.refused]
    elif isinstance(message, TimeoutNow):
        fields = []
    elif isinstance(message, ReadIndexRequest):
        fields = [message.request_id]
    else:
        fields = [message.request_id, message.index, message.success]
    return head + fields


def _wire_append_entries(message: AppendEntries) -> list[object]:
    entries: list[object] = []
    for position, entry in enumerate(message.entries):
        if entry.index != message.previous_log_index + 1 + position:
            raise LocalPeerError(
                f"append_entries.entries[{position}]: index {entry.index} does not follow "
                f"previous_log_index {message.previous_log_index} without a gap"
            )
        if len(entry.data) > ENTRY_DATA_SIZE_MAX_BYTES:
            raise LocalPeerError(
                f"append_entries.entries[{position}].data: {len(entry.data)} bytes exceed the "
                f"peer protocol's maximum of {ENTRY_DATA_SIZE_MAX_BYTES}"
            )
        entries += (entry.term, entry.kind.value, entry.data)
    return [
        message.previous_log_index,
        message.previous_log_term,
        entries,
        message.leader_commit,
        message.read_round,
        message.heartbeat,
    ]


def _wire_install_snapshot(message: InstallSnapshot) -> list[object]:
    if len(message.data) > SNAPSHOT_CHUNK_SIZE_MAX_BYTES:
        raise LocalPeerError(
            f"install_snapshot.data: {len(message.data)} bytes exceed the peer protocol's "
            f"maximum of {SNAPSHOT_CHUNK_SIZE_MAX_BYTES}"
        )
    metadata = message.metadata
    configuration = metadata.configuration
    return [
        metadata.index,
        metadata.term,
        sorted(configuration.voters),
        sorted(configuration.learners),
        [item for pair in configuration.addresses for item in pair],
        message.offset,
        message.data,
        message.done,
    ]


def _frame(value: object, frame_size_max_bytes: int) -> bytes:
    try:
        return encode_frame(value, frame_size_max_bytes=frame_size_max_bytes)
    except LocalProtocolError as error:
        raise LocalPeerError(str(error)) from error


def check_raft_options(options: RaftOptions) -> None:
    """Refuse Raft options whose messages could exceed the peer protocol's bounds.

    A follower refuses an oversized frame on every retry, which would stop replication for
    good; a node checks its options against the protocol once, when it starts.
    """
    if options.batch_size_max_bytes > BATCH_SIZE_MAX_BYTES:
        raise ValueError(
            f"batch_size_max_bytes {options.batch_size_max_bytes} exceeds the peer protocol's "
            f"{BATCH_SIZE_MAX_BYTES}"
        )
    if options.snapshot_chunk_size_max_bytes > SNAPSHOT_CHUNK_SIZE_MAX_BYTES:
        raise ValueError(
            f"snapshot_chunk_size_max_bytes {options.snapshot_chunk_size_max_bytes} exceeds the "
            f"peer protocol's {SNAPSHOT_CHUNK_SIZE_MAX_BYTES}"
        )


def check_local_identity(
    node_id: str,
    cluster_id: str | None,
    *,
    peer_address: str | None = None,
    client_address: str | None = None,
    http_address: str | None = None,
) -> None:
    """Refuse a node id, cluster id or address that peers would refuse in this node's handshake."""
    try:
        _node_id(node_id, "node_id")
        if cluster_id is not None:
            _text(cluster_id, "cluster_id", CLUSTER_ID_SIZE_MAX_BYTES)
        addresses = (
            ("peer_address", peer_address),
            ("client_address", client_address),
            ("http_address", http_address),
        )
        for name, address in addresses:
            if address is not None:
                _text(address, name, ADDRESS_SIZE_MAX_BYTES)
    except RemotePeerError as error:
        raise ValueError(str(error)) from None


# -- decoding ----------------------------------------------------------------------------------


class _Fields:
    """Reads the items of one message array in order, naming each field in its errors."""

    __slots__ = ("_items", "_name", "_position")

    def __init__(self, items: list[object], name: str) -> None:
        self._items = items
        self._name = name
        self._position = 1

    def path(self, field: str) -> str:
        return f"{self._name}.{field}"

    def take(self) -> object:
        item = self._items[self._position]
        self._position += 1
        return item

    def integer(self, field: str) -> int:
        return _integer(self.take(), self.path(field))

    def optional_integer(self, field: str) -> int | None:
        value = self.take()
        return None if value is None else _integer(value, self.path(field))

    def boolean(self, field: str) -> bool:
        value = self.take()
        if type(value) is not bool:
            raise _wrong_type(self.path(field), "bool", value)
        return value

    def node_id(self, field: str) -> NodeId:
        return _node_id(self.take(), self.path(field))

    def term(self, field: str = "term") -> Term:
        return Term(self.integer(field))

    def index(self, field: str) -> LogIndex:
        return LogIndex(self.integer(field))


def decode_message(value: object) -> Message:
    """The message a decoded frame carries; RemotePeerError names the field that is wrong."""
    if type(value) is not list:
        raise _wrong_type("message", "array", value)
    if not value:
        raise RemotePeerError("message", "empty array: a message starts with its tag")
    tag = value[0]
    if type(tag) is not int:
        raise _wrong_type("message.tag", "int", tag)
    message_format = _FORMATS_BY_TAG.get(tag)
    if message_format is None:
        raise RemotePeerError("message.tag", f"unknown message tag {tag}")
    name, length = message_format.name, message_format.length
    if len(value) != length:
        raise RemotePeerError(name, f"expected an array of {length} items, got {len(value)}")
    return message_format.decode(_Fields(value, name))


def _decode_request_vote(fields: _Fields) -> RequestVote:
    return RequestVote(
        sender=fields.node_id("sender"),
        recipient=fields.node_id("recipient"),
        term=fields.term(),
        last_log_index=fields.index("last_log_index"),
        last_log_term=fields.term("last_log_term"),
        pre_vote=fields.boolean("pre_vote"),
        leadership_transfer=fields.boolean("leadership_transfer"),
    )


def _decode_request_vote_response(fields: _Fields) -> RequestVoteResponse:
    return RequestVoteResponse(
        sender=fields.node_id("sender"),
        recipient=fields.node_id("recipient"),
        term=fields.term(),
        granted=fields.boolean("granted"),
        pre_vote=fields.boolean("pre_vote"),
    )


def _decode_append_entries(fields: _Fields) -> AppendEntries:
    sender = fields.node_id("sender")
    recipient = fields.node_id("recipient")
    term = fields.term()
    previous_log_index = fields.index("previous_log_index")
    previous_log_term = fields.term("previous_log_term")
    entries = _entries(
        fields.take(),
        fields.path("entries"),
        previous_log_index=previous_log_index,
        previous_log_term=previous_log_term,
        term=term,
    )
    return AppendEntries(
        sender=sender,
        recipient=recipient,
        term=term,
        previous_log_index=previous_log_index,
        previous_log_term=previous_log_term,
        entries=entries,
        leader_commit=fields.index("leader_commit"),
        read_round=fields.integer("read_round"),
        heartbeat=fields.boolean("heartbeat"),
    )


def _entries(
    value: object, path: str, *, previous_log_index: int, previous_log_term: int, term: int
) -> tuple[Entry, ...]:
    """Entries from a flat array of (term, kind, data) triples, consecutive after the previous.

    The terms must not decrease, start at least at previous_log_term and stay within the
    message's term, as they do in the log of the leader that sent them.
    """
    if type(value) is not list:
        raise _wrong_type(path, "array", value)
    if len(value) % 3:
        raise RemotePeerError(path, f"{len(value)} items are not (term, kind, data) triples")
    count = len(value) // 3
    if count > ENTRIES_PER_MESSAGE_MAX:
        raise RemotePeerError(
            path, f"{count} entries exceed the maximum of {ENTRIES_PER_MESSAGE_MAX}"
        )
    if previous_log_index + count > WIRE_INTEGER_MAX:
        raise RemotePeerError(path, f"{count} entries after index {previous_log_index} overflow")
    entries: list[Entry] = []
    floor = previous_log_term
    for position in range(count):
        entry_path = f"{path}[{position}]"
        entry_term = _integer(value[3 * position], f"{entry_path}.term")
        if not max(floor, 1) <= entry_term <= term:
            raise RemotePeerError(
                f"{entry_path}.term",
                f"must be between {max(floor, 1)} and the message's term {term}, got {entry_term}",
            )
        floor = entry_term
        kind = _entry_kind(value[3 * position + 1], f"{entry_path}.kind")
        data = _binary(value[3 * position + 2], f"{entry_path}.data", ENTRY_DATA_SIZE_MAX_BYTES)
        if kind is EntryKind.CONFIGURATION:
            _configuration_entry(data, f"{entry_path}.data")
        index = LogIndex(previous_log_index + 1 + position)
        entries.append(Entry(term=Term(entry_term), index=index, kind=kind, data=data))
    return tuple(entries)


def _entry_kind(value: object, path: str) -> EntryKind:
    if type(value) is not int:
        raise _wrong_type(path, "int", value)
    try:
        return EntryKind(value)
    except ValueError:
        known = ", ".join(str(kind.value) for kind in EntryKind)
        raise RemotePeerError(
            path, f"unknown entry kind {value}; known kinds are {known}"
        ) from None


def _configuration_entry(data: bytes, path: str) -> Configuration:
    """The configuration a configuration entry carries, checked as the core will decode it."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise RemotePeerError(path, f"not a JSON configuration: {error}") from None
    if type(document) is not dict:
        raise _wrong_type(path, "a JSON object", document)
    if set(document) - {"addresses"} != {"voters", "learners"}:
        raise RemotePeerError(
            path, "a configuration has the keys voters and learners, and optionally addresses"
        )
    voters = _members(document["voters"], f"{path}.voters")
    learners = _members(document["learners"], f"{path}.learners")
    addresses = document.get("addresses", {})
    if type(addresses) is not dict:
        raise _wrong_type(f"{path}.addresses", "a JSON object", addresses)
    pairs = [
        (
            _node_id(node, f"{path}.addresses"),
            _text(address, f"{path}.addresses.{shorten(str(node))}", ADDRESS_SIZE_MAX_BYTES),
        )
        for node, address in addresses.items()
    ]
    return _configuration(voters, learners, pairs, path)


def _decode_append_entries_response(fields: _Fields) -> AppendEntriesResponse:
    return AppendEntriesResponse(
        sender=fields.node_id("sender"),
        recipient=fields.node_id("recipient"),
        term=fields.term(),
        success=fields.boolean("success"),
        match_index=fields.index("match_index"),
        rejected_index=fields.index("rejected_index"),
        conflict_index=fields.index("conflict_index"),
        conflict_term=_optional_term(fields.optional_integer("conflict_term")),
        read_round=fields.integer("read_round"),
        heartbeat=fields.boolean("heartbeat"),
    )


def _optional_term(value: int | None) -> Term | None:
    return None if value is None else Term(value)


def _decode_install_snapshot(fields: _Fields) -> InstallSnapshot:
    sender = fields.node_id("sender")
    recipient = fields.node_id("recipient")
    term = fields.term()
    metadata_index = fields.index("metadata.index")
    metadata_term = fields.term("metadata.term")
    voters = _members(fields.take(), fields.path("metadata.configuration.voters"))
    learners = _members(fields.take(), fields.path("metadata.configuration.learners"))
    addresses = _address_pairs(fields.take(), fields.path("metadata.configuration.addresses"))
    configuration = _configuration(
        voters, learners, addresses, fields.path("metadata.configuration")
    )
    return InstallSnapshot(
        sender=sender,
        recipient=recipient,
        term=term,
        metadata=SnapshotMetadata(metadata_index, metadata_term, configuration),
        offset=fields.integer("offset"),
        data=_binary(fields.take(), fields.path("data"), SNAPSHOT_CHUNK_SIZE_MAX_BYTES),
        done=fields.boolean("done"),
    )


def _decode_install_snapshot_response(fields: _Fields) -> InstallSnapshotResponse:
    return InstallSnapshotResponse(
        sender=fields.node_id("sender"),
        recipient=fields.node_id("recipient"),
        term=fields.term(),
        snapshot_index=fields.index("snapshot_index"),
        next_offset=fields.integer("next_offset"),
        done=fields.boolean("done"),
        refused=fields.boolean("refused"),
    )


def _decode_timeout_now(fields: _Fields) -> TimeoutNow:
    return TimeoutNow(
        sender=fields.node_id("sender"),
        recipient=fields.node_id("recipient"),
        term=fields.term(),
    )


def _decode_read_index_request(fields: _Fields) -> ReadIndexRequest:
    return ReadIndexRequest(
        sender=fields.node_id("sender"),
        recipient=fields.node_id("recipient"),
        term=fields.term(),
        request_id=fields.integer("request_id"),
    )


def _decode_read_index_response(fields: _Fields) -> ReadIndexResponse:
    return ReadIndexResponse(
        sender=fields.node_id("sender"),
        recipient=fields.node_id("recipient"),
        term=fields.term(),
        request_id=fields.integer("request_id"),
        index=fields.index("index"),
        success=fields.boolean("success"),
    )


@dataclass(frozen=True, slots=True)
class _MessageFormat:
    """How one message type travels: its tag, its name in errors, its array length."""

    tag: int
    message_type: type
    name: str
    # Items in the message's array, the tag included.
    length: int
    decode: Callable[[_Fields], Message]


# A tag is part of the wire format: never reused or renumbered. 0 is never a message, so a
# misplaced handshake cannot be mistaken for one.
_MESSAGE_FORMATS: Final = (
    _MessageFormat(1, RequestVote, "request_vote", 8, _decode_request_vote),
    _MessageFormat(
        2, RequestVoteResponse, "request_vote_response", 6, _decode_request_vote_response
    ),
    _MessageFormat(3, AppendEntries, "append_entries", 10, _decode_append_entries),
    _MessageFormat(
        4, AppendEntriesResponse, "append_entries_response", 11, _decode_append_entries_response
    ),
    _MessageFormat(5, InstallSnapshot, "install_snapshot", 12, _decode_install_snapshot),
    _MessageFormat(
        6,
        InstallSnapshotResponse,
        "install_snapshot_response",
        8,
        _decode_install_snapshot_response,
    ),
    _MessageFormat(7, TimeoutNow, "timeout_now", 4, _decode_timeout_now),
    _MessageFormat(8, ReadIndexRequest, "read_index_request", 5, _decode_read_index_request),
    _MessageFormat(9, ReadIndexResponse, "read_index_response", 7, _decode_read_index_response),
)
_FORMATS_BY_TAG: Final = {each.tag: each for each in _MESSAGE_FORMATS}
_FORMATS_BY_TYPE: Final = {each.message_type: each for each in _MESSAGE_FORMATS}


def decode_handshake(value: object) -> PeerHandshake:
    """The handshake a decoded first frame carries.

    The magic and the version are read before anything else, so that a stranger and a node of
    another version each get an error that says so.
    """
    if type(value) is not list or not value or value[0] != HANDSHAKE_MAGIC:
        raise RemotePeerError(
            "handshake", f"the first frame is not a taskraft peer handshake: {_describe(value)}"
        )
    if len(value) < 2:
        raise RemotePeerError("handshake.version", "missing")
    version = _integer(value[1], "handshake.version")
    if version not in SUPPORTED_PEER_PROTOCOL_VERSIONS:
        spoken = ", ".join(str(each) for each in sorted(SUPPORTED_PEER_PROTOCOL_VERSIONS))
        raise RemotePeerError(
            "handshake.version",
            f"peer protocol version {version} is not supported; this node speaks {spoken}",
        )
    if len(value) != 7:
        raise RemotePeerError("handshake", f"expected an array of 7 items, got {len(value)}")
    sender = _node_id(value[2], "handshake.sender")
    cluster_id = None
    if value[3] is not None:
        cluster_id = _text(value[3], "handshake.cluster_id", CLUSTER_ID_SIZE_MAX_BYTES)
    peer_address, client_address, http_address = (
        None if item is None else _text(item, f"handshake.{name}", ADDRESS_SIZE_MAX_BYTES)
        for item, name in zip(
            value[4:], ("peer_address", "client_address", "http_address"), strict=True
        )
    )
    return PeerHandshake(
        sender=sender,
        cluster_id=cluster_id,
        peer_address=peer_address,
        client_address=client_address,
        http_address=http_address,
        version=version,
    )


def decode_challenge(value: object) -> PeerChallenge:
    """The challenge a decoded frame carries; RemotePeerError when it is not one."""
    (nonce,) = _auth_items(value, CHALLENGE_MAGIC, "challenge", ("nonce",))
    return PeerChallenge(nonce=_exact_binary(nonce, "challenge.nonce", AUTH_NONCE_SIZE_BYTES))


def decode_challenge_response(value: object) -> PeerChallengeResponse:
    """The answer to a challenge a decoded frame carries; RemotePeerError when it is not one."""
    nonce, proof = _auth_items(value, RESPONSE_MAGIC, "challenge_response", ("nonce", "proof"))
    return PeerChallengeResponse(
        nonce=_exact_binary(nonce, "challenge_response.nonce", AUTH_NONCE_SIZE_BYTES),
        proof=_exact_binary(proof, "challenge_response.proof", AUTH_PROOF_SIZE_BYTES),
    )


def decode_proof(value: object) -> PeerProof:
    """The proof a decoded frame carries; RemotePeerError when it is not one."""
    (proof,) = _auth_items(value, PROOF_MAGIC, "proof", ("proof",))
    return PeerProof(proof=_exact_binary(proof, "proof.proof", AUTH_PROOF_SIZE_BYTES))


def _auth_items(value: object, magic: str, name: str, fields: tuple[str, ...]) -> list[object]:
    if type(value) is not list or not value or value[0] != magic:
        raise RemotePeerError(
            name,
            f"expected the {name} frame of the authentication exchange (does the peer have "
            f"this cluster's secret?), got {_describe(value)}",
        )
    if len(value) != 1 + len(fields):
        raise RemotePeerError(
            name, f"expected an array of {1 + len(fields)} items, got {len(value)}"
        )
    return value[1:]


def _exact_binary(value: object, path: str, size_bytes: int) -> bytes:
    if type(value) is not bytes:
        raise _wrong_type(path, "bin", value)
    if len(value) != size_bytes:
        raise RemotePeerError(path, f"must be exactly {size_bytes} bytes, got {len(value)}")
    return value


# -- field checks ------------------------------------------------------------------------------


def _wrong_type(path: str, expected: str, value: object) -> RemotePeerError:
    return RemotePeerError(path, f"expected {expected}, got {wire_type_name(value)}")


def _describe(value: object) -> str:
    if type(value) is list and value:
        first = value[0]
        shown = shorten(first) if isinstance(first, str) else wire_type_name(first)
        return f"an array starting with {shown}"
    return f"a value of type {wire_type_name(value)}"


def _integer(value: object, path: str) -> int:
    """`value` as an int in [0, WIRE_INTEGER_MAX]; bools are not integers on the wire."""
    if type(value) is not int:
        raise _wrong_type(path, "int", value)
    if not 0 <= value <= WIRE_INTEGER_MAX:
        # msgpack integers have at most 64 bits; a caller's larger int is not printed whole.
        shown = value if -(2**64) < value < 2**64 else "an integer beyond 64 bits"
        raise RemotePeerError(path, f"must be between 0 and {WIRE_INTEGER_MAX}, got {shown}")
    return value


def _text(value: object, path: str, max_bytes: int) -> str:
    if type(value) is not str:
        raise _wrong_type(path, "str", value)
    # A character is at least one byte, so a long string is refused before it is encoded.
    if not value or len(value) > max_bytes:
        raise RemotePeerError(path, f"must be 1 to {max_bytes} bytes of UTF-8")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        # Only a caller that did not decode the value from msgpack can pass a lone surrogate.
        raise RemotePeerError(path, "not valid UTF-8") from None
    if size > max_bytes:
        raise RemotePeerError(path, f"must be 1 to {max_bytes} bytes of UTF-8")
    return value


def _node_id(value: object, path: str) -> NodeId:
    return NodeId(_text(value, path, NODE_ID_SIZE_MAX_BYTES))


def _binary(value: object, path: str, max_bytes: int) -> bytes:
    if type(value) is not bytes:
        raise _wrong_type(path, "bin", value)
    if len(value) > max_bytes:
        raise RemotePeerError(path, f"{len(value)} bytes exceed the maximum of {max_bytes}")
    return value


def _members(value: object, path: str) -> frozenset[NodeId]:
    """A set of node ids sent as an array, each listed once, at most the members bound."""
    if type(value) is not list:
        raise _wrong_type(path, "array", value)
    if len(value) > CONFIGURATION_MEMBERS_MAX:
        raise RemotePeerError(
            path, f"{len(value)} members exceed the maximum of {CONFIGURATION_MEMBERS_MAX}"
        )
    members: set[NodeId] = set()
    for position, item in enumerate(value):
        node = _node_id(item, f"{path}[{position}]")
        if node in members:
            raise RemotePeerError(f"{path}[{position}]", f"{shorten(node)} is listed twice")
        members.add(node)
    return frozenset(members)


def _address_pairs(value: object, path: str) -> list[tuple[NodeId, str]]:
    """Member addresses sent as one flat array `node, address, node, address, ...`."""
    if type(value) is not list:
        raise _wrong_type(path, "array", value)
    if len(value) % 2 or len(value) > 2 * CONFIGURATION_MEMBERS_MAX:
        raise RemotePeerError(
            path, f"expected pairs of node and address for at most {CONFIGURATION_MEMBERS_MAX}"
        )
    return [
        (
            _node_id(value[position], f"{path}[{position}]"),
            _text(value[position + 1], f"{path}[{position + 1}]", ADDRESS_SIZE_MAX_BYTES),
        )
        for position in range(0, len(value), 2)
    ]


def _configuration(
    voters: frozenset[NodeId],
    learners: frozenset[NodeId],
    addresses: list[tuple[NodeId, str]],
    path: str,
) -> Configuration:
    both = voters & learners
    if both:
        raise RemotePeerError(path, f"{shorten(min(both))} is both a voter and a learner")
    if len(voters) + len(learners) > CONFIGURATION_MEMBERS_MAX:
        raise RemotePeerError(
            path, f"more than {CONFIGURATION_MEMBERS_MAX} voters and learners together"
        )
    addressed = [node for node, _address in addresses]
    if len(set(addressed)) != len(addressed):
        raise RemotePeerError(f"{path}.addresses", "a member is listed twice")
    strangers = set(addressed) - voters - learners
    if strangers:
        raise RemotePeerError(
            f"{path}.addresses", f"{shorten(min(strangers))} is not a member but has an address"
        )
    return Configuration(voters=voters, learners=learners, addresses=tuple(addresses))


# -- a stream of frames ------------------------------------------------------------------------


class PeerStreamReceiver:
    """The receiving end of one peer connection: bytes in, a handshake then messages out.

    Feed bytes with `receive_data` (b"" when the peer ended the stream), then call `next_event`
    until it returns None (more bytes needed) or END_OF_STREAM. The first event is always the
    handshake, checked against this node's id and cluster id; every later event is a message
    whose sender is the handshake's. A `RemotePeerError` means the peer broke the protocol and
    the connection must close; the events before the fault were returned first. After an error
    the receiver refuses any further use with a `LocalPeerError`.

    With `require_proof` (the cluster has a secret) the handshake is followed by a
    `PeerChallenge` and a `PeerProof` event, and no message is decoded, whatever bytes follow,
    until the driver has checked the proof and called `proof_verified`.

    Memory: until the handshake (and the proof) is complete the receiver holds what it was fed
    (drive it one read at a time); after it, the frames not yet taken plus at most one
    incomplete frame, whose length the frame decoder checks against `frame_size_max_bytes`
    before keeping its body.
    """

    def __init__(
        self,
        *,
        local_node_id: NodeId,
        cluster_id: str | None = None,
        frame_size_max_bytes: int = PEER_FRAME_SIZE_MAX_BYTES,
        require_proof: bool = False,
    ) -> None:
        self._local_node_id = local_node_id
        self._cluster_id = cluster_id
        self._messages = FrameDecoder(
            frame_size_max_bytes=frame_size_max_bytes,
            collection_length_max=WIRE_COLLECTION_LENGTH_MAX,
            nesting_depth_max=WIRE_NESTING_DEPTH_MAX,
        )
        # Bytes before the messages: the handshake (and the authentication frames).
        self._early = bytearray()
        # Whether bytes go to the message decoder: once the handshake is in (and, with
        # require_proof, once the proof is verified).
        self._streaming = False
        self._ended = False
        self._require_proof = require_proof
        self._handshake: PeerHandshake | None = None
        self._challenge: PeerChallenge | None = None
        self._proof: PeerProof | None = None
        self._verified = False
        self._failed: RemotePeerError | None = None

    @property
    def handshake(self) -> PeerHandshake | None:
        """The peer's handshake, once `next_event` has returned it."""
        return self._handshake

    @property
    def authenticated(self) -> bool:
        """Whether messages may flow: the handshake is in and, if required, the proof checked."""
        return self._streaming

    @property
    def buffered_bytes(self) -> int:
        return len(self._early) + self._messages.buffered_bytes

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the peer; b"" means the peer ended the stream."""
        self._refuse_if_failed()
        if self._ended:
            raise LocalPeerError("receive_data called after the end of the stream")
        if not data:
            self._ended = True
        if not self._streaming:
            self._early += data
            return
        self._messages.receive_data(data)

    def next_event(self) -> PeerEvent | None:
        """The next handshake or message, END_OF_STREAM, or None when more bytes are needed.

        With `require_proof`, the challenge and the proof come between the handshake and the
        messages; after the proof, LocalPeerError until `proof_verified` is called.
        """
        self._refuse_if_failed()
        try:
            if self._handshake is None:
                return self._next_handshake()
            if self._require_proof and not self._verified:
                if self._challenge is None:
                    self._challenge = self._next_auth_frame("challenge", decode_challenge)
                    return self._challenge
                if self._proof is None:
                    self._proof = self._next_auth_frame("proof", decode_proof)
                    return self._proof
                raise LocalPeerError("the peer's proof is not verified yet: call proof_verified")
            return self._next_message(self._handshake)
        except RemotePeerError as error:
            self._failed = error
            self._early = bytearray()
            raise

    def proof_verified(self) -> None:
        """The driver checked the peer's proof: from now on the bytes are messages."""
        self._refuse_if_failed()
        if not self._require_proof or self._proof is None or self._verified:
            raise LocalPeerError("proof_verified called without a proof waiting to be verified")
        self._verified = True
        self._start_streaming()

    def _refuse_if_failed(self) -> None:
        if self._failed is not None:
            raise LocalPeerError(
                f"the peer stream already failed ({self._failed}); close the connection"
            ) from self._failed

    def _start_streaming(self) -> None:
        rest = bytes(self._early)
        self._early = bytearray()
        self._streaming = True
        if rest:
            self._messages.receive_data(rest)
        if self._ended:
            self._messages.receive_data(b"")

    def _next_handshake(self) -> PeerHandshake | EndOfStream | None:
        value = _take_small_frame(
            self._early, "handshake", "a peer handshake", HANDSHAKE_FRAME_SIZE_MAX_BYTES
        )
        if value is not None:
            handshake = self._accept_handshake(value[0])
            self._handshake = handshake
            if not self._require_proof:
                self._start_streaming()
            return handshake
        if not self._ended:
            return None
        if self._early:
            raise RemotePeerError("handshake", "the connection ended inside the handshake")
        # A connection closed before saying anything, as a TCP health probe does.
        return END_OF_STREAM

    def _next_auth_frame(
        self, name: str, decode: Callable[[object], _AuthFrame]
    ) -> _AuthFrame | None:
        value = _take_small_frame(
            self._early,
            name,
            f"a {name} of the authentication exchange",
            AUTH_FRAME_SIZE_MAX_BYTES,
        )
        if value is not None:
            return decode(value[0])
        if self._ended:
            raise RemotePeerError(name, f"the connection ended before the {name}")
        return None

    def _accept_handshake(self, value: object) -> PeerHandshake:
        handshake = decode_handshake(value)
        if handshake.cluster_id != self._cluster_id:
            raise RemotePeerError(
                "handshake.cluster_id",
                f"the peer belongs to cluster {_cluster_name(handshake.cluster_id)}, this node "
                f"to {_cluster_name(self._cluster_id)}",
            )
        if handshake.sender == self._local_node_id:
            raise RemotePeerError(
                "handshake.sender",
                f"the peer claims this node's own id {shorten(handshake.sender)}; "
                "is a peer address pointing back at this node?",
            )
        return handshake

    def _next_message(self, handshake: PeerHandshake) -> Message | EndOfStream | None:
        try:
            frame = self._messages.next_frame()
        except RemoteProtocolError as error:
            raise RemotePeerError("frame", str(error)) from None
        if frame is None or isinstance(frame, EndOfStream):
            return frame
        message = decode_message(frame.value)
        if message.sender != handshake.sender:
            raise RemotePeerError(
                f"{_FORMATS_BY_TYPE[type(message)].name}.sender",
                f"{shorten(message.sender)} differs from the connection's sender "
                f"{shorten(handshake.sender)}",
            )
        return message


class ChallengeResponseReceiver:
    """The connecting side's reader of the accepting side's answer to its challenge.

    Feed bytes with `receive_data` (b"" at the end of the stream); `next_event` returns the
    answer once it is complete. The accepting side writes nothing else on the connection, so
    bytes after the answer raise `RemotePeerError`, like an answer that is not one. Holds at
    most what it was fed (drive it one read at a time).
    """

    def __init__(self) -> None:
        self._early = bytearray()
        self._ended = False

    def receive_data(self, data: bytes) -> None:
        if self._ended:
            raise LocalPeerError("receive_data called after the end of the stream")
        if not data:
            self._ended = True
        self._early += data

    def next_event(self) -> PeerChallengeResponse | EndOfStream | None:
        """The answer; END_OF_STREAM when the stream ended without one (the peer refused this
        node), None while more bytes are needed."""
        value = _take_small_frame(
            self._early,
            "challenge_response",
            "an answer to the challenge",
            AUTH_FRAME_SIZE_MAX_BYTES,
        )
        if value is None:
            return END_OF_STREAM if self._ended else None
        response = decode_challenge_response(value[0])
        if self._early:
            raise RemotePeerError(
                "challenge_response", "the peer sent bytes after its answer to the challenge"
            )
        return response


_AuthFrame = TypeVar("_AuthFrame", PeerChallenge, PeerProof)


def _take_small_frame(
    buffer: bytearray, name: str, what: str, size_max_bytes: int
) -> tuple[object] | None:
    """The value of the whole frame at the start of `buffer`, removed from it; None while the
    frame is incomplete. The frame's length is checked before its body is awaited, so that a
    stranger cannot make this node buffer more than `size_max_bytes`."""
    if len(buffer) < FRAME_PREFIX_BYTES:
        return None
    (length,) = _PREFIX.unpack_from(buffer, 0)
    if not 1 <= length <= size_max_bytes:
        first = "first " if name == "handshake" else ""
        raise RemotePeerError(
            name, f"a {first}frame of {length} bytes is not {what} (1 to {size_max_bytes} bytes)"
        )
    end = FRAME_PREFIX_BYTES + length
    if len(buffer) < end:
        return None
    decoder = FrameDecoder(
        frame_size_max_bytes=size_max_bytes, collection_length_max=8, nesting_depth_max=1
    )
    decoder.receive_data(bytes(buffer[:end]))
    del buffer[:end]
    try:
        frame = decoder.next_frame()
    except RemoteProtocolError as error:
        raise RemotePeerError(name, str(error)) from None
    assert isinstance(frame, Frame), "a whole frame was fed to the decoder"
    return (frame.value,)


def _cluster_name(cluster_id: str | None) -> str:
    return "(none)" if cluster_id is None else shorten(cluster_id)


__all__ = [
    "END_OF_STREAM",
    "ChallengeResponseReceiver",
    "EndOfStream",
    "PeerChallenge",
    "PeerChallengeResponse",
    "PeerEvent",
    "PeerHandshake",
    "PeerProof",
    "PeerStreamReceiver",
    "check_local_identity",
    "check_raft_options",
    "decode_challenge",
    "decode_challenge_response",
    "decode_handshake",
    "decode_message",
    "decode_proof",
    "encode_challenge",
    "encode_challenge_response",
    "encode_handshake",
    "encode_message",
    "encode_proof",
    "message_to_wire",
]
