"""Value types shared by the Raft core and the code that drives it.

Everything here is an immutable value: log entries, the hard state that must survive a crash,
cluster configurations and snapshots. Keeping them frozen lets the core hand them to the driver
in a `Ready` batch without copying and without fear that the driver mutates the core's state.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import NewType

NodeId = NewType("NodeId", str)
Term = NewType("Term", int)
LogIndex = NewType("LogIndex", int)


class Role(enum.Enum):
    """The role a node plays in its current term (thesis 3.3, plus PreVote's pre-candidate)."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.Enum):
    """What a log entry carries: an application command, the leader's no-op, or a configuration."""

    COMMAND = 0
    NOOP = 1
    CONFIGURATION = 2


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of the replicated log. `data` is opaque to the core except for configurations."""

    term: Term
    index: LogIndex
    kind: EntryKind = EntryKind.COMMAND
    data: bytes = b""

    def size_bytes(self) -> int:
        """An estimate of the entry's size, used by every byte bound in the core."""
        return len(self.data) + 16


@dataclass(frozen=True, slots=True)
class HardState:
    """The state a node must fsync before it answers a vote or acknowledges entries (thesis 3.8).

    `commit` is persisted only as a hint that speeds up restart; safety never depends on it.
    """

    term: Term = Term(0)
    vote: NodeId | None = None
    commit: LogIndex = LogIndex(0)


@dataclass(frozen=True, slots=True)
class Configuration:
    """The membership of the cluster: voters elect and commit, learners only receive the log.

    A configuration entry carries the whole configuration (not a delta), so the latest one in a
    log is enough to know the membership at that point.

    `addresses` says where each member can be reached, as (node id, address) pairs sorted by
    node id. The core never reads an address: it only carries them in configuration entries and
    snapshots, so that every member, including one that joins later or restarts, learns where
    its peers are from the replicated log (as etcd carries member URLs in its configuration
    changes). A member without an address is reachable only through addresses given outside the
    log. The pairs may come in any order; they are stored sorted.
    """

    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()
    addresses: tuple[tuple[NodeId, str], ...] = ()

    def __post_init__(self) -> None:
        if self.voters & self.learners:
            raise ValueError(
                f"a node cannot be voter and learner at once: {sorted(self.voters & self.learners)}"
            )
        addresses = dict(self.addresses)
        if len(addresses) != len(self.addresses):
            raise ValueError("a member has two addresses")
        strangers = set(addresses) - self.members
        if strangers:
            raise ValueError(f"addresses given for nodes that are not members: {sorted(strangers)}")
        object.__setattr__(self, "addresses", tuple(sorted(addresses.items())))

    @property
    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def address_of(self, node: NodeId) -> str | None:
        for member, address in self.addresses:
            if member == node:
                return address
        return None

    def quorum(self) -> int:
        """The smallest number of voters that forms a majority."""
        return len(self.voters) // 2 + 1

    def encode(self) -> bytes:
        """A canonical, deterministic encoding for configuration entries and snapshots."""
        document: dict[str, object] = {
            "voters": sorted(self.voters),
            "learners": sorted(self.learners),
        }
        if self.addresses:
            document["addresses"] = dict(self.addresses)
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Configuration:
        document = json.loads(data)
        return cls(
            voters=frozenset(NodeId(node) for node in document["voters"]),
            learners=frozenset(NodeId(node) for node in document["learners"]),
            addresses=tuple(
                (NodeId(node), str(address))
                for node, address in document.get("addresses", {}).items()
            ),
        )


class MembershipChangeKind(enum.Enum):
    """Single-server membership changes (thesis 4.1), one in flight at a time."""

    ADD_LEARNER = "add_learner"
    PROMOTE_LEARNER = "promote_learner"
    REMOVE_MEMBER = "remove_member"


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """One single-server change; `address` (ADD_LEARNER only) is recorded for the new member."""

    kind: MembershipChangeKind
    node_id: NodeId
    address: str | None = None

    def apply_to(self, configuration: Configuration) -> Configuration:
        """The configuration after this change, or ValueError when the change makes no sense."""
        node = self.node_id
        addresses = dict(configuration.addresses)
        if self.kind is MembershipChangeKind.ADD_LEARNER:
            if node in configuration.members:
                raise ValueError(f"{node} is already a member")
            if self.address is not None:
                addresses[node] = self.address
            return Configuration(
                configuration.voters, configuration.learners | {node}, tuple(addresses.items())
            )
        if self.address is not None:
            raise ValueError("only a node added as a learner comes with an address")
        if self.kind is MembershipChangeKind.PROMOTE_LEARNER:
            if node not in configuration.learners:
                raise ValueError(f"{node} is not a learner")
            return Configuration(
                configuration.voters | {node},
                configuration.learners - {node},
                configuration.addresses,
            )
        if node not in configuration.members:
            raise ValueError(f"{node} is not a member")
        if configuration.voters == {node}:
            raise ValueError(f"cannot remove {node}: it is the last voter")
        addresses.pop(node, None)
        return Configuration(
            configuration.voters - {node}, configuration.learners - {node}, tuple(addresses.items())
        )


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    """Where a snapshot sits in the log and which configuration was in force there."""

    index: LogIndex
    term: Term
    configuration: Configuration


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The application state as of `metadata.index`; `data` is opaque to the core."""

    metadata: SnapshotMetadata
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the driver wants to observe: who leads and what this node is."""

    leader_id: NodeId | None
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches `index` (thesis 6.4)."""

    request_id: int
    index: LogIndex


@dataclass(frozen=True, slots=True)
class ProposalReceipt:
    """Where proposed commands landed in the leader's log.

    The proposal succeeded exactly when the entry applied at each index carries `term`; a
    different term there means a new leader overwrote it and the outcome is the client's to retry.
    """

    term: Term
    first_index: LogIndex
    last_index: LogIndex


@dataclass(frozen=True, slots=True)
class PersistedState:
    """What a node finds on its disk when it restarts: the input of `RaftNode.restore`."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()


class RaftError(Exception):
    """Base of the errors the core raises to its caller."""


class NotLeaderError(RaftError):
    """The request needs the leader; `leader_id` is the best known leader, or None."""

    def __init__(self, leader_id: NodeId | None) -> None:
        super().__init__(f"not the leader; leader is {leader_id or 'unknown'}")
        self.leader_id = leader_id


class ProposalDroppedError(RaftError):
    """The leader refused the proposal for a reason that may pass (transfer, bound, change)."""
