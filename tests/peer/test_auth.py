"""Peer authentication without I/O: the frames of the exchange, the proofs, the receiver's gate.

- The challenge, answer and proof frames survive a round trip; truncated frames, wrong sizes,
  wrong types and other frames are the peer's fault, named by field.
- A proof is mutual and bound to its connection: it verifies only for its own direction, both
  nonces, both node ids, the cluster id and the secret.
- A receiver that requires a proof returns the handshake, the challenge and the proof, and
  decodes no message before its driver says the proof is verified.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest

from taskraft.peer import (
    END_OF_STREAM,
    ChallengeResponseReceiver,
    LocalPeerError,
    PeerChallenge,
    PeerChallengeResponse,
    PeerHandshake,
    PeerProof,
    PeerStreamReceiver,
    ProofDirection,
    RemotePeerError,
    decode_challenge,
    decode_challenge_response,
    decode_proof,
    encode_challenge,
    encode_challenge_response,
    encode_handshake,
    encode_message,
    encode_proof,
    handshake_proof,
    proof_is_valid,
)
from taskraft.peer.auth import check_cluster_secret, cluster_secret_from_file_bytes
from taskraft.peer.limits import (
    AUTH_FRAME_SIZE_MAX_BYTES,
    AUTH_NONCE_SIZE_BYTES,
    CHALLENGE_MAGIC,
    PROOF_MAGIC,
    RESPONSE_MAGIC,
)
from taskraft.protocol.framing import Frame, FrameDecoder, encode_frame
from taskraft.raft import NodeId, ReadIndexRequest, Term

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32
NONCE_I = bytes(range(32))
NONCE_A = bytes(range(32, 64))
PROOF = bytes(range(64, 96))
A, B = NodeId("a"), NodeId("b")


def frame_value(frame: bytes) -> object:
    decoder = FrameDecoder(frame_size_max_bytes=AUTH_FRAME_SIZE_MAX_BYTES)
    decoder.receive_data(frame)
    decoded = decoder.next_frame()
    assert isinstance(decoded, Frame)
    return decoded.value


# -- frames ------------------------------------------------------------------------------------


def test_the_frames_of_the_exchange_survive_a_round_trip() -> None:
    challenge = PeerChallenge(nonce=NONCE_I)
    response = PeerChallengeResponse(nonce=NONCE_A, proof=PROOF)
    proof = PeerProof(proof=PROOF)
    assert decode_challenge(frame_value(encode_challenge(challenge))) == challenge
    assert decode_challenge_response(frame_value(encode_challenge_response(response))) == response
    assert decode_proof(frame_value(encode_proof(proof))) == proof
    for frame in (
        encode_challenge(challenge),
        encode_challenge_response(response),
        encode_proof(proof),
    ):
        assert len(frame) <= AUTH_FRAME_SIZE_MAX_BYTES


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_encoding_refuses_nonces_and_proofs_of_the_wrong_size(size: int) -> None:
    with pytest.raises(LocalPeerError, match="exactly 32 bytes"):
        encode_challenge(PeerChallenge(nonce=b"x" * size))
    with pytest.raises(LocalPeerError, match="exactly 32 bytes"):
        encode_challenge_response(PeerChallengeResponse(nonce=NONCE_A, proof=b"x" * size))
    with pytest.raises(LocalPeerError, match="exactly 32 bytes"):
        encode_proof(PeerProof(proof=b"x" * size))


BAD_FRAMES = {
    "not an array": ("challenge", decode_challenge, {"nonce": NONCE_I}, "challenge"),
    "empty array": ("challenge", decode_challenge, [], "challenge"),
    "a Raft message": ("challenge", decode_challenge, [8, "b", "a", 1, 7], "challenge"),
    "another frame of the exchange": (
        "challenge",
        decode_challenge,
        [PROOF_MAGIC, PROOF],
        "challenge",
    ),
    "short nonce": ("challenge", decode_challenge, [CHALLENGE_MAGIC, b"x" * 31], "nonce"),
    "long nonce": ("challenge", decode_challenge, [CHALLENGE_MAGIC, b"x" * 33], "nonce"),
    "text nonce": ("challenge", decode_challenge, [CHALLENGE_MAGIC, "x" * 32], "nonce"),
    "missing nonce": ("challenge", decode_challenge, [CHALLENGE_MAGIC], "challenge"),
    "extra item": ("challenge", decode_challenge, [CHALLENGE_MAGIC, NONCE_I, 1], "challenge"),
    "answer without proof": (
        "challenge_response",
        decode_challenge_response,
        [RESPONSE_MAGIC, NONCE_A],
        "challenge_response",
    ),
    "answer with a short proof": (
        "challenge_response",
        decode_challenge_response,
        [RESPONSE_MAGIC, NONCE_A, PROOF[:16]],
        "proof",
    ),
    "proof of nil": ("proof", decode_proof, [PROOF_MAGIC, None], "proof"),
    "empty proof": ("proof", decode_proof, [PROOF_MAGIC, b""], "proof"),
}


@pytest.mark.parametrize(("name", "decode", "value", "field"), BAD_FRAMES.values(), ids=BAD_FRAMES)
def test_a_bad_frame_of_the_exchange_is_the_peers_fault(
    name: str, decode: object, value: object, field: str
) -> None:
    assert callable(decode)
    with pytest.raises(RemotePeerError) as raised:
        decode(value)
    assert raised.value.field.startswith(name)
    assert field in raised.value.field


# -- proofs ------------------------------------------------------------------------------------


def connection(**changes: object) -> tuple[bytes, dict[str, object]]:
    """The secret and the fields a proof is bound to, of one connection, with `changes`."""
    fields: dict[str, object] = {
        "direction": ProofDirection.INITIATOR,
        "cluster_id": "c1",
        "initiator": A,
        "acceptor": B,
        "initiator_nonce": NONCE_I,
        "acceptor_nonce": NONCE_A,
    }
    fields.update(changes)
    secret = fields.pop("secret", SECRET)
    assert isinstance(secret, bytes)
    return secret, fields


def proof(**changes: object) -> bytes:
    secret, fields = connection(**changes)
    return handshake_proof(secret, **fields)  # type: ignore[arg-type]


def valid(value: bytes, **changes: object) -> bool:
    secret, fields = connection(**changes)
    return proof_is_valid(secret, value, **fields)  # type: ignore[arg-type]


def test_a_proof_verifies_for_its_own_connection_and_direction() -> None:
    initiator_proof = proof()
    acceptor_proof = proof(direction=ProofDirection.ACCEPTOR)
    assert len(initiator_proof) == 32
    assert valid(initiator_proof)
    assert valid(acceptor_proof, direction=ProofDirection.ACCEPTOR)
    # Mutual: the two sides' proofs differ, so neither can be reflected back as the other.
    assert initiator_proof != acceptor_proof
    assert not valid(acceptor_proof)
    assert not valid(initiator_proof, direction=ProofDirection.ACCEPTOR)


CHANGES = {
    "another secret": {"secret": OTHER_SECRET},
    "another initiator nonce": {"initiator_nonce": bytes(32)},
    "another acceptor nonce": {"acceptor_nonce": bytes(32)},
    "nonces swapped": {"initiator_nonce": NONCE_A, "acceptor_nonce": NONCE_I},
    "another initiator": {"initiator": NodeId("c")},
    "another acceptor": {"acceptor": NodeId("c")},
    "ids swapped": {"initiator": B, "acceptor": A},
    "another cluster id": {"cluster_id": "c2"},
    "no cluster id": {"cluster_id": None},
}


@pytest.mark.parametrize("changes", CHANGES.values(), ids=CHANGES)
def test_a_proof_does_not_verify_for_another_connection(changes: dict[str, object]) -> None:
    assert not valid(proof(), **changes)
    assert proof(**changes) != proof()


def test_the_fields_are_separated_unambiguously() -> None:
    # Without length prefixes these would hash the same bytes.
    assert proof(initiator=NodeId("ab"), acceptor=NodeId("c")) != proof(
        initiator=NodeId("a"), acceptor=NodeId("bc")
    )


def test_a_proof_of_the_wrong_size_or_with_wrong_size_nonces_is_invalid() -> None:
    good = proof()
    assert not valid(good[:16])
    assert not valid(good + b"\0")
    assert not valid(b"")
    short = bytes(16)
    assert not valid(proof(initiator_nonce=short), initiator_nonce=short)


def test_a_secret_file_is_stripped_and_must_hold_32_bytes() -> None:
    assert cluster_secret_from_file_bytes(b"  \n" + SECRET + b"\n\n") == SECRET
    with pytest.raises(ValueError, match="31 bytes; it needs at least 32") as raised:
        cluster_secret_from_file_bytes(b"k" * 31 + b"\n")
    assert "kkkk" not in str(raised.value)
    with pytest.raises(ValueError, match="0 bytes"):
        cluster_secret_from_file_bytes(b" \n\t ")
    check_cluster_secret(b"x" * 32)


# -- the receiver ------------------------------------------------------------------------------


def handshake_bytes(sender: NodeId = B) -> bytes:
    return encode_handshake(PeerHandshake(sender=sender))


def message_bytes() -> bytes:
    return encode_message(ReadIndexRequest(B, A, Term(1), 7))


def test_a_receiver_that_requires_a_proof_decodes_no_message_before_it_is_verified() -> None:
    receiver = PeerStreamReceiver(local_node_id=A, require_proof=True)
    receiver.receive_data(
        handshake_bytes()
        + encode_challenge(PeerChallenge(NONCE_I))
        + encode_proof(PeerProof(PROOF))
        + message_bytes()
    )
    assert receiver.next_event() == PeerHandshake(sender=B)
    assert receiver.next_event() == PeerChallenge(NONCE_I)
    assert not receiver.authenticated
    assert receiver.next_event() == PeerProof(PROOF)
    with pytest.raises(LocalPeerError, match="not verified"):
        receiver.next_event()
    receiver.proof_verified()
    assert receiver.authenticated
    assert receiver.next_event() == ReadIndexRequest(B, A, Term(1), 7)
    assert receiver.next_event() is None
    receiver.receive_data(b"")
    assert receiver.next_event() is END_OF_STREAM
    with pytest.raises(LocalPeerError):
        receiver.proof_verified()


def test_a_receiver_that_requires_a_proof_takes_its_frames_byte_by_byte() -> None:
    receiver = PeerStreamReceiver(local_node_id=A, require_proof=True)
    stream = (
        handshake_bytes()
        + encode_challenge(PeerChallenge(NONCE_I))
        + encode_proof(PeerProof(PROOF))
        + message_bytes()
    )
    events: list[object] = []
    for byte in stream:
        receiver.receive_data(bytes([byte]))
        event = receiver.next_event()
        if event is not None:
            events.append(event)
            if isinstance(event, PeerProof):
                receiver.proof_verified()
    assert [type(event).__name__ for event in events] == [
        "PeerHandshake",
        "PeerChallenge",
        "PeerProof",
        "ReadIndexRequest",
    ]


UNAUTHENTICATED_STREAMS = {
    "messages right after the handshake": (handshake_bytes() + message_bytes(), "challenge"),
    "a large frame after the handshake": (
        handshake_bytes() + struct.pack(">I", 4096) + b"x" * 16,
        "challenge",
    ),
    "messages instead of the proof": (
        handshake_bytes() + encode_challenge(PeerChallenge(NONCE_I)) + message_bytes(),
        "proof",
    ),
    "a proof of the wrong size": (
        handshake_bytes()
        + encode_challenge(PeerChallenge(NONCE_I))
        + encode_frame([PROOF_MAGIC, PROOF[:31]]),
        "proof",
    ),
    "a truncated challenge": (
        handshake_bytes() + encode_challenge(PeerChallenge(NONCE_I))[:-3],
        None,
    ),
    "the end before the challenge": (handshake_bytes(), None),
}


@pytest.mark.parametrize(
    ("stream", "field"), UNAUTHENTICATED_STREAMS.values(), ids=UNAUTHENTICATED_STREAMS
)
def test_a_peer_that_does_not_authenticate_fails_before_any_message(
    stream: bytes, field: str | None
) -> None:
    receiver = PeerStreamReceiver(local_node_id=A, require_proof=True)
    receiver.receive_data(stream)
    if field is None:
        # Incomplete: the receiver waits for more, and the end of the stream is a fault.
        events = [receiver.next_event(), receiver.next_event()]
        assert events[0] == PeerHandshake(sender=B)
        assert events[1] is None
        receiver.receive_data(b"")
    else:
        assert receiver.next_event() == PeerHandshake(sender=B)
        if field == "proof":
            assert receiver.next_event() == PeerChallenge(NONCE_I)
    with pytest.raises(RemotePeerError) as raised:
        receiver.next_event()
    if field is not None:
        assert raised.value.field.startswith(field)
    with pytest.raises(LocalPeerError):
        receiver.next_event()


def test_a_receiver_without_require_proof_is_unchanged() -> None:
    receiver = PeerStreamReceiver(local_node_id=A)
    receiver.receive_data(handshake_bytes() + message_bytes())
    assert receiver.next_event() == PeerHandshake(sender=B)
    assert receiver.authenticated
    assert receiver.next_event() == ReadIndexRequest(B, A, Term(1), 7)
    with pytest.raises(LocalPeerError):
        receiver.proof_verified()


def test_the_answer_receiver_returns_the_answer_and_refuses_anything_after_it() -> None:
    response = PeerChallengeResponse(nonce=NONCE_A, proof=PROOF)
    frame = encode_challenge_response(response)
    answers = ChallengeResponseReceiver()
    for byte in frame[:-1]:
        answers.receive_data(bytes([byte]))
        assert answers.next_event() is None
    answers.receive_data(frame[-1:])
    assert answers.next_event() == response

    trailing = ChallengeResponseReceiver()
    trailing.receive_data(frame + b"\0")
    with pytest.raises(RemotePeerError, match="after its answer"):
        trailing.next_event()


def test_the_answer_receiver_reports_a_closed_connection_and_bad_answers() -> None:
    closed = ChallengeResponseReceiver()
    closed.receive_data(b"\0\0")
    closed.receive_data(b"")
    assert closed.next_event() is END_OF_STREAM

    oversized = ChallengeResponseReceiver()
    oversized.receive_data(struct.pack(">I", AUTH_FRAME_SIZE_MAX_BYTES + 1))
    with pytest.raises(RemotePeerError, match="is not an answer to the challenge"):
        oversized.next_event()

    wrong = ChallengeResponseReceiver()
    wrong.receive_data(encode_challenge(PeerChallenge(NONCE_I)))
    with pytest.raises(RemotePeerError) as raised:
        wrong.next_event()
    assert raised.value.field == "challenge_response"

    short = ChallengeResponseReceiver()
    short.receive_data(encode_frame([RESPONSE_MAGIC, NONCE_A[: AUTH_NONCE_SIZE_BYTES - 1], PROOF]))
    with pytest.raises(RemotePeerError, match="exactly 32 bytes"):
        short.next_event()


def test_frames_are_frozen_values() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PeerChallenge(NONCE_I).nonce = NONCE_A  # type: ignore[misc]
