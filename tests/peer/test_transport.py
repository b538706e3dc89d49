"""PeerTransport over real TCP on 127.0.0.1: delivery, backoff, bounds, hostile peers, shutdown.

Every test runs in its own event loop through `run`, which fails when a task is left behind, and
every wait ends at a deadline (`wait_until`, `within_deadline`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import tracemalloc

import pytest

from peer.support import (
    LOCALHOST,
    Node,
    close,
    close_raw,
    connected_pair,
    raw_connection,
    read_request,
    read_until_closed,
    run,
    started,
    wait_until,
)
from taskraft.local_cluster import free_port
from taskraft.peer import (
    LocalPeerError,
    PeerHandshake,
    PeerTransport,
    TransportLimits,
    encode_handshake,
    encode_message,
)
from taskraft.peer.limits import HANDSHAKE_MAGIC
from taskraft.protocol.framing import encode_frame
from taskraft.raft import (
    Configuration,
    InstallSnapshot,
    LogIndex,
    Message,
    NodeId,
    SnapshotMetadata,
    Term,
)

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")


# -- delivery ---------------------------------------------------------------------------------


def test_two_transports_exchange_messages_both_ways_in_order() -> None:
    async def scenario() -> None:
        a, b = await connected_pair()
        count = 500
        for request_id in range(count):
            a.transport.send(read_request(A, B, request_id))
            b.transport.send(read_request(B, A, 10_000 + request_id))
        await wait_until(lambda: len(b.received) == count, "b to receive a's messages")
        await wait_until(lambda: len(a.received) == count, "a to receive b's messages")
        assert b.request_ids() == list(range(count))
        assert a.request_ids() == list(range(10_000, 10_000 + count))
        for node in (a, b):
            counters = node.transport.counters
            assert (counters.sent, counters.received, counters.dropped) == (count, count, 0)
            assert (counters.connections, counters.reconnects) == (1, 0)
            assert counters.incoming_accepted == 1
        # One connection per direction carries every later message too.
        a.transport.send(read_request(A, B, count))
        await wait_until(lambda: len(b.received) == count + 1, "one more message")
        assert a.transport.counters.connections == 1
        await close(a, b)

    run(scenario)


def test_large_messages_cross_in_batches() -> None:
    async def scenario() -> None:
        a, b = await connected_pair()
        metadata = SnapshotMetadata(LogIndex(9), Term(2), Configuration(frozenset({A, B})))
        chunks = [
            InstallSnapshot(
                A, B, Term(2), metadata, offset, bytes([offset % 256]) * 300_000, done=False
            )
            for offset in range(12)
        ]
        for chunk in chunks:
            a.transport.send(chunk)
        await wait_until(lambda: len(b.received) == len(chunks), "every chunk")
        assert b.received == chunks
        await close(a, b)

    run(scenario)


def test_a_down_peer_is_retried_with_backoff_and_reached_once_it_is_up() -> None:
    async def scenario() -> None:
        port = free_port()
        a = Node(A, {B: (LOCALHOST, port)})
        loop = asyncio.get_running_loop()
        # Keep sending, as a leader's heartbeats do, and count the attempts over 1.5 s.
        end = loop.time() + 1.5
        request_id = 0
        while loop.time() < end:
            a.transport.send(read_request(A, B, request_id))
            request_id += 1
            await asyncio.sleep(0.02)
        attempts = a.transport.counters.connection_attempts
        # Delays from 50 ms doubling towards 2 s allow about six; refused connections on
        # localhost retried without backoff would be hundreds.
        assert 3 <= attempts <= 10, attempts
        assert a.transport.counters.dropped > 0
        assert a.transport.counters.connections == 0

        b = Node(B, port=port)
        await started(b)

        def keep_sending() -> None:
            a.transport.send(read_request(A, B, 10**6))

        await wait_until(
            lambda: bool(b.received), "b to receive once up", while_waiting=keep_sending
        )
        assert a.transport.counters.connections == 1
        assert a.transport.peer_statuses()[B].connected
        await close(a, b)

    run(scenario)


def test_a_restarted_peer_is_reconnected() -> None:
    async def scenario() -> None:
        a, b = await connected_pair()
        a.transport.send(read_request(A, B, 1))
        await wait_until(lambda: bool(b.received), "the first message")
        port = b.address[1]
        await close(b)
        await wait_until(
            lambda: not a.transport.peer_statuses()[B].connected, "a to notice b has gone"
        )
        restarted = Node(B, port=port)
        await started(restarted)

        def keep_sending() -> None:
            a.transport.send(read_request(A, B, 2))

        await wait_until(
            lambda: bool(restarted.received), "the restarted peer", while_waiting=keep_sending
        )
        counters = a.transport.counters
        assert (counters.connections, counters.reconnects) == (2, 1)
        await close(a, restarted)

    run(scenario)


# -- bounds -----------------------------------------------------------------------------------


def test_the_queue_bound_drops_and_counts_when_the_peer_is_down() -> None:
    async def scenario() -> None:
        limits = TransportLimits(send_queue_frames_max=100)
        a = Node(A, {B: (LOCALHOST, free_port())}, limits=limits)
        for request_id in range(1000):
            a.transport.send(read_request(A, B, request_id))
        status = a.transport.peer_statuses()[B]
        assert status.queued_frames == 100
        assert (status.dropped, a.transport.counters.dropped) == (900, 900)
        # Queued messages are stale once a connection attempt fails: they are dropped too.
        await wait_until(lambda: a.transport.counters.dropped == 1000, "the failed attempt")
        assert a.transport.peer_statuses()[B].queued_frames == 0
        await close(a)

    run(scenario)


def test_the_queue_bound_keeps_memory_bounded() -> None:
    async def scenario() -> None:
        bound = 1024 * 1024
        limits = TransportLimits(send_queue_size_max_bytes=bound)
        a = Node(A, {B: (LOCALHOST, free_port())}, limits=limits)
        metadata = SnapshotMetadata(LogIndex(9), Term(2), Configuration(frozenset({A, B})))
        chunk = InstallSnapshot(A, B, Term(2), metadata, 0, b"\x07" * 64 * 1024, done=False)
        sends = 10 * bound // len(chunk.data)
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for _ in range(sends):
                a.transport.send(chunk)
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        status = a.transport.peer_statuses()[B]
        assert status.queued_bytes <= bound
        assert status.queued_frames + status.dropped == sends
        assert status.dropped >= 9 * sends // 10 - 1
        # Unbounded, the queue would hold ten mebibytes.
        assert after - before < 2 * bound
        await close(a)

    run(scenario)


def test_incoming_connections_are_bounded() -> None:
    async def scenario() -> None:
        a = Node(A, limits=TransportLimits(incoming_connections_max=2))
        await started(a)
        first = await raw_connection(a.address)
        second = await raw_connection(a.address)
        await wait_until(lambda: a.transport.counters.incoming_accepted == 2, "two accepted")
        reader, writer = await raw_connection(a.address)
        await read_until_closed(reader)
        assert a.transport.counters.incoming_refused == 1
        await close_raw(writer)
        # A slot frees when a connection ends.
        await close_raw(first[1])
        await wait_until(lambda: a.transport.open_incoming_connections == 1, "a slot to free")
        third = await raw_connection(a.address)

        def accepted_three() -> bool:
            return a.transport.counters.incoming_accepted == 3

        await wait_until(accepted_three, "a freed slot to be used")
        await close(a)
        for _, raw_writer in (second, third):
            await close_raw(raw_writer)

    run(scenario)


def test_a_stalled_peer_is_given_up_and_connected_again() -> None:
    async def scenario() -> None:
        # A listener that accepts and never reads: the socket buffers fill and writes stall.
        stalled: list[asyncio.StreamWriter] = []

        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stalled.append(writer)

        server = await asyncio.start_server(accept, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        limits = TransportLimits(write_stall_timeout_ms=300, close_timeout_ms=100)
        a = Node(A, {B: (LOCALHOST, port)}, limits=limits)
        metadata = SnapshotMetadata(LogIndex(9), Term(2), Configuration(frozenset({A, B})))
        chunk = InstallSnapshot(A, B, Term(2), metadata, 0, b"\x07" * 1024 * 1024, done=False)

        def keep_sending() -> None:
            a.transport.send(chunk)

        await wait_until(
            lambda: a.transport.counters.connections >= 2,
            "a second connection after the stall",
            while_waiting=keep_sending,
        )
        await close(a)
        for writer in stalled:
            writer.transport.abort()
        server.close()
        await server.wait_closed()

    run(scenario)


# -- hostile or confused peers ----------------------------------------------------------------

GARBAGE = {
    "http request": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "client protocol handshake": encode_frame({"taskraft": 1, "client": "cli"}),
    "wrong magic": encode_frame(["taskraft-pear", 1, "c", None]),
    "future version": encode_frame([HANDSHAKE_MAGIC, 2, "c", None]),
    "another cluster": encode_handshake(PeerHandshake(sender=C, cluster_id="other")),
    "bad message after a handshake": encode_handshake(PeerHandshake(sender=C))
    + encode_frame([7, "c", "a", -1]),
    "oversized frame": encode_handshake(PeerHandshake(sender=C)) + b"\xff\xff\xff\xff",
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_disconnected_with_a_logged_error_and_peers_are_still_served(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskraft.peer")

    async def scenario() -> None:
        a, b = await connected_pair()
        reader, writer = await raw_connection(a.address, garbage)
        await read_until_closed(reader)
        await close_raw(writer)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors, "the disconnection was not logged as an error"
        assert "broke the peer protocol" in errors[0].getMessage()
        assert a.transport.counters.incoming_errors == 1
        assert a.received == []
        b.transport.send(read_request(B, A, 7))
        await wait_until(lambda: a.request_ids() == [7], "a real peer's message")
        await close(a, b)

    run(scenario)


def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskraft.peer")

    async def scenario() -> None:
        a = Node(A, limits=TransportLimits(handshake_timeout_ms=200))
        await started(a)
        reader, writer = await raw_connection(a.address)
        await read_until_closed(reader)
        await close_raw(writer)
        assert any("no handshake within 200 ms" in r.getMessage() for r in caplog.records)
        await close(a)

    run(scenario)


def test_a_connection_closed_without_a_byte_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        a = Node(A)
        await started(a)
        _, writer = await raw_connection(a.address)
        await close_raw(writer)
        await wait_until(lambda: a.transport.counters.incoming_accepted == 1, "the probe")
        await close(a)
        assert a.transport.counters.incoming_errors == 0

    run(scenario)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_newer_connection_from_a_peer_replaces_the_older() -> None:
    async def scenario() -> None:
        a = Node(A)
        await started(a)
        handshake = encode_handshake(PeerHandshake(sender=C))
        old_reader, old_writer = await raw_connection(
            a.address, handshake + encode_message(read_request(C, A, 1))
        )
        await wait_until(lambda: a.request_ids() == [1], "the first connection's message")
        _, new_writer = await raw_connection(
            a.address, handshake + encode_message(read_request(C, A, 2))
        )
        await read_until_closed(old_reader)
        await wait_until(lambda: a.request_ids() == [1, 2], "the second connection's message")
        await close(a)
        for writer in (old_writer, new_writer):
            await close_raw(writer)

    run(scenario)


def test_messages_for_another_node_are_dropped_and_counted() -> None:
    async def scenario() -> None:
        a = Node(A)
        await started(a)
        frames = [
            encode_handshake(PeerHandshake(sender=C)),
            encode_message(read_request(C, NodeId("z"), 1)),
            encode_message(read_request(C, A, 2)),
        ]
        _, writer = await raw_connection(a.address, b"".join(frames))
        await wait_until(lambda: a.request_ids() == [2], "the message for a")
        assert a.transport.counters.misdirected == 1
        await close(a)
        await close_raw(writer)

    run(scenario)


def test_errors_of_on_message_are_logged_and_delivery_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskraft.peer")
    delivered: list[Message] = []

    def fussy(message: Message) -> None:
        delivered.append(message)
        if len(delivered) == 1:
            raise RuntimeError("the first one is refused")

    async def scenario() -> None:
        a, b = Node(A, on_message=fussy), Node(B)
        await started(a, b)
        b.transport.set_peers({A: a.address})
        b.transport.send(read_request(B, A, 1))
        b.transport.send(read_request(B, A, 2))
        await wait_until(lambda: len(delivered) == 2, "both messages")
        await close(a, b)

    run(scenario)
    assert any("on_message failed" in r.getMessage() for r in caplog.records)


# -- membership and misuse ----------------------------------------------------------------------


def test_set_peers_adds_moves_and_removes_peers() -> None:
    async def scenario() -> None:
        a, b, moved = Node(A), Node(B), Node(B)
        await started(a, b, moved)
        a.transport.send(read_request(A, B, 1))
        assert a.transport.counters.unroutable == 1

        a.transport.set_peers({A: a.address, B: b.address})
        assert set(a.transport.peer_statuses()) == {B}
        a.transport.send(read_request(A, B, 2))
        await wait_until(lambda: b.request_ids() == [2], "the added peer")

        a.transport.set_peers({B: moved.address})
        a.transport.send(read_request(A, B, 3))
        await wait_until(lambda: moved.request_ids() == [3], "the peer at its new address")

        a.transport.set_peers({})
        a.transport.send(read_request(A, B, 4))
        assert a.transport.counters.unroutable == 2
        assert a.transport.peer_statuses() == {}
        await close(a, b, moved)
        assert b.request_ids() == [2]

    run(scenario)


def test_send_refuses_another_nodes_message_and_drops_after_close() -> None:
    async def scenario() -> None:
        a = Node(A, {B: (LOCALHOST, free_port())})
        with pytest.raises(LocalPeerError):
            a.transport.send(read_request(B, A, 1))
        await close(a)
        a.transport.send(read_request(A, B, 1))
        assert a.transport.counters.dropped == 1
        await a.transport.close()

    run(scenario)


def test_bad_identities_and_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        PeerTransport(NodeId(""), LOCALHOST, 0, {}, print)
    with pytest.raises(ValueError):
        PeerTransport(A, LOCALHOST, 0, {NodeId("x" * 256): (LOCALHOST, 1)}, print)
    for address in (("", 1), (LOCALHOST, 0), (LOCALHOST, 65536)):
        with pytest.raises(ValueError, match="invalid address"):
            PeerTransport(A, LOCALHOST, 0, {B: address}, print)
    with pytest.raises(ValueError):
        TransportLimits(send_queue_frames_max=0)
    with pytest.raises(ValueError):
        TransportLimits(reconnect_delay_min_ms=3000)


# -- shutdown ---------------------------------------------------------------------------------


def test_close_leaves_no_task_behind() -> None:
    async def scenario() -> None:
        a, b = await connected_pair()
        a.transport.set_peers({B: b.address, C: (LOCALHOST, free_port())})
        for request_id in range(50):
            a.transport.send(read_request(A, B, request_id))
            b.transport.send(read_request(B, A, request_id))
        # A link backing off from a peer that is down, and a stranger that says nothing.
        a.transport.send(read_request(A, C, 0))
        silent_reader, silent_writer = await raw_connection(a.address)
        await wait_until(lambda: len(b.received) == 50 and len(a.received) == 50, "traffic")
        await wait_until(lambda: a.transport.counters.connection_attempts >= 2, "an attempt to c")
        assert len(asyncio.all_tasks()) > 1
        await close(a, b)
        await read_until_closed(silent_reader)
        await close_raw(silent_writer)
        # run() fails the test if any task other than this one is still pending.

    run(scenario)


def test_a_node_without_the_senders_address_answers_at_the_address_its_handshake_gave() -> None:
    async def scenario() -> None:
        joined = Node(B)
        await started(joined)
        leader_port = free_port()
        received: list[Message] = []
        leader = PeerTransport(
            A,
            LOCALHOST,
            leader_port,
            {B: joined.address},
            received.append,
            advertised_peer_address=f"{LOCALHOST}:{leader_port}",
            client_address="leader.example:7100",
            http_address="leader.example:7102",
            random_source=random.Random(0),
        )
        await leader.start()
        try:
            leader.send(read_request(A, B, 1))
            await wait_until(lambda: joined.request_ids() == [1], "the joined node to receive")
            handshake = joined.transport.handshake_of(A)
            assert handshake is not None
            assert handshake.client_address == "leader.example:7100"
            assert handshake.http_address == "leader.example:7102"
            # The joined node has no address for A but in A's handshake.
            joined.transport.send(read_request(B, A, 2))
            await wait_until(lambda: len(received) == 1, "the leader to receive the answer")
        finally:
            await leader.close()
            await close(joined)

    run(scenario)
