"""The Raft driver of a node: three replicas on real storage, wired through an in-loop router.

The router delivers every message on a later turn of the event loop, so the replicas interleave
as they would over a network; the peer transport over TCP has its own tests. Every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from served_cluster import Router

from taskraft.errors import NotLeader
from taskraft.queue import Ack, Dequeue, Enqueue, QueueStateMachine
from taskraft.raft import (
    Configuration,
    NodeId,
    RaftNode,
    RaftOptions,
    Role,
    bootstrap_state,
)
from taskraft.server import Replica, ReplicaSettings
from taskraft.storage import FileStorage, StorageWriter

DEADLINE_SECONDS = 20.0
NODES = [NodeId("n1"), NodeId("n2"), NodeId("n3")]
SETTINGS = ReplicaSettings(tick_interval_ms=10, snapshot_interval_entries=50)
OPTIONS = RaftOptions(election_timeout_ticks=10)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(DEADLINE_SECONDS):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.router = Router()
        self.tasks: dict[NodeId, asyncio.Task[None]] = {}
        self.storages: dict[NodeId, FileStorage] = {}

    async def start(self, node_id: NodeId, *, first_time: bool) -> Replica:
        storage = FileStorage.open(self.directory / node_id)
        if first_time:
            bootstrap = bootstrap_state(Configuration(voters=frozenset(NODES)))
            storage.persist(snapshot=bootstrap.snapshot, entries=(), hard_state=None)
        persisted = storage.load()
        state_machine = (
            QueueStateMachine.restore([persisted.snapshot.data])
            if persisted.snapshot is not None and persisted.snapshot.data
            else QueueStateMachine()
        )
        raft = RaftNode(
            node_id=node_id,
            persisted=persisted,
            options=OPTIONS,
            random_source=random.Random(hash(node_id)),
        )
        replica = Replica(
            raft=raft,
            storage=StorageWriter(storage),
            state_machine=state_machine,
            peers=self.router,
            settings=SETTINGS,
        )
        self.router.replicas[node_id] = replica
        self.tasks[node_id] = asyncio.create_task(replica.run())
        return replica

    async def stop(self, node_id: NodeId) -> None:
        replica = self.router.replicas.pop(node_id)
        replica.stop()
        await self.tasks.pop(node_id)
        await replica.storage.close()

    async def stop_all(self) -> None:
        for node_id in list(self.router.replicas):
            await self.stop(node_id)

    def leader(self) -> Replica | None:
        leaders = [r for r in self.router.replicas.values() if r.raft.role is Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None


def run(test: Callable[[Cluster], Awaitable[None]], directory: Path) -> None:
    async def scenario() -> None:
        cluster = Cluster(directory)
        try:
            await test(cluster)
        finally:
            await cluster.stop_all()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"tasks left behind: {leftover}"

    asyncio.run(scenario())


def test_a_cluster_elects_commits_and_serves_in_priority_order(tmp_path: Path) -> None:
    async def test(cluster: Cluster) -> None:
        for node_id in NODES:
            await cluster.start(node_id, first_time=True)
        await wait_for(lambda: cluster.leader() is not None, "a leader")
        leader = cluster.leader()
        assert leader is not None
        for priority in (5, 1, 3):
            await leader.submit(Enqueue("default", priority, f"task {priority}".encode()))
        delivered = [await leader.submit(Dequeue("default", lease_ms=60_000)) for _ in range(3)]
        assert [task.priority for task in delivered if task] == [1, 3, 5]
        for task in delivered:
            assert task is not None
            await leader.submit(Ack(task.task_id, task.lease_token))
        follower = next(r for r in cluster.router.replicas.values() if r is not leader)
        with pytest.raises(NotLeader):
            await follower.submit(Enqueue("default", 0, b"x"))
        await follower.linearizable_barrier()
        assert follower.state_machine.count("default") == leader.state_machine.count("default")

    run(test, tmp_path)


def test_acknowledged_tasks_survive_a_restart_of_every_node(tmp_path: Path) -> None:
    async def test(cluster: Cluster) -> None:
        for node_id in NODES:
            await cluster.start(node_id, first_time=True)
        await wait_for(lambda: cluster.leader() is not None, "a leader")
        leader = cluster.leader()
        assert leader is not None
        # More than the snapshot interval, so the restart goes through a snapshot too.
        results = await asyncio.gather(
            *(leader.submit(Enqueue("default", i % 7, b"payload")) for i in range(120))
        )
        assert len({result.task_id for result in results}) == 120  # type: ignore[union-attr]
        await wait_for(
            lambda: leader.raft.log.snapshot.metadata.index > 0, "a background snapshot"
        )
        await cluster.stop_all()
        for node_id in NODES:
            await cluster.start(node_id, first_time=False)
        await wait_for(lambda: cluster.leader() is not None, "a leader after the restart")
        leader = cluster.leader()
        assert leader is not None
        await leader.linearizable_barrier()
        assert leader.state_machine.count("default").ready == 120

    run(test, tmp_path)
