"""Which authenticated peers a node admits on its peer port (`_ConfiguredPeers.admits`).

A member of the configuration in force, always; anyone while the node cannot judge (no
configuration yet, as on a learner being added; or a follower that has heard no leader for an
election timeout, which may lag behind the change that added the node now leading); nobody else.
"""

from __future__ import annotations

import random

from taskraft.raft import (
    AppendEntries,
    Configuration,
    LogIndex,
    NodeId,
    PersistedState,
    RaftNode,
    RaftOptions,
    Role,
    Term,
    bootstrap_state,
)
from taskraft.server.metrics import NodeMetrics
from taskraft.server.node import _ConfiguredPeers

N1, N2, N3, N9 = NodeId("n1"), NodeId("n2"), NodeId("n3"), NodeId("n9")
OPTIONS = RaftOptions(election_timeout_ticks=10)


def peers_of(raft: RaftNode) -> _ConfiguredPeers:
    return _ConfiguredPeers(raft, NodeMetrics.__new__(NodeMetrics))


def raft_node(persisted: PersistedState, node_id: NodeId = N1) -> RaftNode:
    return RaftNode(
        node_id=node_id,
        persisted=persisted,
        options=OPTIONS,
        random_source=random.Random(0),
        check_invariants=True,
    )


def test_a_node_without_a_configuration_admits_any_authenticated_peer() -> None:
    peers = peers_of(raft_node(PersistedState(), NodeId("n4")))
    assert peers.admits(N1)
    assert peers.admits(N9)


def test_a_follower_that_hears_its_leader_admits_members_only() -> None:
    raft = raft_node(bootstrap_state(Configuration(voters=frozenset({N1, N2, N3}))))
    peers = peers_of(raft)
    # No leader heard yet: it cannot tell a new member from a stranger.
    assert peers.admits(N9)
    raft.step(
        AppendEntries(
            sender=N2,
            recipient=N1,
            term=Term(1),
            previous_log_index=LogIndex(0),
            previous_log_term=Term(0),
            entries=(),
            leader_commit=LogIndex(0),
            read_round=0,
            heartbeat=True,
        )
    )
    assert raft.leader_id == N2
    assert peers.admits(N2) and peers.admits(N3)
    assert not peers.admits(N9)
    # An election timeout without the leader: it may be behind a change that added n9.
    for _ in range(OPTIONS.election_timeout_ticks):
        raft.tick()
    assert peers.admits(N9)


def test_a_leader_admits_members_only() -> None:
    raft = raft_node(bootstrap_state(Configuration(voters=frozenset({N1}))))
    while raft.has_ready():
        raft.advance(raft.ready())
    assert raft.role is Role.LEADER
    peers = peers_of(raft)
    assert peers.admits(N1)
    assert not peers.admits(N9)
