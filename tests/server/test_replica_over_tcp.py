"""Three replicas over the real peer transport on 127.0.0.1, with real storage.

The leader is stopped mid-run (as a crash of its process would, minus the page cache), the two
others elect a new leader and keep committing, and the old leader comes back from its disk and
catches up. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import random
import socket
from dataclasses import dataclass
from pathlib import Path

from taskraft.peer import PeerTransport
from taskraft.queue import Enqueue, QueueStateMachine
from taskraft.raft import Configuration, NodeId, RaftNode, RaftOptions, Role, bootstrap_state
from taskraft.server import Replica, ReplicaSettings
from taskraft.storage import FileStorage, StorageWriter

DEADLINE_SECONDS = 20.0
NODES = [NodeId("n1"), NodeId("n2"), NodeId("n3")]
SETTINGS = ReplicaSettings(tick_interval_ms=20)
OPTIONS = RaftOptions(election_timeout_ticks=10)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


@dataclass
class Node:
    replica: Replica
    transport: PeerTransport
    task: asyncio.Task[None]


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.addresses = dict(
            zip(NODES, (("127.0.0.1", port) for port in free_ports(3)), strict=True)
        )
        self.nodes: dict[NodeId, Node] = {}

    async def start(self, node_id: NodeId) -> None:
        storage = FileStorage.open(self.directory / node_id)
        persisted = storage.load()
        if persisted.snapshot is None:
            bootstrap = bootstrap_state(Configuration(voters=frozenset(NODES)))
            storage.persist(snapshot=bootstrap.snapshot, entries=(), hard_state=None)
            persisted = storage.load()
        raft = RaftNode(
            node_id=node_id, persisted=persisted, options=OPTIONS, random_source=random.Random()
        )
        holder: list[Replica] = []
        host, port = self.addresses[node_id]
        peers = {peer: address for peer, address in self.addresses.items() if peer != node_id}
        transport = PeerTransport(node_id, host, port, peers, lambda m: holder[0].receive(m))
        replica = Replica(
            raft=raft,
            storage=StorageWriter(storage),
            state_machine=QueueStateMachine(),
            peers=transport,
            settings=SETTINGS,
        )
        holder.append(replica)
        await transport.start()
        self.nodes[node_id] = Node(replica, transport, asyncio.create_task(replica.run()))

    async def stop(self, node_id: NodeId) -> None:
        node = self.nodes.pop(node_id)
        node.replica.stop()
        await node.task
        await node.transport.close()
        await node.replica.storage.close()

    def leader(self) -> Replica | None:
        leaders = [n.replica for n in self.nodes.values() if n.replica.raft.role is Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None


async def wait_for_leader(cluster: Cluster) -> Replica:
    async with asyncio.timeout(DEADLINE_SECONDS):
        while (leader := cluster.leader()) is None:
            await asyncio.sleep(0.01)
    return leader


async def enqueue_all(leader: Replica, first: int, count: int) -> set[int]:
    results = await asyncio.gather(
        *(
            leader.submit(Enqueue("default", i % 5, f"task {i}".encode()))
            for i in range(first, first + count)
        )
    )
    return {result.task_id for result in results}  # type: ignore[union-attr]


def test_a_cluster_over_tcp_survives_losing_and_regaining_its_leader(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        try:
            for node_id in NODES:
                await cluster.start(node_id)
            leader = await wait_for_leader(cluster)
            acknowledged = await enqueue_all(leader, 0, 50)
            old_leader = leader.raft.id
            await cluster.stop(old_leader)
            leader = await wait_for_leader(cluster)
            assert leader.raft.id != old_leader
            acknowledged |= await enqueue_all(leader, 50, 50)
            await leader.linearizable_barrier()
            assert leader.state_machine.count("default").ready == len(acknowledged) == 100
            await cluster.start(old_leader)
            returning = cluster.nodes[old_leader].replica
            async with asyncio.timeout(DEADLINE_SECONDS):
                while returning.raft.applied_index < leader.raft.commit_index:
                    await asyncio.sleep(0.01)
            assert returning.state_machine.count("default").ready == 100
        finally:
            for node_id in list(cluster.nodes):
                await cluster.stop(node_id)
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, f"tasks left behind: {leftover}"

    asyncio.run(scenario())
