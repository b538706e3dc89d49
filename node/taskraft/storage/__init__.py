"""Durable storage of a node's Raft state: write-ahead log, hard state and snapshots.

See docs/storage.md. `RaftStorage` is the interface the node's driver uses; `MemoryStorage`
keeps everything in memory for tests and the simulator.
"""

from taskraft.storage.memory import MemoryStorage
from taskraft.storage.protocol import RaftStorage, StorageError, StorageFailure

__all__ = ["MemoryStorage", "RaftStorage", "StorageError", "StorageFailure"]
