"""The replicated queue state machine: the same commands in the same order give the same state.

It is pure and deterministic: no I/O, no clock, no randomness, no threads. Time is the log's
time: the leader stamps `now_ms` into every entry and the state keeps `clock_ms`, the largest
stamp applied so far, so time never goes backward when leadership moves to a node whose clock
is behind. Every command first advances the clock and processes what expired up to it (leases
return their task to its queue, delayed tasks become ready, idempotency keys are forgotten);
then the command itself is applied. A command that fails validation raises a `TaskraftError`
and changes nothing else, but the clock and the expirations it triggered still happened, the
same way on every replica.

It sits on the hot path of every write, so each operation does a bounded amount of work: O(1)
dictionary and bucket operations, O(log n) heap operations, never a scan of a queue. Only the
rare administrative commands scan (the queues, never the tasks), and snapshots.

Semantics that the product description left open, decided here:

- Order: lowest priority first; within a priority, the task that became ready first. A task
  that becomes ready again (lease expired, nack, end of a delay, moved to a dead letter queue)
  queues behind the ready tasks of its priority, in both queue kinds.
- A lease is valid while `clock_ms < lease_expires_ms`: an ack stamped at the expiry time is
  too late. Extend sets the expiry to now + lease_ms (1 or more; 0 is what Nack is for).
- Deliveries are counted by dequeues. When a lease ends without an ack (expiry or nack) and
  the task was already delivered `max_deliveries` times, it moves to the dead letter queue at
  once (a nack's delay is ignored) or is dropped without one; it never counts as ready in its
  queue. It keeps its id and payload, restarts at 0 deliveries, has its priority clamped to
  the dead letter queue's range, and is admitted even past that queue's max_size or payload
  limit: it moves rather than adds, and it is the one task someone must be able to look at.
- DeleteQueue refuses a queue that holds tasks (QueueNotEmpty) or that another queue uses as
  its dead letter queue (BadRequest naming it); the `default` queue may be deleted like any
  other and created again.
- Idempotency keys belong to one queue's life: a queue deleted and created again under the
  same name starts without keys. A duplicate is answered (with the original id) even when the
  task is done or the queue is full. After the window a retry enqueues a new task.
- Checks run in a fixed order (queue, payload, priority, delay, key, duplicate, size), so the
  same command fails with the same error on every replica.
- Batches are the single commands one after the other, in one log entry. EnqueueMany is all or
  nothing: every task is checked (payload, priority, delay, key, in task order) before the
  queue's room for the tasks that are not duplicates, and the first failure fails the batch
  with nothing added; otherwise the result is what the single Enqueues in turn would have
  answered, a key repeated within the batch included. DequeueMany takes the tasks Dequeues in
  turn would take, and stops early at `max_bytes` of payloads (never before the first task).
  AckMany acks each task as Ack would, and reports the ones that failed instead of raising.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, overload

from taskraft.errors import (
    BadRequest,
    InvalidArgument,
    PayloadTooLarge,
    PriorityOutOfRange,
    QueueAlreadyExists,
    QueueFull,
    QueueNotEmpty,
    QueueNotFound,
    TaskraftError,
    UnknownLease,
)
from taskraft.queue.commands import (
    Ack,
    AckMany,
    Command,
    CreateQueue,
    DeleteQueue,
    Dequeue,
    DequeueMany,
    Enqueue,
    EnqueueMany,
    Extend,
    Nack,
    Tick,
)
from taskraft.queue.limits import (
    CLOCK_MS_MAX,
    DEFAULT_QUEUE_NAME,
    DELAY_MS_MAX,
    IDEMPOTENCY_KEY_COUNT_MAX,
    IDEMPOTENCY_WINDOW_MS,
    INT64_MAX,
    INT64_MIN,
    LEASE_MS_DEFAULT,
    LEASE_MS_MAX,
    PAYLOAD_SIZE_MAX_BYTES,
    QUEUE_COUNT_MAX,
    STALE_DEADLINES_REBUILD_MIN,
)
from taskraft.queue.ordering import ReadyBuckets, ReadyHeap
from taskraft.queue.records import DELAYED, LEASED, NONE, READY, IdempotencyEntry, TaskRecord
from taskraft.queue.results import (
    AckManyResult,
    DeliveredTask,
    DequeuedTasks,
    EnqueueManyResult,
    EnqueueResult,
    QueueCounts,
    QueueDescription,
    QueueKind,
    QueuePolicies,
)
from taskraft.queue.snapshot import InvalidSnapshot, QueueDefinition, StateSnapshot, read_snapshot
from taskraft.queue.validation import check_idempotency_key, check_queue_name, checked_policies

CommandResult = (
    QueueDescription
    | EnqueueResult
    | DeliveredTask
    | int
    | None
    | EnqueueManyResult
    | DequeuedTasks
    | AckManyResult
)

# A deadline heap entry: (deadline in log time, the task's sequence when it was pushed, task id).
_Deadline = tuple[int, int, int]


class _Heap(ReadyHeap):
    """A ReadyHeap that also shows its first task without taking it (DequeueMany's byte bound)."""

    __slots__ = ()

    def peek(self) -> int:
        return self._entries[0][2]


class _Buckets(ReadyBuckets):
    """ReadyBuckets that also show their first task without taking it."""

    __slots__ = ()

    def peek(self) -> int:
        non_empty = self._non_empty
        bucket = self._buckets[(non_empty & -non_empty).bit_length() - 1]
        assert bucket is not None, "peek into empty buckets"
        return bucket[0]


# Builds a named tuple from a tuple without its generated `__new__` (a Python function): on the
# paths that create a record per task, that halves the cost of each record.
_new_tuple = tuple.__new__


class _Queue:
    """A queue's ready order and counts, with its policies flattened for the hot path."""

    __slots__ = (
        "dead_letter_queue",
        "delayed_count",
        "lease_ms_default",
        "leased_count",
        "max_deliveries",
        "max_size",
        "name",
        "payload_size_max_bytes",
        "policies",
        "priority_high",
        "priority_low",
        "queue_id",
        "ready",
        "ready_count",
        "statistics",
    )

    def __init__(self, queue_id: int, name: str, policies: QueuePolicies) -> None:
        self.queue_id = queue_id
        self.name = name
        self.policies = policies
        self.priority_low, self.priority_high = policies.priority_range or (INT64_MIN, INT64_MAX)
        self.ready: _Heap | _Buckets
        if policies.kind is QueueKind.BUCKETS:
            self.ready = _Buckets(self.priority_low, self.priority_high)
        else:
            self.ready = _Heap()
        # A queue may be created with a larger limit; the global bound still applies.
        self.payload_size_max_bytes = min(
            policies.max_payload_bytes or PAYLOAD_SIZE_MAX_BYTES, PAYLOAD_SIZE_MAX_BYTES
        )
        self.max_size = policies.max_size
        self.max_deliveries = policies.max_deliveries
        self.lease_ms_default = policies.lease_ms_default
        self.dead_letter_queue = policies.dead_letter_queue
        self.ready_count = 0
        self.delayed_count = 0
        self.leased_count = 0
        self.statistics = QueueStatistics()

    def counts(self) -> QueueCounts:
        return QueueCounts(
            ready=self.ready_count, delayed=self.delayed_count, leased=self.leased_count
        )

    def size(self) -> int:
        return self.ready_count + self.delayed_count + self.leased_count

    def describe(self) -> QueueDescription:
        return QueueDescription(name=self.name, policies=self.policies, counts=self.counts())


class QueueStatistics:
    """What happened to a queue's tasks since this replica created or restored the queue.

    For metrics only: the counters are not part of snapshots (a restore starts them at zero, as
    a Prometheus counter may) and nothing the state machine decides depends on them.
    """

    __slots__ = ("acked", "dead_lettered", "dequeued", "enqueued", "nacked", "redelivered")

    def __init__(self) -> None:
        self.enqueued = 0
        self.dequeued = 0
        self.acked = 0
        self.nacked = 0
        # Leases that expired: the task went back to the queue (or to its dead letter queue).
        self.redelivered = 0
        # Tasks moved to the dead letter queue (or dropped when the queue has none).
        self.dead_lettered = 0


DEFAULT_QUEUE_POLICIES = QueuePolicies(
    kind=QueueKind.HEAP,
    max_size=None,
    max_payload_bytes=None,
    priority_range=None,
    lease_ms_default=LEASE_MS_DEFAULT,
    max_deliveries=None,
    dead_letter_queue=None,
)


class QueueStateMachine:
    """Named priority queues with leases, delays, dead letter queues and idempotent enqueues.

    Writes go through `apply`, one committed log entry at a time. Queries (`count`,
    `ready_count`, `list_queues`, `describe_queue`, `next_deadline_ms`) change nothing
    observable and need no log entry. Not thread-safe: one thread applies and queries; a
    snapshot is handed to another thread through `snapshot_copy`.

    How a node drives it:

    - Apply: for each committed entry, `stamped = decode_entry(entry.data)`, then
      `apply(stamped.command, now_ms=stamped.now_ms, index=entry.index)`.
    - Time: when the wall clock reaches `next_deadline_ms()`, the leader proposes a `Tick`
      (stamped, like every entry, with its wall clock when proposing).
    - Long polls: a waiting dequeue is retried when `ready_count(queue)` becomes positive after
      an apply.
    - Snapshot: `copy = snapshot_copy()` on the thread that applies (tens of milliseconds per
      million tasks), then hand `copy.chunks()` with `copy.applied_index` to the snapshot
      writer thread; commands keep being applied meanwhile.
    - Restore: `QueueStateMachine.restore(chunks)` builds a new instance (seconds per million
      tasks, so off the event loop), which then replaces the old one.
    """

    def __init__(self) -> None:
        self._set_up(applied_index=0, clock_ms=0, next_task_id=1, next_sequence=1, next_queue_id=1)
        self._add_queue(self._next_queue_id, DEFAULT_QUEUE_NAME, DEFAULT_QUEUE_POLICIES)

    def _set_up(
        self,
        *,
        applied_index: int,
        clock_ms: int,
        next_task_id: int,
        next_sequence: int,
        next_queue_id: int,
    ) -> None:
        self._applied_index = applied_index
        self._clock_ms = clock_ms
        self._next_task_id = next_task_id
        # One counter orders everything that must be ordered: ready positions, deadline heap
        # entries and lease tokens (which are therefore unique per delivery).
        self._next_sequence = next_sequence
        self._next_queue_id = next_queue_id
        self._queues: dict[str, _Queue] = {}
        self._queues_by_id: dict[int, _Queue] = {}
        self._tasks: dict[int, TaskRecord] = {}
        # Lease expiries and delayed releases, with lazy deletion: an entry is live only while
        # its task's record still carries the entry's sequence.
        self._deadlines: list[_Deadline] = []
        self._stale_deadlines = 0
        self._idempotency_keys: dict[tuple[int, str], int] = {}
        # Oldest first; the clock never goes backward, so this is also expiry order.
        self._idempotency_order: deque[IdempotencyEntry] = deque()
        self._handlers: dict[type, Callable[[Any], CommandResult]] = {
            CreateQueue: self._create_queue,
            DeleteQueue: self._delete_queue,
            Enqueue: self._enqueue,
            Dequeue: self._dequeue,
            Ack: self._ack,
            Nack: self._nack,
            Extend: self._extend,
            Tick: self._tick,
            EnqueueMany: self._enqueue_many,
            DequeueMany: self._dequeue_many,
            AckMany: self._ack_many,
        }

    # -- applying commands -------------------------------------------------------------------

    @overload
    def apply(self, command: CreateQueue, *, now_ms: int, index: int) -> QueueDescription: ...
    @overload
    def apply(self, command: Enqueue, *, now_ms: int, index: int) -> EnqueueResult: ...
    @overload
    def apply(self, command: Dequeue, *, now_ms: int, index: int) -> DeliveredTask | None: ...
    @overload
    def apply(self, command: Extend, *, now_ms: int, index: int) -> int: ...
    @overload
    def apply(self, command: EnqueueMany, *, now_ms: int, index: int) -> EnqueueManyResult: ...
    @overload
    def apply(self, command: DequeueMany, *, now_ms: int, index: int) -> DequeuedTasks: ...
    @overload
    def apply(self, command: AckMany, *, now_ms: int, index: int) -> AckManyResult: ...
    @overload
    def apply(
        self, command: DeleteQueue | Ack | Nack | Tick, *, now_ms: int, index: int
    ) -> None: ...
    @overload
    def apply(self, command: Command, *, now_ms: int, index: int) -> CommandResult: ...

    def apply(self, command: Command, *, now_ms: int, index: int) -> CommandResult:
        """Apply the command of the committed log entry at `index`, stamped `now_ms` by its leader.

        Indexes must increase (gaps are fine: not every entry carries a command). Returns the
        command's result, or raises the `TaskraftError` the client should receive.
        """
        if type(index) is not int or index <= self._applied_index:
            raise ValueError(f"entry {index!r} applied after entry {self._applied_index}")
        if type(now_ms) is not int:
            raise ValueError(f"an entry's time is an integer of milliseconds, not {now_ms!r}")
        self._applied_index = index
        if now_ms > self._clock_ms:
            # Everything due at or before the old clock was processed then: only a clock that
            # moves can make something expire.
            self._clock_ms = min(now_ms, CLOCK_MS_MAX)
            self._expire()
        handler = self._handlers.get(type(command))
        if handler is None:
            raise BadRequest(f"not a queue command: {type(command).__name__}")
        return handler(command)

    def _create_queue(self, command: CreateQueue) -> QueueDescription:
        check_queue_name(command.name)
        if command.name in self._queues:
            raise QueueAlreadyExists(f"queue {command.name!r} already exists")
        policies = checked_policies(command, self._queues)
        if len(self._queues) >= QUEUE_COUNT_MAX:
            raise BadRequest(f"there are already {QUEUE_COUNT_MAX} queues, the most allowed")
        queue = self._add_queue(self._next_queue_id, command.name, policies)
        return queue.describe()

    def _add_queue(self, queue_id: int, name: str, policies: QueuePolicies) -> _Queue:
        queue = _Queue(queue_id, name, policies)
        self._queues[name] = queue
        self._queues_by_id[queue_id] = queue
        self._next_queue_id = max(self._next_queue_id, queue_id + 1)
        return queue

    def _delete_queue(self, command: DeleteQueue) -> None:
        queue = self._queue(command.name)
        users = sorted(
            other.name for other in self._queues.values() if other.dead_letter_queue == queue.name
        )
        if users:
            raise BadRequest(
                f"queue {queue.name!r} is the dead letter queue of {', '.join(map(repr, users))}; "
                "delete those first"
            )
        if queue.size():
            counts = queue.counts()
            raise QueueNotEmpty(
                f"queue {queue.name!r} still holds {counts.ready} ready, {counts.delayed} "
                f"delayed and {counts.leased} leased tasks"
            )
        del self._queues[queue.name]
        del self._queues_by_id[queue.queue_id]
        # Its idempotency keys are keyed by queue id: they can never match again and age out.

    @staticmethod
    def _check_task(
        queue: _Queue, priority: object, payload: object, key: object, delay_ms: int, where: str
    ) -> None:
        """Raise the error an enqueue of this task must fail with, if any; `where` prefixes the
        message (a batch's "tasks[3]: ")."""
        if type(payload) is not bytes:
            raise InvalidArgument(f"{where}a payload is bytes, not {type(payload).__name__}")
        if len(payload) > queue.payload_size_max_bytes:
            raise PayloadTooLarge(
                f"{where}payload of {len(payload)} bytes; queue {queue.name!r} accepts at most "
                f"{queue.payload_size_max_bytes}"
            )
        if type(priority) is not int:
            raise InvalidArgument(f"{where}a priority is an integer, not {type(priority).__name__}")
        if not queue.priority_low <= priority <= queue.priority_high:
            raise PriorityOutOfRange(
                f"{where}priority {priority} outside [{queue.priority_low}, "
                f"{queue.priority_high}] of queue {queue.name!r}"
            )
        if not 0 <= delay_ms <= DELAY_MS_MAX:
            raise InvalidArgument(f"{where}delay_ms must be in [0, {DELAY_MS_MAX}], not {delay_ms}")
        if key is not None:
            try:
                check_idempotency_key(key)
            except InvalidArgument as error:
                if not where:
                    raise
                raise InvalidArgument(f"{where}{error.message}") from None

    def _enqueue(self, command: Enqueue) -> EnqueueResult:
        queue = self._queue(command.queue)
        payload = command.payload
        priority = command.priority
        delay_ms = command.delay_ms
        key = command.key
        self._check_task(queue, priority, payload, key, delay_ms, "")
        if key is not None:
            original = self._idempotency_keys.get((queue.queue_id, key))
            if original is not None:
                return EnqueueResult(task_id=original, duplicate=True)
        if queue.max_size is not None and queue.size() >= queue.max_size:
            raise QueueFull(f"queue {queue.name!r} holds {queue.max_size} tasks, its max_size")
        task_id = self._next_task_id
        self._next_task_id = task_id + 1
        sequence = self._next_sequence
        self._next_sequence = sequence + 1
        if delay_ms:
            deadline = self._clock_ms + delay_ms
            self._tasks[task_id] = _new_tuple(
                TaskRecord,
                (task_id, queue.queue_id, priority, payload, 0, DELAYED, sequence, deadline, NONE),
            )
            heapq.heappush(self._deadlines, (deadline, sequence, task_id))
            queue.delayed_count += 1
        else:
            self._tasks[task_id] = _new_tuple(
                TaskRecord,
                (task_id, queue.queue_id, priority, payload, 0, READY, sequence, NONE, NONE),
            )
            queue.ready.push(priority, sequence, task_id)
            queue.ready_count += 1
        if key is not None:
            self._remember_key(queue.queue_id, key, task_id)
        queue.statistics.enqueued += 1
        return EnqueueResult(task_id=task_id, duplicate=False)

    def _remember_key(self, queue_id: int, key: str, task_id: int) -> None:
        order = self._idempotency_order
        if len(order) >= IDEMPOTENCY_KEY_COUNT_MAX:
            oldest = order.popleft()
            del self._idempotency_keys[(oldest.queue_id, oldest.key)]
        order.append(_new_tuple(IdempotencyEntry, (self._clock_ms, queue_id, key, task_id)))
        self._idempotency_keys[(queue_id, key)] = task_id

    def _enqueue_many(self, command: EnqueueMany) -> EnqueueManyResult:
        """The Enqueues of the batch's tasks in turn, all or none (see the module docstring)."""
        queue = self._queue(command.queue)
        priorities, payloads = command.priorities, command.payloads
        keys, delays_ms = command.keys, command.delays_ms
        count = len(payloads)
        if not count or not len(priorities) == len(keys) == len(delays_ms) == count:
            raise InvalidArgument(
                "an enqueue_many holds 1 or more tasks, each with a priority, a payload, a key "
                f"and a delay; got {len(priorities)}, {count}, {len(keys)} and {len(delays_ms)}"
            )
        tasks = zip(priorities, payloads, keys, delays_ms, strict=True)
        # Every task is checked before anything changes; a task that is not plainly valid is
        # checked again, field by field, for the error a single enqueue would raise.
        payload_max = queue.payload_size_max_bytes
        low, high = queue.priority_low, queue.priority_high
        for index, (priority, payload, key, delay_ms) in enumerate(tasks):
            if not (
                type(payload) is bytes
                and len(payload) <= payload_max
                and type(priority) is int
                and low <= priority <= high
                and type(delay_ms) is int
                and 0 <= delay_ms <= DELAY_MS_MAX
                and (key is None or (type(key) is str and key.isascii() and 0 < len(key) <= 255))
            ):
                self._check_task(queue, priority, payload, key, delay_ms, f"tasks[{index}]: ")
        task_ids, duplicates, added = self._batch_task_ids(queue, keys)
        size = queue.size()
        if added and queue.max_size is not None and size + added > queue.max_size:
            raise QueueFull(
                f"queue {queue.name!r} holds {size} tasks; {added} more would pass its "
                f"max_size of {queue.max_size}"
            )
        # Apply: what the single enqueues do, with the counters kept in locals.
        queue_id = queue.queue_id
        records = self._tasks
        deadlines = self._deadlines
        ready = queue.ready
        clock_ms = self._clock_ms
        task_id = self._next_task_id
        sequence = self._next_sequence
        delayed = 0
        skip = duplicates if added < count else None
        for index, (priority, payload, key, delay_ms) in enumerate(
            zip(priorities, payloads, keys, delays_ms, strict=True)
        ):
            if skip is not None and skip[index]:
                continue
            if delay_ms:
                deadline = clock_ms + delay_ms
                records[task_id] = _new_tuple(
                    TaskRecord,
                    (task_id, queue_id, priority, payload, 0, DELAYED, sequence, deadline, NONE),
                )
                heapq.heappush(deadlines, (deadline, sequence, task_id))
                delayed += 1
            else:
                records[task_id] = _new_tuple(
                    TaskRecord,
                    (task_id, queue_id, priority, payload, 0, READY, sequence, NONE, NONE),
                )
                ready.push(priority, sequence, task_id)
            if key is not None:
                self._remember_key(queue_id, key, task_id)
            task_id += 1
            sequence += 1
        self._next_task_id = task_id
        self._next_sequence = sequence
        queue.delayed_count += delayed
        queue.ready_count += added - delayed
        queue.statistics.enqueued += added
        return EnqueueManyResult(task_ids=task_ids, duplicates=duplicates)

    def _batch_task_ids(
        self, queue: _Queue, keys: tuple[str | None, ...]
    ) -> tuple[tuple[int, ...], tuple[bool, ...], int]:
        """The ids the Enqueues of a batch's tasks in turn would answer, which of them are
        duplicates, and how many tasks they would add; changes nothing.

        A key repeated in the batch answers the id its first task gets. A key remembered from
        before answers its task's id, unless the keys this batch remembers before it would have
        pushed it out of the bound on remembered keys (IDEMPOTENCY_KEY_COUNT_MAX), as the single
        enqueues would. (Exact for batches of fewer keys than that bound: the protocol sends at
        most 1000 tasks.)
        """
        count = len(keys)
        first_id = self._next_task_id
        if keys.count(None) == count:
            return tuple(range(first_id, first_id + count)), (False,) * count, count
        queue_id = queue.queue_id
        known = self._idempotency_keys
        order_length = len(self._idempotency_order)
        batch: dict[str, int] = {}
        # Positions in the order of the oldest remembered keys, built when first needed.
        oldest: dict[tuple[int, str], int] | None = None
        task_ids: list[int] = []
        duplicates = [False] * count
        added = 0
        for index, key in enumerate(keys):
            if key is not None:
                original = batch.get(key)
                if original is None:
                    original = known.get((queue_id, key))
                    # How many keys the keys remembered so far by this batch pushed out.
                    pushed_out = order_length + len(batch) - IDEMPOTENCY_KEY_COUNT_MAX
                    if original is not None and pushed_out > 0:
                        if oldest is None:
                            oldest = self._oldest_key_positions(count)
                        if oldest.get((queue_id, key), pushed_out) < pushed_out:
                            original = None
                if original is not None:
                    task_ids.append(original)
                    duplicates[index] = True
                    continue
                batch[key] = first_id + added
            task_ids.append(first_id + added)
            added += 1
        return tuple(task_ids), tuple(duplicates), added

    def _oldest_key_positions(self, count: int) -> dict[tuple[int, str], int]:
        """The positions of the `count` oldest remembered keys (0 is the oldest)."""
        oldest = itertools.islice(self._idempotency_order, count)
        return {(entry.queue_id, entry.key): position for position, entry in enumerate(oldest)}

    def _dequeue_many(self, command: DequeueMany) -> DequeuedTasks:
        """The Dequeues of up to `max_tasks` tasks in turn, stopping early at `max_bytes`."""
        queue = self._queue(command.queue)
        lease_ms = command.lease_ms
        if lease_ms is None:
            lease_ms = queue.lease_ms_default
        elif not 0 <= lease_ms <= LEASE_MS_MAX:
            raise InvalidArgument(f"lease_ms must be in [0, {LEASE_MS_MAX}], not {lease_ms}")
        max_tasks = command.max_tasks
        if not 1 <= max_tasks <= INT64_MAX:
            raise InvalidArgument(f"max_tasks must be at least 1, not {max_tasks}")
        max_bytes = command.max_bytes
        if max_bytes is not None and not 0 <= max_bytes <= INT64_MAX:
            raise InvalidArgument(f"max_bytes must be 0 or more, not {max_bytes}")
        count = min(max_tasks, queue.ready_count)
        if not count:
            return DequeuedTasks(tasks=(), lease_ms=lease_ms)
        name, queue_id = queue.name, queue.queue_id
        ready = queue.ready
        records = self._tasks
        deadlines = self._deadlines
        token = self._next_sequence
        expires_ms = self._clock_ms + lease_ms
        delivered: list[DeliveredTask] = []
        total_bytes = 0
        for _ in range(count):
            if max_bytes is not None:
                size = len(records[ready.peek()].payload)
                if delivered and total_bytes + size > max_bytes:
                    break
                total_bytes += size
            task_id = ready.pop()
            record = records[task_id]
            priority, payload = record.priority, record.payload
            deliveries = record.deliveries + 1
            if not lease_ms:
                del records[task_id]
                delivered.append(
                    DeliveredTask(task_id, name, priority, payload, deliveries, None, None)
                )
                continue
            records[task_id] = _new_tuple(
                TaskRecord,
                (
                    task_id,
                    queue_id,
                    priority,
                    payload,
                    deliveries,
                    LEASED,
                    token,
                    expires_ms,
                    token,
                ),
            )
            heapq.heappush(deadlines, (expires_ms, token, task_id))
            delivered.append(
                DeliveredTask(task_id, name, priority, payload, deliveries, token, expires_ms)
            )
            token += 1
        taken = len(delivered)
        queue.ready_count -= taken
        queue.statistics.dequeued += taken
        if lease_ms:
            self._next_sequence = token
            queue.leased_count += taken
        return DequeuedTasks(tasks=tuple(delivered), lease_ms=lease_ms)

    def _ack_many(self, command: AckMany) -> AckManyResult:
        """The Acks of the batch's tasks in turn; a failed one is reported, not raised."""
        task_ids, lease_tokens = command.task_ids, command.lease_tokens
        if not task_ids or len(task_ids) != len(lease_tokens):
            raise InvalidArgument(
                f"an ack_many names 1 or more tasks, each with its lease; got {len(task_ids)} "
                f"tasks and {len(lease_tokens)} leases"
            )
        records = self._tasks
        queues = self._queues_by_id
        failures: list[tuple[int, int]] = []
        for index, (task_id, lease_token) in enumerate(zip(task_ids, lease_tokens, strict=True)):
            record = records.get(task_id)
            if record is None or record.state != LEASED or record.lease_token != lease_token:
                failures.append((index, UnknownLease.code))
                continue
            del records[task_id]
            queue = queues[record.queue_id]
            queue.leased_count -= 1
            queue.statistics.acked += 1
            self._deadline_went_stale()
        return AckManyResult(failures=tuple(failures))

    def _dequeue(self, command: Dequeue) -> DeliveredTask | None:
        queue = self._queue(command.queue)
        lease_ms = command.lease_ms
        if lease_ms is None:
            lease_ms = queue.lease_ms_default
        elif not 0 <= lease_ms <= LEASE_MS_MAX:
            raise InvalidArgument(f"lease_ms must be in [0, {LEASE_MS_MAX}], not {lease_ms}")
        if not queue.ready_count:
            return None
        task_id = queue.ready.pop()
        queue.ready_count -= 1
        record = self._tasks[task_id]
        deliveries = record.deliveries + 1
        queue.statistics.dequeued += 1
        if not lease_ms:
            del self._tasks[task_id]
            return DeliveredTask(
                task_id, queue.name, record.priority, record.payload, deliveries, None, None
            )
        token = self._next_sequence
        self._next_sequence = token + 1
        expires_ms = self._clock_ms + lease_ms
        self._tasks[task_id] = _new_tuple(
            TaskRecord,
            (
                task_id,
                queue.queue_id,
                record.priority,
                record.payload,
                deliveries,
                LEASED,
                token,
                expires_ms,
                token,
            ),
        )
        heapq.heappush(self._deadlines, (expires_ms, token, task_id))
        queue.leased_count += 1
        return DeliveredTask(
            task_id, queue.name, record.priority, record.payload, deliveries, token, expires_ms
        )

    def _ack(self, command: Ack) -> None:
        record = self._leased(command.task_id, command.lease_token)
        del self._tasks[record.task_id]
        queue = self._queues_by_id[record.queue_id]
        queue.leased_count -= 1
        queue.statistics.acked += 1
        self._deadline_went_stale()

    def _nack(self, command: Nack) -> None:
        delay_ms = command.delay_ms
        if not 0 <= delay_ms <= DELAY_MS_MAX:
            raise InvalidArgument(f"delay_ms must be in [0, {DELAY_MS_MAX}], not {delay_ms}")
        record = self._leased(command.task_id, command.lease_token)
        queue = self._queues_by_id[record.queue_id]
        queue.leased_count -= 1
        queue.statistics.nacked += 1
        self._release(record, queue, delay_ms)
        self._deadline_went_stale()

    def _extend(self, command: Extend) -> int:
        lease_ms = command.lease_ms
        if not 1 <= lease_ms <= LEASE_MS_MAX:
            # 0 is refused rather than read as "expire now": that is what Nack does, explicitly.
            raise InvalidArgument(f"lease_ms must be in [1, {LEASE_MS_MAX}], not {lease_ms}")
        record = self._leased(command.task_id, command.lease_token)
        sequence = self._next_sequence
        self._next_sequence = sequence + 1
        expires_ms = self._clock_ms + lease_ms
        self._tasks[record.task_id] = record._replace(sequence=sequence, deadline_ms=expires_ms)
        heapq.heappush(self._deadlines, (expires_ms, sequence, record.task_id))
        self._deadline_went_stale()
        return expires_ms

    def _tick(self, command: Tick) -> None:
        """Time already advanced in `apply`; a tick carries nothing else."""

    # -- lifecycle of a task -----------------------------------------------------------------

    def _leased(self, task_id: int, lease_token: int) -> TaskRecord:
        record = self._tasks.get(task_id)
        if record is None or record.state != LEASED or record.lease_token != lease_token:
            raise UnknownLease(
                f"task {task_id} has no lease {lease_token}: it was acknowledged, or the lease "
                "expired and the task may have been delivered again"
            )
        return record

    def _expire(self) -> None:
        """Forget idempotency keys and end leases and delays that are due at `clock_ms`."""
        clock_ms = self._clock_ms
        order = self._idempotency_order
        horizon = clock_ms - IDEMPOTENCY_WINDOW_MS
        while order and order[0].recorded_ms <= horizon:
            oldest = order.popleft()
            del self._idempotency_keys[(oldest.queue_id, oldest.key)]
        deadlines = self._deadlines
        tasks = self._tasks
        # Entries due together are processed in (deadline, sequence) order, which every replica
        # agrees on; tasks that become ready here are queued in that order.
        while deadlines and deadlines[0][0] <= clock_ms:
            _, sequence, task_id = heapq.heappop(deadlines)
            record = tasks.get(task_id)
            if record is None or record.sequence != sequence:
                self._stale_deadlines -= 1
                continue
            queue = self._queues_by_id[record.queue_id]
            if record.state == DELAYED:
                queue.delayed_count -= 1
                self._make_ready(record, queue)
            else:
                queue.leased_count -= 1
                queue.statistics.redelivered += 1
                self._release(record, queue, 0)

    def _release(self, record: TaskRecord, queue: _Queue, delay_ms: int) -> None:
        """A lease ended without an ack (it expired or the task was nacked)."""
        if queue.max_deliveries is not None and record.deliveries >= queue.max_deliveries:
            # Another delivery would exceed the limit: decide now rather than at the next
            # dequeue, so the task never counts as ready and no dequeue has to skip it.
            self._dead_letter(record, queue)
        elif delay_ms:
            sequence = self._next_sequence
            self._next_sequence = sequence + 1
            deadline = self._clock_ms + delay_ms
            self._tasks[record.task_id] = record._replace(
                state=DELAYED, sequence=sequence, deadline_ms=deadline, lease_token=NONE
            )
            heapq.heappush(self._deadlines, (deadline, sequence, record.task_id))
            queue.delayed_count += 1
        else:
            self._make_ready(record, queue)

    def _make_ready(self, record: TaskRecord, queue: _Queue) -> None:
        """Queue the task behind the ready tasks of its priority (it gets a new sequence)."""
        sequence = self._next_sequence
        self._next_sequence = sequence + 1
        self._tasks[record.task_id] = _new_tuple(
            TaskRecord,
            (
                record.task_id,
                queue.queue_id,
                record.priority,
                record.payload,
                record.deliveries,
                READY,
                sequence,
                NONE,
                NONE,
            ),
        )
        queue.ready.push(record.priority, sequence, record.task_id)
        queue.ready_count += 1

    def _dead_letter(self, record: TaskRecord, queue: _Queue) -> None:
        """Move the task to the queue's dead letter queue as a fresh task, or drop it.

        It keeps its id and payload; its priority is clamped to the dead letter queue's range and
        its deliveries start again from 0. A dead letter queue accepts it even past its max_size
        or payload limit: the task moves, it adds no memory, and dropping it would lose exactly
        the task someone needs to look at.
        """
        queue.statistics.dead_lettered += 1
        if queue.dead_letter_queue is None:
            del self._tasks[record.task_id]
            return
        target = self._queues[queue.dead_letter_queue]
        priority = min(max(record.priority, target.priority_low), target.priority_high)
        self._make_ready(record._replace(priority=priority, deliveries=0), target)

    def _deadline_went_stale(self) -> None:
        """Count an entry left behind in the deadline heap; rebuild the heap when they dominate."""
        self._stale_deadlines += 1
        stale = self._stale_deadlines
        if stale >= STALE_DEADLINES_REBUILD_MIN and 2 * stale > len(self._deadlines):
            tasks = self._tasks
            live = [
                entry
                for entry in self._deadlines
                if (record := tasks.get(entry[2])) is not None and record.sequence == entry[1]
            ]
            heapq.heapify(live)
            self._deadlines = live
            self._stale_deadlines = 0

    # -- queries -----------------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        """The index of the last applied entry; a snapshot taken now covers the log up to it."""
        return self._applied_index

    @property
    def clock_ms(self) -> int:
        """The log's time: the largest `now_ms` applied so far."""
        return self._clock_ms

    def count(self, queue: str) -> QueueCounts:
        return self._queue(queue).counts()

    def ready_count(self, queue: str) -> int:
        """Tasks a dequeue could take now; a long poll waits until this is positive."""
        return self._queue(queue).ready_count

    def queue_statistics(self) -> list[tuple[str, QueueCounts, QueueStatistics]]:
        """Every queue's name, counts and statistics, for metrics."""
        return [(queue.name, queue.counts(), queue.statistics) for queue in self._queues.values()]

    def describe_queue(self, queue: str) -> QueueDescription:
        return self._queue(queue).describe()

    def list_queues(self) -> tuple[QueueDescription, ...]:
        """Every queue, by name."""
        return tuple(self._queues[name].describe() for name in sorted(self._queues))

    def next_deadline_ms(self) -> int | None:
        """When the earliest lease expires or delayed task is released, in log time, or None.

        The server proposes a Tick stamped at or after this time, so that expired tasks return
        to their queues even when no other command arrives. Always later than `clock_ms`.
        """
        deadlines = self._deadlines
        tasks = self._tasks
        while deadlines:
            deadline_ms, sequence, task_id = deadlines[0]
            record = tasks.get(task_id)
            if record is not None and record.sequence == sequence:
                return deadline_ms
            # Dropping a stale entry changes nothing observable.
            heapq.heappop(deadlines)
            self._stale_deadlines -= 1
        return None

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            check_queue_name(name)
            raise QueueNotFound(f"queue {name!r} does not exist")
        return queue

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot_copy(self) -> StateSnapshot:
        """A consistent, immutable view of the whole state as of `applied_index`.

        Cheap enough for the event loop: one shallow copy of the task table (its records are
        immutable) and of the idempotency keys; about 60 ms for a million tasks. Its `chunks()`
        then encode it on any thread while commands keep being applied here.
        """
        return StateSnapshot(
            applied_index=self._applied_index,
            clock_ms=self._clock_ms,
            next_task_id=self._next_task_id,
            next_sequence=self._next_sequence,
            next_queue_id=self._next_queue_id,
            queues=tuple(
                QueueDefinition(queue.queue_id, queue.name, queue.policies)
                for queue in self._queues.values()
            ),
            tasks=self._tasks.copy(),
            idempotency=tuple(self._idempotency_order),
        )

    def snapshot_chunks(self) -> Iterator[bytes]:
        """The state as msgpack chunks; the copy is taken now, the encoding as it is iterated."""
        return self.snapshot_copy().chunks()

    @classmethod
    def restore(cls, chunks: Iterable[bytes]) -> QueueStateMachine:
        """The state a snapshot stream describes; it answers every later command as the original.

        Raises InvalidSnapshot when the stream is damaged or inconsistent.
        """
        return cls.from_snapshot(read_snapshot(chunks))

    @classmethod
    def from_snapshot(cls, snapshot: StateSnapshot) -> QueueStateMachine:
        """The state a snapshot copy describes (restore without the bytes in between).

        Every record is checked, so a damaged snapshot raises InvalidSnapshot instead of
        producing a state that would fail later, differently on each replica.
        """
        counters = (
            snapshot.applied_index,
            snapshot.clock_ms,
            snapshot.next_task_id,
            snapshot.next_sequence,
            snapshot.next_queue_id,
        )
        if not all(type(counter) is int for counter in counters) or not (
            snapshot.applied_index >= 0
            and 0 <= snapshot.clock_ms <= CLOCK_MS_MAX
            and min(snapshot.next_task_id, snapshot.next_sequence, snapshot.next_queue_id) >= 1
        ):
            raise InvalidSnapshot(f"invalid counters {counters!r}")
        machine = cls.__new__(cls)
        machine._set_up(
            applied_index=snapshot.applied_index,
            clock_ms=snapshot.clock_ms,
            next_task_id=snapshot.next_task_id,
            next_sequence=snapshot.next_sequence,
            next_queue_id=snapshot.next_queue_id,
        )
        try:
            machine._restore_queues(snapshot.queues)
            machine._restore_tasks(snapshot.tasks)
            machine._restore_idempotency(snapshot.idempotency)
        except (TypeError, ValueError) as error:
            raise InvalidSnapshot(f"the snapshot is inconsistent: {error!r}") from error
        return machine

    def _restore_queues(self, definitions: Iterable[QueueDefinition]) -> None:
        definitions = tuple(definitions)
        names = {definition.name: definition for definition in definitions}
        for definition in definitions:
            name, queue_id, policies = definition.name, definition.queue_id, definition.policies
            if name in self._queues or queue_id in self._queues_by_id:
                raise InvalidSnapshot(f"queue {name!r} (id {queue_id}) appears twice")
            if type(queue_id) is not int or not 0 < queue_id < self._next_queue_id:
                raise InvalidSnapshot(f"queue id {queue_id} not below {self._next_queue_id}")
            # The checks of CreateQueue, except that the dead letter queue may come later.
            as_created = CreateQueue(
                name,
                policies.kind,
                policies.max_size,
                policies.max_payload_bytes,
                policies.priority_range,
                policies.lease_ms_default,
                policies.max_deliveries,
                policies.dead_letter_queue,
            )
            try:
                check_queue_name(name)
                checked = checked_policies(as_created, names)
            except TaskraftError as error:
                raise InvalidSnapshot(f"queue {name!r} is invalid: {error}") from error
            if checked != policies or policies.dead_letter_queue == name:
                raise InvalidSnapshot(f"queue {name!r} has invalid policies {policies!r}")
            self._add_queue(queue_id, name, policies)

    def _restore_tasks(self, tasks: Mapping[int, TaskRecord]) -> None:
        """Adopt the task records and rebuild ready orders, deadlines and counts from them."""
        queues_by_id = self._queues_by_id
        ready: dict[int, list[tuple[int, int, int]]] = {queue_id: [] for queue_id in queues_by_id}
        deadlines: list[_Deadline] = []
        for task_id, record in tasks.items():
            queue = queues_by_id.get(record[1])
            if queue is None or record[0] != task_id:
                raise InvalidSnapshot(f"task {task_id} is filed wrongly: {record!r:.200}")
            problem = self._restored_record_problem(record, queue)
            if problem is not None:
                raise InvalidSnapshot(f"task {task_id}: {problem}: {record!r:.200}")
            if record.state == READY:
                ready[queue.queue_id].append((record.priority, record.sequence, task_id))
            else:
                deadlines.append((record.deadline_ms, record.sequence, task_id))
                if record.state == DELAYED:
                    queue.delayed_count += 1
                else:
                    queue.leased_count += 1
        self._tasks = dict(tasks)
        heapq.heapify(deadlines)
        self._deadlines = deadlines
        for queue_id, entries in ready.items():
            self._restore_ready(queues_by_id[queue_id], entries)

    def _restored_record_problem(self, record: TaskRecord, queue: _Queue) -> str | None:
        """What is wrong with a task record read from a snapshot, or None."""
        task_id, _, priority, payload, deliveries, state, sequence, deadline_ms, lease_token = (
            record
        )
        if not (
            type(task_id) is int
            and type(priority) is int
            and type(deliveries) is int
            and type(state) is int
            and type(sequence) is int
            and type(deadline_ms) is int
            and type(lease_token) is int
            and type(payload) is bytes
        ):
            return "a field of the wrong type"
        if not (0 < task_id < self._next_task_id and 0 < sequence < self._next_sequence):
            return "ahead of the counters"
        if not queue.priority_low <= priority <= queue.priority_high:
            return "priority outside its queue's range"
        if len(payload) > PAYLOAD_SIZE_MAX_BYTES or deliveries < 0:
            return "payload or deliveries out of bounds"
        if state == READY:
            consistent = deadline_ms == NONE and lease_token == NONE
        elif state == DELAYED:
            consistent = deadline_ms > self._clock_ms and lease_token == NONE
        elif state == LEASED:
            # The token is the sequence the lease started with; extensions raise the sequence.
            consistent = deadline_ms > self._clock_ms and 0 < lease_token <= sequence
            consistent = consistent and deliveries > 0
        else:
            return "an unknown state"
        return None if consistent else "fields inconsistent with its state"

    @staticmethod
    def _restore_ready(queue: _Queue, entries: list[tuple[int, int, int]]) -> None:
        """Rebuild a ready order from its (priority, sequence, task id) entries, in any order."""
        queue.ready_count = len(entries)
        if isinstance(queue.ready, ReadyHeap):
            queue.ready = _Heap(entries)
            return
        # Buckets are FIFOs: push in sequence order, which is the order they were first pushed.
        entries.sort(key=lambda entry: entry[1])
        for priority, sequence, task_id in entries:
            queue.ready.push(priority, sequence, task_id)

    def _restore_idempotency(self, entries: Iterable[IdempotencyEntry]) -> None:
        horizon_ms = self._clock_ms - IDEMPOTENCY_WINDOW_MS
        previous_ms = horizon_ms
        for entry in entries:
            recorded_ms, queue_id, key, task_id = entry
            well_formed = (
                type(recorded_ms) is int
                and type(queue_id) is int
                and type(task_id) is int
                and isinstance(key, str)
                and 0 < queue_id < self._next_queue_id
                and 0 < task_id < self._next_task_id
            )
            # Oldest first, and none that should already have been forgotten.
            if not well_formed or not previous_ms <= recorded_ms <= self._clock_ms:
                raise InvalidSnapshot(f"idempotency key out of order or window: {entry!r:.200}")
            if recorded_ms == horizon_ms:
                raise InvalidSnapshot(f"idempotency key past its window: {entry!r:.200}")
            try:
                check_idempotency_key(key)
            except InvalidArgument as error:
                raise InvalidSnapshot(f"invalid idempotency key {key!r:.300}") from error
            previous_ms = recorded_ms
            self._remember_key_restored(entry)

    def _remember_key_restored(self, entry: IdempotencyEntry) -> None:
        key = (entry.queue_id, entry.key)
        if key in self._idempotency_keys or len(self._idempotency_order) >= (
            IDEMPOTENCY_KEY_COUNT_MAX
        ):
            raise InvalidSnapshot(f"idempotency key repeated or beyond the bound: {entry!r:.200}")
        self._idempotency_order.append(entry)
        self._idempotency_keys[key] = entry.task_id

    # -- invariants --------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Check every structural invariant; O(n log n), for tests and debugging.

        Raises AssertionError naming the first invariant found broken.
        """
        counts: dict[int, list[int]] = {queue_id: [0, 0, 0] for queue_id in self._queues_by_id}
        ready_ids: dict[int, set[int]] = {queue_id: set() for queue_id in self._queues_by_id}
        timed: dict[tuple[int, int], int] = {}
        for task_id, record in self._tasks.items():
            _require(task_id == record.task_id, f"task {task_id} filed under another id")
            _require(record.queue_id in counts, f"task {task_id} in a deleted queue")
            _require(0 < task_id < self._next_task_id, f"task {task_id} ahead of the counter")
            _require(0 < record.sequence < self._next_sequence, f"task {task_id} sequence")
            counts[record.queue_id][record.state] += 1
            if record.state == READY:
                ready_ids[record.queue_id].add(task_id)
                _require(record.lease_token == NONE, f"ready task {task_id} has a lease")
            else:
                _require(record.deadline_ms > self._clock_ms, f"task {task_id} overdue")
                timed[(record.sequence, task_id)] = record.deadline_ms
            if record.state == LEASED:
                _require(record.lease_token > 0 and record.deliveries > 0, f"lease of {task_id}")
        for queue_id, queue in self._queues_by_id.items():
            expected = [queue.ready_count, queue.delayed_count, queue.leased_count]
            _require(counts[queue_id] == expected, f"counts of {queue.name!r}")
            order = queue.ready.task_ids()
            _require(len(order) == queue.ready_count, f"ready order size of {queue.name!r}")
            _require(set(order) == ready_ids[queue_id], f"ready order of {queue.name!r}")
            _require(self._queues.get(queue.name) is queue, f"queue {queue.name!r} index")
        self._check_deadlines(timed)
        self._check_idempotency()

    def _check_deadlines(self, timed: dict[tuple[int, int], int]) -> None:
        live = 0
        for deadline_ms, sequence, task_id in self._deadlines:
            if timed.get((sequence, task_id)) == deadline_ms:
                live += 1
        _require(live == len(timed), f"{len(timed)} timed tasks but {live} live deadlines")
        _require(
            len(self._deadlines) - live == self._stale_deadlines,
            f"stale deadline count {self._stale_deadlines} is wrong",
        )

    def _check_idempotency(self) -> None:
        order = self._idempotency_order
        _require(len(order) == len(self._idempotency_keys), "idempotency index size")
        _require(len(order) <= IDEMPOTENCY_KEY_COUNT_MAX, "idempotency count bound")
        horizon_ms = self._clock_ms - IDEMPOTENCY_WINDOW_MS
        previous_ms = horizon_ms
        for entry in order:
            _require(horizon_ms < entry.recorded_ms <= self._clock_ms, "idempotency window")
            _require(previous_ms <= entry.recorded_ms, "idempotency order")
            previous_ms = entry.recorded_ms
            key = (entry.queue_id, entry.key)
            _require(self._idempotency_keys.get(key) == entry.task_id, f"key {entry.key!r}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"queue state invariant broken: {message}")


__all__ = ["CommandResult", "QueueStateMachine"]
