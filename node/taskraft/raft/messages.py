"""The messages Raft nodes exchange, as frozen values.

Every message names its sender, its recipient and the sender's term; the peer protocol codec
serializes exactly these fields. One class per message type keeps the core's dispatch explicit
and lets mypy check each field.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskraft.raft.types import Entry, LogIndex, NodeId, SnapshotMetadata, Term


@dataclass(frozen=True, slots=True)
class RequestVote:
    """A (pre-)candidate asks for a vote (thesis 3.4) or a pre-vote (thesis 9.6).

    For a pre-vote, `term` is the term the sender would campaign in; nobody changes term on it.
    `leadership_transfer` lets the vote through a follower's leader lease (thesis 4.2.3).
    """

    sender: NodeId
    recipient: NodeId
    term: Term
    last_log_index: LogIndex
    last_log_term: Term
    pre_vote: bool = False
    leadership_transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    sender: NodeId
    recipient: NodeId
    term: Term
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Replicates entries, or with no entries is a heartbeat (thesis 3.5).

    `read_round` carries the leader's latest ReadIndex round so followers' answers confirm it
    (thesis 6.4). A `heartbeat` claims only what the leader knows matches; its answer tells the
    leader whether appends to that follower were lost.
    """

    sender: NodeId
    recipient: NodeId
    term: Term
    previous_log_index: LogIndex
    previous_log_term: Term
    entries: tuple[Entry, ...]
    leader_commit: LogIndex
    read_round: int = 0
    heartbeat: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Answers AppendEntries. On rejection the conflict hint lets the leader skip back fast.

    `match_index` is the last index known to match the leader when `success` is true. On failure,
    `rejected_index` is the previous_log_index that did not match, `conflict_term` the term of the
    follower's entry there (None when the follower's log is too short) and `conflict_index` the
    first index the follower holds with that term (or its last index + 1).
    """

    sender: NodeId
    recipient: NodeId
    term: Term
    success: bool
    match_index: LogIndex = LogIndex(0)
    rejected_index: LogIndex = LogIndex(0)
    conflict_index: LogIndex = LogIndex(0)
    conflict_term: Term | None = None
    read_round: int = 0
    heartbeat: bool = False


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One chunk of a snapshot sent to a follower that is behind the leader's log (thesis 5.3)."""

    sender: NodeId
    recipient: NodeId
    term: Term
    metadata: SnapshotMetadata
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """Acknowledges a chunk: `next_offset` is the offset the follower expects next."""

    sender: NodeId
    recipient: NodeId
    term: Term
    snapshot_index: LogIndex
    next_offset: int
    done: bool
    # The follower will not take this snapshot (larger than its snapshot_size_max_bytes).
    refused: bool = False


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Tells an up-to-date follower to campaign at once: the last step of leadership transfer."""

    sender: NodeId
    recipient: NodeId
    term: Term


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A follower forwards a linearizable read to the leader (thesis 6.4, 'followers')."""

    sender: NodeId
    recipient: NodeId
    term: Term
    request_id: int


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """The read index the leader confirmed; `index` is 0 when the leader could not serve it."""

    sender: NodeId
    recipient: NodeId
    term: Term
    request_id: int
    index: LogIndex
    success: bool


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)
