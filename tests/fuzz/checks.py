"""What a fuzzed input must satisfy, one oracle for the Hypothesis tests and the atheris harnesses.

tests/fuzz/test_*.py draw their inputs with Hypothesis, tests/fuzz/atheris/fuzz_*.py take theirs
from libFuzzer; both then judge what the code under test did with the same functions, kept here
so that the two kinds of fuzzing hold one oracle and cannot drift apart. Each function feeds an
input and asserts what holds for any input; what holds only for some inputs is left to the
caller (what an undamaged stream gives, from the returned value) or asked for by a flag (a log
only cut short recovers a prefix).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from fuzz.corruption import ENTRIES, SEGMENT_SIZE_MAX_BYTES
from taskraft.errors import Unavailable
from taskraft.peer import END_OF_STREAM, RemotePeerError
from taskraft.peer.codec import PeerChallenge, PeerHandshake, PeerProof, PeerStreamReceiver
from taskraft.peer.limits import PEER_FRAME_SIZE_MAX_BYTES
from taskraft.protocol import (
    ConnectionClosed,
    ConnectionState,
    Frame,
    FrameDecoder,
    Handshake,
    ProtocolFailure,
    Request,
    RequestRejected,
    Response,
    ServerConnection,
)
from taskraft.protocol.limits import FRAME_PREFIX_BYTES
from taskraft.raft import Entry, EntryKind, LogIndex, NodeId, Term
from taskraft.raft.messages import Message
from taskraft.storage import StorageError
from taskraft.storage.wal import WriteAheadLog

# A small frame bound for the client connection, so that fuzzed lengths exceed it often.
CLIENT_FRAME_SIZE_MAX_BYTES = 256

# The peer connection: `SENDER` connects to `LOCAL`, both in cluster `CLUSTER`.
SENDER = NodeId("node-b")
LOCAL = NodeId("node-a")
CLUSTER = "blue"


def check_well_framed(data: bytes) -> None:
    """`data` is whole frames, with nothing left over."""
    decoder = FrameDecoder()
    decoder.receive_data(data)
    while isinstance(decoder.next_frame(), Frame):
        pass
    assert decoder.buffered_bytes == 0, "the server sent a partial frame"


class ServedStream(NamedTuple):
    """What `check_client_stream` leaves: the connection it fed and the requests it gave."""

    server: ServerConnection
    requests: list[Request]


def check_client_stream(pieces: Iterable[bytes]) -> ServedStream:
    """Feeds `pieces` (b"" is the end of the stream) to a `ServerConnection` with a small frame
    bound, answering each request. The connection raises nothing, gives only the events it
    documents, keeps at most one incomplete frame and answers well-framed bytes."""
    server = ServerConnection(
        node_id="n1", requests_in_flight_max=3, frame_size_max_bytes=CLIENT_FRAME_SIZE_MAX_BYTES
    )
    received: list[Request] = []
    for piece in pieces:
        if server.state is ConnectionState.FAILED:
            break
        server.receive_data(piece)
        while (event := server.next_event()) is not None:
            assert isinstance(event, Handshake | Request | RequestRejected | ProtocolFailure) or (
                event == ConnectionClosed()
            ), f"an undocumented event: {event!r}"
            if isinstance(event, Request):
                received.append(event)
                server.send_response(Response(event.request_id, error=Unavailable("fuzz")))
            if isinstance(event, ProtocolFailure | ConnectionClosed):
                break
        # At most one incomplete frame waits, and its length was checked first.
        assert server.buffered_bytes < FRAME_PREFIX_BYTES + CLIENT_FRAME_SIZE_MAX_BYTES
        check_well_framed(server.data_to_send())
    return ServedStream(server, received)


def check_peer_stream(pieces: Iterable[bytes]) -> list[type]:
    """Feeds `pieces` (b"" is the end of the stream) to the receiving end of an authenticated
    peer connection from `SENDER`, accepting every proof. The receiver gives only the events it
    documents or raises `RemotePeerError`, holds no more than it was fed (at most one incomplete
    frame once authenticated), and gives the authentication frames first, in their order, and
    once each. Returns the types of the events given, in order."""
    receiver = PeerStreamReceiver(
        local_node_id=LOCAL,
        cluster_id=CLUSTER,
        frame_size_max_bytes=PEER_FRAME_SIZE_MAX_BYTES,
        require_proof=True,
    )
    order: list[type] = []
    fed = 0
    try:
        for piece in pieces:
            receiver.receive_data(piece)
            fed += len(piece)
            while (event := receiver.next_event()) is not None and event is not END_OF_STREAM:
                order.append(type(event))
                if isinstance(event, PeerProof):
                    receiver.proof_verified()
                elif not isinstance(event, PeerHandshake | PeerChallenge):
                    assert isinstance(event, Message), f"an undocumented event: {event!r}"
                    assert event.sender == SENDER, f"a message from another sender: {event!r}"
            if receiver.authenticated:
                assert receiver.buffered_bytes < FRAME_PREFIX_BYTES + PEER_FRAME_SIZE_MAX_BYTES
            else:
                assert receiver.buffered_bytes <= fed
            if event is END_OF_STREAM:
                break
    except RemotePeerError:
        pass
    # The authentication frames come first, in their order, and once each.
    assert order[:3] == [PeerHandshake, PeerChallenge, PeerProof][: min(3, len(order))], order
    return order


def check_log_recovery(directory: Path, files: dict[str, bytes], *, expect_prefix: bool) -> None:
    """Writes `files` (segment files of a log of `ENTRIES`, some damaged) into the empty
    `directory` and opens the log there. It recovers or raises `StorageError`, nothing else; a
    recovered log holds consecutive entries, a prefix of `ENTRIES` when `expect_prefix`, and
    accepts the next entry after its end."""
    for name, content in files.items():
        (directory / name).write_bytes(content)
    try:
        log = WriteAheadLog.open(directory, segment_size_max_bytes=SEGMENT_SIZE_MAX_BYTES)
    except StorageError:
        return
    with log:
        recovered = log.entries()
        indexes = [entry.index for entry in recovered]
        assert indexes == list(range(1, len(recovered) + 1)), indexes
        if expect_prefix:
            assert recovered == ENTRIES[: len(recovered)]
        # The recovered log is usable: the next entry can be appended after its end.
        log.append([Entry(Term(9), LogIndex(len(recovered) + 1), EntryKind.NOOP)])
        log.sync()
