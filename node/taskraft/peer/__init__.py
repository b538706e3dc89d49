"""The peer layer: Raft messages carried between taskraft nodes over TCP.

Two layers, each usable alone:

- `codec`: the peer protocol without I/O (h11 style). `encode_message` / `decode_message` turn
  every Raft message into a length-prefixed msgpack frame and back, checking every field, and
  `PeerStreamReceiver` turns a connection's bytes into its handshake and messages. A peer's
  bad bytes raise `RemotePeerError`, naming the field.
- `auth`: with a cluster secret, the mutual proofs (HMAC-SHA256 over both nodes' ids and
  nonces) that every connection exchanges after its handshake, before any message.
- `transport`: `PeerTransport`, the asyncio shell. One outgoing connection per peer, made when
  there is something to send and retried with jittered exponential backoff; bounded per-peer
  queues that drop and count rather than grow; bounded incoming connections.

Every bound, with its reason, is in `limits`.
"""

from taskraft.peer.auth import ProofDirection, handshake_proof, proof_is_valid
from taskraft.peer.backoff import ReconnectBackoff
from taskraft.peer.codec import (
    END_OF_STREAM,
    ChallengeResponseReceiver,
    EndOfStream,
    PeerChallenge,
    PeerChallengeResponse,
    PeerEvent,
    PeerHandshake,
    PeerProof,
    PeerStreamReceiver,
    check_local_identity,
    check_raft_options,
    decode_challenge,
    decode_challenge_response,
    decode_handshake,
    decode_message,
    decode_proof,
    encode_challenge,
    encode_challenge_response,
    encode_handshake,
    encode_message,
    encode_proof,
    message_to_wire,
)
from taskraft.peer.errors import LocalPeerError, PeerError, RemotePeerError
from taskraft.peer.limits import PEER_FRAME_SIZE_MAX_BYTES, PEER_PROTOCOL_VERSION
from taskraft.peer.transport import (
    PeerAddress,
    PeerStatus,
    PeerTransport,
    TransportCounters,
    TransportLimits,
)

__all__ = [
    "END_OF_STREAM",
    "PEER_FRAME_SIZE_MAX_BYTES",
    "PEER_PROTOCOL_VERSION",
    "ChallengeResponseReceiver",
    "EndOfStream",
    "LocalPeerError",
    "PeerAddress",
    "PeerChallenge",
    "PeerChallengeResponse",
    "PeerError",
    "PeerEvent",
    "PeerHandshake",
    "PeerProof",
    "PeerStatus",
    "PeerStreamReceiver",
    "PeerTransport",
    "ProofDirection",
    "ReconnectBackoff",
    "RemotePeerError",
    "TransportCounters",
    "TransportLimits",
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
    "handshake_proof",
    "message_to_wire",
    "proof_is_valid",
]
