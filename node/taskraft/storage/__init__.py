"""Durable storage of a node's Raft state: write-ahead log, hard state and snapshots.

See docs/storage.md. `RaftStorage` is the interface the node's driver uses: `FileStorage` on a
data directory for real nodes, `MemoryStorage` for tests and the simulator. `StorageWriter`
runs a storage's writes off the asyncio event loop.
"""

from taskraft.storage.file_storage import FileStorage
from taskraft.storage.memory import MemoryStorage
from taskraft.storage.protocol import RaftStorage, StorageError, StorageFailure
from taskraft.storage.writer import StorageWriter

__all__ = [
    "FileStorage",
    "MemoryStorage",
    "RaftStorage",
    "StorageError",
    "StorageFailure",
    "StorageWriter",
]
