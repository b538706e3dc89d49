"""The narrow interface through which a node's driver makes Raft state durable.

The Raft core never touches a disk: its `Ready` batch says what must be persisted, and the driver
hands that to a `RaftStorage`. Every method that writes returns only once the data is durable
(fsynced), because the driver sends votes and acknowledgements as soon as it returns. A failed
fsync raises `StorageFailure` and the node must stop: an fsync is never retried, since after a
failure the kernel may have dropped the dirty pages and a retry could falsely report success.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from taskraft.raft import Entry, HardState, LogIndex, PersistedState, Snapshot, SnapshotMetadata

# What an operator does with a member whose data cannot be trusted. The member must come back
# under a NEW id: a voter that lost its disk and kept its id could vote a second time in a term
# it already voted in, and elect a second leader.
RECOVERY_ADVICE = (
    "To recover, remove this member from the cluster, wipe its data directory and add it back "
    "under a new member id, so that it receives a snapshot from the leader; never restart a "
    "wiped member under its old id."
)

# What an operator does after a failed write or fsync.
FAILURE_ADVICE = (
    "The node must stop: an fsync is never retried, since the kernel may have dropped the "
    "unsynced pages. Check the volume (space, permissions, disk errors) and restart the node "
    "only after the volume was unmounted or the machine rebooted, so that it does not read back "
    "pages that never reached the disk."
)


class StorageError(Exception):
    """The data on disk cannot be used as it is; the message says which file and what to do."""


class StorageFailure(StorageError):
    """Writing or syncing failed; the node must stop without retrying the fsync."""


class RaftStorage(Protocol):
    def load(self) -> PersistedState:
        """Recover what was persisted: hard state, newest valid snapshot, entries after it."""
        ...

    def persist(
        self,
        *,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
        hard_state: HardState | None,
    ) -> None:
        """Durably write one Ready batch with a single fsync, in the order the contract gives.

        A snapshot replaces every stored entry; `entries` replace any stored entries at or after
        `entries[0].index`; then the hard state. Returns only when all of it is durable.

        The commit index need not be made durable (a restarted node learns it again from its
        leader), and a batch whose only change is the commit index must not block on the disk:
        `StorageWriter` runs such a batch on the event loop.
        """
        ...

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Durably store a snapshot the application took, then drop the log it covers."""
        ...

    def write_snapshot(self, metadata: SnapshotMetadata, chunks: Iterable[bytes]) -> None:
        """Durably store a snapshot streamed as chunks; may run beside log writes."""
        ...

    def compact_log(self, snapshot_index: LogIndex) -> None:
        """Drop the log a durable snapshot at `snapshot_index` covers (on the log's thread)."""
        ...

    def close(self) -> None: ...
