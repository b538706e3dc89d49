"""The queue state as a stream of msgpack chunks, and back.

A snapshot of a million tasks must never be one giant object: it is written as a stream of
small msgpack objects (a header, the counters, one object per queue, batches of tasks, batches
of idempotency keys, an end marker), cut into chunks of at most a given size. Chunk boundaries
fall anywhere, even inside an object, so the reader accepts any re-chunking of the stream (the
snapshot file reader and InstallSnapshot both hand back their own chunk sizes).

The ready order, the deadline heap and the per-queue counts are not written: each task record
carries its sequence and deadline, which determine them exactly, so the restoring replica
rebuilds them and serves the same tasks in the same order as the original.

The stream, format version 1, is these msgpack arrays one after the other:

    ["taskraft-queue-snapshot", 1]
    [applied index, clock ms, next task id, next sequence, next queue id,
     queue count, task count, idempotency key count]
    queue count x [queue id, name, kind, max size, max payload bytes, [low, high] or nil,
                   lease ms default, max deliveries, dead letter queue]
    task batches until task count: [[the nine TaskRecord fields], ...]
    key batches until key count:   [[recorded ms, queue id, key, task id], ...]  (oldest first)
    ["end", task count]

Two replicas at the same applied index write the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from taskraft.queue.limits import (
    SNAPSHOT_BATCH_RECORD_COUNT_MAX,
    SNAPSHOT_BATCH_SIZE_TARGET_BYTES,
    SNAPSHOT_CHUNK_SIZE_MAX_BYTES,
    SNAPSHOT_DECODE_BUFFER_SIZE_MAX_BYTES,
)
from taskraft.queue.records import (
    IDEMPOTENCY_ENTRY_FIELD_COUNT,
    TASK_RECORD_FIELD_COUNT,
    IdempotencyEntry,
    TaskRecord,
)
from taskraft.queue.results import QueueKind, QueuePolicies

SNAPSHOT_MAGIC: Final = "taskraft-queue-snapshot"
SNAPSHOT_FORMAT_VERSION: Final = 1
_END_MARKER: Final = "end"

# Bytes counted per task on top of its payload when sizing a batch (the other eight fields).
_TASK_OVERHEAD_BYTES: Final = 48


class InvalidSnapshot(Exception):
    """The snapshot stream is damaged, truncated or of an unknown format; nothing was restored."""


@dataclass(frozen=True, slots=True)
class QueueDefinition:
    """A queue as a snapshot records it: its identity and policies (counts are derived)."""

    queue_id: int
    name: str
    policies: QueuePolicies


@dataclass(frozen=True, slots=True, eq=False)
class StateSnapshot:
    """A consistent copy of the whole queue state, which later commands do not change.

    `tasks` is a private table (in the state machine's insertion order) of immutable records,
    and `idempotency` lists the remembered keys oldest first. Taking the copy costs one shallow
    copy of the task table; `chunks()` may then run on any thread.
    """

    applied_index: int
    clock_ms: int
    next_task_id: int
    next_sequence: int
    next_queue_id: int
    queues: tuple[QueueDefinition, ...]
    tasks: Mapping[int, TaskRecord]
    idempotency: tuple[IdempotencyEntry, ...]

    def chunks(self, chunk_size_max_bytes: int = SNAPSHOT_CHUNK_SIZE_MAX_BYTES) -> Iterator[bytes]:
        """The encoded state as chunks of at most `chunk_size_max_bytes` (all but the last full)."""
        if chunk_size_max_bytes < 1:
            raise ValueError(f"chunk size must be positive, not {chunk_size_max_bytes}")
        buffer = bytearray()
        for encoded in self._objects():
            buffer += encoded
            while len(buffer) >= chunk_size_max_bytes:
                yield bytes(buffer[:chunk_size_max_bytes])
                del buffer[:chunk_size_max_bytes]
        if buffer:
            yield bytes(buffer)

    def _objects(self) -> Iterator[bytes]:
        packer = msgpack.Packer(use_bin_type=True)
        yield packer.pack((SNAPSHOT_MAGIC, SNAPSHOT_FORMAT_VERSION))
        yield packer.pack(
            (
                self.applied_index,
                self.clock_ms,
                self.next_task_id,
                self.next_sequence,
                self.next_queue_id,
                len(self.queues),
                len(self.tasks),
                len(self.idempotency),
            )
        )
        for queue in self.queues:
            yield packer.pack(_encode_queue(queue))
        for batch in _task_batches(self.tasks.values()):
            yield packer.pack(batch)
        entries = self.idempotency
        for start in range(0, len(entries), SNAPSHOT_BATCH_RECORD_COUNT_MAX):
            yield packer.pack(entries[start : start + SNAPSHOT_BATCH_RECORD_COUNT_MAX])
        yield packer.pack((_END_MARKER, len(self.tasks)))


def _task_batches(records: Iterable[TaskRecord]) -> Iterator[list[TaskRecord]]:
    batch: list[TaskRecord] = []
    batch_size_bytes = 0
    for record in records:
        batch.append(record)
        batch_size_bytes += len(record.payload) + _TASK_OVERHEAD_BYTES
        if (
            batch_size_bytes >= SNAPSHOT_BATCH_SIZE_TARGET_BYTES
            or len(batch) >= SNAPSHOT_BATCH_RECORD_COUNT_MAX
        ):
            yield batch
            batch = []
            batch_size_bytes = 0
    if batch:
        yield batch


def _encode_queue(queue: QueueDefinition) -> tuple[object, ...]:
    policies = queue.policies
    return (
        queue.queue_id,
        queue.name,
        policies.kind.value,
        policies.max_size,
        policies.max_payload_bytes,
        policies.priority_range,
        policies.lease_ms_default,
        policies.max_deliveries,
        policies.dead_letter_queue,
    )


def read_snapshot(chunks: Iterable[bytes]) -> StateSnapshot:
    """Decode a stream written by `StateSnapshot.chunks`, however it was re-chunked since.

    Checks the format and the structure (counts, record shapes, the end marker, nothing after
    it); the state machine checks that the records are consistent with each other. Raises
    InvalidSnapshot.
    """
    reader = _ObjectReader(chunks)
    try:
        return _read(reader)
    except InvalidSnapshot:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise InvalidSnapshot(f"the snapshot cannot be decoded: {error!r}") from error


def _read(reader: _ObjectReader) -> StateSnapshot:
    header = reader.next_object("header")
    if header != (SNAPSHOT_MAGIC, SNAPSHOT_FORMAT_VERSION):
        raise InvalidSnapshot(
            f"unknown snapshot header {header!r}; this version reads "
            f"{SNAPSHOT_MAGIC!r} format {SNAPSHOT_FORMAT_VERSION}"
        )
    counters = _integers(reader.next_object("counters"), 8, "counters")
    applied_index, clock_ms, next_task_id, next_sequence, next_queue_id = counters[:5]
    queue_count, task_count, idempotency_count = counters[5:]
    queues = tuple(_decode_queue(reader.next_object("queue")) for _ in range(queue_count))
    tasks: dict[int, TaskRecord] = {}
    records_read = 0
    # Built without TaskRecord's Python-level constructor: restoring a million tasks is
    # dominated by this loop.
    new_record = tuple.__new__
    while records_read < task_count:
        batch = _batch(reader.next_object("task batch"), TASK_RECORD_FIELD_COUNT, "task")
        records_read += len(batch)
        for fields in batch:
            record = new_record(TaskRecord, fields)
            tasks[record[0]] = record
    if records_read != task_count or len(tasks) != task_count:
        raise InvalidSnapshot(
            f"{records_read} task records ({len(tasks)} distinct) where the header says "
            f"{task_count}"
        )
    idempotency: list[IdempotencyEntry] = []
    while len(idempotency) < idempotency_count:
        batch = _batch(reader.next_object("key batch"), IDEMPOTENCY_ENTRY_FIELD_COUNT, "key")
        idempotency.extend(IdempotencyEntry._make(fields) for fields in batch)
    if len(idempotency) != idempotency_count:
        raise InvalidSnapshot(f"{len(idempotency)} keys where the header says {idempotency_count}")
    if reader.next_object("end marker") != (_END_MARKER, task_count):
        raise InvalidSnapshot("the end marker is missing or wrong")
    reader.expect_end()
    return StateSnapshot(
        applied_index=applied_index,
        clock_ms=clock_ms,
        next_task_id=next_task_id,
        next_sequence=next_sequence,
        next_queue_id=next_queue_id,
        queues=queues,
        tasks=tasks,
        idempotency=tuple(idempotency),
    )


class _ObjectReader:
    """The msgpack objects of a chunk stream, holding at most one chunk and one object at once."""

    # Chunks are fed in slices of this size, so that even one whole-state `bytes` (the Raft
    # Snapshot.data of a small state) stays within the decoder's bounded buffer.
    _FEED_SIZE_BYTES: Final = 1024 * 1024

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_buffer_size=SNAPSHOT_DECODE_BUFFER_SIZE_MAX_BYTES,
        )
        self._pending: memoryview | None = None
        self._fed_bytes = 0

    def next_object(self, what: str) -> Any:
        while True:
            try:
                return next(self._unpacker)
            except StopIteration:
                if not self._feed():
                    raise InvalidSnapshot(f"the snapshot ends before its {what}") from None

    def expect_end(self) -> None:
        """Check that nothing follows the object read last (the decoder's position is exact
        only right after a complete object, so the rest is counted, not decoded)."""
        position = self._unpacker.tell()
        total = self._fed_bytes + (len(self._pending) if self._pending is not None else 0)
        total += sum(len(chunk) for chunk in self._chunks)
        if total != position:
            raise InvalidSnapshot(f"{total - position} bytes after the end marker")

    def _feed(self) -> bool:
        while self._pending is None or not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._pending = memoryview(chunk)
        piece = self._pending[: self._FEED_SIZE_BYTES]
        self._pending = self._pending[self._FEED_SIZE_BYTES :]
        self._unpacker.feed(piece)
        self._fed_bytes += len(piece)
        return True


def _integers(value: Any, count: int, what: str) -> tuple[int, ...]:
    if (
        not isinstance(value, tuple)
        or len(value) != count
        or not all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    ):
        raise InvalidSnapshot(f"malformed {what}: {value!r:.200}")
    return value


def _batch(value: Any, field_count: int, what: str) -> tuple[tuple[Any, ...], ...]:
    if not isinstance(value, tuple) or not value:
        raise InvalidSnapshot(f"malformed {what} batch")
    for fields in value:
        if not isinstance(fields, tuple) or len(fields) != field_count:
            raise InvalidSnapshot(f"malformed {what}: {fields!r:.200}")
    return value


def _optional_integer(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _decode_queue(value: Any) -> QueueDefinition:
    if not isinstance(value, tuple) or len(value) != 9:
        raise InvalidSnapshot(f"malformed queue: {value!r:.200}")
    queue_id, name, kind, max_size, max_payload, priority_range, lease_ms = value[:7]
    max_deliveries, dead_letter_queue = value[7:]
    well_formed = (
        isinstance(queue_id, int)
        and isinstance(name, str)
        and kind in QueueKind._value2member_map_
        and all(_optional_integer(item) for item in (max_size, max_payload, max_deliveries))
        and isinstance(lease_ms, int)
        and (priority_range is None or len(_integers(priority_range, 2, "range")) == 2)
        and (dead_letter_queue is None or isinstance(dead_letter_queue, str))
    )
    if not well_formed:
        raise InvalidSnapshot(f"malformed queue: {value!r:.200}")
    policies = QueuePolicies(
        kind=QueueKind(kind),
        max_size=max_size,
        max_payload_bytes=max_payload,
        priority_range=priority_range,
        lease_ms_default=lease_ms,
        max_deliveries=max_deliveries,
        dead_letter_queue=dead_letter_queue,
    )
    return QueueDefinition(queue_id=queue_id, name=name, policies=policies)


__all__ = [
    "SNAPSHOT_FORMAT_VERSION",
    "InvalidSnapshot",
    "QueueDefinition",
    "StateSnapshot",
    "read_snapshot",
]
