"""The checks a command's values must pass, shared by applying commands and restoring snapshots.

Each check raises the client-visible error that names what is wrong, so that every replica
rejects the same command with the same error.
"""

from __future__ import annotations

from collections.abc import Container

from taskraft.errors import (
    InvalidArgument,
    InvalidMaxPayloadSize,
    InvalidMaxSize,
    InvalidPriorityRange,
    InvalidQueueName,
    PriorityRangeRequired,
    QueueNotFound,
    UnknownQueueKind,
)
from taskraft.queue.commands import CreateQueue
from taskraft.queue.limits import (
    BUCKET_COUNT_MAX,
    IDEMPOTENCY_KEY_SIZE_MAX_BYTES,
    INT64_MAX,
    INT64_MIN,
    LEASE_MS_MAX,
    QUEUE_NAME_SIZE_MAX_BYTES,
)
from taskraft.queue.results import QueueKind, QueuePolicies


def check_queue_name(name: object) -> None:
    """Raise InvalidQueueName unless `name` is 1 to 255 bytes of printable ASCII (33 to 126)."""
    if not (
        isinstance(name, str)
        and 0 < len(name) <= QUEUE_NAME_SIZE_MAX_BYTES
        and name.isascii()
        and name.isprintable()
        and " " not in name
    ):
        raise InvalidQueueName(
            f"a queue name is 1 to {QUEUE_NAME_SIZE_MAX_BYTES} printable ASCII characters "
            f"without spaces, not {name!r:.300}"
        )


def check_idempotency_key(key: object) -> None:
    """Raise InvalidArgument unless `key` is a string of 1 to 255 bytes of UTF-8."""
    try:
        size_bytes = 0 if not isinstance(key, str) else len(key.encode())
    except UnicodeEncodeError:  # a lone surrogate
        size_bytes = 0
    if not 0 < size_bytes <= IDEMPOTENCY_KEY_SIZE_MAX_BYTES:
        raise InvalidArgument(
            f"an idempotency key is 1 to {IDEMPOTENCY_KEY_SIZE_MAX_BYTES} bytes of UTF-8"
        )


def checked_policies(command: CreateQueue, queue_names: Container[str]) -> QueuePolicies:
    """The policies of a queue to create, or the error that says what is wrong with them."""
    try:
        kind = QueueKind(command.kind)
    except ValueError:
        raise UnknownQueueKind(
            f"unknown queue kind {command.kind!r:.100}; one of {', '.join(QueueKind)}"
        ) from None
    priority_range = checked_priority_range(kind, command.priority_range)
    if command.max_size is not None and not 1 <= command.max_size <= INT64_MAX:
        raise InvalidMaxSize(f"max_size must be at least 1, not {command.max_size}")
    max_payload = command.max_payload_bytes
    if max_payload is not None and not 1 <= max_payload <= INT64_MAX:
        raise InvalidMaxPayloadSize(f"max_payload_bytes must be at least 1, not {max_payload}")
    if not 0 <= command.lease_ms_default <= LEASE_MS_MAX:
        raise InvalidArgument(
            f"lease_ms_default must be in [0, {LEASE_MS_MAX}], not {command.lease_ms_default}"
        )
    if command.max_deliveries is not None and not 1 <= command.max_deliveries <= INT64_MAX:
        raise InvalidArgument(f"max_deliveries must be at least 1, not {command.max_deliveries}")
    dead_letter_queue = command.dead_letter_queue
    if dead_letter_queue is not None:
        check_queue_name(dead_letter_queue)
        if dead_letter_queue not in queue_names:
            raise QueueNotFound(
                f"dead letter queue {dead_letter_queue!r} does not exist; create it first"
            )
    return QueuePolicies(
        kind=kind,
        max_size=command.max_size,
        max_payload_bytes=max_payload,
        priority_range=priority_range,
        lease_ms_default=command.lease_ms_default,
        max_deliveries=command.max_deliveries,
        dead_letter_queue=dead_letter_queue,
    )


def checked_priority_range(
    kind: QueueKind, priority_range: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The range as a tuple, or the error saying why a queue of `kind` cannot have it."""
    if priority_range is None:
        if kind is QueueKind.BUCKETS:
            raise PriorityRangeRequired("a buckets queue needs a priority_range")
        return None
    low, high = priority_range
    if not INT64_MIN <= low <= high <= INT64_MAX:
        raise InvalidPriorityRange(
            f"priority_range [{low}, {high}] must have low <= high, both 64-bit integers"
        )
    if kind is QueueKind.BUCKETS and high - low + 1 > BUCKET_COUNT_MAX:
        raise InvalidPriorityRange(
            f"priority_range [{low}, {high}] spans {high - low + 1} priorities; a buckets queue "
            f"has at most {BUCKET_COUNT_MAX} (use a heap queue for wider ranges)"
        )
    return (low, high)


__all__ = ["check_idempotency_key", "check_queue_name", "checked_policies"]
