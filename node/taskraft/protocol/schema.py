"""The messages of the client protocol as typed values, and their checked wire form.

A frame carries a msgpack map; this module turns maps into frozen values and back. Nothing a
peer sends is trusted: every field of every message is read for its exact type and range, and
a violation raises the stable error a client would receive (`bad_request` for a malformed
message, `invalid_argument` or a dedicated code such as `invalid_queue_name` for a value out of
range), with the field named in the message. docs/protocol.md describes the same messages for
clients written in other languages.

What is checked here is everything that can be checked without the queue's state, with the same
bounds and the same error codes as the queue state machine: shapes, types, names, and the
limits that do not depend on a queue. Whether a queue exists, whether a kind is known, whether a
priority lies in a queue's range or a payload within a queue's own size limit, the state machine
says when it applies the command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final, Self

from taskraft.errors import (
    BadRequest,
    InvalidArgument,
    InvalidMaxPayloadSize,
    InvalidMaxSize,
    InvalidPriorityRange,
    InvalidQueueName,
    NotLeader,
    PayloadTooLarge,
    PriorityOutOfRange,
    TaskraftError,
    UnknownQueueKind,
    UnsupportedProtocolVersion,
    error_from_code,
)
from taskraft.protocol.exceptions import LocalProtocolError
from taskraft.protocol.fields import (
    MISSING,
    FieldReader,
    check_array,
    check_bool,
    check_integer,
    shorten,
    wrong_type,
)
from taskraft.protocol.limits import (
    ADDRESS_MAX_BYTES,
    BATCH_PAYLOAD_BYTES_MAX,
    BATCH_TASKS_MAX,
    CLIENT_NAME_MAX_BYTES,
    DELAY_MS_MAX,
    ERROR_MESSAGE_MAX_BYTES,
    INT64_MAX,
    INT64_MIN,
    KEY_MAX_BYTES,
    LEASE_MS_MAX,
    LIST_QUEUES_LIMIT_MAX,
    NODE_ID_MAX_BYTES,
    PAYLOAD_SIZE_MAX_BYTES,
    PROTOCOL_VERSION,
    QUEUE_KIND_MAX_BYTES,
    QUEUE_NAME_MAX_BYTES,
    SUPPORTED_PROTOCOL_VERSIONS,
    TOKEN_MAX_BYTES,
    UINT64_MAX,
    WAIT_MS_MAX,
)

_ROLE_MAX_BYTES: Final = 32
# A key of at most this many characters is at most KEY_MAX_BYTES of UTF-8 (4 bytes a character
# at most), so the fast path of a batch's items accepts it without encoding it.
_KEY_FAST_CHARS_MAX: Final = KEY_MAX_BYTES // 4
_ENQUEUE_ITEM_FIELDS: Final = frozenset(("payload", "priority", "key", "delay_ms"))


def check_queue_name(value: object, path: str) -> str:
    """A queue name: 1 to 255 printable ASCII characters without spaces (InvalidQueueName)."""
    if type(value) is not str:
        raise wrong_type(path, "str", value)
    if not (
        0 < len(value) <= QUEUE_NAME_MAX_BYTES
        and value.isascii()
        and value.isprintable()
        and " " not in value
    ):
        raise InvalidQueueName(
            f"{path}: a queue name is 1 to {QUEUE_NAME_MAX_BYTES} printable ASCII characters "
            f"without spaces; got {shorten(value)}"
        )
    return value


def _queue(reader: FieldReader, name: str = "queue") -> str:
    return check_queue_name(reader.required(name), reader.path_of(name))


def _optional_queue(reader: FieldReader, name: str) -> str | None:
    value = reader.optional(name)
    return None if value is None else check_queue_name(value, reader.path_of(name))


def _optional_lease_ms(reader: FieldReader, name: str) -> int | None:
    """A lease duration where 0 means "no lease": the task is acknowledged as delivered."""
    return reader.optional_integer(name, low=0, high=LEASE_MS_MAX, range_error=InvalidArgument)


def _delay_ms(reader: FieldReader) -> int:
    return reader.integer_or_default(
        "delay_ms", default=0, low=0, high=DELAY_MS_MAX, range_error=InvalidArgument
    )


def _uint64(reader: FieldReader, name: str) -> int:
    return reader.integer(name, low=0, high=UINT64_MAX)


def _optional_uint64(reader: FieldReader, name: str) -> int | None:
    return reader.optional_integer(name, low=0, high=UINT64_MAX)


def _int64(reader: FieldReader, name: str) -> int:
    return reader.integer(name, low=INT64_MIN, high=INT64_MAX)


def _batch(reader: FieldReader, name: str) -> tuple[list[object], str]:
    """The items of a batch's array and its path; InvalidArgument unless it holds 1 to 1000."""
    items = reader.array(name)
    path = reader.path_of(name)
    if not 1 <= len(items) <= BATCH_TASKS_MAX:
        raise InvalidArgument(
            f"{path}: must hold between 1 and {BATCH_TASKS_MAX} tasks, got {len(items)}"
        )
    return items, path


