"""Unit and property tests of the Raft core's pieces: values, log, progress, Ready ordering."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskraft.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    LogIndex,
    MembershipChange,
    MembershipChangeKind,
    NodeId,
    PersistedState,
    RaftNode,
    RaftOptions,
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
    SnapshotMetadata,
    Term,
    bootstrap_state,
)
from taskraft.raft.log import RaftLog
from taskraft.raft.progress import Progress, ProgressState

node_ids = st.text(alphabet="abcdef0123456789", min_size=1, max_size=8).map(NodeId)


def empty_log() -> RaftLog:
    metadata = SnapshotMetadata(LogIndex(0), Term(0), Configuration())
    return RaftLog(Snapshot(metadata), (), LogIndex(0))


def entries_from_terms(terms: list[int], start: int = 1) -> tuple[Entry, ...]:
    return tuple(
        Entry(Term(term), LogIndex(start + offset), data=f"{term}:{start + offset}".encode())
        for offset, term in enumerate(terms)
    )


@given(st.sets(node_ids, max_size=5), st.sets(node_ids, max_size=5))
def test_configuration_encoding_round_trips(voters: set[NodeId], learners: set[NodeId]) -> None:
    configuration = Configuration(frozenset(voters), frozenset(learners - voters))
    assert Configuration.decode(configuration.encode()) == configuration


def test_configuration_rejects_a_node_that_is_voter_and_learner() -> None:
    with pytest.raises(ValueError, match="voter and learner"):
        Configuration(frozenset({NodeId("1")}), frozenset({NodeId("1")}))


def test_membership_changes_apply_one_server_at_a_time() -> None:
    one, two = NodeId("1"), NodeId("2")
    start = Configuration(voters=frozenset({one}))
    added = MembershipChange(MembershipChangeKind.ADD_LEARNER, two).apply_to(start)
    assert added == Configuration(frozenset({one}), frozenset({two}))
    promoted = MembershipChange(MembershipChangeKind.PROMOTE_LEARNER, two).apply_to(added)
    assert promoted.voters == {one, two} and not promoted.learners
    removed = MembershipChange(MembershipChangeKind.REMOVE_MEMBER, one).apply_to(promoted)
    assert removed.voters == {two}
    with pytest.raises(ValueError, match="last voter"):
        MembershipChange(MembershipChangeKind.REMOVE_MEMBER, two).apply_to(removed)
    with pytest.raises(ValueError, match="not a learner"):
        MembershipChange(MembershipChangeKind.PROMOTE_LEARNER, one).apply_to(start)


def test_member_addresses_follow_membership_changes_and_round_trip() -> None:
    one, two = NodeId("1"), NodeId("2")
    start = Configuration(voters=frozenset({one}), addresses=((one, "a:1"),))
    assert start.encode() == b'{"voters":["1"],"learners":[],"addresses":{"1":"a:1"}}'
    added = MembershipChange(MembershipChangeKind.ADD_LEARNER, two, address="b:2").apply_to(start)
    assert added.addresses == ((one, "a:1"), (two, "b:2"))
    assert added.address_of(two) == "b:2"
    assert Configuration.decode(added.encode()) == added
    promoted = MembershipChange(MembershipChangeKind.PROMOTE_LEARNER, two).apply_to(added)
    assert promoted.addresses == added.addresses
    removed = MembershipChange(MembershipChangeKind.REMOVE_MEMBER, one).apply_to(promoted)
    assert removed.addresses == ((two, "b:2"),) and removed.address_of(one) is None
    with pytest.raises(ValueError, match="only a node added as a learner"):
        MembershipChange(MembershipChangeKind.PROMOTE_LEARNER, two, address="c:3").apply_to(added)


def test_addresses_belong_to_members_only_once() -> None:
    one = NodeId("1")
    with pytest.raises(ValueError, match="not members"):
        Configuration(voters=frozenset({one}), addresses=((NodeId("2"), "b:2"),))
    with pytest.raises(ValueError, match="two addresses"):
        Configuration(voters=frozenset({one}), addresses=((one, "a:1"), (one, "a:2")))


def test_a_configuration_without_addresses_encodes_as_before() -> None:
    configuration = Configuration(voters=frozenset({NodeId("1")}))
    assert configuration.encode() == b'{"voters":["1"],"learners":[]}'


@pytest.mark.parametrize(
    ("field", "value"),
    [("election_timeout_ticks", 1), ("heartbeat_interval_ticks", 0), ("inflight_messages_max", 0)],
)
def test_options_refuse_values_that_cannot_work(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        RaftOptions(**{field: value})


@given(
    st.lists(st.integers(1, 4), max_size=12),
    st.lists(st.integers(1, 4), max_size=12),
    st.data(),
)
def test_merging_a_leader_suffix_makes_the_logs_match(
    follower_terms: list[int], leader_terms: list[int], data: st.DataObject
) -> None:
    """Log matching (thesis 3.5): after a merge the follower holds the leader's entries."""
    follower_terms.sort()
    leader_terms.sort()
    log = empty_log()
    log.append(entries_from_terms(follower_terms))
    leader = entries_from_terms(leader_terms)
    # Merge the leader's entries after the longest prefix on which the two logs agree.
    agreed = 0
    while (
        agreed < min(len(leader), len(follower_terms))
        and leader[agreed].term == follower_terms[agreed]
    ):
        agreed += 1
    previous = data.draw(st.integers(0, agreed))
    log.merge_from_leader(leader[previous:])
    assert log.last_index() >= len(leader)
    for entry in leader:
        assert log.entry_at(entry.index) == entry


