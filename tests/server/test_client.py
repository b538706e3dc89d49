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
from pathlib import Path
from typing import Any

import pytest
from served_cluster import DEADLINE_SECONDS, TEST_SECONDS, ServedCluster, run, wait_for

from taskraft.client import AsyncClient, Client, QueueCounts, Task
from taskraft.client.async_client import EnqueueItem
from taskraft.errors import (
    InvalidArgument,
    PriorityOutOfRange,
    QueueAlreadyExists,
    QueueFull,
    QueueNotFound,
    UnknownLease,
)
from taskraft.protocol import BATCH_PAYLOAD_BYTES_MAX, BATCH_TASKS_MAX, PAYLOAD_SIZE_MAX_BYTES
from taskraft.queue import Command, CommandResult, EnqueueManyResult
from taskraft.queue import EnqueueMany as EnqueueManyCommand


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


# -- batches ------------------------------------------------------------------------------------


def count_submits(cluster: ServedCluster) -> list[Command]:
    """The commands the leader's replica is given from now on, in order."""
    replica = cluster.router.replicas[cluster.leader_id()]  # type: ignore[index]
    submitted: list[Command] = []
    submit = replica.submit

    async def counting(command: Command) -> CommandResult:
        submitted.append(command)
        return await submit(command)

    replica.submit = counting  # type: ignore[method-assign]
    return submitted


