"""The Raft consensus core: pure, deterministic, driven by `step`, `tick` and `Ready`.

Nothing in this package performs I/O, reads a clock or uses asyncio; the node server drives it
and the simulator in `taskraft.sim` attacks it with faults. See docs/raft.md.
"""

from taskraft.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from taskraft.raft.node import InvariantViolation, MembershipChangeError, RaftNode, bootstrap_state
from taskraft.raft.options import RaftOptions
from taskraft.raft.ready import Ready
from taskraft.raft.types import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    MembershipChange,
    MembershipChangeKind,
    NodeId,
    NotLeaderError,
    PersistedState,
    ProposalDroppedError,
    ProposalReceipt,
    RaftError,
    ReadState,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    Term,
)

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "Configuration",
    "Entry",
    "EntryKind",
    "HardState",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "InvariantViolation",
    "LogIndex",
    "MembershipChange",
    "MembershipChangeError",
    "MembershipChangeKind",
    "Message",
    "NodeId",
    "NotLeaderError",
    "PersistedState",
    "ProposalDroppedError",
    "ProposalReceipt",
    "RaftError",
    "RaftNode",
    "RaftOptions",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ReadState",
    "Ready",
    "RequestVote",
    "RequestVoteResponse",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SoftState",
    "Term",
    "TimeoutNow",
    "bootstrap_state",
]
