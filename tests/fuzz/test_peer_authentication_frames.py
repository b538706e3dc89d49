"""The peer codec's authentication frames (challenge, challenge response, proof) under attack.

tests/peer/test_codec.py fuzzes messages, handshakes and streams without authentication; here
the receivers of an authenticated connection are fed arbitrary bytes and damaged valid
exchanges in arbitrary pieces. Each gives the events it documents or `RemotePeerError`,
nothing else, and holds no more than it was fed.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from fuzz.budget import fuzz_settings
from fuzz.checks import CLUSTER, LOCAL, SENDER, check_peer_stream
from fuzz.streams import damaged_stream, pieces
from peer.strategies import messages
from taskraft.peer import END_OF_STREAM, RemotePeerError
from taskraft.peer.codec import (
    ChallengeResponseReceiver,
    PeerChallenge,
    PeerChallengeResponse,
    PeerHandshake,
    PeerProof,
    PeerStreamReceiver,
    decode_challenge,
    decode_challenge_response,
    decode_proof,
    encode_challenge,
    encode_challenge_response,
    encode_handshake,
    encode_message,
    encode_proof,
)
from taskraft.peer.limits import (
    AUTH_NONCE_SIZE_BYTES,
    AUTH_PROOF_SIZE_BYTES,
    CHALLENGE_MAGIC,
    PROOF_MAGIC,
    RESPONSE_MAGIC,
)
from taskraft.raft.messages import Message

nonces = st.binary(min_size=AUTH_NONCE_SIZE_BYTES, max_size=AUTH_NONCE_SIZE_BYTES)
proofs = st.binary(min_size=AUTH_PROOF_SIZE_BYTES, max_size=AUTH_PROOF_SIZE_BYTES)
auth_items = st.none() | st.booleans() | st.integers(-5, 2**64 - 1) | st.text(max_size=12)
auth_values = (
    auth_items
    | st.binary(max_size=40)
    | nonces
    | st.lists(
        st.sampled_from([CHALLENGE_MAGIC, RESPONSE_MAGIC, PROOF_MAGIC]) | auth_items | nonces,
        max_size=4,
    )
)


@fuzz_settings(300)
@given(auth_values)
def test_any_value_is_an_auth_frame_or_a_remote_error(value: object) -> None:
    for decode in (decode_challenge, decode_challenge_response, decode_proof):
        try:
            frame = decode(value)
        except RemotePeerError:
            continue
        assert isinstance(frame, PeerChallenge | PeerChallengeResponse | PeerProof)


def _with_sender(message: Message) -> Message:
    return dataclasses.replace(message, sender=SENDER)


@st.composite
def authenticated_streams(draw: st.DrawFn) -> bytes:
    """The connecting side's whole stream: handshake, challenge, proof, then messages."""
    batch = draw(st.lists(messages.map(_with_sender), max_size=3))
    return b"".join(
        [
            encode_handshake(PeerHandshake(sender=SENDER, cluster_id=CLUSTER)),
            encode_challenge(PeerChallenge(nonce=draw(nonces))),
            encode_proof(PeerProof(proof=draw(proofs))),
            *(encode_message(message) for message in batch),
        ]
    )


@fuzz_settings(200)
@given(data=st.data(), end=st.booleans())
def test_a_damaged_authenticated_stream_gives_documented_events_or_a_remote_error(
    data: st.DataObject, end: bool
) -> None:
    valid = data.draw(authenticated_streams(), label="valid")
    stream = data.draw(damaged_stream(valid) | st.binary(max_size=200), label="stream")
    order = check_peer_stream([*data.draw(pieces(stream), label="pieces"), *([b""] if end else [])])
    if stream == valid and end:
        assert len(order) >= 3


@fuzz_settings(200)
@given(data=st.data(), end=st.booleans())
def test_a_damaged_challenge_response_is_an_answer_or_a_remote_error(
    data: st.DataObject, end: bool
) -> None:
    response = PeerChallengeResponse(nonce=data.draw(nonces), proof=data.draw(proofs))
    valid = encode_challenge_response(response)
    stream = data.draw(damaged_stream(valid) | st.binary(max_size=120), label="stream")
    receiver = ChallengeResponseReceiver()
    answers: list[object] = []
    try:
        for piece in [*data.draw(pieces(stream), label="pieces"), *([b""] if end else [])]:
            receiver.receive_data(piece)
            event = receiver.next_event()
            if event is not None and event is not END_OF_STREAM:
                answers.append(event)
                break
    except RemotePeerError:
        return
    assert all(isinstance(answer, PeerChallengeResponse) for answer in answers)
    if stream == valid:
        assert answers == [response]


@fuzz_settings(200)
@given(st.binary(max_size=300))
def test_random_bytes_after_a_handshake_are_auth_frames_or_remote_errors(data: bytes) -> None:
    receiver = PeerStreamReceiver(local_node_id=LOCAL, cluster_id=CLUSTER, require_proof=True)
    receiver.receive_data(encode_handshake(PeerHandshake(sender=SENDER, cluster_id=CLUSTER)))
    if data:
        receiver.receive_data(data)
    receiver.receive_data(b"")
    try:
        assert isinstance(receiver.next_event(), PeerHandshake)
        assert isinstance(receiver.next_event(), PeerChallenge)
        assert isinstance(receiver.next_event(), PeerProof)
    except RemotePeerError:
        pass