def _drop_none(fields: dict[str, object]) -> dict[str, object]:
    """Optional fields left at their default are omitted from the wire."""
    return {name: value for name, value in fields.items() if value is not None}


def _priority_range(
    reader: FieldReader, range_error: type[TaskraftError] = InvalidPriorityRange
) -> tuple[int, int] | None:
    """An optional `[low, high]` of int64 with low <= high."""
    value = reader.optional("priority_range")
    if value is None:
        return None
    path = reader.path_of("priority_range")
    low, high = (
        check_integer(
            item, f"{path}[{index}]", low=INT64_MIN, high=INT64_MAX, range_error=range_error
        )
        for index, item in enumerate(check_array(value, path, length=2))
    )
    if low > high:
        raise range_error(f"{path}: low {low} is above high {high}")
    return (low, high)


# ---------------------------------------------------------------------------------------------
# Results: what a successful request answers under "ok".
# ---------------------------------------------------------------------------------------------


class Result:
    """An operation's answer. Read leniently: fields added by newer servers are ignored."""

    __slots__ = ()

    def to_wire(self) -> object:
        raise NotImplementedError

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class TaskLease:
    """A delivered task and the lease under which it was delivered: what ack, nack and extend
    name. The lease token changes with every delivery, so a worker whose lease expired cannot
    acknowledge the task that someone else now holds."""

    task_id: int
    lease: int

    def to_wire(self) -> dict[str, object]:
        return {"id": self.task_id, "lease": self.lease}

    @classmethod
    def from_wire(cls, value: object, path: str) -> TaskLease:
        reader = FieldReader(value, path)
        task = cls(task_id=_uint64(reader, "id"), lease=_uint64(reader, "lease"))
        reader.finish()
        return task

    @classmethod
    def from_batch_item(cls, value: object, path: str) -> TaskLease:
        """`from_wire`, with a fast path for the well-formed items of a batch's thousand."""
        if type(value) is dict and len(value) == 2:
            task_id = value.get("id")
            lease = value.get("lease")
            if (
                type(task_id) is int
                and type(lease) is int
                and 0 <= task_id <= UINT64_MAX
                and 0 <= lease <= UINT64_MAX
            ):
                return cls(task_id=task_id, lease=lease)
        return cls.from_wire(value, path)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnqueueItem:
    """One task of an `enqueue_many`: the arguments of an `enqueue` but the queue's name.

    On the wire a map; `key` and `delay_ms` are left out when unset (nil and 0), so that a batch
    of plain tasks stays compact.
    """

    payload: bytes
    priority: int
    key: str | None = None
    delay_ms: int = 0

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {"payload": self.payload, "priority": self.priority}
        if self.key is not None:
            wire["key"] = self.key
        if self.delay_ms:
            wire["delay_ms"] = self.delay_ms
        return wire

    @classmethod
    def from_wire(cls, value: object, path: str) -> EnqueueItem:
        """Checked as `enqueue` checks its arguments, with the same errors naming the field."""
        # Most items of a batch are well formed: check them in one expression, and read field
        # by field (for the exact error) only when that fails.
        if type(value) is dict and value.keys() <= _ENQUEUE_ITEM_FIELDS:
            payload = value.get("payload")
            priority = value.get("priority")
            key = value.get("key")
            delay_ms = value.get("delay_ms")
            if (
                type(payload) is bytes
                and len(payload) <= PAYLOAD_SIZE_MAX_BYTES
                and type(priority) is int
                and INT64_MIN <= priority <= INT64_MAX
                and (key is None or (type(key) is str and 0 < len(key) <= _KEY_FAST_CHARS_MAX))
                and (delay_ms is None or (type(delay_ms) is int and 0 <= delay_ms <= DELAY_MS_MAX))
            ):
                return cls(payload=payload, priority=priority, key=key, delay_ms=delay_ms or 0)
        reader = FieldReader(value, path)
        item = cls(
            payload=reader.binary(
                "payload", max_bytes=PAYLOAD_SIZE_MAX_BYTES, length_error=PayloadTooLarge
            ),
            priority=reader.integer(
                "priority", low=INT64_MIN, high=INT64_MAX, range_error=PriorityOutOfRange
            ),
            key=reader.optional_text(
                "key", max_bytes=KEY_MAX_BYTES, min_chars=1, length_error=InvalidArgument
            ),
            delay_ms=_delay_ms(reader),
        )
        reader.finish()
        return item


@dataclass(frozen=True, slots=True)
class QueueCounts(Result):
    """Tasks in a queue: ready to deliver, delayed until later, and leased to a worker."""

    ready: int
    delayed: int
    leased: int

    def to_wire(self) -> dict[str, object]:
        return {"ready": self.ready, "delayed": self.delayed, "leased": self.leased}

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        reader = FieldReader(value, path)
        return cls(
            ready=_uint64(reader, "ready"),
            delayed=_uint64(reader, "delayed"),
            leased=_uint64(reader, "leased"),
        )


