"""Dequeues that wait for a task: woken by the replica's progress, not by polling.

A waiting dequeue must be answered as soon as the entry that makes a task ready is applied, one
task must wake one waiter (not all of them), a waiter with no task answers nil exactly at its
deadline, and waiters answer at once when the node stops leading, stops, or is restarted. The
cluster is the in-loop one of served_cluster.py; every wait has a deadline, no sleep orders events.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from served_cluster import OPTIONS, SETTINGS, ServedCluster, run, wait_for
from test_client_listener import Client

from taskraft.errors import NotLeader, Overloaded, TaskraftError, Unavailable
from taskraft.protocol import (
    CreateQueue,
    DeleteQueue,
    DeliveredTask,
    Dequeue,
    Enqueue,
    Enqueued,
    Response,
)
from taskraft.queue import QueueStateMachine
from taskraft.raft import Message, NodeId, RaftNode
from taskraft.server import Replica
from taskraft.storage import FileStorage, StorageWriter

# Far more than an in-loop commit takes (a few ms), far less than the waits of these tests.
PROMPT_SECONDS = 0.5


def now() -> float:
    return asyncio.get_running_loop().time()


async def timed_answers(client: Client, count: int) -> dict[int, tuple[float, Response]]:
    """The next `count` responses on `client`, by request id, with the loop time each arrived."""
    answers: dict[int, tuple[float, Response]] = {}
    while len(answers) < count:
        event = await client.next_event()
        assert isinstance(event, Response), event
        answers[event.request_id] = (now(), event)
    return answers


async def restart(cluster: ServedCluster, node_id: NodeId) -> None:
    """Stop the replica of `node_id` and put a new one on the same storage in its place."""
    old = cluster.router.replicas[node_id]
    old.stop()
    await cluster.tasks.pop(node_id)
    await old.storage.close()
    storage = FileStorage.open(cluster.directory / node_id)
    persisted = storage.load()
    state_machine = (
        QueueStateMachine.restore([persisted.snapshot.data])
        if persisted.snapshot is not None and persisted.snapshot.data
        else QueueStateMachine()
    )
    replica = Replica(
        raft=RaftNode(
            node_id=node_id,
            persisted=persisted,
            options=OPTIONS,
            random_source=random.Random(f"{node_id} restarted"),
        ),
        storage=StorageWriter(storage),
        state_machine=state_machine,
        peers=cluster.router,
        settings=SETTINGS,
    )
    cluster.router.replicas[node_id] = replica
    cluster.tasks[node_id] = asyncio.create_task(replica.run())


class Unreachable:
    """A peer sender that loses every message: the replica behind it is cut off."""

    def send(self, message: Message) -> None:
        pass


def test_a_waiting_dequeue_is_answered_promptly_after_the_enqueue(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        worker = await Client.connect(listener)
        producer = await Client.connect(listener)
        for delay_ms in (0, 300):
            waiting = worker.connection.send_request(Dequeue(queue="default", wait_ms=5_000))
            await worker.flush()
            await wait_for(lambda: listener.long_polls_waiting == 1, "a waiting dequeue")
            enqueued_at = now()
            await producer.call(
                Enqueue(queue="default", payload=b"soon", priority=0, delay_ms=delay_ms)
            )
            response = await worker.response(waiting)
            latency = now() - enqueued_at - delay_ms / 1000
            assert isinstance(response.result, DeliveredTask), response
            assert response.result.payload == b"soon"
            assert -0.01 < latency < PROMPT_SECONDS, f"answered {latency:.3f} s after the task"
            await wait_for(lambda: listener.long_polls_waiting == 0, "the end of the wait")
        await worker.close()
        await producer.close()

    run(test, tmp_path)


def test_ten_tasks_wake_ten_of_fifty_waiters_and_the_rest_get_nil_at_their_deadline(
    tmp_path: Path,
) -> None:
    waiters_per_connection = 10
    connection_count = 5
    wait_ms = 1_000

    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        leader = cluster.router.replicas[NodeId(listener.node_id)]
        workers = [await Client.connect(listener) for _ in range(connection_count)]
        producer = await Client.connect(listener)
        sent_at: dict[tuple[int, int], float] = {}
        for number, worker in enumerate(workers):
            for _ in range(waiters_per_connection):
                request = worker.connection.send_request(Dequeue(queue="default", wait_ms=wait_ms))
                sent_at[number, request] = now()
            await worker.flush()
        waiters = connection_count * waiters_per_connection
        await wait_for(lambda: listener.long_polls_waiting == waiters, "fifty waiting dequeues")
        last_index_before = leader.raft.log.last_index()
        enqueues = [
            producer.connection.send_request(
                Enqueue(queue="default", payload=f"task {i}".encode(), priority=i)
            )
            for i in range(10)
        ]
        await producer.flush()
        enqueued_ids = set()
        for request in enqueues:
            result = (await producer.response(request)).result
            assert isinstance(result, Enqueued)
            enqueued_ids.add(result.task_id)
        answers = await asyncio.gather(
            *(timed_answers(worker, waiters_per_connection) for worker in workers)
        )
        delivered: list[DeliveredTask] = []
        for number, answers_of_worker in enumerate(answers):
            for request, (arrived_at, response) in answers_of_worker.items():
                assert response.error is None, response
                waited = arrived_at - sent_at[number, request]
                if response.result is None:
                    assert wait_ms / 1000 - 0.01 <= waited < wait_ms / 1000 + PROMPT_SECONDS
                else:
                    assert isinstance(response.result, DeliveredTask)
                    assert waited < wait_ms / 1000, "a task came after the deadline"
                    delivered.append(response.result)
        assert sorted(task.task_id for task in delivered) == sorted(enqueued_ids)
        # Ten enqueues and exactly ten dequeues reached the log: one task woke one waiter.
        assert leader.raft.log.last_index() == last_index_before + 20
        assert listener.long_polls_waiting == 0
        for client in (*workers, producer):
            await client.close()

    run(test, tmp_path)


def test_a_waiter_whose_task_another_consumer_takes_keeps_waiting_for_the_next(
    tmp_path: Path,
) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        worker = await Client.connect(listener)
        rival = await Client.connect(listener)
        waiting = worker.connection.send_request(Dequeue(queue="default", wait_ms=5_000))
        await worker.flush()
        await wait_for(lambda: listener.long_polls_waiting == 1, "a waiting dequeue")
        # The rival's dequeue goes into the same proposal batch as the enqueue, so by the time
        # the batch is applied its task is claimed: the waiter is not answered empty and keeps
        # waiting.
        rival.connection.send_request(Enqueue(queue="default", payload=b"first", priority=0))
        taken = rival.connection.send_request(Dequeue(queue="default"))
        await rival.flush()
        rival_task = (await rival.response(taken)).result
        assert isinstance(rival_task, DeliveredTask) and rival_task.payload == b"first"
        assert listener.long_polls_waiting == 1
        await rival.call(Enqueue(queue="default", payload=b"second", priority=0))
        response = await worker.response(waiting)
        assert isinstance(response.result, DeliveredTask), response
        assert response.result.payload == b"second"
        await worker.close()
        await rival.close()

    run(test, tmp_path)


def test_waiters_answer_unavailable_at_once_when_the_leader_stops(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        worker = await Client.connect(listener)
        requests = [
            worker.connection.send_request(Dequeue(queue="default", wait_ms=5_000))
            for _ in range(5)
        ]
        await worker.flush()
        await wait_for(lambda: listener.long_polls_waiting == 5, "waiting dequeues")
        stopped_at = now()
        cluster.router.replicas[NodeId(listener.node_id)].stop()
        for request in requests:
            response = await worker.response(request)
            assert isinstance(response.error, Unavailable), response
        assert now() - stopped_at < PROMPT_SECONDS
        assert listener.long_polls_waiting == 0
        await worker.close()

    run(test, tmp_path)


def test_waiters_answer_not_leader_at_once_when_the_leader_steps_down(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        leader = cluster.router.replicas[NodeId(listener.node_id)]
        worker = await Client.connect(listener)
        requests = [
            worker.connection.send_request(Dequeue(queue="default", wait_ms=5_000))
            for _ in range(5)
        ]
        await worker.flush()
        await wait_for(lambda: listener.long_polls_waiting == 5, "waiting dequeues")
        # Cut the leader off both ways: it steps down once it misses its quorum (check_quorum,
        # one election timeout: 100-200 ms here), and that Ready batch wakes the waiters.
        peers = leader.peers
        leader.peers = Unreachable()
        leader.receive = lambda message: None  # type: ignore[method-assign]
        cut_at = now()
        for request in requests:
            response = await worker.response(request)
            assert isinstance(response.error, NotLeader), response
        assert now() - cut_at < 2.0, "the waiters waited for their deadline, not the step-down"
        del leader.receive
        leader.peers = peers
        await wait_for(lambda: cluster.leader_id() is not None, "a leader after healing")
        await worker.close()

    run(test, tmp_path)


def test_a_restarted_replica_still_wakes_its_listeners_waiters(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        restarted: set[NodeId] = set()
        # Restart whichever node leads, with a dequeue waiting on it, until a restarted one
        # leads: at most three rounds.
        while (leader_id := cluster.leader_id()) not in restarted:
            assert leader_id is not None
            listener = cluster.listeners[leader_id]
            worker = await Client.connect(listener)
            waiting = worker.connection.send_request(Dequeue(queue="default", wait_ms=5_000))
            await worker.flush()
            await wait_for(
                lambda listener=listener: listener.long_polls_waiting == 1, "a waiting dequeue"
            )
            await restart(cluster, leader_id)
            restarted.add(leader_id)
            response = await worker.response(waiting)
            assert isinstance(response.error, Unavailable), response
            await worker.close()
            await wait_for(lambda: cluster.leader_id() is not None, "a leader after a restart")
        listener = cluster.leader_listener()
        worker = await Client.connect(listener)
        producer = await Client.connect(listener)
        waiting = worker.connection.send_request(Dequeue(queue="default", wait_ms=5_000))
        await worker.flush()
        await wait_for(lambda: listener.long_polls_waiting == 1, "a waiting dequeue")
        enqueued_at = now()
        await producer.call(Enqueue(queue="default", payload=b"after restart", priority=0))
        response = await worker.response(waiting)
        assert isinstance(response.result, DeliveredTask), response
        assert response.result.payload == b"after restart"
        assert now() - enqueued_at < PROMPT_SECONDS
        await worker.close()
        await producer.close()

    run(test, tmp_path)


def test_dequeues_waiting_beyond_the_bound_are_told_overloaded(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        worker = await Client.connect(listener)
        waiting = [
            worker.connection.send_request(Dequeue(queue="default", wait_ms=5_000))
            for _ in range(2)
        ]
        await worker.flush()
        await wait_for(lambda: listener.long_polls_waiting == 2, "two waiting dequeues")
        with pytest.raises(Overloaded):
            await worker.call(Dequeue(queue="default", wait_ms=5_000))
        assert listener.long_polls_refused == 1
        # A dequeue that does not wait is still served.
        assert await worker.call(Dequeue(queue="default")) is None
        await worker.call(Enqueue(queue="default", payload=b"one", priority=0))
        answered = await worker.response(waiting[0])
        assert isinstance(answered.result, DeliveredTask), answered
        await wait_for(lambda: listener.long_polls_waiting == 1, "a slot freed")
        third = worker.connection.send_request(Dequeue(queue="default", wait_ms=5_000))
        await worker.flush()
        await wait_for(lambda: listener.long_polls_waiting == 2, "the third waiting")
        await worker.call(Enqueue(queue="default", payload=b"two", priority=0))
        await worker.call(Enqueue(queue="default", payload=b"three", priority=0))
        payloads = set()
        for request in (waiting[1], third):
            response = await worker.response(request)
            assert isinstance(response.result, DeliveredTask), response
            payloads.add(response.result.payload)
        assert payloads == {b"two", b"three"}
        await worker.close()

    run(test, tmp_path, long_polls_max=2)


def test_a_deleted_queue_answers_its_waiters(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        worker = await Client.connect(listener)
        admin = await Client.connect(listener)
        await admin.call(CreateQueue(queue="short-lived"))
        waiting = worker.connection.send_request(Dequeue(queue="short-lived", wait_ms=5_000))
        await worker.flush()
        await wait_for(lambda: listener.long_polls_waiting == 1, "a waiting dequeue")
        deleted_at = now()
        await admin.call(DeleteQueue(queue="short-lived"))
        response = await worker.response(waiting)
        assert isinstance(response.error, TaskraftError), response
        assert response.error.name == "queue_not_found"
        assert now() - deleted_at < PROMPT_SECONDS
        await worker.close()
        await admin.close()

    run(test, tmp_path)
