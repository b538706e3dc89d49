"""PeerTransport with a cluster secret, over real TCP on 127.0.0.1.

- Two transports with the same secret authenticate both ways and exchange messages.
- Refused, each connection closed and counted by reason, while a real peer keeps being served:
  random bytes, a handshake followed by messages (no secret), a wrong proof, a proof reflected
  back at its maker, a silent peer after its challenge, a transport with another secret or
  another cluster id, and a sender that `admit_sender` does not admit.
- The connecting side checks the accepting side's proof before it sends anything: a listener
  that answers with a wrong proof, or closes, receives no message.
- Refusals are logged at most once per interval.

Every wait ends at a deadline (`wait_until`, `within_deadline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from typing import Any

import pytest

from peer.support import (
    LOCALHOST,
    Node,
    close,
    close_raw,
    connected_pair,
    read_request,
    read_until_closed,
    run,
    started,
    wait_until,
    within_deadline,
)
from taskraft.peer import (
    ChallengeResponseReceiver,
    PeerChallenge,
    PeerChallengeResponse,
    PeerHandshake,
    PeerProof,
    PeerStreamReceiver,
    PeerTransport,
    ProofDirection,
    TransportLimits,
    encode_challenge,
    encode_challenge_response,
    encode_handshake,
    encode_message,
    encode_proof,
    handshake_proof,
)
from taskraft.raft import NodeId

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")
SECRET = b"the secret of this test cluster, 48 bytes long.."
OTHER_SECRET = b"the secret of another cluster, 48 bytes long...."
NONCE = bytes(range(32))


def secured(node_id: NodeId, *, secret: bytes | None = SECRET, **options: Any) -> Node:
    """A node of this test cluster: with its secret unless told otherwise."""
    return Node(node_id, secret=secret, **options)


async def still_served(a: Node, b: Node, request_id: int) -> None:
    """A real peer's message still reaches `a`."""
    b.transport.send(read_request(B, A, request_id))
    await wait_until(lambda: request_id in a.request_ids(), "a real peer's message")


async def answer_of(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sender: NodeId, nonce: bytes
) -> PeerChallengeResponse:
    """Send a handshake and a challenge as `sender`; the transport's answer."""
    writer.write(encode_handshake(PeerHandshake(sender=sender)))
    writer.write(encode_challenge(PeerChallenge(nonce)))
    await writer.drain()
    answers = ChallengeResponseReceiver()

    async def answer() -> PeerChallengeResponse:
        while True:
            event = answers.next_event()
            if isinstance(event, PeerChallengeResponse):
                return event
            assert event is None, "the transport closed the connection instead of answering"
            answers.receive_data(await reader.read(1024))

    return await within_deadline(answer(), "the answer to the challenge")


# -- authenticated peers ----------------------------------------------------------------------


def test_two_transports_with_the_secret_authenticate_and_exchange_messages() -> None:
    async def scenario() -> None:
        a, b = await connected_pair(secret=SECRET, cluster_id="c1")
        for request_id in range(100):
            a.transport.send(read_request(A, B, request_id))
            b.transport.send(read_request(B, A, 1000 + request_id))
        await wait_until(lambda: len(b.received) == 100, "b to receive a's messages")
        await wait_until(lambda: len(a.received) == 100, "a to receive b's messages")
        assert b.request_ids() == list(range(100))
        for node in (a, b):
            counters = node.transport.counters
            assert counters.authenticated_incoming == 1
            assert counters.authenticated_outgoing == 1
            assert counters.connections == 1
            assert sum(node.transport.refusals().values()) == 0
            assert node.transport.authenticates
        # The handshake is remembered only once its sender proved the secret.
        assert a.transport.handshake_of(B) is not None
        await close(a, b)

    run(scenario)


def test_a_peer_that_restarts_authenticates_again() -> None:
    async def scenario() -> None:
        a, b = await connected_pair(secret=SECRET)
        a.transport.send(read_request(A, B, 1))
        await wait_until(lambda: b.request_ids() == [1], "the first message")
        port = b.address[1]
        await b.transport.close()
        b2 = secured(B)
        b2.transport = PeerTransport(
            B,
            LOCALHOST,
            port,
            {A: a.address},
            b2.received.append,
            random_source=random.Random(1),
            cluster_secret=SECRET,
        )
        await b2.transport.start()

        def keep_sending() -> None:
            a.transport.send(read_request(A, B, 2))

        await wait_until(
            lambda: 2 in b2.request_ids(), "a message after the restart", while_waiting=keep_sending
        )
        assert a.transport.counters.authenticated_outgoing == 2
        await close(a, b2)

    run(scenario)


