"""The internal records of the queue state, shared by the state machine and its snapshots.

A task record is immutable: every change (a dequeue, an expiry, a nack) replaces the record in
the task table instead of changing it. That is what makes a snapshot cheap: a shallow copy of
the task table is a consistent view that later commands cannot change, so it can be encoded on
another thread while the event loop keeps applying commands.
"""

from __future__ import annotations

from typing import Final, NamedTuple

# The state of a task. READY tasks sit in their queue's ready order; DELAYED and LEASED tasks
# have exactly one live entry in the deadline heap.
READY: Final = 0
DELAYED: Final = 1
LEASED: Final = 2
TASK_STATES: Final = frozenset((READY, DELAYED, LEASED))

# Where a field has no meaning in a task's state (a ready task's deadline, an unleased task's
# lease token) it holds NONE: counters start at 1, so 0 is never a real token or deadline key.
NONE: Final = 0


class TaskRecord(NamedTuple):
    """One task. Field order is the snapshot's wire order: do not reorder without a new version.

    `sequence` is the task's position key: in READY, its place in the ready order (FIFO within
    a priority); in DELAYED or LEASED, the key of its live deadline heap entry, so that stale
    entries are recognized by a different sequence. `deadline_ms` is the release time (DELAYED)
    or the lease expiry (LEASED). `deliveries` counts dequeues of this task so far.
    """

    task_id: int
    queue_id: int
    priority: int
    payload: bytes
    deliveries: int
    state: int
    sequence: int
    deadline_ms: int
    lease_token: int


TASK_RECORD_FIELD_COUNT: Final = len(TaskRecord._fields)


class IdempotencyEntry(NamedTuple):
    """An enqueue key remembered until `recorded_ms` + the window, or until evicted by count.

    Keyed by the queue's id (not its name), so a queue deleted and created again under the same
    name never answers with the ids of the old queue's tasks.
    """

    recorded_ms: int
    queue_id: int
    key: str
    task_id: int


IDEMPOTENCY_ENTRY_FIELD_COUNT: Final = len(IdempotencyEntry._fields)

__all__ = [
    "DELAYED",
    "IDEMPOTENCY_ENTRY_FIELD_COUNT",
    "LEASED",
    "NONE",
    "READY",
    "TASK_RECORD_FIELD_COUNT",
    "TASK_STATES",
    "IdempotencyEntry",
    "TaskRecord",
]
