"""The client port over real TCP on 127.0.0.1, in front of three replicas in one event loop.

The replicas talk through an in-loop router (as in test_replica.py); each has a client listener
on a port the system picked. The clients are a few lines around `ClientConnection` over asyncio
streams. Every wait is on an event or a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import pytest
from served_cluster import DEADLINE_SECONDS, ServedCluster, run, wait_for

from taskraft.errors import NotLeader, Overloaded, TaskraftError
from taskraft.protocol import (
    Ack,
    ClientConnection,
    ClientEvent,
    ConnectionClosed,
    Count,
    CreateQueue,
    DeliveredTask,
    Dequeue,
    Enqueue,
    Enqueued,
    HandshakeAccepted,
    ListQueues,
    NodeStatus,
    Operation,
    ProtocolFailure,
    QueueCounts,
    QueueDescription,
    QueuePage,
    Response,
    Status,
)
from taskraft.server.client_listener import ClientListener


class Client:
    """A raw protocol client: ClientConnection over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.connection = ClientConnection(client_name="test")
        self.responses: dict[int, Response] = {}

    @classmethod
    async def connect(cls, listener: ClientListener, *, handshake: bool = True) -> Client:
        reader, writer = await asyncio.open_connection(*listener.address)
        client = cls(reader, writer)
        if handshake:
            await client.flush()
            accepted = await client.next_event()
            assert isinstance(accepted, HandshakeAccepted), accepted
            assert accepted.node == listener.node_id
        return client

    async def flush(self) -> None:
        self.writer.write(self.connection.data_to_send())
        await self.writer.drain()

    async def next_event(self) -> ClientEvent:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while (event := self.connection.next_event()) is None:
                self.connection.receive_data(await self.reader.read(65536))
        return event

    async def response(self, request_id: int) -> Response:
        while request_id not in self.responses:
            event = await self.next_event()
            assert isinstance(event, Response), event
            self.responses[event.request_id] = event
        return self.responses.pop(request_id)

    async def call(self, operation: Operation) -> object:
        request_id = self.connection.send_request(operation)
        await self.flush()
        response = await self.response(request_id)
        if response.error is not None:
            raise response.error
        return response.result

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = bytearray()
    async with asyncio.timeout(DEADLINE_SECONDS):
        while data := await reader.read(65536):
            received += data
    return bytes(received)


