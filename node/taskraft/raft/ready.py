"""The batch of work the Raft core hands to its driver, and the order in which it must be done.

This type carries the durability contract of the whole system. For each `Ready` the driver must:

1. Persist `snapshot` (if any; it replaces every stored entry, since the log it came with
   diverged or was behind), then `entries` (first truncating any stored entries at or after
   `entries[0].index`), then `hard_state` (if any), and fsync. A failed fsync stops the node.
2. Send `messages`. They may go out before or during step 1: they never promise anything about
   this node's disk. Only the leader's replication is sent this way, which is how the leader
   writes its log in parallel with replicating it (thesis 10.2.1); everything a vote or an
   acknowledgement depends on waits for step 3.
3. Only after step 1 completed, send `messages_after_persist`: votes and acknowledgements of
   entries, which are promises that the fsync made true. Sending them earlier can lose committed
   entries or elect two leaders after a crash.
4. Restore the state machine from `snapshot` if it is set, then apply `committed_entries` in order
   and serve `read_states` once the applied index reaches them.
5. Call `RaftNode.advance(ready)` with this very object, before calling anything else on the node.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskraft.raft.messages import Message
from taskraft.raft.types import Entry, HardState, ReadState, Snapshot, SoftState


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    messages_after_persist: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()

    def needs_persist(self) -> bool:
        return self.hard_state is not None or self.snapshot is not None or bool(self.entries)