def test_enqueue_many_dequeue_many_and_ack_many(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with fast_client([cluster.follower_address()]) as client:
            await client.create_queue("jobs", priority_range=(0, 9))
            submitted = count_submits(cluster)
            ids = await client.enqueue_many(
                "jobs",
                [
                    b"plain",
                    (b"urgent", 0),
                    EnqueueItem(payload=b"keyed", priority=3, key="order-1"),
                    EnqueueItem(payload=b"later", priority=0, delay_ms=60_000),
                    bytearray(b"mutable"),
                ],
                priority=5,
            )
            assert len(set(ids)) == 5
            # One request, one command, one log entry for the whole batch.
            [command] = submitted
            assert isinstance(command, EnqueueManyCommand)
            assert command.priorities == (5, 0, 3, 0, 5)
            assert command.delays_ms == (0, 0, 0, 60_000, 0)
            assert all(key is not None for key in command.keys)
            assert await client.count("jobs") == QueueCounts(ready=4, delayed=1, leased=0)
            # The same key again answers the first task's id.
            again = await client.enqueue_many(
                "jobs", [EnqueueItem(payload=b"", priority=9, key="order-1")]
            )
            assert again == [ids[2]]

            tasks = await client.dequeue_many("jobs", 10, lease_ms=60_000)
            assert [task.payload for task in tasks] == [b"urgent", b"keyed", b"plain", b"mutable"]
            assert [task.id for task in tasks] == [ids[1], ids[2], ids[0], ids[4]]
            assert all(task.lease_ms == 60_000 and task.deliveries == 1 for task in tasks)
            assert all(task.queue == "jobs" and task.lease is not None for task in tasks)
            assert await client.dequeue_many("jobs", 10) == []

            first, second, *rest = tasks
            await client.ack(first)
            stale = Task(
                id=second.id, priority=0, payload=b"", deliveries=1, lease=second.lease + 1,  # type: ignore[operator]
                queue="jobs", lease_ms=None,
            )  # fmt: skip
            failures = await client.ack_many([first, second, stale, *rest])
            assert [(task, type(error)) for task, error in failures] == [
                (first, UnknownLease),
                (stale, UnknownLease),
            ]
            assert str(first.id) in failures[0][1].message
            assert await client.count("jobs") == QueueCounts(ready=0, delayed=1, leased=0)
            assert await client.ack_many([]) == []
            with pytest.raises(ValueError, match="without a lease"):
                await client.ack_many([Task(1, 0, b"", 1, None, "jobs", None)])

    run(test, tmp_path)


def test_a_retried_enqueue_many_does_not_add_its_tasks_twice(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with fast_client([cluster.leader_address()]) as client:
            replica = cluster.router.replicas[cluster.leader_id()]  # type: ignore[index]
            submit = replica.submit
            applied: list[CommandResult] = []

            async def losing_the_first_answer(command: Command) -> CommandResult:
                result = await submit(command)
                if isinstance(command, EnqueueManyCommand):
                    applied.append(result)
                    if len(applied) == 1:
                        # The batch is applied; its answer is lost with the connection.
                        assert client._connection is not None
                        client._connection.close("cut by the test")
                return result

            replica.submit = losing_the_first_answer  # type: ignore[method-assign]
            ids = await client.enqueue_many("default", [b"a", b"b", (b"c", -1)])
            first, second = applied
            assert isinstance(first, EnqueueManyResult) and not any(first.duplicates)
            # The client sent the same batch again: every task a duplicate of the first ones.
            assert second == EnqueueManyResult(first.task_ids, (True, True, True))
            assert ids == list(first.task_ids)
            assert await client.count("default") == QueueCounts(ready=3, delayed=0, leased=0)
            tasks = await client.dequeue_many("default", 10, lease_ms=0)
            assert [task.payload for task in tasks] == [b"c", b"a", b"b"]

    run(test, tmp_path)


def test_a_waiting_dequeue_many_gets_the_tasks_of_a_later_batch_at_once(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        async with (
            fast_client([cluster.leader_address()]) as worker,
            fast_client([cluster.leader_address()]) as producer,
        ):
            assert await worker.dequeue_many("default", 5, wait_ms=50) == []
            assert listener.long_polls_waiting == 0
            waiting = asyncio.create_task(worker.dequeue_many("default", 5, wait_ms=5_000))
            await wait_for(lambda: listener.long_polls_waiting == 1, "waiting dequeue_many")
            await producer.enqueue_many("default", [f"task {index}".encode() for index in range(8)])
            tasks = await waiting
            assert [task.payload for task in tasks] == [
                f"task {index}".encode() for index in range(5)
            ]
            await wait_for(lambda: listener.long_polls_waiting == 0, "end of the wait")
            assert await worker.count("default") == QueueCounts(ready=3, delayed=0, leased=5)

    run(test, tmp_path)


def test_large_batches_are_split_into_requests_within_the_bounds(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with fast_client([cluster.leader_address()]) as client:
            submitted = count_submits(cluster)
            many = [index.to_bytes(2, "big") for index in range(2 * BATCH_TASKS_MAX + 500)]
            ids = await client.enqueue_many("default", many)
            assert len(ids) == len(many) == len(set(ids))
            assert [len(command.payloads) for command in submitted] == [1000, 1000, 500]  # type: ignore[union-attr]

            tasks = await client.dequeue_many("default", len(many) + 10, lease_ms=60_000)
            assert [task.payload for task in tasks] == many
            assert await client.ack_many(tasks) == []
            assert [type(command).__name__ for command in submitted[3:]] == [
                "DequeueMany", "DequeueMany", "DequeueMany", "AckMany", "AckMany", "AckMany",
            ]  # fmt: skip

            # Payloads: at most 640 KiB a request, and a larger task alone.
            submitted.clear()
            big = b"b" * (BATCH_PAYLOAD_BYTES_MAX // 2)
            huge = b"h" * PAYLOAD_SIZE_MAX_BYTES
            await client.enqueue_many("default", [big, big, b"s", huge, big])
            assert [command.payloads for command in submitted] == [  # type: ignore[union-attr]
                (big, big),
                (b"s",),
                (huge,),
                (big,),
            ]
            # An answer stops at 640 KiB of payloads, but always carries one task.
            answers = [await client.dequeue_many("default", 10) for _ in range(5)]
            assert [[task.payload for task in tasks] for tasks in answers] == [
                [big, big],
                [b"s"],
                [huge],
                [big],
                [],
            ]

    run(test, tmp_path)


def test_batch_errors(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with fast_client([cluster.leader_address()]) as client:
            await client.create_queue("small", max_size=2, priority_range=(0, 1))
            with pytest.raises(QueueNotFound):
                await client.enqueue_many("missing", [b"x"])
            with pytest.raises(QueueFull):
                await client.enqueue_many("small", [b"1", b"2", b"3"])
            with pytest.raises(PriorityOutOfRange, match=r"tasks\[1\]"):
                await client.enqueue_many("small", [b"1", (b"2", 5)])
            assert await client.count("small") == QueueCounts(ready=0, delayed=0, leased=0)
            # Refused before anything is sent, even when the batch takes several requests.
            submitted = count_submits(cluster)
            with pytest.raises(InvalidArgument, match=r"args\.tasks\[0\]\.delay_ms"):
                await client.enqueue_many("small", [b"x"] * 1500 + [b"y"], delay_ms=-1)
            with pytest.raises(PriorityOutOfRange, match=r"args\.tasks\[500\]\.priority"):
                await client.enqueue_many("small", [b"x"] * 1500 + [(b"y", 2**63)])
            with pytest.raises(TypeError, match="not str"):
                await client.enqueue_many("small", ["text"])  # type: ignore[list-item]
            with pytest.raises(InvalidArgument, match=r"args\.max_tasks"):
                await client.dequeue_many("small", 0)
            assert submitted == []
            # A failure after earlier requests says what was enqueued.
            with pytest.raises(QueueFull) as raised:
                await client.enqueue_many("small", [b"a" * (BATCH_PAYLOAD_BYTES_MAX // 2)] * 4)
            assert (
                "the first 2 tasks of this enqueue_many were enqueued" in raised.value.__notes__[0]
            )
            assert await client.count("small") == QueueCounts(ready=2, delayed=0, leased=0)

    run(test, tmp_path)


def test_the_sync_client_has_the_batches_too(tmp_path: Path) -> None:
    with (
        ClusterThread(tmp_path) as cluster,
        Client(servers=[cluster.leader], request_timeout_s=DEADLINE_SECONDS) as client,
    ):
        ids = client.enqueue_many("default", [(b"b", 1), (b"a", 0)])
        tasks = client.dequeue_many("default", 5, wait_ms=20)
        assert [task.id for task in tasks] == [ids[1], ids[0]]
        failures = client.ack_many([tasks[0], tasks[1], tasks[0]])
        assert [(task, type(error)) for task, error in failures] == [(tasks[0], UnknownLease)]
        assert client.dequeue_many("default", 5) == []
        assert client.count("default") == QueueCounts(ready=0, delayed=0, leased=0)