@dataclass(frozen=True, slots=True)
class QueuePolicies:
    """The settings a queue was created with, defaults filled in; None means "no limit"."""

    kind: str
    max_size: int | None
    max_payload_bytes: int | None
    priority_range: tuple[int, int] | None
    lease_ms_default: int
    max_deliveries: int | None
    dead_letter_queue: str | None

    def to_wire(self) -> dict[str, object]:
        priority_range = None if self.priority_range is None else list(self.priority_range)
        return {
            "kind": self.kind,
            "max_size": self.max_size,
            "max_payload_bytes": self.max_payload_bytes,
            "priority_range": priority_range,
            "lease_ms_default": self.lease_ms_default,
            "max_deliveries": self.max_deliveries,
            "dead_letter_queue": self.dead_letter_queue,
        }

    @classmethod
    def from_wire(cls, value: object, path: str) -> QueuePolicies:
        reader = FieldReader(value, path)
        return cls(
            kind=reader.text("kind", max_bytes=QUEUE_KIND_MAX_BYTES),
            max_size=_optional_uint64(reader, "max_size"),
            max_payload_bytes=_optional_uint64(reader, "max_payload_bytes"),
            priority_range=_priority_range(reader, BadRequest),
            lease_ms_default=_uint64(reader, "lease_ms_default"),
            max_deliveries=_optional_uint64(reader, "max_deliveries"),
            dead_letter_queue=reader.optional_text(
                "dead_letter_queue", max_bytes=QUEUE_NAME_MAX_BYTES
            ),
        )


@dataclass(frozen=True, slots=True)
class QueueDescription(Result):
    """A queue: its name, its settings and how many tasks it holds."""

    name: str
    policies: QueuePolicies
    counts: QueueCounts

    def to_wire(self) -> dict[str, object]:
        return {
            "name": self.name,
            "policies": self.policies.to_wire(),
            "counts": self.counts.to_wire(),
        }

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        reader = FieldReader(value, path)
        return cls(
            name=reader.text("name", max_bytes=QUEUE_NAME_MAX_BYTES),
            policies=QueuePolicies.from_wire(
                reader.required("policies"), reader.path_of("policies")
            ),
            counts=QueueCounts.from_wire(reader.required("counts"), reader.path_of("counts")),
        )


@dataclass(frozen=True, slots=True)
class QueuePage(Result):
    """Queues in name order; `more` says whether a next page starts after the last one."""

    queues: tuple[QueueDescription, ...]
    more: bool

    def to_wire(self) -> dict[str, object]:
        return {"queues": [queue.to_wire() for queue in self.queues], "more": self.more}

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        reader = FieldReader(value, path)
        queues_path = reader.path_of("queues")
        queues = tuple(
            QueueDescription.from_wire(queue, f"{queues_path}[{index}]")
            for index, queue in enumerate(reader.array("queues"))
        )
        return cls(queues=queues, more=reader.boolean("more"))


@dataclass(frozen=True, slots=True)
class Enqueued(Result):
    """The id of the enqueued task; `duplicate` when the key named a task enqueued before."""

    task_id: int
    duplicate: bool

    def to_wire(self) -> dict[str, object]:
        return {"task_id": self.task_id, "duplicate": self.duplicate}

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        reader = FieldReader(value, path)
        return cls(task_id=_uint64(reader, "task_id"), duplicate=reader.boolean("duplicate"))


@dataclass(frozen=True, slots=True)
class EnqueuedMany(Result):
    """The ids of an `enqueue_many`'s tasks, in the order of its tasks; `duplicates[i]` when
    task i's key named a task enqueued before (or earlier in the same batch)."""

    task_ids: tuple[int, ...]
    duplicates: tuple[bool, ...]

    def to_wire(self) -> dict[str, object]:
        return {"task_ids": list(self.task_ids), "duplicates": list(self.duplicates)}

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        reader = FieldReader(value, path)
        ids_path = reader.path_of("task_ids")
        task_ids = tuple(
            check_integer(task_id, f"{ids_path}[{index}]", low=0, high=UINT64_MAX)
            for index, task_id in enumerate(reader.array("task_ids"))
        )
        duplicates_path = reader.path_of("duplicates")
        duplicates = tuple(
            check_bool(duplicate, f"{duplicates_path}[{index}]")
            for index, duplicate in enumerate(reader.array("duplicates"))
        )
        if len(task_ids) != len(duplicates):
            raise BadRequest(
                f"{duplicates_path}: {len(duplicates)} items for {len(task_ids)} task ids"
            )
        return cls(task_ids=task_ids, duplicates=duplicates)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveredTask(Result):
    """A task handed to the worker that dequeued it; `deliveries` counts this one.

    `lease` is the lease token and `lease_ms` the lease's duration; both are None when the
    dequeue asked for no lease (`lease_ms` 0), which acknowledges the task as it is delivered.
    """

    task_id: int
    lease: int | None
    queue: str
    priority: int
    payload: bytes
    deliveries: int
    lease_ms: int | None

    @property
    def task(self) -> TaskLease | None:
        """What ack, nack and extend name, or None for a task delivered without a lease."""
        return None if self.lease is None else TaskLease(task_id=self.task_id, lease=self.lease)

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.task_id,
            "lease": self.lease,
            "queue": self.queue,
            "priority": self.priority,
            "payload": self.payload,
            "deliveries": self.deliveries,
            "lease_ms": self.lease_ms,
        }

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        reader = FieldReader(value, path)
        return cls(
            task_id=_uint64(reader, "id"),
            lease=_optional_uint64(reader, "lease"),
            queue=reader.text("queue", max_bytes=QUEUE_NAME_MAX_BYTES),
            priority=_int64(reader, "priority"),
            payload=reader.binary("payload", max_bytes=PAYLOAD_SIZE_MAX_BYTES),
            deliveries=reader.integer("deliveries", low=1, high=UINT64_MAX),
            lease_ms=_optional_uint64(reader, "lease_ms"),
        )


