"""Peer authentication with a shared cluster secret: the proofs, without I/O.

With a cluster secret every peer connection proves, in both directions, that each side knows
the secret before a single Raft message is read (docs/architecture.md, "Peer authentication").
The side that connects (the initiator) sends its handshake and a challenge holding a fresh
random nonce; the side that accepts (the acceptor) answers with a nonce of its own and its proof;
the initiator checks that proof and sends its own. A proof is

    HMAC-SHA256(secret, label, direction, cluster_id, initiator id, acceptor id,
                initiator nonce, acceptor nonce)

over an unambiguous encoding (each field preceded by its length), where `direction` says which
side computed it. So a proof is good for one connection only (both nonces are fresh), for one
pair of nodes in one cluster, and for one direction: an acceptor's proof reflected back at it,
or an initiator's proof replayed on another connection, does not verify.

This module computes and checks proofs; the codec carries them and the transport drives the
exchange. Nonces come from the caller, so that the module stays pure.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from typing import Final

from taskraft.peer.limits import (
    AUTH_NONCE_SIZE_BYTES,
    AUTH_PROOF_SIZE_BYTES,
    CLUSTER_SECRET_SIZE_MIN_BYTES,
)

PROOF_LABEL: Final = b"taskraft peer authentication v1"
"""Domain separation: a MAC computed with the cluster secret for any other purpose can never be
taken for a peer proof, nor a peer proof for anything else."""

_LENGTH: Final = struct.Struct(">I")


class ProofDirection(enum.Enum):
    """Which side of a connection computed a proof."""

    INITIATOR = "initiator"
    ACCEPTOR = "acceptor"


def cluster_secret_from_file_bytes(data: bytes) -> bytes:
    """The secret a secret file holds: its bytes without surrounding whitespace.

    ValueError (which never quotes the secret) when fewer than CLUSTER_SECRET_SIZE_MIN_BYTES
    remain.
    """
    secret = data.strip()
    check_cluster_secret(secret)
    return secret


def check_cluster_secret(secret: bytes) -> None:
    """ValueError when `secret` is too short to be a cluster secret; it is never quoted."""
    if len(secret) < CLUSTER_SECRET_SIZE_MIN_BYTES:
        raise ValueError(
            f"the cluster secret has {len(secret)} bytes; it needs at least "
            f"{CLUSTER_SECRET_SIZE_MIN_BYTES} (for example the output of "
            "`openssl rand -base64 48`)"
        )


def handshake_proof(
    secret: bytes,
    *,
    direction: ProofDirection,
    cluster_id: str | None,
    initiator: str,
    acceptor: str,
    initiator_nonce: bytes,
    acceptor_nonce: bytes,
) -> bytes:
    """The proof that the `direction` side of this connection knows `secret` (32 bytes)."""
    fields = (
        PROOF_LABEL,
        direction.value.encode(),
        # A cluster id is never empty, so no id and the empty field cannot be confused.
        b"" if cluster_id is None else cluster_id.encode(),
        initiator.encode(),
        acceptor.encode(),
        initiator_nonce,
        acceptor_nonce,
    )
    transcript = b"".join(_LENGTH.pack(len(field)) + field for field in fields)
    return hmac.new(secret, transcript, hashlib.sha256).digest()


def proof_is_valid(
    secret: bytes,
    proof: bytes,
    *,
    direction: ProofDirection,
    cluster_id: str | None,
    initiator: str,
    acceptor: str,
    initiator_nonce: bytes,
    acceptor_nonce: bytes,
) -> bool:
    """Whether `proof` is the `direction` side's proof for this connection (constant time)."""
    if len(initiator_nonce) != AUTH_NONCE_SIZE_BYTES or len(acceptor_nonce) != (
        AUTH_NONCE_SIZE_BYTES
    ):
        return False
    expected = handshake_proof(
        secret,
        direction=direction,
        cluster_id=cluster_id,
        initiator=initiator,
        acceptor=acceptor,
        initiator_nonce=initiator_nonce,
        acceptor_nonce=acceptor_nonce,
    )
    return len(proof) == AUTH_PROOF_SIZE_BYTES and hmac.compare_digest(proof, expected)


__all__ = [
    "PROOF_LABEL",
    "ProofDirection",
    "check_cluster_secret",
    "cluster_secret_from_file_bytes",
    "handshake_proof",
    "proof_is_valid",
]
