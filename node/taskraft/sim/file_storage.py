"""Run simulated nodes on the real file storage, each in its own data directory.

Slower than memory, so only a few seeds use it (`python -m taskraft.sim --storage file`): it
checks that the write-ahead log, hard state and snapshot files keep what the Ready contract
promises across the simulator's crashes and restarts. A restart closes the storage and recovers
it from the directory. (A process crash keeps the page cache, so this exercises recovery, not
fsync; the storage's own kill tests cover lost writes.)
"""

from __future__ import annotations

from pathlib import Path

from taskraft.raft import NodeId, PersistedState
from taskraft.storage import RaftStorage
from taskraft.storage.file_storage import FileStorage

# Small segments so that a simulated run rolls and drops many of them.
SIMULATION_SEGMENT_SIZE_MAX_BYTES = 16 * 1024


class FileStorageProvider:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def create(self, node_id: NodeId, initial: PersistedState) -> RaftStorage:
        storage = self._open(node_id)
        if initial.snapshot is not None or initial.entries:
            storage.persist(
                snapshot=initial.snapshot, entries=initial.entries, hard_state=initial.hard_state
            )
        return storage

    def reopen(self, node_id: NodeId, storage: RaftStorage) -> RaftStorage:
        storage.close()
        return self._open(node_id)

    def close(self, storages: list[RaftStorage]) -> None:
        for storage in storages:
            storage.close()

    def _open(self, node_id: NodeId) -> FileStorage:
        return FileStorage.open(
            self.directory / node_id, segment_size_max_bytes=SIMULATION_SEGMENT_SIZE_MAX_BYTES
        )
