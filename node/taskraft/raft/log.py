"""The in-memory replicated log of one node: entries after its snapshot, and what is stable.

The core keeps the whole log suffix after the latest snapshot in memory; snapshots bound it. The
driver persists what `unstable_entries()` returns and reports it with `mark_persisted`, which is the
only way an entry becomes stable: that distinction is what lets the core hold back acknowledgements
until the fsync that makes them true.

Configurations take effect as soon as they are appended, committed or not (thesis 4.1); the log
therefore remembers where its configuration entries are, so that truncating a conflicting suffix
restores the configuration that preceded it.
"""

from __future__ import annotations

from taskraft.raft.types import (
    Configuration,
    Entry,
    EntryKind,
    LogIndex,
    Snapshot,
    Term,
)


class RaftLog:
    def __init__(self, snapshot: Snapshot, entries: tuple[Entry, ...], commit: LogIndex) -> None:
        self.snapshot = snapshot
        self._entries: list[Entry] = [e for e in entries if e.index > snapshot.metadata.index]
        for position, entry in enumerate(self._entries):
            expected = snapshot.metadata.index + 1 + position
            if entry.index != expected:
                raise ValueError(f"persisted log is not contiguous at index {expected}")
        self.committed = LogIndex(max(snapshot.metadata.index, min(commit, self.last_index())))
        self.applied = snapshot.metadata.index
        # Entries at or below this index are on stable storage.
        self.persisted_index = self.last_index()
        # True when `snapshot` was received from the leader and is not on stable storage yet.
        self.snapshot_unpersisted = False
        # Configuration entries of the log, decoded once: (index, configuration), in log order.
        self._configurations: list[tuple[LogIndex, Configuration]] = [
            (e.index, Configuration.decode(e.data))
            for e in self._entries
            if e.kind is EntryKind.CONFIGURATION
        ]

    # -- positions ---------------------------------------------------------------------------

    def first_index(self) -> LogIndex:
        return LogIndex(self.snapshot.metadata.index + 1)

    def last_index(self) -> LogIndex:
        if self._entries:
            return self._entries[-1].index
        return self.snapshot.metadata.index

    def last_term(self) -> Term:
        if self._entries:
            return self._entries[-1].term
        return self.snapshot.metadata.term

    def term_at(self, index: int) -> Term | None:
        """The term of the entry at `index`, or None when it is compacted away or not there yet."""
        snapshot_index = self.snapshot.metadata.index
        if index == snapshot_index:
            return self.snapshot.metadata.term
        if index < snapshot_index or index > self.last_index():
            return None
        return self._entries[index - snapshot_index - 1].term

    def entry_at(self, index: int) -> Entry:
        return self._entries[index - self.snapshot.metadata.index - 1]

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a candidate's log is at least as up to date as ours (thesis 3.6.1)."""
        return (last_term, last_index) >= (self.last_term(), self.last_index())

    def first_index_of_term(self, index: LogIndex) -> LogIndex:
        """The first index of the run of entries that share the term of the entry at `index`."""
        term = self.term_at(index)
        first = index
        while first - 1 > self.snapshot.metadata.index and self.term_at(first - 1) == term:
            first = LogIndex(first - 1)
        return first

    def last_index_of_term(self, term: Term) -> LogIndex | None:
        """The last index of an entry with `term`, scanning back from the end; None if absent."""
        for entry in reversed(self._entries):
            if entry.term == term:
                return entry.index
            if entry.term < term:
                return None
        if self.snapshot.metadata.term == term:
            return self.snapshot.metadata.index
        return None

    # -- configuration -----------------------------------------------------------------------

    def configuration(self) -> Configuration:
        """The latest configuration in the log, which is the one in force (thesis 4.1)."""
        if self._configurations:
            return self._configurations[-1][1]
        return self.snapshot.metadata.configuration

    def configuration_index(self) -> LogIndex:
        """Index of the entry that set the current configuration (the snapshot's if none)."""
        if self._configurations:
            return self._configurations[-1][0]
        return self.snapshot.metadata.index

    def configuration_at(self, index: LogIndex) -> Configuration:
        for configuration_index, configuration in reversed(self._configurations):
            if configuration_index <= index:
                return configuration
        return self.snapshot.metadata.configuration

    # -- changes -----------------------------------------------------------------------------

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Append entries that directly follow the last one (the leader's own proposals)."""
        for entry in entries:
            assert entry.index == self.last_index() + 1, "appended entries must be contiguous"
            self._entries.append(entry)
            if entry.kind is EntryKind.CONFIGURATION:
                self._configurations.append((entry.index, Configuration.decode(entry.data)))

    def merge_from_leader(self, entries: tuple[Entry, ...]) -> None:
        """Append the leader's entries after a matching prefix, cutting any conflicting suffix.

        Entries the log already holds with the same term are skipped rather than rewritten, so a
        duplicated or reordered AppendEntries never truncates entries that a later one added
        (the log matching property makes them identical).
        """
        for position, entry in enumerate(entries):
            existing_term = self.term_at(entry.index)
            if existing_term == entry.term:
                continue
            if entry.index <= self.snapshot.metadata.index:
                continue
            if existing_term is not None:
                self._truncate_from(entry.index)
            self.append(entries[position:])
            return

    def _truncate_from(self, index: LogIndex) -> None:
        assert index > self.committed, f"truncating committed entry {index} <= {self.committed}"
        del self._entries[index - self.snapshot.metadata.index - 1 :]
        while self._configurations and self._configurations[-1][0] >= index:
            self._configurations.pop()
        self.persisted_index = LogIndex(min(self.persisted_index, index - 1))

    def slice(self, low: int, high: int, size_max_bytes: int) -> tuple[Entry, ...]:
        """Entries in [low, high], at least one when any exist, at most `size_max_bytes` worth."""
        offset = self.snapshot.metadata.index + 1
        selected: list[Entry] = []
        size = 0
        for entry in self._entries[low - offset : high - offset + 1]:
            size += entry.size_bytes()
            if selected and size > size_max_bytes:
                break
            selected.append(entry)
        return tuple(selected)

    def commit_to(self, index: int) -> bool:
        if index <= self.committed:
            return False
        assert index <= self.last_index(), f"commit {index} beyond last index {self.last_index()}"
        self.committed = LogIndex(index)
        return True

    def unstable_entries(self) -> tuple[Entry, ...]:
        offset = self.snapshot.metadata.index + 1
        return tuple(self._entries[self.persisted_index + 1 - offset :])

    def mark_persisted(self, last_index: LogIndex, last_term: Term) -> None:
        """Entries up to `last_index` are stable now, unless they were replaced meanwhile."""
        if self.term_at(last_index) == last_term and last_index > self.persisted_index:
            self.persisted_index = last_index

    def committed_to_apply(self, size_max_bytes: int) -> tuple[Entry, ...]:
        return self.slice(self.applied + 1, self.committed, size_max_bytes)

    def applied_to(self, index: LogIndex) -> None:
        assert self.applied <= index <= self.committed, "applied must stay within committed"
        self.applied = index

    # -- snapshots ---------------------------------------------------------------------------

    def compact(self, snapshot: Snapshot) -> None:
        """Adopt a snapshot the application took at an applied index, dropping the log before it."""
        index = snapshot.metadata.index
        assert self.snapshot.metadata.index < index <= self.applied
        del self._entries[: index - self.snapshot.metadata.index]
        self._configurations = [(i, c) for i, c in self._configurations if i > index]
        self.snapshot = snapshot

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader (thesis 5.3)."""
        assert snapshot.metadata.index > self.committed
        self._entries = []
        self._configurations = []
        self.snapshot = snapshot
        self.committed = snapshot.metadata.index
        self.applied = snapshot.metadata.index
        self.persisted_index = snapshot.metadata.index
        self.snapshot_unpersisted = True
