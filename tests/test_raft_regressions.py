"""Regression tests for the bugs a review of the Raft core found, one section per finding.

Each test is named for the guarantee it keeps and says what went wrong before. Most drive the
scenario harness (tests/scenarios/harness.py) from Python rather than from a transcript, because
they hold messages back, crash a node in the middle of a Ready loop or count hundreds of ticks.
"""

from __future__ import annotations

import math
import random

import pytest

from scenarios.harness import Cluster, Member
from taskraft.raft import (
    AppendEntries,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogIndex,
    Message,
    NodeId,
    RaftNode,
    RaftOptions,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    Term,
    TimeoutNow,
    bootstrap_state,
)
from taskraft.raft.progress import ProgressState


class RecordingCluster(Cluster):
    """The scenario cluster, also recording every message sent and every ReadState handed out.

    A message is recorded when a node sends it, even if a partition then drops it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Message] = []
        self.read_states: list[tuple[str, ReadState]] = []

    def _send(self, message: Message) -> bool:
        self.sent.append(message)
        return super()._send(message)

    def _apply(self, member: Member, ready: Ready) -> None:
        self.read_states.extend((member.node_id, state) for state in ready.read_states)
        super()._apply(member, ready)

    def do(self, *command_lines: str) -> list[str]:
        """Run scenario commands in order; returns their output."""
        output: list[str] = []
        for line in command_lines:
            output.extend(self.run(line, []))
        return output

    def node(self, node_id: str) -> RaftNode:
        return self.members[node_id].node

    def hold(self, recipient: str, kind: type | None = None) -> list[Message]:
        """Take the messages queued for `recipient` (of one type) out of the network."""
        queue = self.queues.get(recipient, [])
        held = [m for m in queue if kind is None or isinstance(m, kind)]
        self.queues[recipient] = [m for m in queue if m not in held]
        return held

    def inject(self, *messages: Message) -> None:
        """Put messages (held back, duplicated or forged) into the network."""
        for message in messages:
            self.queues.setdefault(message.recipient, []).append(message)

    def sent_to(self, recipient: str, kind: type) -> list[Message]:
        return [m for m in self.sent if m.recipient == recipient and isinstance(m, kind)]


def three_node_cluster(options: str = "") -> RecordingCluster:
    """Nodes 1, 2 and 3, with 1 elected leader and everything replicated."""
    cluster = RecordingCluster()
    cluster.do(
        f"add-nodes 3 voters=(1,2,3) {options}".strip(), "campaign 1", "stabilize quiet=true"
    )
    assert cluster.node("1").role is Role.LEADER
    return cluster


def cut_off_node_3_behind_a_snapshot(cluster: RecordingCluster, proposals: int) -> None:
    """Leader 1 commits `proposals` commands without node 3, then compacts them all away."""
    cluster.do("isolate 3")
    for number in range(proposals):
        cluster.do(f"propose 1 value-{number:04d}", "stabilize 1 2 quiet=true")
    cluster.do(f"compact 1 {cluster.node('1').applied_index}", "heal")


def assert_no_node_commits_another_entry_where_a_node_applied(cluster: Cluster) -> None:
    """State Machine Safety (thesis 3.6.3) as seen from the state machines."""
    for applier_id, applier in cluster.members.items():
        for index, data in applier.applied:
            for other_id, other in cluster.members.items():
                log = other.node.log
                if not log.first_index() <= index <= other.node.commit_index:
                    continue
                entry = log.entry_at(LogIndex(index))
                assert entry.kind is EntryKind.COMMAND and entry.data == data, (
                    f"node {applier_id} applied {data!r} at index {index}, "
                    f"but node {other_id} committed {entry} there"
                )


# -- 1. vote requests are sent only after the candidate's term and log are durable ------------


@pytest.mark.parametrize("campaign", ["pre-vote", "vote", "leadership-transfer"])
def test_vote_requests_wait_until_the_candidates_log_is_persisted(campaign: str) -> None:
    """A (pre-)vote request vouches for the candidate's term and log: it must wait for the fsync.

    RequestVote carries the candidate's last log index and term, and voters grant on the strength
    of them (election restriction, thesis 3.6.1). What a request claims must therefore be on disk
    before it leaves (thesis 3.8; etcd sends a non-leader's messages, MsgVote and MsgPreVote
    included, only after the Ready's entries and HardState are persisted). Only the leader's
    AppendEntries may go out before its own fsync (thesis 10.2.1).

    Before the fix vote and pre-vote requests were in `Ready.messages`, sent before the fsync. A
    candidate that campaigned on entries it received in the same batch (here a TimeoutNow right
    behind an append) and crashed before the fsync had grants given for a log it no longer held.
    """
    options = RaftOptions(pre_vote=campaign != "vote")
    candidate = RaftNode(
        node_id=NodeId("3"),
        persisted=bootstrap_state(Configuration(voters=frozenset(map(NodeId, "123")))),
        options=options,
        random_source=random.Random(1),
        check_invariants=True,
    )
    entries = tuple(
        Entry(Term(1), LogIndex(index), EntryKind.COMMAND, f"task-{index}".encode())
        for index in (1, 2, 3)
    )
    candidate.step(
        AppendEntries(NodeId("1"), NodeId("3"), Term(1), LogIndex(0), Term(0), entries, LogIndex(0))
    )
    if campaign == "leadership-transfer":
        candidate.step(TimeoutNow(NodeId("1"), NodeId("3"), Term(1)))
    else:
        candidate.campaign()

    ready = candidate.ready()
    assert ready.entries == entries, "the campaign is on entries not yet persisted"
    early = [m for m in ready.messages if isinstance(m, RequestVote)]
    assert not early, f"vote requests sent before the fsync: {early}"
    requests = [m for m in ready.messages_after_persist if isinstance(m, RequestVote)]
    assert sorted(m.recipient for m in requests) == ["1", "2"]
    for request in requests:
        assert request.pre_vote is (campaign == "pre-vote")
        assert (request.last_log_index, request.last_log_term) == (3, 1)


@pytest.mark.parametrize("second_campaign", ["election-timeout", "duplicated-timeout-now"])
def test_a_candidate_that_crashes_before_its_fsync_cannot_win_with_grants_for_its_lost_log(
    second_campaign: str,
) -> None:
    """Grants won with a log that a crash then lost must not elect a leader (thesis 3.6.1, 3.8).

    Leader 1 commits x, y, z at 3..5 with node 2. Its delayed append of 3..5 reaches node 3 in one
    batch with a delayed TimeoutNow, so 3 campaigns in term 2 claiming last index 5. The driver
    sends what the Ready allows before the fsync, then 3 crashes before the fsync and restarts
    with a log ending at 2. It campaigns again in term 2 (after an election timeout with pre-vote
    off, or on a duplicated TimeoutNow with default options), and the grants of the first
    campaign arrive.

    Before the fix the RequestVotes left before the fsync, 1 and 2 granted them, and the restarted
    3 counted those grants, became leader without 3..5 and committed its no-op at index 3 with
    node 2, where node 1 had applied x: a committed entry was lost.
    """
    options = "pre-vote=false" if second_campaign == "election-timeout" else ""
    cluster = three_node_cluster(options)
    cluster.do("propose 1 a", "stabilize quiet=true", "tick-heartbeat 1", "stabilize quiet=true")
    # Leader 1 starts a transfer to 3; its TimeoutNow is delayed in the network.
    cluster.do("transfer-leadership 1 3", "process-ready 1")
    delayed_timeout_now = cluster.hold("3", TimeoutNow)
    assert delayed_timeout_now
    # The transfer times out; 1 commits x, y, z with 2 while its append to 3 is delayed.
    for _ in range(cluster.node("1").options.election_timeout_ticks):
        cluster.do("tick-heartbeat 1", "stabilize 1 2 quiet=true")
    cluster.hold("3")
    cluster.do("propose-many 1 x y z", "stabilize 1 2 quiet=true")
    delayed_append = cluster.hold("3")
    assert cluster.node("1").commit_index == 5

    # Both reach 3 in one batch: it appends 3..5 and campaigns on them before they are durable.
    cluster.inject(*delayed_append, *delayed_timeout_now)
    cluster.do("deliver-msgs 3")
    assert cluster.node("3").role is Role.CANDIDATE
    ready = cluster.node("3").ready()
    assert ready.entries, "the campaign must be on entries not yet persisted"
    for message in ready.messages:  # what a driver may send while its fsync runs...
        cluster.inject(message)
    cluster.do("crash 3")  # ...and the fsync never completes
    assert cluster.node("3").log.last_index() == 2

    # Whatever 1 and 2 answered is delayed until 3 campaigns again in the same term.
    cluster.do("deliver-msgs 1 2", "process-ready 1 2")
    answers = cluster.hold("3", RequestVoteResponse)
    if second_campaign == "election-timeout":
        cluster.do("tick-election 3")
    else:
        cluster.inject(delayed_timeout_now[0])
        cluster.do("deliver-msgs 3")
    assert cluster.node("3").term == 2
    cluster.do("process-ready 3")
    cluster.inject(*answers)
    cluster.do("deliver-msgs 3", "process-ready 3")

    # Node 1 is slow from now on; 2 and 3 go on by themselves.
    cluster.do("partition (1) (2,3)", "stabilize 2 3 quiet=true")
    for _ in range(3):
        cluster.do("tick-heartbeat 3", "stabilize 2 3 quiet=true")
    assert_no_node_commits_another_entry_where_a_node_applied(cluster)


# -- 2. a snapshot transfer finishes even if the leader compacts again meanwhile ---------------


def test_a_snapshot_transfer_is_not_restarted_when_the_leader_compacts_again() -> None:
    """The leader keeps sending the snapshot it started with (thesis 5.1, Figure 5.3).

    Node 3 is behind a compacted log and receives a snapshot in 100-byte chunks, one per round
    trip, while the leader keeps taking proposals and compacting every few ticks.

    Before the fix every compaction made the next heartbeat restart the transfer from offset 0
    with the new snapshot, so a follower whose transfer took longer than the interval between
    compactions never caught up, on a healthy network.
    """
    cluster = three_node_cluster("snapshot-chunk=100")
    cut_off_node_3_behind_a_snapshot(cluster, proposals=150)
    leader = cluster.node("1")
    first_snapshot = leader.log.snapshot.metadata.index
    compactions_during_transfer = 0
    caught_up_at = None
    for tick in range(400):
        cluster.do(
            "tick-all",
            f"propose 1 w{tick:05d}",
            "process-ready 1 2 3",
            "deliver-msgs",
            "process-ready 1 2 3",
            "deliver-msgs",
        )
        first_installed = any(
            m.done and m.snapshot_index == first_snapshot
            for m in cluster.sent_to("1", InstallSnapshotResponse)
        )
        if tick < 60 and tick % 5 == 4:
            cluster.do(f"compact 1 {leader.applied_index}")
            if not first_installed:
                compactions_during_transfer += 1
        progress = leader.progress[NodeId("3")]
        if tick >= 60 and progress.state is ProgressState.REPLICATE:
            caught_up_at = tick
            break
    assert compactions_during_transfer >= 2, "the leader must compact during the transfer"

    chunks = cluster.sent_to("3", InstallSnapshot)
    last_of_first = next((n for n, m in enumerate(chunks) if m.done), len(chunks) - 1)
    first_transfer = chunks[: last_of_first + 1]
    assert {m.metadata.index for m in first_transfer} == {first_snapshot}, (
        "the transfer switched to a newer snapshot before finishing the first one"
    )
    offsets = [m.offset for m in first_transfer]
    assert offsets == sorted(set(offsets)), f"the offset did not keep advancing: {offsets}"
    assert first_transfer[-1].done
    assert any(
        m.done and m.snapshot_index == first_snapshot
        for m in cluster.sent_to("1", InstallSnapshotResponse)
    ), "node 3 did not install the first snapshot"
    assert caught_up_at is not None, "node 3 did not catch up"
    cluster.do("stabilize quiet=true", "tick-heartbeat 1", "stabilize quiet=true")
    assert cluster.node("3").commit_index == leader.commit_index
    assert cluster.members["3"].applied == cluster.members["1"].applied


# -- 3. one snapshot chunk in flight per follower ------------------------------------------------


def test_a_silent_follower_gets_a_snapshot_chunk_at_most_once_per_election_timeout() -> None:
    """Snapshot chunks are flow-controlled: one in flight, resent only after silence.

    Like etcd, whose Progress in StateSnapshot is paused until the transfer is reported, the
    leader sends the next chunk when the follower answers the previous one (InstallSnapshot is
    sent in chunks, thesis 5.1, Figure 5.3), and resends it only after an election timeout without
    an answer. ReadIndex heartbeat rounds (thesis 6.4) carry no snapshot data.

    Before the fix every heartbeat and every read_index() call sent another copy of the current
    chunk to a follower in SNAPSHOT state, acknowledged or not: a slow follower got a flood of
    duplicate chunks, one more per tick and per read.
    """
    cluster = three_node_cluster("snapshot-chunk=1000")
    cut_off_node_3_behind_a_snapshot(cluster, proposals=20)
    leader = cluster.node("1")
    for _ in range(10):
        if leader.progress[NodeId("3")].state is ProgressState.SNAPSHOT:
            break
        cluster.do(
            "tick-heartbeat 1",
            "process-ready 1",
            "deliver-msgs 3",
            "process-ready 3",
            "stabilize 1 2 quiet=true",
        )
    assert leader.progress[NodeId("3")].state is ProgressState.SNAPSHOT
    # From here on node 3 is silent; 1 and 2 stay healthy.
    cluster.do("isolate 3")
    heartbeats = 100
    for _ in range(heartbeats):
        cluster.do("tick-heartbeat 1", "stabilize 1 2 quiet=true")
    ticks = heartbeats * leader.options.heartbeat_interval_ticks
    bound = math.ceil(ticks / leader.options.election_timeout_ticks) + 1
    chunks = len(cluster.sent_to("3", InstallSnapshot))
    assert chunks <= bound, f"{chunks} chunks to a silent follower in {ticks} ticks"

    for request_id in range(1000, 1200):
        leader.read_index(request_id)
    cluster.do("stabilize 1 2 quiet=true")
    assert sum(1 for node, _ in cluster.read_states if node == "1") == 200
    assert len(cluster.sent_to("3", InstallSnapshot)) == chunks, "read_index() sent chunks"


# -- 4. retrying a leadership transfer keeps its deadline ----------------------------------------


def test_retrying_a_leadership_transfer_does_not_extend_its_deadline() -> None:
    """A transfer that does not complete within an election timeout is abandoned (thesis 3.10).

    The leader refuses proposals while it hands over leadership, and gives up after about an
    election timeout so that the cluster is not left without a working leader. A repeated request
    for the same target is ignored, as etcd ignores a transfer to the transferee in progress.

    Before the fix each re-issue restarted the transfer's clock: a driver retrying the transfer
    every few ticks to an unreachable target blocked every proposal forever.
    """
    cluster = three_node_cluster()
    cluster.do("isolate 3")
    leader = cluster.node("1")
    timeout = leader.options.election_timeout_ticks
    refused_in_a_row = longest_refusal = 0
    for tick in range(10 * timeout):
        if tick % 3 == 0:
            assert cluster.do("transfer-leadership 1 3") == ["ok"]
        cluster.do("tick 1", "tick 2", "stabilize 1 2 quiet=true")
        (answer,) = cluster.do(f"propose 1 p{tick}")
        refused_in_a_row = 0 if answer.startswith("ok") else refused_in_a_row + 1
        longest_refusal = max(longest_refusal, refused_in_a_row)
    assert (leader.role, leader.term) == (Role.LEADER, 1)
    assert longest_refusal <= timeout, (
        f"proposals refused for {longest_refusal} ticks in a row; a transfer lasts at most "
        f"{timeout}"
    )


# -- 5. a snapshot the follower cannot take is refused, and retried with backoff ----------------


def test_a_follower_refuses_a_snapshot_too_large_for_it_and_the_leader_backs_off() -> None:
    """A follower tells the leader it will not take a snapshot beyond snapshot_size_max_bytes.

    The follower refuses rather than buffering without bound (InstallSnapshot, thesis 5.1); the
    leader then waits exponentially longer between attempts, so the chunks it sends over N ticks
    grow only with log(N).

    Before the fix the follower dropped the transfer without a word; the leader, never told,
    resent the snapshot on every heartbeat for ever.
    """
    chunk_size, size_max = 50, 120
    cluster = three_node_cluster(f"snapshot-chunk={chunk_size} snapshot-max={size_max}")
    cut_off_node_3_behind_a_snapshot(cluster, proposals=20)
    leader = cluster.node("1")
    assert len(leader.log.snapshot.data) > size_max
    timeout = leader.options.election_timeout_ticks
    chunks_after: dict[int, int] = {}
    for tick in range(1, 401):
        cluster.do("tick 1", "stabilize quiet=true")
        chunks_after[tick] = len(cluster.sent_to("3", InstallSnapshot))

    refusals = [
        m for m in cluster.sent_to("1", InstallSnapshotResponse) if getattr(m, "refused", False)
    ]
    assert refusals, "node 3 never told the leader it refuses the snapshot"
    assert cluster.node("3").commit_index < leader.commit_index
    # One attempt is the chunks up to the one that takes the follower past its bound.
    chunks_per_attempt = size_max // chunk_size + 1
    for ticks in (50, 100, 200, 400):
        attempts = math.floor(math.log2(ticks / timeout)) + 2
        assert chunks_after[ticks] <= chunks_per_attempt * attempts, (
            f"{chunks_after[ticks]} chunks in {ticks} ticks; {attempts} attempts allowed"
        )


# -- 6. a pre-vote grant counts only for the pre-campaign it answers -----------------------------


def test_a_stale_pre_vote_grant_does_not_let_an_isolated_node_depose_the_leader() -> None:
    """Only a grant for this pre-campaign (term = current + 1) counts (thesis 9.6).

    Pre-vote lets a node raise its term only once a majority says it could win now; a grant
    carries the term the node would campaign in. Node 3 holds a grant from an earlier
    pre-campaign, whose term equals 3's current term once it has followed leader 2 into it.

    Before the fix grants carrying the current term were counted too: the isolated node 3 counted
    the delayed grant, became a candidate in a new term without any current pre-vote, and on
    healing forced the healthy leader 2 to step down.
    """
    cluster = three_node_cluster()
    cluster.do("partition (1) (2,3)", "tick-election 3", "tick 2 10")
    assert cluster.node("3").role is Role.PRE_CANDIDATE
    cluster.do("process-ready 3", "deliver-msgs 2", "process-ready 2")
    stale_grants = [m for m in cluster.hold("3", RequestVoteResponse) if m.pre_vote and m.granted]
    assert stale_grants
    cluster.do("campaign 2", "stabilize 2 3 quiet=true")
    cluster.do("heal", "tick-heartbeat 2", "stabilize quiet=true")
    leader = cluster.node("2")
    assert (leader.role, leader.term) == (Role.LEADER, 2)
    assert cluster.node("3").term == 2

    cluster.do("isolate 3", "tick-election 3", "process-ready 3")
    assert cluster.node("3").role is Role.PRE_CANDIDATE
    # The delayed grant was already on its way before the link went down: it arrives.
    for grant in stale_grants:
        cluster.node("3").step(grant)
    cluster.do("process-ready 3")
    assert (cluster.node("3").role, cluster.node("3").term) == (Role.PRE_CANDIDATE, 2)
    cluster.do("heal", "tick-heartbeat 2", "stabilize quiet=true")
    assert (leader.role, leader.term) == (Role.LEADER, 2), "the healthy leader was deposed"


# -- 7. a follower takes only answers to reads it forwarded and still waits for -----------------


def test_a_follower_accepts_only_answers_to_reads_it_forwarded_and_still_waits_for() -> None:
    """A ReadState comes only from the answer to a read this node forwarded (thesis 6.4).

    A follower forwards read_index() to the leader and hands out the index the leader answers
    with. Linearizability (thesis 6.3) needs that index to belong to this very request: it must
    be at least the commit index when the request was issued.

    Before the fix a follower turned any ReadIndexResponse into a ReadState: an unsolicited one,
    a duplicate of one already answered, or one for a read forwarded before the node restarted,
    which could serve a read from an index older than the read itself. Forwarded reads are now
    tracked, up to pending_reads_max of them, the oldest forgotten first.
    """
    cluster = three_node_cluster("pending-reads=2")
    leader = cluster.node("1")

    def answer(request_id: int) -> ReadIndexResponse:
        return ReadIndexResponse(
            NodeId("1"), NodeId("2"), leader.term, request_id, leader.commit_index, True
        )

    def read_states_of_2() -> list[int]:
        return [state.request_id for node, state in cluster.read_states if node == "2"]

    cluster.inject(answer(77))
    cluster.do("stabilize quiet=true")
    assert read_states_of_2() == [], "an unsolicited answer made a ReadState"

    cluster.do("read-index 2 5", "stabilize quiet=true")
    assert read_states_of_2() == [5]
    (solicited,) = [m for m in cluster.sent_to("2", ReadIndexResponse) if m.request_id == 5]
    cluster.inject(solicited)
    cluster.do("stabilize quiet=true")
    assert read_states_of_2() == [5], "a duplicated answer made a second ReadState"

    cluster.do("read-index 2 9", "process-ready 2", "crash 2", "stabilize quiet=true")
    assert [m for m in cluster.sent_to("2", ReadIndexResponse) if m.request_id == 9]
    assert read_states_of_2() == [5], "an answer to a read from before a restart was taken"

    # With pending_reads_max=2, forwarding a third read forgets the oldest.
    cluster.do("read-index 2 11", "read-index 2 12", "read-index 2 13", "process-ready 2")
    assert len(cluster.hold("1", ReadIndexRequest)) == 3
    cluster.inject(answer(11), answer(12), answer(13))
    cluster.do("stabilize quiet=true")
    assert read_states_of_2() == [5, 12, 13]
