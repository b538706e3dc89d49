"""The storage of a real node: a data directory holding the log, the hard state and snapshots.

Layout of a data directory:

    LOCK                 held (flock) by the one process that owns the directory
    hard_state           term and vote, replaced atomically (hard_state_file.py)
    wal/                 the write-ahead log, one segment per file (wal.py)
    snapshots/           snapshot files, newest first in importance (snapshot_files.py)

`persist` is the group commit of one Ready batch: all its entries go to the log with a single
fdatasync. The hard state file is rewritten only when the term or the vote changes, which is
rare (elections); the commit index is not stored, because the core relearns it from the leader
and safety never depends on it. Recovery refuses to start on anything it cannot explain, with an
error that names the file and tells the operator what to do; see docs/storage.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskraft.raft import Entry, HardState, LogIndex, PersistedState, Snapshot, SnapshotMetadata
from taskraft.storage.durable_file import fsync_directory
from taskraft.storage.hard_state_file import read_hard_state, write_hard_state
from taskraft.storage.lock import DataDirectoryLock
from taskraft.storage.protocol import RECOVERY_ADVICE, StorageError, StorageFailure
from taskraft.storage.snapshot_files import SnapshotReader, SnapshotStore, SnapshotWriter
from taskraft.storage.wal import SEGMENT_SIZE_MAX_BYTES, WriteAheadLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StorageStatistics:
    """Counters for metrics and benchmarks."""

    entries_persisted: int
    log_syncs: int
    hard_state_writes: int
    snapshots_written: int


class FileStorage:
    """A `RaftStorage` on a local data directory.

    One thread at a time writes the log (`persist`, `compact_log`); `write_snapshot` may run on
    another. `StorageWriter` arranges exactly that for the asyncio node server.
    """

    def __init__(
        self,
        directory: Path,
        *,
        lock: DataDirectoryLock,
        log: WriteAheadLog,
        snapshots: SnapshotStore,
    ) -> None:
        self.directory = directory
        self._lock = lock
        self._log = log
        self._snapshots = snapshots
        self._hard_state_path = directory / "hard_state"
        self._hard_state = read_hard_state(self._hard_state_path) or HardState()
        self._failed: StorageFailure | None = None
        # Snapshot files are written on a background thread; this keeps two writers (and a
        # cleanup of temporary files) from meeting in the snapshot directory.
        self._snapshot_directory_lock = threading.Lock()
        self._entries_persisted = 0
        self._log_syncs = 0
        self._hard_state_writes = 0
        self._snapshots_written = 0

    @classmethod
    def open(
        cls, directory: Path, *, segment_size_max_bytes: int = SEGMENT_SIZE_MAX_BYTES
    ) -> FileStorage:
        """Lock the data directory (creating it if needed) and recover what it holds."""
        directory.mkdir(parents=True, exist_ok=True)
        fsync_directory(directory.parent)
        lock = DataDirectoryLock.acquire(directory)
        log: WriteAheadLog | None = None
        try:
            log = WriteAheadLog.open(
                directory / "wal", segment_size_max_bytes=segment_size_max_bytes
            )
            snapshot_directory = directory / "snapshots"
            snapshot_directory.mkdir(exist_ok=True)
            fsync_directory(directory)
            return cls(directory, lock=lock, log=log, snapshots=SnapshotStore(snapshot_directory))
        except BaseException:
            if log is not None:
                log.close()
            lock.release()
            raise

    # -- recovery ----------------------------------------------------------------------------

    def load(self) -> PersistedState:
        snapshot_metadata = self._snapshots.newest_valid()
        snapshot = None
        if snapshot_metadata is not None:
            snapshot = Snapshot(snapshot_metadata, self._snapshots.read_all(snapshot_metadata))
        entries = self._log.entries()
        if snapshot is not None and self._interrupted_log_replacement(snapshot, entries):
            # A snapshot from the leader is made durable before the log it replaces is deleted;
            # a crash in between leaves old entries that disagree with it. They were never part
            # of the leader's log, so they are dropped (the snapshot itself is intact).
            logger.warning(
                "%s: the log disagrees with the snapshot at index %d: finishing the interrupted "
                "replacement of the log by that snapshot",
                self.directory,
                snapshot.metadata.index,
            )
            try:
                self._log.reset(LogIndex(snapshot.metadata.index + 1))
            except StorageFailure as failure:
                self._failed = failure
                raise
            entries = []
        self._check_log_continues_snapshot(snapshot, entries)
        return PersistedState(
            hard_state=self._hard_state, snapshot=snapshot, entries=tuple(entries)
        )

    @staticmethod
    def _interrupted_log_replacement(snapshot: Snapshot, entries: list[Entry]) -> bool:
        """Whether the log holds an entry at the snapshot's index with a different term.

        A snapshot the application took always agrees with the log at its index; only a leader's
        snapshot, which replaces a divergent log, can disagree.
        """
        if not entries:
            return False
        index = snapshot.metadata.index
        position = index - entries[0].index
        if not 0 <= position < len(entries):
            return False
        return entries[position].term != snapshot.metadata.term

    def _check_log_continues_snapshot(
        self, snapshot: Snapshot | None, entries: list[Entry]
    ) -> None:
        snapshot_index = snapshot.metadata.index if snapshot is not None else 0
        # An empty log still knows which index it expects next (a reset after a snapshot).
        first = entries[0].index if entries else self._log.first_index
        if first > snapshot_index + 1:
            raise StorageError(
                f"{self.directory}: the log starts at index {first} but the newest valid snapshot "
                f"ends at {snapshot_index}: entries {snapshot_index + 1}..{first - 1} are missing. "
                + RECOVERY_ADVICE
            )

    # -- writing -----------------------------------------------------------------------------

    def persist(
        self,
        *,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
        hard_state: HardState | None,
    ) -> None:
        self._check_not_failed()
        try:
            if snapshot is not None:
                # A snapshot from the leader replaces the whole log (see ready.py).
                with self._snapshot_directory_lock:
                    self._snapshots.save(snapshot)
                    self._snapshots_written += 1
                    self._snapshots.delete_older_than(snapshot.metadata.index)
                self._log.reset(LogIndex(snapshot.metadata.index + 1))
            if entries:
                self._log.append(entries)
                self._entries_persisted += len(entries)
            if entries or snapshot is not None:
                self._log.sync()
                self._log_syncs += 1
            if hard_state is not None and (
                hard_state.term != self._hard_state.term or hard_state.vote != self._hard_state.vote
            ):
                stored = HardState(term=hard_state.term, vote=hard_state.vote, commit=LogIndex(0))
                write_hard_state(self._hard_state_path, stored)
                self._hard_state = stored
                self._hard_state_writes += 1
        except StorageFailure as failure:
            self._failed = failure
            raise

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot the application took, then drop the log segments it covers."""
        self.write_snapshot(snapshot.metadata, (snapshot.data,))
        self.compact_log(snapshot.metadata.index)

    def write_snapshot(self, metadata: SnapshotMetadata, chunks: Iterable[bytes]) -> None:
        """Stream a snapshot the application took to disk, durably, and delete older ones.

        Safe to run on a background thread while another thread appends to the log: it touches
        only the snapshot directory, which a lock serializes. The state machine passes a
        consistent copy of itself as `chunks`, so it never holds the whole encoding in memory.
        Call `compact_log` (on the log's thread) once this returned.
        """
        self._check_not_failed()
        try:
            with self._snapshot_directory_lock:
                with SnapshotWriter.create(self._snapshots.directory, metadata) as writer:
                    for chunk in chunks:
                        writer.write(chunk)
                    writer.commit()
                self._snapshots_written += 1
                self._snapshots.delete_older_than(metadata.index)
        except StorageFailure as failure:
            self._failed = failure
            raise

    def compact_log(self, snapshot_index: LogIndex) -> None:
        """Drop the whole log segments a durable snapshot at `snapshot_index` covers."""
        self._check_not_failed()
        try:
            self._log.drop_before(LogIndex(snapshot_index + 1))
        except StorageFailure as failure:
            self._failed = failure
            raise

    def open_snapshot_reader(self) -> SnapshotReader | None:
        """The newest snapshot as a stream of chunks, for followers and backups."""
        metadata = self._snapshots.newest_valid()
        return self._snapshots.open_reader(metadata) if metadata is not None else None

    def statistics(self) -> StorageStatistics:
        return StorageStatistics(
            entries_persisted=self._entries_persisted,
            log_syncs=self._log_syncs,
            hard_state_writes=self._hard_state_writes,
            snapshots_written=self._snapshots_written,
        )

    def close(self) -> None:
        self._log.close()
        self._lock.release()

    def _check_not_failed(self) -> None:
        if self._failed is not None:
            raise StorageFailure(
                f"{self.directory}: storage failed earlier ({self._failed}); the node must stop"
            ) from self._failed


__all__ = ["SEGMENT_SIZE_MAX_BYTES", "FileStorage", "StorageStatistics"]
