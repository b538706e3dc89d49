"""Tunable knobs of the Raft core, each with its bound and the reason for its default.

Time is counted in ticks: the driver calls `tick()` at a fixed period (the node server uses
100 ms), so `election_timeout_ticks=10` means one to two seconds before a follower campaigns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftOptions:
    # A follower campaigns after a random timeout in [election_timeout_ticks, 2 * that); ten
    # heartbeats make a missed election unlikely on a healthy network (thesis 9.3).
    election_timeout_ticks: int = 10
    # The leader heartbeats every tick, so a follower notices a dead leader within one timeout.
    heartbeat_interval_ticks: int = 1
    # Appends in flight per follower before the leader waits for an answer (pipelining). Bounds
    # the memory a slow follower can make the leader hold, and the damage of one lost message.
    inflight_messages_max: int = 64
    # Bytes of entries in one AppendEntries: large enough to amortize a round trip over many small
    # tasks, small enough that one message never stalls the connection behind it.
    batch_size_max_bytes: int = 1024 * 1024
    # Bytes of proposals the leader accepts beyond its commit index; past it proposals are dropped
    # so an unreachable majority cannot make the leader grow its log without limit.
    uncommitted_size_max_bytes: int = 64 * 1024 * 1024
    # Bytes of committed entries handed to the application in one Ready.
    apply_batch_size_max_bytes: int = 4 * 1024 * 1024
    # Bytes of snapshot data in one InstallSnapshot chunk.
    snapshot_chunk_size_max_bytes: int = 1024 * 1024
    # Bytes of snapshot a follower buffers while receiving it; a larger snapshot is refused.
    snapshot_size_max_bytes: int = 1024 * 1024 * 1024
    # Linearizable reads waiting at the leader for a heartbeat round; more are refused.
    pending_reads_max: int = 4096
    # A learner is promoted only when it is at most this many entries behind the leader, so the
    # new voter does not stall commits while it catches up (thesis 4.2.1).
    promotion_lag_max_entries: int = 1000
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ticks < 1:
            raise ValueError("heartbeat_interval_ticks must be at least 1")
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ValueError("election_timeout_ticks must exceed heartbeat_interval_ticks")
        for name in (
            "inflight_messages_max",
            "batch_size_max_bytes",
            "uncommitted_size_max_bytes",
            "apply_batch_size_max_bytes",
            "snapshot_chunk_size_max_bytes",
            "snapshot_size_max_bytes",
            "pending_reads_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.promotion_lag_max_entries < 0:
            raise ValueError("promotion_lag_max_entries must not be negative")
