"""The node assembly: settings, bootstrap, joining a running cluster, restart, and `serve` flags.

Nodes here are the real `Node` class (storage, Raft driver, peer transport over TCP, client and
HTTP ports on 127.0.0.1) run in one event loop, so the test can reach into a replica to change
membership the way the admin API will. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from taskraft.cli import build_parser
from taskraft.cli.serve import settings_from_arguments
from taskraft.client import AsyncClient
from taskraft.errors import InvalidArgument
from taskraft.raft import MembershipChange, MembershipChangeKind, NodeId, RaftOptions, Role
from taskraft.server.configuration import parse_members
from taskraft.server.node import Node, NodeConfigurationError, NodeSettings
from taskraft.server.replica import ReplicaSettings

DEADLINE_SECONDS = 20.0
FOUNDERS = [NodeId("n1"), NodeId("n2"), NodeId("n3")]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"no {what} within {DEADLINE_SECONDS} s") from None


class InProcessCluster:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.peer_ports = dict(zip([*FOUNDERS, NodeId("n4")], free_ports(4), strict=True))
        self.nodes: dict[NodeId, Node] = {}

    def settings(self, node_id: NodeId, *, join: bool = False) -> NodeSettings:
        members = {founder: f"127.0.0.1:{self.peer_ports[founder]}" for founder in FOUNDERS}
        return NodeSettings(
            node_id=node_id,
            data_directory=self.directory / node_id,
            client_address="127.0.0.1:0",
            peer_address=f"127.0.0.1:{self.peer_ports[node_id]}",
            http_address="127.0.0.1:0",
            initial_members=None if join else members,
            join=join,
            raft=RaftOptions(election_timeout_ticks=10),
            replica=ReplicaSettings(tick_interval_ms=20),
        )

    async def start(self, node_id: NodeId, *, join: bool = False) -> Node:
        node = Node(self.settings(node_id, join=join))
        await node.start()
        self.nodes[node_id] = node
        return node

    async def stop(self, node_id: NodeId) -> None:
        await self.nodes.pop(node_id).stop()

    async def stop_all(self) -> None:
        for node_id in list(self.nodes):
            await self.stop(node_id)

    def leader(self) -> Node | None:
        leaders = [
            node
            for node in self.nodes.values()
            if node.replica is not None and node.replica.raft.role is Role.LEADER
        ]
        return leaders[0] if len(leaders) == 1 else None

    async def wait_for_leader(self) -> Node:
        await wait_for(lambda: self.leader() is not None, "leader")
        leader = self.leader()
        assert leader is not None
        return leader


def run(test: Callable[[InProcessCluster], Awaitable[None]], directory: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(directory)
        try:
            await test(cluster)
        finally:
            await cluster.stop_all()

    asyncio.run(scenario())


def applied(node: Node) -> int:
    assert node.replica is not None
    return int(node.replica.raft.applied_index)


def commit(node: Node) -> int:
    assert node.replica is not None
    return int(node.replica.raft.commit_index)


def test_a_joining_node_waits_is_added_catches_up_and_is_promoted(tmp_path: Path) -> None:
    async def scenario(cluster: InProcessCluster) -> None:
        for founder in FOUNDERS:
            await cluster.start(founder)
        leader = await cluster.wait_for_leader()
        servers = [node.advertised_client_address for node in cluster.nodes.values()]
        async with AsyncClient(servers) as client:
            for number in range(20):
                await client.enqueue("default", f"before {number}".encode())
        joiner = await cluster.start(NodeId("n4"), join=True)
        assert joiner.http is not None
        assert joiner.http.not_ready_reason() == "not a member of the cluster (yet)"
        assert leader.replica is not None
        address = f"127.0.0.1:{cluster.peer_ports[NodeId('n4')]}"
        await leader.replica.change_membership(
            MembershipChange(MembershipChangeKind.ADD_LEARNER, NodeId("n4"), address=address)
        )
        await wait_for(lambda: applied(joiner) >= commit(leader), "the learner to catch up")
        assert joiner.replica is not None
        assert joiner.replica.state_machine.count("default").ready == 20
        await leader.replica.change_membership(
            MembershipChange(MembershipChangeKind.PROMOTE_LEARNER, NodeId("n4"))
        )
        await wait_for(
            lambda: joiner.http is not None and joiner.http.not_ready_reason() is None, "n4 ready"
        )
        configuration = joiner.replica.raft.configuration
        assert NodeId("n4") in configuration.voters
        assert configuration.address_of(NodeId("n4")) == address
        # Promoting twice is refused with a clear error, not a crash.
        with pytest.raises(InvalidArgument, match="not a learner"):
            await leader.replica.change_membership(
                MembershipChange(MembershipChangeKind.PROMOTE_LEARNER, NodeId("n4"))
            )
        # The new voter counts: with two founders down, n4 and the third form the majority.
        survivors = {NodeId("n4"), leader.settings.node_id}
        for founder in FOUNDERS:
            if founder not in survivors:
                await cluster.stop(founder)
                break
        servers = [node.advertised_client_address for node in cluster.nodes.values()]
        async with AsyncClient(servers) as client:
            await client.enqueue("default", b"after the change")
            assert (await client.count("default")).ready == 21

    run(scenario, tmp_path)


def test_a_restarted_node_keeps_its_membership_and_ignores_initial_members(
    tmp_path: Path,
) -> None:
    async def scenario(cluster: InProcessCluster) -> None:
        for founder in FOUNDERS:
            await cluster.start(founder)
        await cluster.wait_for_leader()
        servers = [node.advertised_client_address for node in cluster.nodes.values()]
        async with AsyncClient(servers) as client:
            task_id = await client.enqueue("default", b"kept")
        follower = next(
            node_id
            for node_id, node in cluster.nodes.items()
            if node.replica is not None and node.replica.raft.role is not Role.LEADER
        )
        await cluster.stop(follower)
        restarted = await cluster.start(follower)
        assert restarted.replica is not None
        assert restarted.replica.raft.configuration.voters == frozenset(FOUNDERS)
        await wait_for(
            lambda: (
                restarted.replica is not None
                and restarted.replica.state_machine.count("default").ready == 1
            ),
            "the restarted node to hold the task",
        )
        servers = [node.advertised_client_address for node in cluster.nodes.values()]
        async with AsyncClient(servers) as client:
            task = await client.dequeue("default")
            assert task is not None and task.id == task_id

    run(scenario, tmp_path)


def test_the_status_document_names_the_leader_and_its_addresses(tmp_path: Path) -> None:
    async def scenario(cluster: InProcessCluster) -> None:
        for founder in FOUNDERS:
            await cluster.start(founder)
        leader = await cluster.wait_for_leader()
        follower = next(node for node in cluster.nodes.values() if node is not leader)
        assert follower.http is not None

        def knows_leader_address() -> bool:
            assert follower.http is not None
            document = follower.http.status()
            return document["leader"]["client_address"] == leader.advertised_client_address

        await wait_for(knows_leader_address, "the follower to learn the leader's address")
        document = follower.http.status()
        assert document["leader"]["id"] == leader.settings.node_id
        assert document["leader"]["http_address"] == leader.advertised_http_address
        assert document["role"] == "follower"
        assert [member["id"] for member in document["members"]] == FOUNDERS
        assert all(member["voter"] for member in document["members"])

    run(scenario, tmp_path)


# -- settings ----------------------------------------------------------------------------------


def base_settings(tmp_path: Path, **changes: object) -> NodeSettings:
    values: dict[str, object] = {
        "node_id": NodeId("n1"),
        "data_directory": tmp_path,
        "client_address": "127.0.0.1:7100",
        "peer_address": "127.0.0.1:7101",
        "http_address": "127.0.0.1:7102",
        "initial_members": {NodeId("n1"): "127.0.0.1:7101"},
    }
    values.update(changes)
    return NodeSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"join": True}, "not both or none"),
        ({"initial_members": None}, "not both or none"),
        ({"initial_members": {NodeId("n2"): "h:1"}}, "not among the initial members"),
        ({"client_address": "nowhere"}, "not a host:port"),
        ({"advertise_peer_address": "h:0"}, "port from 1"),
        ({"initial_members": {NodeId("n1"): "h:99999"}}, "port from 1"),
    ],
)
def test_contradictory_settings_are_refused_with_a_clear_message(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises((NodeConfigurationError, ValueError), match=message):
        base_settings(tmp_path, **changes)


def test_members_parse_and_refuse_mistakes() -> None:
    assert parse_members("n1=a:1, n2=[::1]:2") == {"n1": "a:1", "n2": "[::1]:2"}
    for bad in ("n1", "=a:1", "n1=a", "n1=a:1,n1=b:2"):
        with pytest.raises(ValueError):
            parse_members(bad)


def test_every_serve_flag_has_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = {
        "TASKRAFT_NODE_ID": "n2",
        "TASKRAFT_DATA_DIR": str(tmp_path),
        "TASKRAFT_CLIENT_ADDRESS": "0.0.0.0:8100",
        "TASKRAFT_PEER_ADDRESS": "0.0.0.0:8101",
        "TASKRAFT_HTTP_ADDRESS": "0.0.0.0:8102",
        "TASKRAFT_INITIAL_MEMBERS": "n1=a:8101,n2=b:8101",
        "TASKRAFT_ADVERTISE_CLIENT_ADDRESS": "b:8100",
        "TASKRAFT_ADVERTISE_PEER_ADDRESS": "b:8101",
        "TASKRAFT_ADVERTISE_HTTP_ADDRESS": "b:8102",
        "TASKRAFT_CLUSTER_ID": "blue",
        "TASKRAFT_TICK_INTERVAL_MS": "50",
        "TASKRAFT_ELECTION_TIMEOUT_TICKS": "12",
        "TASKRAFT_SNAPSHOT_INTERVAL_ENTRIES": "500",
        "TASKRAFT_CONNECTIONS_MAX": "7",
        "TASKRAFT_CLIENT_HANDSHAKE_TIMEOUT_MS": "2500",
        "TASKRAFT_REQUESTS_PER_TOKEN_MAX": "40",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = settings_from_arguments(build_parser().parse_args(["serve"]))
    assert settings.node_id == "n2" and settings.data_directory == tmp_path
    assert settings.client_address == "0.0.0.0:8100"
    assert settings.initial_members == {"n1": "a:8101", "n2": "b:8101"}
    assert settings.advertise_peer_address == "b:8101"
    assert settings.advertise_http_address == "b:8102"
    assert settings.cluster_id == "blue"
    assert settings.replica.tick_interval_ms == 50
    assert settings.raft.election_timeout_ticks == 12
    assert settings.replica.snapshot_interval_entries == 500
    assert settings.connections_max == 7
    assert settings.client_handshake_timeout_s == 2.5
    assert settings.requests_per_token_max == 40
    # A flag on the command line wins over the environment.
    flagged = settings_from_arguments(build_parser().parse_args(["serve", "--node-id", "n1"]))
    assert flagged.node_id == "n1"
    # --join from the environment, with no initial members.
    monkeypatch.delenv("TASKRAFT_INITIAL_MEMBERS")
    monkeypatch.setenv("TASKRAFT_JOIN", "true")
    assert settings_from_arguments(build_parser().parse_args(["serve"])).join


def test_serve_without_a_node_id_names_the_flag_and_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASKRAFT_NODE_ID", raising=False)
    monkeypatch.delenv("TASKRAFT_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="--node-id \\(or TASKRAFT_NODE_ID\\)"):
        settings_from_arguments(build_parser().parse_args(["serve"]))
