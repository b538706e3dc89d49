"""Coverage-guided fuzzing of the receiving end of an authenticated peer connection.

tests/fuzz/test_peer_authentication_frames.py feeds `PeerStreamReceiver` damaged exchanges at
random; atheris mutates the bytes towards code not run yet (the handshake, challenge and proof
checks, then the Raft message decoder). Each input is a prefix of a real authenticated stream
(handshake, challenge, proof, messages), so that mutations reach the later frames, followed by
arbitrary bytes, fed in arbitrary pieces. The receiver may only give the events it documents
or raise `RemotePeerError` (the peer broke the protocol), and holds no more than it was fed;
any other exception is a bug.

Run: `python tests/fuzz/atheris/fuzz_peer_stream.py -runs=100000` (libFuzzer options);
tests/fuzz/test_atheris.py runs it briefly, `make fuzz` for a minute.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["taskraft"]):
    from taskraft.peer import END_OF_STREAM, RemotePeerError
    from taskraft.peer.codec import (
        PeerChallenge,
        PeerHandshake,
        PeerProof,
        PeerStreamReceiver,
        encode_challenge,
        encode_handshake,
        encode_message,
        encode_proof,
    )
    from taskraft.peer.limits import (
        AUTH_NONCE_SIZE_BYTES,
        AUTH_PROOF_SIZE_BYTES,
        PEER_FRAME_SIZE_MAX_BYTES,
    )
    from taskraft.protocol.limits import FRAME_PREFIX_BYTES
    from taskraft.raft import Entry, EntryKind, LogIndex, NodeId, Term
    from taskraft.raft.messages import AppendEntries, Message, RequestVote

SENDER = NodeId("node-b")
LOCAL = NodeId("node-a")
CLUSTER = "blue"
PIECE_COUNT_MAX = 16
PIECE_SIZE_MAX_BYTES = 64


def _valid_stream() -> bytes:
    """The connecting side's stream: handshake, challenge, proof, then two messages."""
    messages: list[Message] = [
        RequestVote(SENDER, LOCAL, Term(3), LogIndex(7), Term(2), pre_vote=True),
        AppendEntries(
            SENDER,
            LOCAL,
            Term(3),
            LogIndex(7),
            Term(2),
            (Entry(Term(3), LogIndex(8), EntryKind.COMMAND, b"command"),),
            LogIndex(7),
        ),
    ]
    return b"".join(
        [
            encode_handshake(PeerHandshake(sender=SENDER, cluster_id=CLUSTER)),
            encode_challenge(PeerChallenge(nonce=b"n" * AUTH_NONCE_SIZE_BYTES)),
            encode_proof(PeerProof(proof=b"p" * AUTH_PROOF_SIZE_BYTES)),
            *(encode_message(message) for message in messages),
        ]
    )


VALID_STREAM = _valid_stream()


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    prefix = VALID_STREAM[: provider.ConsumeIntInRange(0, len(VALID_STREAM))]
    piece_sizes = provider.ConsumeIntListInRange(
        provider.ConsumeIntInRange(0, PIECE_COUNT_MAX), 1, PIECE_SIZE_MAX_BYTES
    )
    end = provider.ConsumeBool()
    stream = prefix + provider.ConsumeBytes(provider.remaining_bytes())
    pieces = []
    for size in piece_sizes:
        if stream:
            pieces.append(stream[:size])
            stream = stream[size:]
    if stream:
        pieces.append(stream)
    if end:
        pieces.append(b"")

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


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
