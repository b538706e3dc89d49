"""The commands that change the queue state: what a log entry carries, as immutable values.

A command is built by the leader's server from a client request, encoded into a log entry by
`codec.py`, and applied on every replica by `QueueStateMachine.apply`. Commands hold raw client
values: the state machine validates them when it applies them, so that every replica rejects a
bad command with the same error at the same point in the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from taskraft.queue.limits import LEASE_MS_DEFAULT


@dataclass(frozen=True, slots=True)
class CreateQueue:
    """Create a queue; its policies are fixed for its whole life.

    `kind` is "heap" (any 64-bit priority) or "buckets" (one FIFO per priority in
    `priority_range`, which it requires). `max_size` bounds ready + delayed + leased tasks,
    `max_payload_bytes` bounds each payload (never above the global bound), `lease_ms_default`
    is the lease of a dequeue that names none (0 makes such dequeues auto-acknowledge),
    `max_deliveries` is how often a task may be delivered before it moves to
    `dead_letter_queue` (an existing queue) or, without one, is dropped. None means no limit.
    """

    name: str
    kind: str = "heap"
    max_size: int | None = None
    max_payload_bytes: int | None = None
    priority_range: tuple[int, int] | None = None
    lease_ms_default: int = LEASE_MS_DEFAULT
    max_deliveries: int | None = None
    dead_letter_queue: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteQueue:
    """Delete an empty queue that no other queue uses as its dead letter queue."""

    name: str


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Add a task; with `key`, a repeat within the idempotency window adds nothing.

    The task is ready at once, or after `delay_ms` of log time.
    """

    queue: str
    priority: int
    payload: bytes
    key: str | None = None
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class Dequeue:
    """Lease the first ready task: lowest priority first, then first ready first.

    `lease_ms` None takes the queue's default; 0 removes the task at once (auto-acknowledge).
    """

    queue: str
    lease_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The task is done: remove it. Only the holder of the current lease may do this."""

    task_id: int
    lease_token: int


@dataclass(frozen=True, slots=True)
class Nack:
    """Give the task back: it becomes ready again after `delay_ms` (its delivery still counts)."""

    task_id: int
    lease_token: int
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class Extend:
    """Move the lease's expiry to `lease_ms` after now (not after the previous expiry)."""

    task_id: int
    lease_token: int
    lease_ms: int


EnqueueRow = tuple[int, bytes, str | None, int]
"""One task of an `EnqueueMany` as a row: (priority, payload, key, delay_ms)."""


@dataclass(frozen=True, slots=True)
class EnqueueMany:
    """Add many tasks to one queue in one log entry: all of them, or none.

    The tasks are held column by column: task i is (`priorities[i]`, `payloads[i]`, `keys[i]`,
    `delays_ms[i]`), each as in `Enqueue`, and the four tuples have the same length (at least
    1). Build one from rows with `EnqueueMany.of`. The batch has the effect of an `Enqueue` of
    each task in turn, except that when any of them would fail none is added; a task refused
    for its own fields is then reported before the queue's lack of room.
    """

    queue: str
    priorities: tuple[int, ...]
    payloads: tuple[bytes, ...]
    keys: tuple[str | None, ...]
    delays_ms: tuple[int, ...]

    @classmethod
    def of(cls, queue: str, tasks: Iterable[Enqueue | EnqueueRow]) -> EnqueueMany:
        """The batch of `tasks`: `Enqueue` commands (their queue is ignored) or
        (priority, payload, key, delay_ms) rows."""
        rows = [
            (task.priority, task.payload, task.key, task.delay_ms)
            if isinstance(task, Enqueue)
            else task
            for task in tasks
        ]
        return cls(
            queue,
            tuple(row[0] for row in rows),
            tuple(row[1] for row in rows),
            tuple(row[2] for row in rows),
            tuple(row[3] for row in rows),
        )


@dataclass(frozen=True, slots=True)
class DequeueMany:
    """Lease up to `max_tasks` ready tasks, in the order `Dequeue` would take them one by one.

    `lease_ms` as in `Dequeue`. With `max_bytes`, the batch stops before a task whose payload
    would bring the batch's payloads past it; the first task is taken whatever its size, so that
    no task is too large to be dequeued.
    """

    queue: str
    max_tasks: int
    lease_ms: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class AckMany:
    """Acknowledge many tasks in one log entry, each as an `Ack` would, in order: an unknown
    lease fails that task's ack only. Task i is (`task_ids[i]`, `lease_tokens[i]`)."""

    task_ids: tuple[int, ...]
    lease_tokens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Tick:
    """Only let time pass: expire leases and release delayed tasks up to the entry's time."""


Command = (
    CreateQueue
    | DeleteQueue
    | Enqueue
    | Dequeue
    | Ack
    | Nack
    | Extend
    | Tick
    | EnqueueMany
    | DequeueMany
    | AckMany
)

__all__ = [
    "Ack",
    "AckMany",
    "Command",
    "CreateQueue",
    "DeleteQueue",
    "Dequeue",
    "DequeueMany",
    "Enqueue",
    "EnqueueMany",
    "EnqueueRow",
    "Extend",
    "Nack",
    "Tick",
]