def test_a_duplicated_old_append_never_truncates_newer_entries() -> None:
    log = empty_log()
    log.append(entries_from_terms([1, 1, 1, 1]))
    log.merge_from_leader(entries_from_terms([1, 1], start=2))
    assert log.last_index() == 4


def test_truncating_a_configuration_entry_restores_the_previous_configuration() -> None:
    log = empty_log()
    new = Configuration(voters=frozenset({NodeId("1"), NodeId("2")}))
    log.append((Entry(Term(1), LogIndex(1)),))
    log.append((Entry(Term(1), LogIndex(2), kind=EntryKind.CONFIGURATION, data=new.encode()),))
    assert log.configuration() == new
    log.merge_from_leader((Entry(Term(2), LogIndex(2)),))
    assert log.configuration() == Configuration()


def test_progress_ignores_stale_rejections() -> None:
    progress = Progress(LogIndex(5), LogIndex(6), inflight_messages_max=4)
    progress.become_replicate()
    progress.sent_entries(LogIndex(8))
    assert not progress.reject(LogIndex(4), LogIndex(3)), "a rejection below match is stale"
    assert progress.reject(LogIndex(8), LogIndex(7))
    assert progress.state is ProgressState.PROBE and progress.next_index == 7


def test_progress_pauses_at_the_inflight_bound() -> None:
    progress = Progress(LogIndex(0), LogIndex(1), inflight_messages_max=2)
    progress.become_replicate()
    progress.sent_entries(LogIndex(1))
    assert not progress.is_paused()
    progress.sent_entries(LogIndex(2))
    assert progress.is_paused()
    progress.acknowledge(LogIndex(1))
    assert not progress.is_paused()


def three_node_follower(node_id: str = "2") -> RaftNode:
    configuration = Configuration(voters=frozenset(NodeId(n) for n in ("1", "2", "3")))
    return RaftNode(
        node_id=NodeId(node_id),
        persisted=bootstrap_state(configuration),
        random_source=random.Random(1),
        check_invariants=True,
    )


def test_a_vote_is_sent_only_after_it_is_persisted() -> None:
    """Ready contract: vote responses wait in messages_after_persist (thesis 3.8)."""
    follower = three_node_follower()
    follower.step(RequestVote(NodeId("1"), NodeId("2"), Term(1), LogIndex(0), Term(0)))
    ready = follower.ready()
    assert ready.hard_state is not None and ready.hard_state.vote == "1"
    assert not any(isinstance(m, RequestVoteResponse) for m in ready.messages)
    assert [type(m) for m in ready.messages_after_persist] == [RequestVoteResponse]


def test_an_append_is_acknowledged_only_after_it_is_persisted() -> None:
    follower = three_node_follower()
    entries = (Entry(Term(1), LogIndex(1), data=b"task"),)
    follower.step(
        AppendEntries(
            NodeId("1"), NodeId("2"), Term(1), LogIndex(0), Term(0), entries, LogIndex(0)
        )
    )
    ready = follower.ready()
    assert ready.entries == entries
    assert not ready.messages
    (acknowledgement,) = ready.messages_after_persist
    assert isinstance(acknowledgement, AppendEntriesResponse) and acknowledgement.match_index == 1


def test_a_leader_replicates_before_its_own_fsync_but_counts_itself_after() -> None:
    """Thesis 10.2.1: the leader's AppendEntries leave at once; its own vote on them waits."""
    leader = RaftNode(
        node_id=NodeId("1"),
        persisted=bootstrap_state(Configuration(voters=frozenset({NodeId("1")}))),
        random_source=random.Random(1),
        check_invariants=True,
    )
    while leader.role is not Role.LEADER:
        leader.advance(leader.ready())
    leader.advance(leader.ready())
    receipt = leader.propose([b"task"])
    ready = leader.ready()
    assert ready.entries[-1].index == receipt.last_index
    assert leader.commit_index < receipt.last_index, "committed before its own fsync"
    leader.advance(ready)
    assert leader.commit_index == receipt.last_index


def test_a_restarted_node_keeps_its_term_and_vote() -> None:
    follower = three_node_follower()
    follower.step(RequestVote(NodeId("3"), NodeId("2"), Term(4), LogIndex(0), Term(0)))
    ready = follower.ready()
    assert ready.hard_state is not None
    restarted = RaftNode(
        node_id=NodeId("2"),
        persisted=PersistedState(
            hard_state=ready.hard_state, snapshot=bootstrap_state(follower.configuration).snapshot
        ),
        random_source=random.Random(2),
        check_invariants=True,
    )
    assert (restarted.term, restarted.vote) == (4, "3")
    restarted.step(RequestVote(NodeId("1"), NodeId("2"), Term(4), LogIndex(9), Term(3)))
    (answer,) = restarted.ready().messages_after_persist
    assert isinstance(answer, RequestVoteResponse) and not answer.granted
