"""What the leader knows about each follower's log, and how it decides what to send next.

A follower is in one of three states, as in etcd's raft:
- PROBE: the leader does not know where the logs match; it sends one AppendEntries at a time and
  backs off on rejection, using the follower's conflict hint to skip a whole term per round trip.
- REPLICATE: the logs match up to `match_index`; the leader streams entries optimistically,
  keeping at most `inflight_messages_max` appends unanswered (pipelining).
- SNAPSHOT: the entries the follower needs are compacted; the leader streams a snapshot in chunks.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from taskraft.raft.types import LogIndex, Snapshot


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    match_index: LogIndex
    next_index: LogIndex
    inflight_messages_max: int
    state: ProgressState = ProgressState.PROBE
    # In PROBE, an append is outstanding: wait for its answer or the next heartbeat.
    probe_sent: bool = False
    # Last index of each unanswered append, in send order.
    inflight: deque[LogIndex] = field(default_factory=deque)
    # Heard from since the last CheckQuorum round.
    recently_active: bool = False
    # In SNAPSHOT: the snapshot being sent (kept even if the leader compacts again meanwhile, so
    # the transfer finishes), the offset of the chunk in flight, and how long it went unanswered.
    snapshot: Snapshot | None = None
    snapshot_offset: int = 0
    snapshot_chunk_unanswered_ticks: int = 0
    # Times the follower refused a snapshot (too large for it); retries back off exponentially.
    snapshot_refusals: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.match_index < self.next_index, "0 <= match < next must hold"

    def become_probe(self) -> None:
        """Restart probing just after the known match."""
        self.state = ProgressState.PROBE
        self.snapshot = None
        self.next_index = LogIndex(self.match_index + 1)
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = LogIndex(self.match_index + 1)
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot = snapshot
        self.snapshot_offset = 0
        self.snapshot_chunk_unanswered_ticks = 0
        self.inflight.clear()

    def snapshot_index(self) -> LogIndex:
        assert self.snapshot is not None
        return self.snapshot.metadata.index

    def is_paused(self) -> bool:
        """Whether the leader must hold off sending more appends to this follower."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.inflight_messages_max
        return True

    def sent_entries(self, last_index: LogIndex) -> None:
        """Record an append carrying entries up to `last_index`."""
        if self.state is ProgressState.REPLICATE:
            self.next_index = LogIndex(last_index + 1)
            self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def acknowledge(self, index: LogIndex) -> bool:
        """The follower matches up to `index`; returns whether that is news."""
        self.probe_sent = False
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match_index:
            return False
        self.match_index = index
        self.next_index = LogIndex(max(self.next_index, index + 1))
        return True

    def reject(self, rejected_index: LogIndex, hint_next_index: LogIndex) -> bool:
        """The follower's log does not match at `rejected_index`; returns whether to resend.

        Rejections can arrive late or twice; only one about the latest probe (or, while
        replicating, about something past the known match) moves `next_index` back.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected_index <= self.match_index:
                return False
        elif self.state is ProgressState.PROBE:
            if rejected_index != self.next_index - 1:
                return False
        else:
            return False
        self.state = ProgressState.PROBE
        self.inflight.clear()
        self.probe_sent = False
        self.next_index = LogIndex(max(self.match_index + 1, min(hint_next_index, rejected_index)))
        return True
