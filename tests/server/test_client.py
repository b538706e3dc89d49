"""The Python client against three replicas with client listeners on 127.0.0.1.

The cluster is set up as in test_client_listener.py: replicas talk through an in-loop router,
each has a client listener on a port the system picked. `AsyncClient` runs in the cluster's
loop; the blocking `Client` runs in the test's own thread while the cluster runs in another.
Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from served_cluster import DEADLINE_SECONDS, ServedCluster

from taskraft.client import AsyncClient, Client, QueueCounts, Task
from taskraft.errors import (
    InvalidArgument,
    QueueAlreadyExists,
    QueueNotFound,
    UnknownLease,
)

TEST_SECONDS = 9.0


def run(test: Callable[[ServedCluster], Awaitable[None]], directory: Path) -> None:
    async def scenario() -> None:
        async with asyncio.timeout(TEST_SECONDS):
            cluster = ServedCluster(directory)
            try:
                await cluster.start()
                await test(cluster)
            finally:
                await cluster.stop()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"tasks left behind: {leftover}"

    asyncio.run(scenario())


def closed_port_address() -> str:
    """An address on 127.0.0.1 where nothing listens (a port just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


def fast_client(servers: list[str], **options: Any) -> AsyncClient:
    return AsyncClient(servers, request_timeout_s=DEADLINE_SECONDS, **options)


def test_enqueue_dequeue_in_priority_order_ack_and_count(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with fast_client([cluster.leader_address()]) as client:
            description = await client.create_queue("jobs")
            assert description.name == "jobs" and description.policies.kind == "heap"
            ids = {}
            for priority in (5, 1, 3):
                ids[priority] = await client.enqueue("jobs", f"task {priority}".encode(), priority)
            assert len(set(ids.values())) == 3
            assert await client.count("jobs") == QueueCounts(ready=3, delayed=0, leased=0)
            tasks = [await client.dequeue("jobs") for _ in range(3)]
            assert all(isinstance(task, Task) for task in tasks)
            delivered = [task for task in tasks if task is not None]
            assert [task.priority for task in delivered] == [1, 3, 5]
            assert [task.payload for task in delivered] == [b"task 1", b"task 3", b"task 5"]
            assert [task.id for task in delivered] == [ids[1], ids[3], ids[5]]
            assert all(task.deliveries == 1 and task.lease is not None for task in delivered)
            assert await client.count("jobs") == QueueCounts(ready=0, delayed=0, leased=3)
            first, second, third = delivered
            await client.ack(first)
            await client.extend(second, 60_000)
            await client.nack(third)
            assert await client.count("jobs") == QueueCounts(ready=1, delayed=0, leased=1)
            again = await client.dequeue("jobs", wait_ms=100)
            assert again is not None and again.id == third.id and again.deliveries == 2
            await client.ack(again)
            await client.ack(second)
            assert await client.count("jobs") == QueueCounts(ready=0, delayed=0, leased=0)
            assert await client.dequeue("jobs") is None
            assert [queue.name for queue in await client.list_queues()] == ["default", "jobs"]
            await client.delete_queue("jobs")
            assert [queue.name for queue in await client.list_queues()] == ["default"]

    run(test, tmp_path)


def test_a_client_given_only_a_follower_follows_the_redirect_to_the_leader(
    tmp_path: Path,
) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with fast_client([cluster.follower_address()]) as client:
            task_id = await client.enqueue("default", b"redirected")
            assert client.connected_to == cluster.leader_address()
            task = await client.dequeue("default")
            assert task is not None and task.id == task_id and task.payload == b"redirected"
            await client.ack(task)

    run(test, tmp_path)


def test_unreachable_servers_are_skipped(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        servers = [closed_port_address(), cluster.follower_address()]
        async with fast_client(servers) as client:
            assert await client.count("default") == QueueCounts(ready=0, delayed=0, leased=0)
            assert client.connected_to == cluster.leader_address()

    run(test, tmp_path)


def test_the_same_key_enqueued_twice_returns_the_same_id(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with fast_client([cluster.leader_address()]) as client:
            first = await client.enqueue("default", b"order 17", key="order-17")
            second = await client.enqueue("default", b"order 17", key="order-17")
            assert first == second
            # Without a key, each call is a new task (the generated keys differ).
            third = await client.enqueue("default", b"a")
            fourth = await client.enqueue("default", b"a")
            assert len({first, third, fourth}) == 3
            assert await client.count("default") == QueueCounts(ready=3, delayed=0, leased=0)

    run(test, tmp_path)


def test_server_errors_raise_the_matching_exception(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with fast_client([cluster.leader_address()]) as client:
            with pytest.raises(QueueNotFound):
                await client.count("missing")
            with pytest.raises(QueueNotFound):
                await client.enqueue("missing", b"x")
            with pytest.raises(QueueAlreadyExists):
                await client.create_queue("default")
            with pytest.raises(InvalidArgument):
                await client.dequeue("default", wait_ms=60_001)
            await client.enqueue("default", b"x")
            task = await client.dequeue("default")
            assert task is not None
            await client.ack(task)
            with pytest.raises(UnknownLease):
                await client.ack(task)

    run(test, tmp_path)


def test_a_lost_connection_is_replaced_and_the_request_retried(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with fast_client([cluster.leader_address()]) as client:
            task_id = await client.enqueue("default", b"x", key="k")
            connection = client._connection
            assert connection is not None
            connection.close("cut by the test")
            # The next call notices the closed connection before sending, and reconnects.
            assert await client.enqueue("default", b"x", key="k") == task_id
            assert client._connection is not connection
            assert await client.count("default") == QueueCounts(ready=1, delayed=0, leased=0)

    run(test, tmp_path)


def test_close_leaves_no_tasks_and_refuses_later_calls(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        before = asyncio.all_tasks()
        client = fast_client([cluster.follower_address()])
        await client.enqueue("default", b"x")
        waiting = asyncio.create_task(client.dequeue("default", wait_ms=0, lease_ms=60_000))
        assert await waiting is not None
        await client.close()
        assert asyncio.all_tasks() <= before
        assert client.connected_to is None
        with pytest.raises(RuntimeError):
            await client.count("default")

    run(test, tmp_path)


class ClusterThread:
    """The cluster in its own thread and event loop, for code that blocks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ready = threading.Event()
        self.addresses: dict[str, str] = {}
        self.leader = ""
        self.follower = ""
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="cluster", daemon=True)

    def _main(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            cluster = ServedCluster(self.directory)
            try:
                await cluster.start()
                self.leader = cluster.leader_address()
                self.follower = cluster.follower_address()
                self.ready.set()
                async with asyncio.timeout(TEST_SECONDS):
                    await self._stop.wait()
            finally:
                await cluster.stop()

        try:
            asyncio.run(serve())
        except BaseException as error:
            self.error = error
        finally:
            self.ready.set()

    def __enter__(self) -> ClusterThread:
        self._thread.start()
        assert self.ready.wait(DEADLINE_SECONDS * 2), "the cluster did not start"
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(DEADLINE_SECONDS)
        assert not self._thread.is_alive(), "the cluster did not stop"
        assert self.error is None, self.error


def test_the_sync_client_works_from_plain_synchronous_code(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    with ClusterThread(tmp_path) as cluster:
        with Client(servers=[cluster.follower], request_timeout_s=DEADLINE_SECONDS) as client:
            client.create_queue("jobs", max_size=10)
            for priority in (2, 0, 1):
                client.enqueue("jobs", f"p{priority}".encode(), priority)
            assert client.count("jobs") == QueueCounts(ready=3, delayed=0, leased=0)
            tasks = [client.dequeue("jobs") for _ in range(3)]
            assert [task.payload for task in tasks if task is not None] == [b"p0", b"p1", b"p2"]
            for task in tasks:
                assert task is not None
                client.ack(task)
            assert client.dequeue("jobs", wait_ms=20) is None
            assert client.enqueue("jobs", b"k", key="same") == client.enqueue(
                "jobs", b"k", key="same"
            )
            with pytest.raises(QueueNotFound):
                client.count("missing")
        with pytest.raises(RuntimeError):
            client.count("jobs")
        client.close()  # idempotent
    assert set(threading.enumerate()) <= threads_before