@dataclass(frozen=True, slots=True)
class DeliveredTasks(Result):
    """The tasks a `dequeue_many` took, in the order the queue served them; possibly none."""

    tasks: tuple[DeliveredTask, ...]

    def to_wire(self) -> dict[str, object]:
        return {"tasks": [task.to_wire() for task in self.tasks]}

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        reader = FieldReader(value, path)
        tasks_path = reader.path_of("tasks")
        return cls(
            tasks=tuple(
                DeliveredTask.from_wire(task, f"{tasks_path}[{index}]")
                for index, task in enumerate(reader.array("tasks"))
            )
        )


@dataclass(frozen=True, slots=True)
class AckedMany(Result):
    """What became of each task of an `ack_many`, in the order of its tasks: None when it was
    acknowledged, else the code of the error a single `ack` of it would have answered (12
    `unknown_lease`)."""

    errors: tuple[int | None, ...]

    def to_wire(self) -> dict[str, object]:
        return {"errors": list(self.errors)}

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        reader = FieldReader(value, path)
        errors_path = reader.path_of("errors")
        return cls(
            errors=tuple(
                None
                if code is None
                else check_integer(code, f"{errors_path}[{index}]", low=INT64_MIN, high=UINT64_MAX)
                for index, code in enumerate(reader.array("errors"))
            )
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus(Result):
    """What the answering node knows of itself and of the cluster's leader."""

    node: str
    role: str
    term: int
    leader_id: str | None
    leader_address: str | None
    commit_index: int
    applied_index: int

    def to_wire(self) -> dict[str, object]:
        return {
            "node": self.node,
            "role": self.role,
            "term": self.term,
            "leader_id": self.leader_id,
            "leader_address": self.leader_address,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
        }

    @classmethod
    def from_wire(cls, value: object, path: str) -> Self:
        reader = FieldReader(value, path)
        return cls(
            node=reader.text("node", max_bytes=NODE_ID_MAX_BYTES),
            role=reader.text("role", max_bytes=_ROLE_MAX_BYTES),
            term=_uint64(reader, "term"),
            leader_id=reader.optional_text("leader_id", max_bytes=NODE_ID_MAX_BYTES),
            leader_address=reader.optional_text("leader_address", max_bytes=ADDRESS_MAX_BYTES),
            commit_index=_uint64(reader, "commit_index"),
            applied_index=_uint64(reader, "applied_index"),
        )


# ---------------------------------------------------------------------------------------------
# Operations: what a request asks, one class per operation, its fields the operation's args.
# ---------------------------------------------------------------------------------------------


class Operation:
    """A request's operation and its arguments; subclasses define one operation each.

    `result_type` is the Result class a success answers with, None for operations that answer
    nil; `result_may_be_nil` is set by operations that may also answer nil (a dequeue that
    found no task).
    """

    __slots__ = ()

    name: ClassVar[str]
    result_type: ClassVar[type[Result] | None] = None
    result_may_be_nil: ClassVar[bool] = False

    def to_args(self) -> dict[str, object]:
        raise NotImplementedError

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        """Read the arguments; the caller refuses unexpected ones with `reader.finish()`."""
        raise NotImplementedError

    def result_to_wire(self, result: object) -> object:
        """The wire form of this operation's result; LocalProtocolError for a wrong one."""
        if result is None and (self.result_type is None or self.result_may_be_nil):
            return None
        if self.result_type is not None and isinstance(result, self.result_type):
            return result.to_wire()
        expected = "nil" if self.result_type is None else self.result_type.__name__
        raise LocalProtocolError(f"{self.name} answers {expected}, not {type(result).__name__}")

    def result_from_wire(self, value: object, path: str = "ok") -> object:
        """This operation's result read from an answer; BadRequest when it is malformed."""
        if value is None and (self.result_type is None or self.result_may_be_nil):
            return None
        if self.result_type is None:
            raise wrong_type(path, "nil", value)
        return self.result_type.from_wire(value, path)


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateQueue(Operation):
    """Create a queue; its settings are fixed for its whole life. None takes the default.

    The queue state machine decides what the protocol cannot: whether `kind` is known,
    whether `priority_range` suits it, and whether `dead_letter_queue` exists.
    """

    name: ClassVar[str] = "create_queue"
    result_type: ClassVar[type[Result] | None] = QueueDescription

    queue: str
    kind: str | None = None
    max_size: int | None = None
    max_payload_bytes: int | None = None
    priority_range: tuple[int, int] | None = None
    lease_ms_default: int | None = None
    max_deliveries: int | None = None
    dead_letter_queue: str | None = None

    def to_args(self) -> dict[str, object]:
        priority_range = None if self.priority_range is None else list(self.priority_range)
        return _drop_none(
            {
                "queue": self.queue,
                "kind": self.kind,
                "max_size": self.max_size,
                "max_payload_bytes": self.max_payload_bytes,
                "priority_range": priority_range,
                "lease_ms_default": self.lease_ms_default,
                "max_deliveries": self.max_deliveries,
                "dead_letter_queue": self.dead_letter_queue,
            }
        )

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(
            queue=_queue(reader),
            kind=reader.optional_text(
                "kind", max_bytes=QUEUE_KIND_MAX_BYTES, min_chars=1, length_error=UnknownQueueKind
            ),
            max_size=reader.optional_integer(
                "max_size", low=1, high=INT64_MAX, range_error=InvalidMaxSize
            ),
            max_payload_bytes=reader.optional_integer(
                "max_payload_bytes", low=1, high=INT64_MAX, range_error=InvalidMaxPayloadSize
            ),
            priority_range=_priority_range(reader),
            lease_ms_default=_optional_lease_ms(reader, "lease_ms_default"),
            max_deliveries=reader.optional_integer(
                "max_deliveries", low=1, high=INT64_MAX, range_error=InvalidArgument
            ),
            dead_letter_queue=_optional_queue(reader, "dead_letter_queue"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteQueue(Operation):
    """Delete an empty queue that no other queue uses as its dead-letter queue."""

    name: ClassVar[str] = "delete_queue"

    queue: str

    def to_args(self) -> dict[str, object]:
        return {"queue": self.queue}

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(queue=_queue(reader))


@dataclass(frozen=True, slots=True, kw_only=True)
class ListQueues(Operation):
    """One page of queues in name order, starting after the name `after`."""

    name: ClassVar[str] = "list_queues"
    result_type: ClassVar[type[Result] | None] = QueuePage

    after: str | None = None
    limit: int = LIST_QUEUES_LIMIT_MAX

    def to_args(self) -> dict[str, object]:
        return _drop_none({"after": self.after, "limit": self.limit})

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(
            after=_optional_queue(reader, "after"),
            limit=reader.integer_or_default(
                "limit",
                default=LIST_QUEUES_LIMIT_MAX,
                low=1,
                high=LIST_QUEUES_LIMIT_MAX,
                range_error=InvalidArgument,
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Count(Operation):
    """How many tasks a queue holds, by state; a linearizable read through the leader."""

    name: ClassVar[str] = "count"
    result_type: ClassVar[type[Result] | None] = QueueCounts

    queue: str

    def to_args(self) -> dict[str, object]:
        return {"queue": self.queue}

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(queue=_queue(reader))


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueue(Operation):
    """Add a task. With a `key`, a retry of the same enqueue is answered with the first task."""

    name: ClassVar[str] = "enqueue"
    result_type: ClassVar[type[Result] | None] = Enqueued

    queue: str
    payload: bytes
    priority: int
    key: str | None = None
    delay_ms: int = 0

    def to_args(self) -> dict[str, object]:
        return _drop_none(
            {
                "queue": self.queue,
                "payload": self.payload,
                "priority": self.priority,
                "key": self.key,
                "delay_ms": self.delay_ms,
            }
        )

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(
            queue=_queue(reader),
            payload=reader.binary(
                "payload", max_bytes=PAYLOAD_SIZE_MAX_BYTES, length_error=PayloadTooLarge
            ),
            priority=reader.integer(
                "priority", low=INT64_MIN, high=INT64_MAX, range_error=PriorityOutOfRange
            ),
            key=reader.optional_text(
                "key", max_bytes=KEY_MAX_BYTES, min_chars=1, length_error=InvalidArgument
            ),
            delay_ms=_delay_ms(reader),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Dequeue(Operation):
    """Take the next ready task, waiting up to `wait_ms` for one; nil when none came.

    `lease_ms` None takes the queue's default lease; 0 takes the task without a lease, which
    acknowledges it at once (at most once delivery).
    """

    name: ClassVar[str] = "dequeue"
    result_type: ClassVar[type[Result] | None] = DeliveredTask
    result_may_be_nil: ClassVar[bool] = True

    queue: str
    wait_ms: int = 0
    lease_ms: int | None = None

    def to_args(self) -> dict[str, object]:
        return _drop_none({"queue": self.queue, "wait_ms": self.wait_ms, "lease_ms": self.lease_ms})

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(
            queue=_queue(reader),
            wait_ms=reader.integer_or_default(
                "wait_ms", default=0, low=0, high=WAIT_MS_MAX, range_error=InvalidArgument
            ),
            lease_ms=_optional_lease_ms(reader, "lease_ms"),
        )


def _task(reader: FieldReader) -> TaskLease:
    return TaskLease.from_wire(reader.required("task"), reader.path_of("task"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Operation):
    """The task is done: remove it. Answers `unknown_lease` when the lease is no longer held."""

    name: ClassVar[str] = "ack"

    task: TaskLease

    def to_args(self) -> dict[str, object]:
        return {"task": self.task.to_wire()}

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(task=_task(reader))


@dataclass(frozen=True, slots=True, kw_only=True)
class Nack(Operation):
    """The task failed: it becomes ready again after `delay_ms`, or goes to the dead letters."""

    name: ClassVar[str] = "nack"

    task: TaskLease
    delay_ms: int = 0

    def to_args(self) -> dict[str, object]:
        return {"task": self.task.to_wire(), "delay_ms": self.delay_ms}

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(task=_task(reader), delay_ms=_delay_ms(reader))


@dataclass(frozen=True, slots=True, kw_only=True)
class Extend(Operation):
    """Keep the lease: it now ends `lease_ms` after the extension is applied."""

    name: ClassVar[str] = "extend"

    task: TaskLease
    lease_ms: int

    def to_args(self) -> dict[str, object]:
        return {"task": self.task.to_wire(), "lease_ms": self.lease_ms}

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(
            task=_task(reader),
            # 0 is refused rather than read as "expire now": that is what nack does.
            lease_ms=reader.integer(
                "lease_ms", low=1, high=LEASE_MS_MAX, range_error=InvalidArgument
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EnqueueMany(Operation):
    """Add up to 1000 tasks to one queue in one log entry, all or none.

    Each task is checked as `enqueue` checks its arguments; together their payloads take at
    most BATCH_PAYLOAD_BYTES_MAX, unless the batch holds a single task.
    """

    name: ClassVar[str] = "enqueue_many"
    result_type: ClassVar[type[Result] | None] = EnqueuedMany

    queue: str
    tasks: tuple[EnqueueItem, ...]

    def to_args(self) -> dict[str, object]:
        return {"queue": self.queue, "tasks": [task.to_wire() for task in self.tasks]}

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        queue = _queue(reader)
        items, path = _batch(reader, "tasks")
        tasks = tuple(
            EnqueueItem.from_wire(item, f"{path}[{index}]") for index, item in enumerate(items)
        )
        if len(tasks) > 1:
            total = sum(len(task.payload) for task in tasks)
            if total > BATCH_PAYLOAD_BYTES_MAX:
                raise PayloadTooLarge(
                    f"{path}: the payloads of {len(tasks)} tasks take {total} bytes; a batch of "
                    f"more than one task carries at most {BATCH_PAYLOAD_BYTES_MAX}"
                )
        return cls(queue=queue, tasks=tasks)

    def result_from_wire(self, value: object, path: str = "ok") -> object:
        result = Operation.result_from_wire(self, value, path)
        if isinstance(result, EnqueuedMany) and len(result.task_ids) != len(self.tasks):
            raise BadRequest(
                f"{path}.task_ids: {len(result.task_ids)} ids for {len(self.tasks)} tasks"
            )
        return result


@dataclass(frozen=True, slots=True, kw_only=True)
class DequeueMany(Operation):
    """Take up to `max_tasks` ready tasks in serving order, waiting up to `wait_ms` for the
    first; an empty list when none came. `lease_ms` as for `dequeue`.

    The answer stops before a task whose payload would take the answer's payloads past
    BATCH_PAYLOAD_BYTES_MAX; the first task is taken whatever its size.
    """

    name: ClassVar[str] = "dequeue_many"
    result_type: ClassVar[type[Result] | None] = DeliveredTasks

    queue: str
    max_tasks: int
    wait_ms: int = 0
    lease_ms: int | None = None

    def to_args(self) -> dict[str, object]:
        return _drop_none(
            {
                "queue": self.queue,
                "max_tasks": self.max_tasks,
                "wait_ms": self.wait_ms,
                "lease_ms": self.lease_ms,
            }
        )

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls(
            queue=_queue(reader),
            max_tasks=reader.integer(
                "max_tasks", low=1, high=BATCH_TASKS_MAX, range_error=InvalidArgument
            ),
            wait_ms=reader.integer_or_default(
                "wait_ms", default=0, low=0, high=WAIT_MS_MAX, range_error=InvalidArgument
            ),
            lease_ms=_optional_lease_ms(reader, "lease_ms"),
        )

    def result_from_wire(self, value: object, path: str = "ok") -> object:
        result = Operation.result_from_wire(self, value, path)
        if isinstance(result, DeliveredTasks) and len(result.tasks) > self.max_tasks:
            raise BadRequest(
                f"{path}.tasks: {len(result.tasks)} tasks for a max_tasks of {self.max_tasks}"
            )
        return result


@dataclass(frozen=True, slots=True, kw_only=True)
class AckMany(Operation):
    """Acknowledge up to 1000 tasks in one log entry, each on its own: a lease that is no
    longer held fails that task's ack only, as the answer's `errors` says."""

    name: ClassVar[str] = "ack_many"
    result_type: ClassVar[type[Result] | None] = AckedMany

    tasks: tuple[TaskLease, ...]

    def to_args(self) -> dict[str, object]:
        return {"tasks": [task.to_wire() for task in self.tasks]}

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        items, path = _batch(reader, "tasks")
        return cls(
            tasks=tuple(
                TaskLease.from_batch_item(item, f"{path}[{index}]")
                for index, item in enumerate(items)
            )
        )

    def result_from_wire(self, value: object, path: str = "ok") -> object:
        result = Operation.result_from_wire(self, value, path)
        if isinstance(result, AckedMany) and len(result.errors) != len(self.tasks):
            raise BadRequest(
                f"{path}.errors: {len(result.errors)} items for {len(self.tasks)} tasks"
            )
        return result


@dataclass(frozen=True, slots=True, kw_only=True)
class Status(Operation):
    """The answering node's view of the cluster; any node answers, leader or not."""

    name: ClassVar[str] = "status"
    result_type: ClassVar[type[Result] | None] = NodeStatus

    def to_args(self) -> dict[str, object]:
        return {}

    @classmethod
    def from_args(cls, reader: FieldReader) -> Self:
        return cls()


OPERATIONS: Final[dict[str, type[Operation]]] = {
    operation.name: operation
    for operation in (
        CreateQueue,
        DeleteQueue,
        ListQueues,
        Count,
        Enqueue,
        Dequeue,
        Ack,
        Nack,
        Extend,
        EnqueueMany,
        DequeueMany,
        AckMany,
        Status,
    )
}
"""Every operation by its wire name."""


# ---------------------------------------------------------------------------------------------
# Errors on the wire.
# ---------------------------------------------------------------------------------------------


def error_to_wire(error: TaskraftError) -> dict[str, object]:
    """The error object: code, name and message, plus where the leader is for `not_leader`."""
    message = error.message.encode("utf-8", "replace")[:ERROR_MESSAGE_MAX_BYTES]
    wire: dict[str, object] = {
        "code": error.code,
        "name": error.name,
        "message": message.decode("utf-8", "ignore"),
    }
    if isinstance(error, NotLeader):
        wire |= _drop_none({"leader_id": error.leader_id, "leader_address": error.leader_address})
    return wire


def error_from_wire(value: object, path: str = "error") -> TaskraftError:
    """The exception a received error object stands for; the code decides, not the name."""
    reader = FieldReader(value, path)
    code = reader.integer("code", low=INT64_MIN, high=UINT64_MAX)
    reader.text("name", max_bytes=ERROR_MESSAGE_MAX_BYTES)
    message = reader.text("message", max_bytes=PAYLOAD_SIZE_MAX_BYTES)
    leader_id = reader.optional_text("leader_id", max_bytes=NODE_ID_MAX_BYTES)
    leader_address = reader.optional_text("leader_address", max_bytes=ADDRESS_MAX_BYTES)
    error = error_from_code(code, message)
    if isinstance(error, NotLeader):
        error.leader_id = leader_id
        error.leader_address = leader_address
    return error


# ---------------------------------------------------------------------------------------------
# Messages: what one frame carries.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Handshake:
    """The client's first frame: the protocol version it speaks, for logs who it is, and the
    bearer token of a node that requires one.

    The token is optional on the wire: a node without authentication accepts a handshake
    without it, so clients older than the field keep working there. It never shows in `repr`,
    so that logging a handshake cannot leak it.
    """

    version: int = PROTOCOL_VERSION
    client: str | None = None
    token: str | None = field(default=None, repr=False)

    def to_wire(self) -> dict[str, object]:
        return _drop_none({"taskraft": self.version, "client": self.client, "token": self.token})

    @classmethod
    def from_wire(cls, value: object) -> Handshake:
        """Raises BadRequest, or UnsupportedProtocolVersion for a version not spoken here."""
        reader = FieldReader(value, "")
        if reader.take("taskraft") is MISSING:
            raise BadRequest("taskraft: missing; the first frame must be the handshake")
        version = reader.integer("taskraft", low=INT64_MIN, high=UINT64_MAX)
        if version not in SUPPORTED_PROTOCOL_VERSIONS:
            spoken = ", ".join(str(each) for each in sorted(SUPPORTED_PROTOCOL_VERSIONS))
            raise UnsupportedProtocolVersion(
                f"protocol version {version} is not supported; this server speaks {spoken}"
            )
        client = reader.optional_text("client", max_bytes=CLIENT_NAME_MAX_BYTES)
        token = reader.optional_text("token", max_bytes=TOKEN_MAX_BYTES, min_chars=1)
        reader.finish()
        return cls(version=version, client=client, token=token)


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeAccepted:
    """The server's answer to a handshake it accepts: the version and the node's id."""

    version: int
    node: str

    def to_wire(self) -> dict[str, object]:
        return {"taskraft": self.version, "node": self.node}

    @classmethod
    def from_wire(cls, value: object) -> HandshakeAccepted:
        reader = FieldReader(value, "")
        return cls(
            version=reader.integer("taskraft", low=INT64_MIN, high=UINT64_MAX),
            node=reader.text("node", max_bytes=NODE_ID_MAX_BYTES),
        )


def read_message_id(value: object) -> int:
    """The id of a request or response, before anything else is read from it.

    An id is what lets an answer reach its request; without one a malformed request cannot be
    answered, and the connection has to end instead.
    """
    reader = FieldReader(value, "")
    return reader.integer("id", low=0, high=UINT64_MAX)


@dataclass(frozen=True, slots=True)
class Request:
    """One operation, named by an id the client chose among its requests in flight."""

    request_id: int
    operation: Operation

    def to_wire(self) -> dict[str, object]:
        return {"id": self.request_id, "op": self.operation.name, "args": self.operation.to_args()}

    @classmethod
    def from_wire(cls, value: object) -> Request:
        """Raises BadRequest for a malformed request, or the error of an argument out of range."""
        reader = FieldReader(value, "")
        request_id = reader.integer("id", low=0, high=UINT64_MAX)
        name = reader.required("op")
        if type(name) is not str:
            raise wrong_type("op", "str", name)
        args = reader.map("args")
        reader.finish()
        operation_class = OPERATIONS.get(name)
        if operation_class is None:
            known = ", ".join(OPERATIONS)
            raise BadRequest(f"op: unknown operation {shorten(name)}; known: {known}")
        operation = operation_class.from_args(args)
        args.finish()
        return cls(request_id=request_id, operation=operation)


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to one request: its result, or the error that stopped it."""

    request_id: int
    result: object = None
    error: TaskraftError | None = None

    def __post_init__(self) -> None:
        if self.error is not None and self.result is not None:
            raise LocalProtocolError("a response carries a result or an error, not both")

    def to_wire(self, operation: Operation | None = None) -> dict[str, object]:
        """The answer's wire form; given the `operation`, checks the result is what it answers.

        Raises LocalProtocolError for a result that is not a Result or nil.
        """
        if self.error is not None:
            return {"id": self.request_id, "error": error_to_wire(self.error)}
        if operation is not None:
            return {"id": self.request_id, "ok": operation.result_to_wire(self.result)}
        if self.result is not None and not isinstance(self.result, Result):
            raise LocalProtocolError(
                f"a result must be a Result or None, not {type(self.result).__name__}"
            )
        ok = None if self.result is None else self.result.to_wire()
        return {"id": self.request_id, "ok": ok}

    @classmethod
    def from_wire(cls, value: object, operation: Operation) -> Response:
        """Read an answer to `operation`; fields added by newer servers are ignored."""
        reader = FieldReader(value, "")
        request_id = reader.integer("id", low=0, high=UINT64_MAX)
        ok = reader.take("ok")
        error = reader.take("error")
        if (ok is MISSING) == (error is MISSING):
            raise BadRequest("a response holds exactly one of 'ok' and 'error'")
        if error is not MISSING:
            return cls(request_id=request_id, error=error_from_wire(error, "error"))
        return cls(request_id=request_id, result=operation.result_from_wire(ok, "ok"))


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """An error about the connection rather than one request; the sender then closes.

    A server sends it when it rejects the handshake or cannot read a frame well enough to
    answer the request it held.
    """

    error: TaskraftError

    def to_wire(self) -> dict[str, object]:
        return {"error": error_to_wire(self.error)}

    @classmethod
    def from_wire(cls, value: object) -> ErrorFrame:
        reader = FieldReader(value, "")
        return cls(error=error_from_wire(reader.required("error"), "error"))

    @staticmethod
    def matches(value: object) -> bool:
        """Whether a decoded frame is an error frame: a map with "error" and no "id"."""
        return isinstance(value, dict) and "error" in value and "id" not in value
