"""Coverage-guided fuzzing of the receiving end of an authenticated peer connection.

tests/fuzz/test_peer_authentication_frames.py feeds `PeerStreamReceiver` damaged exchanges at
random; atheris mutates the bytes towards code not run yet (the handshake, challenge and proof
checks, then the Raft message decoder). Each input is a prefix of a real authenticated stream
(handshake, challenge, proof, messages), so that mutations reach the later frames, followed by
arbitrary bytes, fed in arbitrary pieces (`fuzz.streams.fuzzed_pieces`). The receiver may only
give the events it documents or raise `RemotePeerError` (the peer broke the protocol), holds no
more than it was fed, and gives the authentication frames first and in order:
`fuzz.checks.check_peer_stream`, the check the Hypothesis test makes too. Any other exception
is a bug.

Run: `python tests/fuzz/atheris/fuzz_peer_stream.py -runs=100000` (libFuzzer options);
tests/fuzz/test_atheris.py runs it briefly, `make fuzz` for a minute.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# The shared helpers are the package `fuzz` in tests/, which a script run from anywhere
# does not otherwise see.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["taskraft"]):
    from fuzz.checks import CLUSTER, LOCAL, SENDER, check_peer_stream
    from fuzz.streams import fuzzed_pieces
    from taskraft.peer.codec import (
        PeerChallenge,
        PeerHandshake,
        PeerProof,
        encode_challenge,
        encode_handshake,
        encode_message,
        encode_proof,
    )
    from taskraft.peer.limits import AUTH_NONCE_SIZE_BYTES, AUTH_PROOF_SIZE_BYTES
    from taskraft.raft import Entry, EntryKind, LogIndex, Term
    from taskraft.raft.messages import AppendEntries, Message, RequestVote


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
    check_peer_stream(fuzzed_pieces(atheris.FuzzedDataProvider(data), VALID_STREAM))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
