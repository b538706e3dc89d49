"""Safety checkers that watch every simulated run (Raft paper, Figure 3 / thesis Figure 3.2).

- Election safety: at most one leader per term.
- Leader completeness: a new leader holds every entry committed before it was elected.
- State machine safety: every node applies the same entry at a given index.
- Log matching: two logs holding an entry with the same index and term are identical up to it.
- Linearizable reads: a read index covers every write acknowledged before the read started.
- Exactly once: every acknowledged proposal is applied exactly once on every member at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taskraft.raft import Entry, EntryKind, LogIndex, NodeId, RaftNode, Term


class SafetyViolation(AssertionError):
    """A run broke a Raft safety property; the message says which and where."""


@dataclass(slots=True)
class SafetyChecker:
    leader_of_term: dict[Term, NodeId] = field(default_factory=dict)
    # Every entry any node applied, by index: the committed log as the cluster saw it.
    applied_entries: dict[LogIndex, Entry] = field(default_factory=dict)
    highest_applied: LogIndex = LogIndex(0)

    def saw_leader(self, node: RaftNode) -> None:
        previous = self.leader_of_term.setdefault(node.term, node.id)
        if previous != node.id:
            raise SafetyViolation(
                f"election safety: {previous} and {node.id} both lead term {node.term}"
            )
        self._check_leader_completeness(node)

    def _check_leader_completeness(self, leader: RaftNode) -> None:
        log = leader.log
        # Entries the leader applied itself were checked when it applied them.
        start = max(log.snapshot.metadata.index, log.applied) + 1
        for index in range(start, self.highest_applied + 1):
            entry = self.applied_entries.get(LogIndex(index))
            if entry is None:
                continue
            if log.term_at(index) != entry.term:
                raise SafetyViolation(
                    f"leader completeness: leader {leader.id} of term {leader.term} lacks "
                    f"committed entry {entry.term}/{entry.index}"
                )

    def saw_applied(self, node_id: NodeId, entry: Entry) -> None:
        known = self.applied_entries.setdefault(entry.index, entry)
        if known != entry:
            raise SafetyViolation(
                f"state machine safety: {node_id} applied {entry} at {entry.index} where "
                f"another node applied {known}"
            )
        if entry.index > self.highest_applied:
            self.highest_applied = entry.index

    def saw_snapshot(self, node_id: NodeId, index: LogIndex, term: Term) -> None:
        known = self.applied_entries.get(index)
        if known is not None and known.term != term:
            raise SafetyViolation(
                f"state machine safety: {node_id} installed a snapshot at {term}/{index} but "
                f"the entry applied there has term {known.term}"
            )


def check_log_matching(nodes: list[RaftNode]) -> None:
    """Log matching property across every pair of nodes (thesis 3.5)."""
    for position, first in enumerate(nodes):
        for second in nodes[position + 1 :]:
            _check_pair(first, second)


def _check_pair(first: RaftNode, second: RaftNode) -> None:
    # Entries both nodes applied were already compared with the cluster's applied log.
    low = max(
        first.log.first_index(),
        second.log.first_index(),
        min(first.log.applied, second.log.applied) + 1,
    )
    high = min(first.log.last_index(), second.log.last_index())
    # Find the highest index where both hold the same term; everything below must be identical.
    for index in range(high, low - 1, -1):
        if first.log.term_at(index) == second.log.term_at(index):
            for lower in range(low, index + 1):
                if first.log.entry_at(lower) != second.log.entry_at(lower):
                    raise SafetyViolation(
                        f"log matching: {first.id} and {second.id} agree at {index} but "
                        f"differ at {lower}"
                    )
            return


def command_id(entry: Entry) -> str | None:
    if entry.kind is not EntryKind.COMMAND:
        return None
    return entry.data.decode()
