"""Storage that lives in memory, with the crash semantics of a real disk.

Used by tests and the simulator: `persist` is "durable" the moment it returns, and a crash is
modelled by building a new node from `load()`, which returns exactly what was persisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from taskraft.raft import Entry, HardState, LogIndex, PersistedState, Snapshot, SnapshotMetadata


class MemoryStorage:
    def __init__(self, initial: PersistedState | None = None) -> None:
        initial = initial or PersistedState()
        self.hard_state = initial.hard_state
        self.snapshot = initial.snapshot
        self.entries: list[Entry] = list(initial.entries)

    def load(self) -> PersistedState:
        return PersistedState(self.hard_state, self.snapshot, tuple(self.entries))

    def persist(
        self,
        *,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
        hard_state: HardState | None,
    ) -> None:
        if snapshot is not None:
            self.snapshot = snapshot
            self.entries = []
        if entries:
            first = entries[0].index
            if self.entries and first <= self.entries[-1].index:
                del self.entries[max(0, first - self.entries[0].index) :]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.write_snapshot(snapshot.metadata, (snapshot.data,))
        self.compact_log(snapshot.metadata.index)

    def write_snapshot(self, metadata: SnapshotMetadata, chunks: Iterable[bytes]) -> None:
        self.snapshot = Snapshot(metadata, b"".join(chunks))

    def compact_log(self, snapshot_index: LogIndex) -> None:
        self.entries = [entry for entry in self.entries if entry.index > snapshot_index]

    def close(self) -> None:
        pass