# -- refused peers ----------------------------------------------------------------------------

RAW_REFUSALS = {
    "random bytes": (os.urandom(4096), "malformed"),
    "a handshake and messages, no challenge": (
        encode_handshake(PeerHandshake(sender=C)) + encode_message(read_request(C, A, 99)),
        "unauthenticated",
    ),
    "another cluster id": (
        encode_handshake(PeerHandshake(sender=C, cluster_id="other")),
        "cluster_id",
    ),
}


@pytest.mark.parametrize(("data", "reason"), RAW_REFUSALS.values(), ids=RAW_REFUSALS)
def test_a_process_that_cannot_prove_the_secret_is_refused_before_any_message(
    data: bytes, reason: str
) -> None:
    async def scenario() -> None:
        a, b = await connected_pair(secret=SECRET)
        reader, writer = await asyncio.open_connection(*a.address)
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        assert await read_until_closed(reader) == b""
        await close_raw(writer)
        await wait_until(lambda: a.refused(reason) == 1, f"a refusal for {reason}")
        assert 99 not in a.request_ids()
        assert a.transport.handshake_of(C) is None
        await still_served(a, b, 7)
        await close(a, b)

    run(scenario)


def test_a_wrong_proof_is_refused_and_no_message_after_it_is_read() -> None:
    async def scenario() -> None:
        a, b = await connected_pair(secret=SECRET)
        reader, writer = await asyncio.open_connection(*a.address)
        await answer_of(reader, writer, C, NONCE)
        writer.write(encode_proof(PeerProof(bytes(32))) + encode_message(read_request(C, A, 99)))
        await writer.drain()
        await read_until_closed(reader)
        await close_raw(writer)
        await wait_until(lambda: a.refused("bad_proof") == 1, "the refusal")
        assert 99 not in a.request_ids()
        await still_served(a, b, 7)
        await close(a, b)

    run(scenario)


def test_a_proof_reflected_back_at_its_maker_is_refused() -> None:
    async def scenario() -> None:
        a, b = await connected_pair(secret=SECRET)
        reader, writer = await asyncio.open_connection(*a.address)
        # Claim to be b, and hand a its own proof as b's: the directions differ.
        answer = await answer_of(reader, writer, B, NONCE)
        writer.write(encode_proof(PeerProof(answer.proof)))
        await writer.drain()
        await read_until_closed(reader)
        await close_raw(writer)
        await wait_until(lambda: a.refused("bad_proof") == 1, "the refusal")
        await close(a, b)

    run(scenario)


def test_a_proof_recorded_on_another_connection_is_refused() -> None:
    async def scenario() -> None:
        a = secured(A)
        await a.transport.start()
        # A proof b would have made for an earlier connection, with its nonces.
        old_proof = handshake_proof(
            SECRET,
            direction=ProofDirection.INITIATOR,
            cluster_id=None,
            initiator=B,
            acceptor=A,
            initiator_nonce=NONCE,
            acceptor_nonce=bytes(32),
        )
        reader, writer = await asyncio.open_connection(*a.address)
        await answer_of(reader, writer, B, NONCE)
        writer.write(encode_proof(PeerProof(old_proof)))
        await writer.drain()
        await read_until_closed(reader)
        await close_raw(writer)
        await wait_until(lambda: a.refused("bad_proof") == 1, "the refusal")
        await close(a)

    run(scenario)


def test_a_peer_that_stops_after_its_challenge_is_dropped_at_the_handshake_timeout() -> None:
    async def scenario() -> None:
        a = secured(A, limits=TransportLimits(handshake_timeout_ms=200))
        await a.transport.start()
        reader, writer = await asyncio.open_connection(*a.address)
        await answer_of(reader, writer, C, NONCE)
        await read_until_closed(reader)
        await close_raw(writer)
        await wait_until(lambda: a.refused("timeout") == 1, "the refusal")
        await close(a)

    run(scenario)


