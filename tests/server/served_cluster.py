"""Three replicas on real storage, each behind a client listener, in one event loop.

Shared by the listener and client tests, with `run`, which runs one test against a started
cluster in a loop of its own, and by the command-line tests, with `served_in_a_thread`, which
serves a cluster from a loop on a background thread while blocking code uses it. The router
delivers every Raft message on a later turn of the loop, so the replicas interleave as over a
network; the TCP peer transport has its own tests. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from taskraft.queue import QueueStateMachine
from taskraft.raft import (
    Configuration,
    Message,
    NodeId,
    RaftNode,
    RaftOptions,
    Role,
    bootstrap_state,
)
from taskraft.server import Replica, ReplicaSettings
from taskraft.server.client_listener import ClientListener
from taskraft.storage import FileStorage, StorageWriter

DEADLINE_SECONDS = 5.0
# A whole test, the cluster's start and stop among it.
TEST_SECONDS = 9.0
# The start or the stop of a cluster served from a background thread.
CLUSTER_SECONDS = DEADLINE_SECONDS * 2
NODES = [NodeId("n1"), NodeId("n2"), NodeId("n3")]
SETTINGS = ReplicaSettings(tick_interval_ms=10)
OPTIONS = RaftOptions(election_timeout_ticks=10)


class Router:
    """Delivers Raft messages between replicas of one event loop."""

    def __init__(self) -> None:
        self.replicas: dict[NodeId, Replica] = {}

    def send(self, message: Message) -> None:
        replica = self.replicas.get(message.recipient)
        if replica is not None:
            asyncio.get_running_loop().call_soon(replica.receive, message)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"no {what} within {DEADLINE_SECONDS} s") from None


class ServedCluster:
    """Three replicas on real storage, each behind a client listener."""

    def __init__(self, directory: Path, **listener_options: Any) -> None:
        self.directory = directory
        self.router = Router()
        self.tasks: dict[NodeId, asyncio.Task[None]] = {}
        self.listeners: dict[NodeId, ClientListener] = {}
        self.addresses: dict[str, str] = {}
        self.listener_options = listener_options

    def address_of(self, node_id: str | None) -> str | None:
        return None if node_id is None else self.addresses.get(node_id)

    async def start(self) -> None:
        for node_id in NODES:
            storage = FileStorage.open(self.directory / node_id)
            bootstrap = bootstrap_state(Configuration(voters=frozenset(NODES)))
            storage.persist(snapshot=bootstrap.snapshot, entries=(), hard_state=None)
            raft = RaftNode(
                node_id=node_id,
                persisted=storage.load(),
                options=OPTIONS,
                random_source=random.Random(hash(node_id)),
            )
            replica = Replica(
                raft=raft,
                storage=StorageWriter(storage),
                state_machine=QueueStateMachine(),
                peers=self.router,
                settings=SETTINGS,
            )
            self.router.replicas[node_id] = replica
            self.tasks[node_id] = asyncio.create_task(replica.run())
            listener = ClientListener(
                lambda node_id=node_id: self.router.replicas[node_id],
                host="127.0.0.1",
                port=0,
                node_id=node_id,
                leader_address_of=self.address_of,
                **self.listener_options,
            )
            await listener.start()
            self.listeners[node_id] = listener
            host, port = listener.address
            self.addresses[node_id] = f"{host}:{port}"
        await wait_for(lambda: self.leader_id() is not None, "leader")

    def leader_id(self) -> NodeId | None:
        leaders = [n for n, r in self.router.replicas.items() if r.raft.role is Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def leader_listener(self) -> ClientListener:
        leader_id = self.leader_id()
        assert leader_id is not None
        return self.listeners[leader_id]

    def follower_listener(self) -> ClientListener:
        leader_id = self.leader_id()
        return next(listener for n, listener in self.listeners.items() if n != leader_id)

    def leader_address(self) -> str:
        leader_id = self.leader_id()
        assert leader_id is not None
        return self.addresses[leader_id]

    def follower_address(self) -> str:
        leader_id = self.leader_id()
        return next(address for n, address in self.addresses.items() if n != leader_id)

    async def stop(self) -> None:
        for listener in self.listeners.values():
            await listener.close()
        for node_id, replica in list(self.router.replicas.items()):
            replica.stop()
            await self.tasks.pop(node_id)
            await replica.storage.close()
        self.router.replicas.clear()


def run(
    test: Callable[[ServedCluster], Awaitable[None]], directory: Path, **listener_options: Any
) -> None:
    """Run `test` against a started cluster in a fresh loop, within TEST_SECONDS; fail if it leaves
    a task behind."""

    async def scenario() -> None:
        async with asyncio.timeout(TEST_SECONDS):
            cluster = ServedCluster(directory, **listener_options)
            try:
                await cluster.start()
                await test(cluster)
            finally:
                await cluster.stop()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"tasks left behind: {leftover}"

    asyncio.run(scenario())


@contextlib.contextmanager
def served_in_a_thread(directory: Path, **listener_options: Any) -> Iterator[ServedCluster]:
    """A started cluster whose loop runs on a background thread; stopped, with its thread, on
    exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="served-cluster", daemon=True)
    thread.start()
    served = ServedCluster(directory, **listener_options)
    try:
        asyncio.run_coroutine_threadsafe(served.start(), loop).result(CLUSTER_SECONDS)
        yield served
    finally:
        asyncio.run_coroutine_threadsafe(served.stop(), loop).result(CLUSTER_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLUSTER_SECONDS)
        assert not thread.is_alive(), "the cluster's loop did not stop"
        loop.close()
