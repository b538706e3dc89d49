"""What applying a command or asking a query returns: immutable values the server encodes.

They are plain data with no reference into the state machine, so the server may keep or send
them after later commands changed the state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class QueueKind(enum.StrEnum):
    """How a queue orders its ready tasks; both serve the lowest priority first, FIFO within it."""

    # A binary heap on (priority, sequence): any 64-bit priority, O(log n) per operation.
    HEAP = "heap"
    # One FIFO per priority of a bounded range and a bitmap of the non-empty ones: O(1).
    BUCKETS = "buckets"


@dataclass(frozen=True, slots=True)
class QueuePolicies:
    """The policies a queue was created with; see `CreateQueue` for their meaning."""

    kind: QueueKind
    max_size: int | None
    max_payload_bytes: int | None
    priority_range: tuple[int, int] | None
    lease_ms_default: int
    max_deliveries: int | None
    dead_letter_queue: str | None


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Tasks of a queue by state; their sum is what `max_size` bounds."""

    ready: int
    delayed: int
    leased: int

    @property
    def total(self) -> int:
        return self.ready + self.delayed + self.leased


@dataclass(frozen=True, slots=True)
class QueueDescription:
    name: str
    policies: QueuePolicies
    counts: QueueCounts


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """The task's id; `duplicate` when an earlier enqueue with the same key created it."""

    task_id: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class DeliveredTask:
    """A task handed out by a dequeue.

    `deliveries` counts this delivery too (1 the first time). `lease_token` and
    `lease_expires_ms` (in log time) are None when the dequeue auto-acknowledged the task.
    """

    task_id: int
    queue: str
    priority: int
    payload: bytes
    deliveries: int
    lease_token: int | None
    lease_expires_ms: int | None


@dataclass(frozen=True, slots=True)
class EnqueueManyResult:
    """The ids of an `EnqueueMany`'s tasks, in its order; `duplicates[i]` when task i's key named
    a task enqueued before, or earlier in the same batch (its id is then that task's)."""

    task_ids: tuple[int, ...]
    duplicates: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class DequeuedTasks:
    """The tasks a `DequeueMany` took, in serving order (possibly none), and the lease they got:
    `lease_ms` is the command's, or the queue's default when it named none (0: no lease)."""

    tasks: tuple[DeliveredTask, ...]
    lease_ms: int


@dataclass(frozen=True, slots=True)
class AckManyResult:
    """The acks of an `AckMany` that failed, as (index of the task, error code) in task order,
    the code the single `Ack` would have raised; empty when every task was acknowledged."""

    failures: tuple[tuple[int, int], ...]


__all__ = [
    "AckManyResult",
    "DeliveredTask",
    "DequeuedTasks",
    "EnqueueManyResult",
    "EnqueueResult",
    "QueueCounts",
    "QueueDescription",
    "QueueKind",
    "QueuePolicies",
]
