"""Hypothesis strategies for every Raft message, valid for the peer codec by construction."""

from __future__ import annotations

from hypothesis import strategies as st

from taskraft.peer.limits import WIRE_INTEGER_MAX
from taskraft.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogIndex,
    Message,
    NodeId,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotMetadata,
    Term,
    TimeoutNow,
)

wire_integers = st.integers(0, WIRE_INTEGER_MAX) | st.sampled_from([0, 1, WIRE_INTEGER_MAX])
terms = wire_integers.map(Term)
indexes = wire_integers.map(LogIndex)
# Short ids most of the time, and ids at the 255-byte bound (127 two-byte characters + 1).
node_ids = (
    st.text(min_size=1, max_size=16)
    | st.just("n" + "é" * 127)
    | st.text(st.characters(max_codepoint=127), min_size=255, max_size=255)
).map(NodeId)


@st.composite
def configurations(draw: st.DrawFn) -> Configuration:
    members = draw(st.lists(node_ids, unique=True, max_size=8))
    split = draw(st.integers(0, len(members)))
    addressed = draw(st.lists(st.sampled_from(members), unique=True) if members else st.just([]))
    addresses = tuple(
        (member, draw(st.text(min_size=1, max_size=40).filter(lambda text: text.isprintable())))
        for member in addressed
    )
    return Configuration(
        voters=frozenset(members[:split]), learners=frozenset(members[split:]), addresses=addresses
    )


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    """Consecutive entries whose terms rise from previous_log_term to at most the term."""
    term = draw(st.integers(1, WIRE_INTEGER_MAX))
    previous_log_term = draw(st.integers(0, term))
    count = draw(st.integers(0, 6))
    previous_log_index = draw(st.integers(0, WIRE_INTEGER_MAX - count))
    entry_terms = sorted(
        draw(st.lists(st.integers(max(previous_log_term, 1), term), min_size=count, max_size=count))
    )
    entries: list[Entry] = []
    for position, entry_term in enumerate(entry_terms):
        kind = draw(st.sampled_from(EntryKind))
        if kind is EntryKind.CONFIGURATION:
            data = draw(configurations()).encode()
        else:
            data = draw(st.binary(max_size=64))
        index = LogIndex(previous_log_index + 1 + position)
        entries.append(Entry(Term(entry_term), index, kind, data))
    return AppendEntries(
        sender=draw(node_ids),
        recipient=draw(node_ids),
        term=Term(term),
        previous_log_index=LogIndex(previous_log_index),
        previous_log_term=Term(previous_log_term),
        entries=tuple(entries),
        leader_commit=draw(indexes),
        read_round=draw(wire_integers),
        heartbeat=draw(st.booleans()),
    )


snapshot_metadata = st.builds(
    SnapshotMetadata, index=indexes, term=terms, configuration=configurations()
)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        RequestVote,
        sender=node_ids,
        recipient=node_ids,
        term=terms,
        last_log_index=indexes,
        last_log_term=terms,
        pre_vote=st.booleans(),
        leadership_transfer=st.booleans(),
    ),
    st.builds(
        RequestVoteResponse,
        sender=node_ids,
        recipient=node_ids,
        term=terms,
        granted=st.booleans(),
        pre_vote=st.booleans(),
    ),
    append_entries(),
    st.builds(
        AppendEntriesResponse,
        sender=node_ids,
        recipient=node_ids,
        term=terms,
        success=st.booleans(),
        match_index=indexes,
        rejected_index=indexes,
        conflict_index=indexes,
        conflict_term=st.none() | terms,
        read_round=wire_integers,
        heartbeat=st.booleans(),
    ),
    st.builds(
        InstallSnapshot,
        sender=node_ids,
        recipient=node_ids,
        term=terms,
        metadata=snapshot_metadata,
        offset=wire_integers,
        data=st.binary(max_size=256),
        done=st.booleans(),
    ),
    st.builds(
        InstallSnapshotResponse,
        sender=node_ids,
        recipient=node_ids,
        term=terms,
        snapshot_index=indexes,
        next_offset=wire_integers,
        done=st.booleans(),
        refused=st.booleans(),
    ),
    st.builds(TimeoutNow, sender=node_ids, recipient=node_ids, term=terms),
    st.builds(
        ReadIndexRequest,
        sender=node_ids,
        recipient=node_ids,
        term=terms,
        request_id=wire_integers,
    ),
    st.builds(
        ReadIndexResponse,
        sender=node_ids,
        recipient=node_ids,
        term=terms,
        request_id=wire_integers,
        index=indexes,
        success=st.booleans(),
    ),
)