def test_enqueue_dequeue_in_priority_order_ack_and_count(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        client = await Client.connect(cluster.leader_listener())
        description = await client.call(CreateQueue(queue="jobs"))
        assert isinstance(description, QueueDescription)
        assert description.name == "jobs"
        assert description.policies.kind == "heap"
        for priority in (5, 1, 3):
            enqueued = await client.call(
                Enqueue(queue="jobs", payload=f"task {priority}".encode(), priority=priority)
            )
            assert isinstance(enqueued, Enqueued) and not enqueued.duplicate
        delivered = [await client.call(Dequeue(queue="jobs")) for _ in range(3)]
        tasks = [task for task in delivered if isinstance(task, DeliveredTask)]
        assert [task.priority for task in tasks] == [1, 3, 5]
        assert [task.payload for task in tasks] == [b"task 1", b"task 3", b"task 5"]
        assert all(task.lease_ms == 30_000 and task.deliveries == 1 for task in tasks)
        assert await client.call(Count(queue="jobs")) == QueueCounts(ready=0, delayed=0, leased=3)
        for task in tasks:
            assert task.task is not None
            assert await client.call(Ack(task=task.task)) is None
        assert await client.call(Count(queue="jobs")) == QueueCounts(ready=0, delayed=0, leased=0)
        assert await client.call(Dequeue(queue="jobs")) is None
        page = await client.call(ListQueues(limit=1))
        assert isinstance(page, QueuePage)
        assert [queue.name for queue in page.queues] == ["default"] and page.more
        page = await client.call(ListQueues(after="default"))
        assert isinstance(page, QueuePage)
        assert [queue.name for queue in page.queues] == ["jobs"] and not page.more
        with pytest.raises(TaskraftError) as raised:
            await client.call(Count(queue="missing"))
        assert raised.value.name == "queue_not_found"
        await client.close()

    run(test, tmp_path)


def test_a_waiting_dequeue_gets_a_task_enqueued_later_or_nil_at_its_deadline(
    tmp_path: Path,
) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        worker = await Client.connect(listener)
        producer = await Client.connect(listener)
        assert await worker.call(Dequeue(queue="default", wait_ms=50)) is None
        waiting = worker.connection.send_request(Dequeue(queue="default", wait_ms=5_000))
        await worker.flush()
        await wait_for(lambda: listener.long_polls_waiting == 1, "waiting dequeue")
        await producer.call(Enqueue(queue="default", payload=b"late", priority=0))
        response = await worker.response(waiting)
        assert isinstance(response.result, DeliveredTask)
        assert response.result.payload == b"late"
        await wait_for(lambda: listener.long_polls_waiting == 0, "end of the wait")
        await worker.close()
        await producer.close()

    run(test, tmp_path)


def test_a_follower_answers_not_leader_with_the_leaders_id_and_address(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        follower = cluster.follower_listener()
        client = await Client.connect(follower)
        status = await client.call(Status())
        assert isinstance(status, NodeStatus)
        leader_id = cluster.leader_id()
        assert status.node == follower.node_id
        assert status.role == "follower"
        assert status.leader_id == leader_id
        assert status.leader_address == cluster.address_of(leader_id)
        for operation in (
            Enqueue(queue="default", payload=b"x", priority=0),
            Count(queue="default"),
        ):
            with pytest.raises(NotLeader) as raised:
                await client.call(operation)
            assert raised.value.leader_id == leader_id
            host, port = cluster.leader_listener().address
            assert raised.value.leader_address == f"{host}:{port}"
        await client.close()

    run(test, tmp_path)


def test_pipelined_requests_on_one_connection_are_all_answered(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        client = await Client.connect(cluster.leader_listener(), handshake=False)
        # Handshake and requests in one write, without waiting for any answer.
        enqueues = [
            client.connection.send_request(Enqueue(queue="default", payload=b"p", priority=i % 4))
            for i in range(50)
        ]
        status = client.connection.send_request(Status())
        await client.flush()
        assert isinstance(await client.next_event(), HandshakeAccepted)
        task_ids = set()
        for request_id in enqueues:
            response = await client.response(request_id)
            assert isinstance(response.result, Enqueued), response
            task_ids.add(response.result.task_id)
        assert len(task_ids) == 50
        assert isinstance((await client.response(status)).result, NodeStatus)
        assert await client.call(Count(queue="default")) == QueueCounts(
            ready=50, delayed=0, leased=0
        )
        await client.close()

    run(test, tmp_path)


def test_garbage_closes_that_connection_while_another_client_keeps_working(
    tmp_path: Path,
) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        good = await Client.connect(listener)
        reader, writer = await asyncio.open_connection(*listener.address)
        writer.write(random.Random(7).randbytes(64) + b"\x00\x00\x00\x03\xc1\xc1\xc1")
        await writer.drain()
        received = await read_until_closed(reader)
        # The server said why before closing: an error frame the client library can read.
        probe = ClientConnection()
        probe.receive_data(received)
        assert isinstance(probe.next_event(), ProtocolFailure)
        writer.close()
        assert await good.call(Enqueue(queue="default", payload=b"ok", priority=1))
        assert await good.call(Count(queue="default")) == QueueCounts(ready=1, delayed=0, leased=0)
        await wait_for(lambda: listener.connection_count == 1, "the bad connection gone")
        await good.close()

    run(test, tmp_path)


def test_a_client_that_never_sends_is_closed_after_the_handshake_deadline(
    tmp_path: Path,
) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        reader, writer = await asyncio.open_connection(*listener.address)
        received = await read_until_closed(reader)
        probe = ClientConnection()
        probe.receive_data(received)
        event = probe.next_event()
        assert isinstance(event, ProtocolFailure) and event.reported_by_peer
        assert "handshake" in event.error.message
        assert listener.handshake_timeouts == 1
        writer.close()
        # A client that does handshake stays.
        client = await Client.connect(listener)
        assert isinstance(await client.call(Status()), NodeStatus)
        await client.close()

    run(test, tmp_path, handshake_timeout_s=0.2)


def test_connections_beyond_the_bound_are_told_overloaded(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        first = await Client.connect(listener)
        second = await Client.connect(listener, handshake=False)
        await second.flush()
        event = await second.next_event()
        assert isinstance(event, ProtocolFailure) and isinstance(event.error, Overloaded)
        assert isinstance(await first.call(Status()), NodeStatus)
        await first.close()
        await second.close()
        await wait_for(lambda: listener.connection_count == 0, "connections gone")
        third = await Client.connect(listener)
        assert isinstance(await third.call(Status()), NodeStatus)
        await third.close()

    run(test, tmp_path, connections_max=1)


def test_close_ends_connections_and_requests_in_flight_and_leaves_no_task(
    tmp_path: Path,
) -> None:
    async def test(cluster: ServedCluster) -> None:
        before = asyncio.all_tasks()
        listener = cluster.leader_listener()
        address = listener.address
        idle = await Client.connect(listener)
        worker = await Client.connect(listener)
        worker.connection.send_request(Dequeue(queue="default", wait_ms=60_000))
        await worker.flush()
        await wait_for(lambda: listener.long_polls_waiting == 1, "waiting dequeue")
        assert asyncio.all_tasks() - before, "the waiting dequeue runs in a task"
        await listener.close()
        assert asyncio.all_tasks() <= before
        assert listener.connection_count == 0
        for client in (idle, worker):
            event = await client.next_event()
            assert isinstance(event, ProtocolFailure | ConnectionClosed), event
            await client.close()
        with pytest.raises(OSError):
            await asyncio.open_connection(*address)

    run(test, tmp_path)
