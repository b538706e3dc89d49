"""The Raft consensus core: a deterministic state machine with no I/O, no clock and no threads.

`RaftNode` is shaped like etcd's RawNode. Its inputs are `step(message)`, `tick()`,
`propose(commands)`, `read_index(request_id)`, `transfer_leadership(target)` and
`change_membership(change)`; its only output is the `Ready` batch (see `ready.py` for the
durability contract). Randomness comes from an injected `random.Random`, so a seeded simulator
replays every run exactly.

Design choices, with the thesis sections they follow (Ongaro, "Consensus: Bridging Theory and
Practice", 2014):
- PreVote (9.6) and CheckQuorum (6.2): a node that cannot win does not disrupt the cluster, and a
  leader that lost its majority steps down. A node that heard from a live leader within the
  election timeout ignores vote requests (4.2.3) unless they come from a leadership transfer.
- Single-server membership changes (4.1), one at a time, taking effect when appended to the log;
  a leader proposes one only after committing an entry in its own term, which closes the bug
  described on the raft-dev list in 2015. Learners receive the log but neither vote nor count.
- The leader appends to its own disk in parallel with replicating (10.2.1): its own log counts
  toward the commit index only once `advance` reports it persisted.
- Linearizable reads by ReadIndex (6.4): a heartbeat round confirms leadership, no log entry.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from taskraft.raft.log import RaftLog
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
from taskraft.raft.options import RaftOptions
from taskraft.raft.progress import Progress, ProgressState
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

# Waits between retries of a refused snapshot double up to 2**6 election timeouts (about two
# minutes at the server's tick), so an operator's fix is picked up without hammering meanwhile.
SNAPSHOT_REFUSAL_BACKOFF_DOUBLINGS_MAX = 6


class InvariantViolation(AssertionError):
    """The core found its own state impossible: a bug, never an operating condition."""


class MembershipChangeError(RaftError):
    """The requested membership change does not apply to the current configuration."""


@dataclass(slots=True)
class _PendingRead:
    request_id: int
    index: LogIndex
    round: int
    requester: NodeId
    acknowledged_by: set[NodeId] = field(default_factory=set)


@dataclass(slots=True)
class _SnapshotReception:
    metadata: SnapshotMetadata
    leader: NodeId
    data: bytearray


def bootstrap_state(configuration: Configuration) -> PersistedState:
    """The persisted state every member of a brand-new cluster starts from.

    The initial configuration is recorded as a snapshot at index 0, so that every founding member
    agrees on it without a log entry. A node that joins an existing cluster later starts from an
    empty `PersistedState()` instead and learns the configuration from the leader.
    """
    metadata = SnapshotMetadata(index=LogIndex(0), term=Term(0), configuration=configuration)
    return PersistedState(snapshot=Snapshot(metadata=metadata))


class RaftNode:
    def __init__(
        self,
        *,
        node_id: NodeId,
        persisted: PersistedState,
        options: RaftOptions | None = None,
        random_source: random.Random,
        check_invariants: bool = False,
    ) -> None:
        self.id = node_id
        self.options = options or RaftOptions()
        self._random = random_source
        self._check_invariants = check_invariants
        snapshot = persisted.snapshot or Snapshot(
            metadata=SnapshotMetadata(LogIndex(0), Term(0), Configuration())
        )
        self.log = RaftLog(snapshot, persisted.entries, persisted.hard_state.commit)
        self.term = persisted.hard_state.term
        self.vote = persisted.hard_state.vote
        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        self._persisted_hard_state = persisted.hard_state
        self._reported_soft_state = SoftState(leader_id=None, role=Role.FOLLOWER)
        self.election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._transfer_elapsed = 0
        self._randomized_election_timeout = 0
        self._votes: dict[NodeId, bool] = {}
        self.progress: dict[NodeId, Progress] = {}
        self.leadership_transferee: NodeId | None = None
        self._uncommitted_size_bytes = 0
        self._read_round = 0
        self._pending_reads: deque[_PendingRead] = deque()
        self._reads_awaiting_term_commit: list[_PendingRead] = []
        # Reads this follower forwarded to the leader and still waits for, oldest first; answers
        # for anything else (late, duplicated, or from before a restart) are ignored.
        self._forwarded_reads: dict[int, None] = {}
        self._snapshot_reception: _SnapshotReception | None = None
        self._messages: list[Message] = []
        self._messages_after_persist: list[Message] = []
        self._self_messages_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        self._leader_of_term: tuple[Term, NodeId] | None = None
        self._reset_election_timer()
        if self.log.configuration().voters == {self.id}:
            # A cluster of one needs nobody's vote: elect at once instead of after a timeout.
            self._campaign(pre_vote=False, transfer=False)

    # -- public inputs -----------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()
        self._after_input()

    def campaign(self) -> None:
        """Start an election now, as an expired election timeout would (with PreVote if enabled)."""
        if self.role is Role.LEADER or not self._may_campaign():
            return
        self._campaign(pre_vote=self.options.pre_vote, transfer=False)
        self._after_input()

    def step(self, message: Message) -> None:
        """Process a message from a peer; messages for another node are dropped."""
        if message.recipient != self.id:
            return
        if message.term > self.term:
            if not self._step_higher_term(message):
                self._after_input()
                return
        elif message.term < self.term:
            self._step_lower_term(message)
            self._after_input()
            return
        self._dispatch(message)
        self._after_input()

    def propose(self, commands: list[bytes] | tuple[bytes, ...]) -> ProposalReceipt:
        """Append commands to the leader's log and start replicating them as one batch."""
        if not commands:
            raise ValueError("propose needs at least one command")
        self._require_leader_accepting()
        size = sum(len(command) + 16 for command in commands)
        if (
            self._uncommitted_size_bytes > 0
            and self._uncommitted_size_bytes + size > self.options.uncommitted_size_max_bytes
        ):
            raise ProposalDroppedError(
                f"{self._uncommitted_size_bytes} bytes are not committed yet; the bound is "
                f"{self.options.uncommitted_size_max_bytes} (uncommitted_size_max_bytes)"
            )
        first = LogIndex(self.log.last_index() + 1)
        entries = [
            Entry(self.term, LogIndex(first + offset), EntryKind.COMMAND, command)
            for offset, command in enumerate(commands)
        ]
        self._append_as_leader(entries)
        self._after_input()
        return ProposalReceipt(self.term, first, entries[-1].index)

    def change_membership(self, change: MembershipChange) -> ProposalReceipt:
        """Propose a single-server membership change (thesis 4.1), one in flight at a time."""
        self._require_leader_accepting()
        if self.log.configuration_index() > self.log.committed:
            raise ProposalDroppedError("a membership change is already in progress")
        if self.log.term_at(self.log.committed) != self.term:
            raise ProposalDroppedError("the leader has not committed an entry in its term yet")
        try:
            configuration = change.apply_to(self.log.configuration())
        except ValueError as error:
            raise MembershipChangeError(str(error)) from error
        if change.kind is MembershipChangeKind.PROMOTE_LEARNER:
            lag = self.log.last_index() - self.progress[change.node_id].match_index
            if lag > self.options.promotion_lag_max_entries:
                raise ProposalDroppedError(
                    f"learner {change.node_id} is {lag} entries behind; the bound is "
                    f"{self.options.promotion_lag_max_entries} (promotion_lag_max_entries)"
                )
        index = LogIndex(self.log.last_index() + 1)
        self._append_as_leader(
            [Entry(self.term, index, EntryKind.CONFIGURATION, configuration.encode())]
        )
        self._after_input()
        return ProposalReceipt(self.term, index, index)

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to `target` (thesis 3.10): catch it up, then tell it to campaign now."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if target == self.id:
            return
        if target not in self.log.configuration().voters:
            raise MembershipChangeError(f"{target} is not a voter and cannot lead")
        if target == self.leadership_transferee:
            # Already under way: a retry must not extend its deadline.
            return
        self.leadership_transferee = target
        self._transfer_elapsed = 0
        if self.progress[target].match_index == self.log.last_index():
            self._send(TimeoutNow(self.id, target, self.term))
        else:
            self._send_append(target)
        self._after_input()

    def read_index(self, request_id: int) -> None:
        """Start a linearizable read; its `ReadState` appears in a later `Ready` (thesis 6.4).

        `request_id` must be unique across restarts of this node (the server starts its ids at a
        random number below 2**62): an answer to a request of an earlier incarnation must never
        match a new one. A read that gets no answer (lost message, leader change) is the
        caller's to time out.
        """
        if self.role is Role.LEADER:
            self._start_read(request_id, self.id)
        elif self.role is Role.FOLLOWER and self.leader_id is not None:
            if len(self._forwarded_reads) >= self.options.pending_reads_max:
                # The oldest forwarded read has most likely been lost: forget it.
                del self._forwarded_reads[next(iter(self._forwarded_reads))]
            self._forwarded_reads[request_id] = None
            self._send(ReadIndexRequest(self.id, self.leader_id, self.term, request_id))
        else:
            raise NotLeaderError(self.leader_id)
        self._after_input()

    def snapshot_taken(self, snapshot: Snapshot) -> None:
        """The application took `snapshot` at an applied index: compact the log before it."""
        metadata = snapshot.metadata
        if metadata.index <= self.log.snapshot.metadata.index:
            return
        if metadata.index > self.log.applied:
            raise ValueError(f"snapshot at {metadata.index} is beyond applied {self.log.applied}")
        if self.log.term_at(metadata.index) != metadata.term:
            raise ValueError(f"snapshot term {metadata.term} does not match the log")
        if metadata.configuration != self.log.configuration_at(metadata.index):
            raise ValueError("snapshot configuration does not match the log")
        self.log.compact(snapshot)
        self._after_input()

    # -- the Ready batch ---------------------------------------------------------------------

    def has_ready(self) -> bool:
        persisted = self._persisted_hard_state
        reported = self._reported_soft_state
        return bool(
            self._messages
            or self._messages_after_persist
            or self._self_messages_after_persist
            or self._read_states
            or self.log.snapshot_unpersisted
            or self.log.persisted_index < self.log.last_index()
            or self.log.applied < self.log.committed
            or self.term != persisted.term
            or self.vote != persisted.vote
            or self.log.committed != persisted.commit
            or self.role is not reported.role
            or self.leader_id != reported.leader_id
        )

    def ready(self) -> Ready:
        """Collect the pending work. The caller must `advance` with it before any other call."""
        hard_state = self._hard_state()
        soft_state = self._soft_state()
        ready = Ready(
            soft_state=soft_state if soft_state != self._reported_soft_state else None,
            hard_state=hard_state if hard_state != self._persisted_hard_state else None,
            snapshot=self.log.snapshot if self.log.snapshot_unpersisted else None,
            entries=self.log.unstable_entries(),
            messages=tuple(self._messages),
            messages_after_persist=tuple(self._messages_after_persist),
            committed_entries=self.log.committed_to_apply(self.options.apply_batch_size_max_bytes),
            read_states=tuple(self._read_states),
        )
        self._messages.clear()
        self._messages_after_persist.clear()
        self._read_states.clear()
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver has done everything `ready` asked for."""
        if ready.snapshot is not None:
            self.log.snapshot_unpersisted = False
        if ready.entries:
            last = ready.entries[-1]
            self.log.mark_persisted(last.index, last.term)
        if ready.hard_state is not None:
            if ready.hard_state.term < self._persisted_hard_state.term:
                raise InvariantViolation("the persisted term went down")
            self._persisted_hard_state = ready.hard_state
        if ready.soft_state is not None:
            self._reported_soft_state = ready.soft_state
        if ready.committed_entries:
            self.log.applied_to(ready.committed_entries[-1].index)
        self_messages, self._self_messages_after_persist = self._self_messages_after_persist, []
        for message in self_messages:
            self._dispatch(message)
        if self.role is Role.LEADER and self._maybe_commit() and self.role is Role.LEADER:
            self._broadcast_append()
        self._after_input()

    # -- observation -------------------------------------------------------------------------

    @property
    def configuration(self) -> Configuration:
        return self.log.configuration()

    @property
    def commit_index(self) -> LogIndex:
        return self.log.committed

    @property
    def applied_index(self) -> LogIndex:
        return self.log.applied

    def _hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(leader_id=self.leader_id, role=self.role)

    # -- terms and roles ---------------------------------------------------------------------

    def _step_higher_term(self, message: Message) -> bool:
        """Handle a message from a newer term; returns whether to go on and dispatch it."""
        if isinstance(message, RequestVote):
            in_lease = (
                self.options.check_quorum
                and self.leader_id is not None
                and self.election_elapsed < self.options.election_timeout_ticks
            )
            if in_lease and not message.leadership_transfer:
                # We heard from a live leader recently: a disruptive candidate must not win.
                return False
            if message.pre_vote:
                return True
        if isinstance(message, RequestVoteResponse) and message.pre_vote and message.granted:
            return True
        leader = message.sender if isinstance(message, AppendEntries | InstallSnapshot) else None
        self._become_follower(message.term, leader)
        return True

    def _step_lower_term(self, message: Message) -> None:
        if isinstance(message, AppendEntries):
            # A stale leader, or we advanced our term while partitioned: answering with our term
            # makes that leader step down so that an election can bring us back (etcd does so too).
            self._send(
                AppendEntriesResponse(self.id, message.sender, self.term, success=False)
            )
        elif isinstance(message, InstallSnapshot):
            self._send(
                InstallSnapshotResponse(
                    self.id, message.sender, self.term, message.metadata.index, 0, done=False
                )
            )
        elif isinstance(message, RequestVote) and message.pre_vote:
            self._send(
                RequestVoteResponse(
                    self.id, message.sender, self.term, granted=False, pre_vote=True
                )
            )

    def _become_follower(self, term: Term, leader: NodeId | None) -> None:
        if term > self.term:
            self.term = term
            self.vote = None
        self.role = Role.FOLLOWER
        self._set_leader(leader)
        self._reset_role_state()

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self._set_leader(self.id)
        self._reset_role_state()
        configuration = self.log.configuration()
        # Sorted, here and below: set order varies between processes and a seed must replay.
        for member in sorted(configuration.members - {self.id}):
            self.progress[member] = self._new_progress()
        # A no-op of the new term lets the leader commit (and learn the commit index) at once.
        noop = Entry(self.term, LogIndex(self.log.last_index() + 1), EntryKind.NOOP)
        self._append_as_leader([noop])

    def _set_leader(self, leader: NodeId | None) -> None:
        self.leader_id = leader
        if leader is None:
            return
        previous = self._leader_of_term
        if previous is not None and previous[0] == self.term and previous[1] != leader:
            raise InvariantViolation(f"two leaders in term {self.term}: {previous[1]} and {leader}")
        self._leader_of_term = (self.term, leader)

    def _reset_role_state(self) -> None:
        self.election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_election_timer()
        self._votes = {}
        self.progress = {}
        self.leadership_transferee = None
        self._uncommitted_size_bytes = 0
        self._pending_reads.clear()
        self._reads_awaiting_term_commit.clear()

    def _reset_election_timer(self) -> None:
        timeout = self.options.election_timeout_ticks
        self._randomized_election_timeout = timeout + self._random.randrange(timeout)

    def _new_progress(self) -> Progress:
        return Progress(
            match_index=LogIndex(0),
            next_index=LogIndex(self.log.last_index() + 1),
            inflight_messages_max=self.options.inflight_messages_max,
        )

    # -- elections ---------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        # A learner keeps counting: its silence since the last leader message must show, or it
        # would believe forever that the leader is alive and refuse every vote (4.2.3).
        if self.election_elapsed >= self._randomized_election_timeout and self._may_campaign():
            self.election_elapsed = 0
            self._campaign(pre_vote=self.options.pre_vote, transfer=False)

    def _may_campaign(self) -> bool:
        """Voters campaign; so does a node that an uncommitted change is removing (thesis 4.2.2).

        Until the removal commits the node may hold the only log that has it; if it could not
        campaign, a two-voter cluster whose leader removed itself could never elect again.
        """
        if self.id in self.log.configuration().voters:
            return True
        configuration_index = self.log.configuration_index()
        if configuration_index <= self.log.committed:
            return False
        return self.id in self.log.configuration_at(LogIndex(configuration_index - 1)).voters

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self.role = Role.PRE_CANDIDATE
            self._set_leader(None)
            self._reset_role_state()
            campaign_term = Term(self.term + 1)
        else:
            self.term = Term(self.term + 1)
            self.vote = self.id
            self.role = Role.CANDIDATE
            self._set_leader(None)
            self._reset_role_state()
            campaign_term = self.term
        for voter in sorted(self.log.configuration().voters):
            if voter == self.id:
                # Our own vote counts only once the vote is on disk: it arrives through advance().
                self._self_messages_after_persist.append(
                    RequestVoteResponse(self.id, self.id, campaign_term, True, pre_vote)
                )
                continue
            # After persist: the request vouches for our term and our log (last index and term),
            # and a grant for a log we then lose in a crash could elect a leader without
            # committed entries.
            self._send_after_persist(
                RequestVote(
                    self.id,
                    voter,
                    campaign_term,
                    self.log.last_index(),
                    self.log.last_term(),
                    pre_vote=pre_vote,
                    leadership_transfer=transfer,
                )
            )

    def _handle_request_vote(self, message: RequestVote) -> None:
        can_vote = (
            self.vote == message.sender
            or (self.vote is None and self.leader_id is None)
            or (message.pre_vote and message.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(message.last_log_index, message.last_log_term):
            if not message.pre_vote:
                self.vote = message.sender
                self.election_elapsed = 0
            self._send_after_persist(
                RequestVoteResponse(
                    self.id, message.sender, message.term, True, pre_vote=message.pre_vote
                )
            )
        else:
            self._send_after_persist(
                RequestVoteResponse(
                    self.id, message.sender, self.term, False, pre_vote=message.pre_vote
                )
            )

    def _handle_vote_response(self, message: RequestVoteResponse) -> None:
        if message.pre_vote:
            # Grants carry the term we would campaign in (a grant of our own term is left over
            # from an earlier pre-campaign); refusals carry the voter's own term, which is ours
            # here (a higher one made us follow it, a lower one was dropped).
            expected_term = self.term + 1 if message.granted else self.term
            if self.role is not Role.PRE_CANDIDATE or message.term != expected_term:
                return
        elif self.role is not Role.CANDIDATE or message.term != self.term:
            return
        self._votes[message.sender] = message.granted
        voters = self.log.configuration().voters
        granted = sum(1 for voter, vote in self._votes.items() if vote and voter in voters)
        rejected = sum(1 for voter, vote in self._votes.items() if not vote and voter in voters)
        quorum = len(voters) // 2 + 1
        if granted >= quorum:
            if message.pre_vote:
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
        elif rejected > len(voters) - quorum:
            self._become_follower(self.term, None)

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, RequestVote):
            self._handle_request_vote(message)
        elif isinstance(message, RequestVoteResponse):
            self._handle_vote_response(message)
        elif isinstance(message, AppendEntries | InstallSnapshot):
            if self.role is Role.LEADER:
                raise InvariantViolation(f"leader {self.id} got an append from {message.sender}")
            if self.role is not Role.FOLLOWER or self.leader_id != message.sender:
                self._become_follower(message.term, message.sender)
            self.election_elapsed = 0
            if isinstance(message, AppendEntries):
                self._handle_append(message)
            else:
                self._handle_snapshot_chunk(message)
        elif isinstance(message, TimeoutNow):
            if self.role is not Role.LEADER and self._may_campaign():
                self._campaign(pre_vote=False, transfer=True)
        elif isinstance(message, ReadIndexRequest):
            self._handle_read_request(message)
        elif isinstance(message, ReadIndexResponse):
            if message.request_id not in self._forwarded_reads:
                return
            del self._forwarded_reads[message.request_id]
            if message.success:
                self._read_states.append(ReadState(message.request_id, message.index))
        elif self.role is Role.LEADER:
            self._dispatch_to_leader(message)

    def _dispatch_to_leader(self, message: Message) -> None:
        progress = self.progress.get(message.sender)
        if progress is None:
            return
        progress.recently_active = True
        if isinstance(message, AppendEntriesResponse):
            self._handle_append_response(message, progress)
        elif isinstance(message, InstallSnapshotResponse):
            self._handle_snapshot_response(message, progress)

    # -- replication: follower side ----------------------------------------------------------

    def _handle_append(self, message: AppendEntries) -> None:
        if message.heartbeat:
            # Within a term only this leader writes our log, so we hold its entries up to the
            # match index it bounded leader_commit by.
            self.log.commit_to(min(message.leader_commit, self.log.last_index()))
            self._send_after_persist(
                AppendEntriesResponse(
                    self.id,
                    message.sender,
                    self.term,
                    success=True,
                    read_round=message.read_round,
                    heartbeat=True,
                )
            )
            return
        previous_index = message.previous_log_index
        previous_term = message.previous_log_term
        entries = message.entries
        committed = self.log.committed
        if previous_index < committed:
            # Everything up to our commit index matches any leader's log (leader completeness):
            # skip that part instead of rejecting a delayed or duplicated append.
            entries = tuple(entry for entry in entries if entry.index > committed)
            previous_index = committed
            previous_term = self.log.term_at(committed) or Term(0)
        if not self.log.matches(previous_index, previous_term):
            self._send_after_persist(self._rejection(message, previous_index))
            return
        self.log.merge_from_leader(entries)
        last_new = LogIndex(previous_index + len(entries))
        self.log.commit_to(min(message.leader_commit, last_new))
        self._send_after_persist(
            AppendEntriesResponse(
                self.id,
                message.sender,
                self.term,
                success=True,
                match_index=last_new,
                read_round=message.read_round,
            )
        )

    def _rejection(self, message: AppendEntries, previous_index: LogIndex) -> AppendEntriesResponse:
        conflict_term = self.log.term_at(previous_index)
        if conflict_term is None:
            conflict_index = LogIndex(self.log.last_index() + 1)
        else:
            conflict_index = LogIndex(
                max(self.log.first_index_of_term(previous_index), self.log.committed + 1)
            )
        return AppendEntriesResponse(
            self.id,
            message.sender,
            self.term,
            success=False,
            rejected_index=previous_index,
            conflict_index=conflict_index,
            conflict_term=conflict_term,
            read_round=message.read_round,
        )

    def _handle_snapshot_chunk(self, message: InstallSnapshot) -> None:
        metadata = message.metadata
        if metadata.index <= self.log.committed:
            self._answer_snapshot(message, next_offset=message.offset, done=True)
            return
        reception = self._snapshot_reception
        if message.offset == 0:
            reception = _SnapshotReception(metadata, message.sender, bytearray())
            self._snapshot_reception = reception
        stale = reception is None or reception.metadata != metadata
        if stale or reception is None or reception.leader != message.sender:
            self._answer_snapshot(message, next_offset=0, done=False)
            return
        if message.offset != len(reception.data):
            self._answer_snapshot(message, next_offset=len(reception.data), done=False)
            return
        if len(reception.data) + len(message.data) > self.options.snapshot_size_max_bytes:
            # Refuse rather than buffer without bound; the leader backs off before retrying.
            self._snapshot_reception = None
            self._send_after_persist(
                InstallSnapshotResponse(
                    self.id,
                    message.sender,
                    self.term,
                    metadata.index,
                    0,
                    done=False,
                    refused=True,
                )
            )
            return
        reception.data += message.data
        if not message.done:
            self._answer_snapshot(message, next_offset=len(reception.data), done=False)
            return
        self._snapshot_reception = None
        if self.log.matches(metadata.index, metadata.term):
            self.log.commit_to(metadata.index)
        else:
            self.log.restore(Snapshot(metadata, bytes(reception.data)))
        self._answer_snapshot(message, next_offset=len(reception.data), done=True)

    def _answer_snapshot(self, message: InstallSnapshot, *, next_offset: int, done: bool) -> None:
        self._send_after_persist(
            InstallSnapshotResponse(
                self.id, message.sender, self.term, message.metadata.index, next_offset, done
            )
        )

    # -- replication: leader side ------------------------------------------------------------

    def _append_as_leader(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._uncommitted_size_bytes += sum(entry.size_bytes() for entry in entries)
        if any(entry.kind is EntryKind.CONFIGURATION for entry in entries):
            self._reconcile_progress_with_configuration()
        # Our own entries count toward commit once advance() reports them persisted.
        self._broadcast_append()

    def _reconcile_progress_with_configuration(self) -> None:
        members = self.log.configuration().members - {self.id}
        for removed in set(self.progress) - members:
            del self.progress[removed]
        for added in sorted(members - set(self.progress)):
            self.progress[added] = self._new_progress()
        if self.leadership_transferee is not None and self.leadership_transferee not in members:
            self.leadership_transferee = None

    def _broadcast_append(self) -> None:
        for peer in self.progress:
            self._send_append(peer)

    def _send_append(self, peer: NodeId, *, allow_empty: bool = False) -> bool:
        progress = self.progress[peer]
        if progress.state is ProgressState.SNAPSHOT:
            return False
        if progress.next_index < self.log.first_index():
            progress.become_snapshot(self.log.snapshot)
            self._send_snapshot_chunk(peer, progress)
            return True
        if progress.is_paused():
            return False
        previous_index = LogIndex(progress.next_index - 1)
        previous_term = self.log.term_at(previous_index)
        assert previous_term is not None
        entries = self.log.slice(
            progress.next_index, self.log.last_index(), self.options.batch_size_max_bytes
        )
        if not entries and not allow_empty:
            return False
        self._send(
            AppendEntries(
                self.id,
                peer,
                self.term,
                previous_index,
                previous_term,
                entries,
                self.log.committed,
                self._read_round,
            )
        )
        if entries:
            progress.sent_entries(entries[-1].index)
        elif progress.state is ProgressState.PROBE:
            progress.probe_sent = True
        return True

    def _send_heartbeats(self) -> None:
        for peer, progress in self.progress.items():
            # A heartbeat carries no log position, so it is never rejected: its answer proves the
            # follower is with us (CheckQuorum, ReadIndex). It lets the follower commit only what
            # the leader knows the follower holds: up to its match index (etcd does the same).
            self._send(
                AppendEntries(
                    self.id,
                    peer,
                    self.term,
                    LogIndex(0),
                    Term(0),
                    (),
                    LogIndex(min(self.log.committed, progress.match_index)),
                    self._read_round,
                    heartbeat=True,
                )
            )

    def _handle_append_response(
        self, message: AppendEntriesResponse, progress: Progress
    ) -> None:
        if message.read_round:
            self._acknowledge_read_round(message.sender, message.read_round)
        if message.heartbeat:
            if progress.match_index < self.log.last_index():
                # The follower is still behind: an append may have been lost. Free a slot and
                # send an append (empty if need be), which the follower rejects if it has a gap.
                if progress.state is ProgressState.REPLICATE and progress.is_paused():
                    progress.inflight.popleft()
                progress.probe_sent = False
                self._send_append(message.sender, allow_empty=True)
            return
        if not message.success:
            if message.rejected_index == 0 and message.conflict_index == 0:
                return
            if progress.reject(message.rejected_index, self._next_index_after_conflict(message)):
                self._send_append(message.sender, allow_empty=True)
            return
        was_probing = progress.state is ProgressState.PROBE
        if progress.acknowledge(message.match_index) or was_probing:
            if progress.state is ProgressState.PROBE:
                progress.become_replicate()
            if self._maybe_commit():
                if self.role is not Role.LEADER:
                    return
                self._broadcast_append()
        if (
            message.sender == self.leadership_transferee
            and progress.match_index == self.log.last_index()
        ):
            self._send(TimeoutNow(self.id, message.sender, self.term))
        while self._send_append(message.sender):
            pass

    def _next_index_after_conflict(self, message: AppendEntriesResponse) -> LogIndex:
        if message.conflict_term is None:
            return message.conflict_index
        last_of_term = self.log.last_index_of_term(message.conflict_term)
        if last_of_term is None:
            return message.conflict_index
        return LogIndex(last_of_term + 1)

    def _send_snapshot_chunk(self, peer: NodeId, progress: Progress) -> None:
        snapshot = progress.snapshot
        assert snapshot is not None
        progress.snapshot_chunk_unanswered_ticks = 0
        size = self.options.snapshot_chunk_size_max_bytes
        offset = progress.snapshot_offset
        chunk = snapshot.data[offset : offset + size]
        done = offset + len(chunk) >= len(snapshot.data)
        self._send(
            InstallSnapshot(self.id, peer, self.term, snapshot.metadata, offset, chunk, done)
        )

    def _handle_snapshot_response(
        self, message: InstallSnapshotResponse, progress: Progress
    ) -> None:
        if progress.state is not ProgressState.SNAPSHOT:
            return
        if message.snapshot_index != progress.snapshot_index():
            return
        if message.refused:
            progress.snapshot_refusals += 1
            progress.snapshot_offset = 0
            progress.snapshot_chunk_unanswered_ticks = 0
            return
        if message.done:
            progress.snapshot_refusals = 0
            progress.acknowledge(progress.snapshot_index())
            progress.become_probe()
            self._send_append(message.sender, allow_empty=True)
            return
        if message.next_offset != progress.snapshot_offset:
            progress.snapshot_offset = message.next_offset
            self._send_snapshot_chunk(message.sender, progress)

    def _maybe_commit(self) -> bool:
        configuration = self.log.configuration()
        matches = sorted(
            (
                self.log.persisted_index if voter == self.id else self.progress[voter].match_index
                for voter in configuration.voters
            ),
            reverse=True,
        )
        candidate = matches[configuration.quorum() - 1]
        # Only entries of the current term are committed by counting (thesis 3.6.2).
        if candidate <= self.log.committed or self.log.term_at(candidate) != self.term:
            return False
        self._account_committed(self.log.committed, candidate)
        self.log.commit_to(candidate)
        self._release_reads_awaiting_term_commit()
        if self.log.configuration_index() <= candidate and self.id not in configuration.voters:
            # A leader that removed itself leads until the change commits, then steps down (4.2.2).
            self._become_follower(self.term, None)
        return True

    def _account_committed(self, old_commit: LogIndex, new_commit: LogIndex) -> None:
        committed_bytes = sum(
            entry.size_bytes()
            for entry in self.log.slice(old_commit + 1, new_commit, 1 << 62)
            if entry.term == self.term
        )
        self._uncommitted_size_bytes = max(0, self._uncommitted_size_bytes - committed_bytes)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.leadership_transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.options.election_timeout_ticks:
                self.leadership_transferee = None
        if self.election_elapsed >= self.options.election_timeout_ticks:
            self.election_elapsed = 0
            if self.options.check_quorum and not self._quorum_recently_active():
                self._become_follower(self.term, None)
                return
        if self._heartbeat_elapsed >= self.options.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            self._send_heartbeats()
            self._retry_snapshot_chunks()

    def _retry_snapshot_chunks(self) -> None:
        """Resend a snapshot chunk that went unanswered for an election timeout.

        One chunk is in flight per follower; answers drive the next one. Only silence resends, so
        a slow follower never gets a pile of copies. A follower that refused the snapshot is
        retried after exponentially longer waits.
        """
        for peer, progress in self.progress.items():
            if progress.state is not ProgressState.SNAPSHOT:
                continue
            progress.snapshot_chunk_unanswered_ticks += self.options.heartbeat_interval_ticks
            backoff = 2 ** min(progress.snapshot_refusals, SNAPSHOT_REFUSAL_BACKOFF_DOUBLINGS_MAX)
            if progress.snapshot_chunk_unanswered_ticks >= (
                self.options.election_timeout_ticks * backoff
            ):
                self._send_snapshot_chunk(peer, progress)

    def _quorum_recently_active(self) -> bool:
        configuration = self.log.configuration()
        active = 0
        for voter in configuration.voters:
            if voter == self.id:
                active += 1
                continue
            progress = self.progress[voter]
            if progress.recently_active:
                active += 1
            progress.recently_active = False
        return active >= configuration.quorum()

    # -- linearizable reads ------------------------------------------------------------------

    def _handle_read_request(self, message: ReadIndexRequest) -> None:
        if self.role is not Role.LEADER:
            self._send(
                ReadIndexResponse(
                    self.id, message.sender, self.term, message.request_id, LogIndex(0), False
                )
            )
            return
        try:
            self._start_read(message.request_id, message.sender)
        except ProposalDroppedError:
            self._send(
                ReadIndexResponse(
                    self.id, message.sender, self.term, message.request_id, LogIndex(0), False
                )
            )

    def _start_read(self, request_id: int, requester: NodeId) -> None:
        waiting = len(self._pending_reads) + len(self._reads_awaiting_term_commit)
        if waiting >= self.options.pending_reads_max:
            raise ProposalDroppedError(
                f"{waiting} reads are waiting; the bound is {self.options.pending_reads_max}"
            )
        read = _PendingRead(request_id, self.log.committed, 0, requester)
        if self.log.term_at(self.log.committed) != self.term:
            # Until an entry of our term commits we may not know the latest commit index.
            self._reads_awaiting_term_commit.append(read)
            return
        self._confirm_read(read)

    def _confirm_read(self, read: _PendingRead) -> None:
        read.index = self.log.committed
        self._read_round += 1
        read.round = self._read_round
        read.acknowledged_by.add(self.id)
        self._pending_reads.append(read)
        if self.log.configuration().voters == {self.id}:
            self._release_confirmed_reads()
            return
        self._send_heartbeats()

    def _release_reads_awaiting_term_commit(self) -> None:
        reads, self._reads_awaiting_term_commit = self._reads_awaiting_term_commit, []
        for read in reads:
            self._confirm_read(read)

    def _acknowledge_read_round(self, peer: NodeId, read_round: int) -> None:
        for read in self._pending_reads:
            if read.round > read_round:
                break
            read.acknowledged_by.add(peer)
        self._release_confirmed_reads()

    def _release_confirmed_reads(self) -> None:
        voters = self.log.configuration().voters
        quorum = len(voters) // 2 + 1
        confirmed_through = -1
        for position, read in enumerate(self._pending_reads):
            if len(read.acknowledged_by & voters) >= quorum:
                confirmed_through = position
        # A confirmed round also confirms every earlier one: release them in order.
        for _ in range(confirmed_through + 1):
            read = self._pending_reads.popleft()
            if read.requester == self.id:
                self._read_states.append(ReadState(read.request_id, read.index))
            else:
                self._send(
                    ReadIndexResponse(
                        self.id, read.requester, self.term, read.request_id, read.index, True
                    )
                )

    # -- plumbing ----------------------------------------------------------------------------

    def _require_leader_accepting(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self.leadership_transferee is not None:
            raise ProposalDroppedError(
                f"leadership is being transferred to {self.leadership_transferee}"
            )

    def _send(self, message: Message) -> None:
        self._messages.append(message)

    def _send_after_persist(self, message: Message) -> None:
        self._messages_after_persist.append(message)

    def _after_input(self) -> None:
        if self._check_invariants:
            self.assert_invariants()

    def assert_invariants(self) -> None:
        """Raise InvariantViolation when the node's state breaks a Raft invariant."""
        log = self.log
        if not log.applied <= log.committed <= log.last_index():
            raise InvariantViolation(
                f"{self.id}: applied {log.applied} <= commit {log.committed} <= "
                f"last {log.last_index()} does not hold"
            )
        if self.term < self._persisted_hard_state.term:
            raise InvariantViolation(f"{self.id}: term went below the persisted term")
        if self.role is Role.LEADER:
            if self.leader_id != self.id:
                raise InvariantViolation(f"{self.id}: leader does not know itself as leader")
            if set(self.progress) != set(log.configuration().members - {self.id}):
                raise InvariantViolation(f"{self.id}: progress does not cover the members")
            for peer, progress in self.progress.items():
                if not 0 <= progress.match_index < progress.next_index:
                    raise InvariantViolation(
                        f"{self.id}: 0 <= match {progress.match_index} < next "
                        f"{progress.next_index} does not hold for {peer}"
                    )
                if progress.next_index > log.last_index() + 1:
                    raise InvariantViolation(f"{self.id}: next index of {peer} beyond the log")
        elif self.progress:
            raise InvariantViolation(f"{self.id}: a non-leader tracks progress")
        if self.role is Role.CANDIDATE and self.vote != self.id:
            raise InvariantViolation(f"{self.id}: a candidate that did not vote for itself")