# The accepting side proves itself first: with another secret, the connecting side finds the
# proof wrong and closes the connection before it sends its own, which the accepting side sees
# as a peer that did not authenticate.
@pytest.mark.parametrize(
    ("other", "reason"),
    [
        ({"secret": OTHER_SECRET}, "unauthenticated"),
        ({"secret": None}, "unauthenticated"),
        ({"cluster_id": "other"}, "cluster_id"),
    ],
    ids=["another secret", "no secret", "another cluster id"],
)
def test_a_node_of_another_cluster_is_refused_both_ways(
    other: dict[str, object], reason: str
) -> None:
    async def scenario() -> None:
        a, b = await connected_pair(secret=SECRET)
        stranger = secured(C, **other)  # type: ignore[arg-type]
        await stranger.transport.start()
        stranger.transport.set_peers({A: a.address})
        a.transport.set_peers({B: b.address, C: stranger.address})

        def keep_sending() -> None:
            stranger.transport.send(read_request(C, A, 99))
            a.transport.send(read_request(A, C, 98))

        await wait_until(
            lambda: a.refused(reason) >= 1 and stranger.transport.counters.incoming_errors >= 1,
            "refusals on both sides",
            while_waiting=keep_sending,
        )
        assert 99 not in a.request_ids()
        assert stranger.received == []
        if other.get("secret") is not None:
            # Each side found the other's answer to its challenge wrong.
            assert a.refused("bad_proof", "outgoing") >= 1
            assert stranger.refused("bad_proof", "outgoing") >= 1
        await still_served(a, b, 7)
        await close(a, b, stranger)

    run(scenario)


def test_an_authenticated_sender_that_is_not_admitted_is_refused() -> None:
    async def scenario() -> None:
        members = {A, B}
        a = secured(A, admit_sender=members.__contains__)
        b, c = secured(B), secured(C)
        await started(a, b, c)
        b.transport.set_peers({A: a.address})
        c.transport.set_peers({A: a.address})

        def keep_sending() -> None:
            c.transport.send(read_request(C, A, 99))

        await wait_until(
            lambda: a.refused("unknown_sender") >= 1, "the refusal", while_waiting=keep_sending
        )
        assert 99 not in a.request_ids()
        # c proved the secret and sent its messages; a closed the connection unread.
        assert c.transport.counters.authenticated_outgoing >= 1
        await still_served(a, b, 7)
        members.add(C)
        await wait_until(
            lambda: 99 in a.request_ids(), "c's message once admitted", while_waiting=keep_sending
        )
        await close(a, b, c)

    run(scenario)


# -- the connecting side ----------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["wrong proof", "close", "silence"])
def test_a_listener_that_does_not_prove_the_secret_receives_no_message(answer: str) -> None:
    async def scenario() -> None:
        received_after_answer: list[bytes] = []
        served = asyncio.Event()

        async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            receiver = PeerStreamReceiver(local_node_id=B, require_proof=True)
            event = receiver.next_event()
            while not isinstance(event, PeerChallenge):
                if event is None:
                    receiver.receive_data(await reader.read(1024))
                event = receiver.next_event()
            if answer == "wrong proof":
                writer.write(
                    encode_challenge_response(PeerChallengeResponse(nonce=NONCE, proof=NONCE))
                )
                await writer.drain()
                with contextlib.suppress(ConnectionError):
                    received_after_answer.append(await reader.read(65536))
            elif answer == "silence":
                with contextlib.suppress(ConnectionError):
                    received_after_answer.append(await reader.read(65536))
            writer.close()
            served.set()

        server = await asyncio.start_server(impostor, LOCALHOST, 0)
        address = server.sockets[0].getsockname()[:2]
        a = secured(A, limits=TransportLimits(handshake_timeout_ms=300))
        a.transport.set_peers({B: address})
        a.transport.send(read_request(A, B, 1))
        reason = {"wrong proof": "bad_proof", "close": "closed", "silence": "timeout"}[answer]
        await wait_until(lambda: a.refused(reason, "outgoing") >= 1, "the outgoing refusal")
        await within_deadline(served.wait(), "the impostor to finish")
        # The impostor read nothing after its answer: no proof, no message.
        assert received_after_answer in ([], [b""])
        assert a.transport.counters.sent == 0
        assert a.transport.counters.authenticated_outgoing == 0
        await close(a)
        server.close()
        await server.wait_closed()

    run(scenario)


# -- logs --------------------------------------------------------------------------------------


def test_refusals_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="taskraft.peer")

    async def scenario() -> None:
        a = secured(A)
        await a.transport.start()
        for _ in range(20):
            reader, writer = await asyncio.open_connection(*a.address)
            writer.write(b"\xff" * 64)
            await read_until_closed(reader)
            await close_raw(writer)
        await wait_until(lambda: a.refused("malformed") == 20, "twenty refusals")
        await close(a)

    run(scenario)
    refusals = [r for r in caplog.records if "peer connection from" in r.getMessage()]
    assert len(refusals) == 1
    assert SECRET.decode() not in caplog.text
