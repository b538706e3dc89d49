"""Every error a client can receive, with a stable numeric code and name.

The codes are part of the wire protocol (docs/protocol.md): clients in any language switch on
the number, so a code is never reused or renumbered. The queue state machine raises these, the
server sends their code, name and message, and the Python client raises the same class again.
"""

from __future__ import annotations

from typing import ClassVar


class TaskraftError(Exception):
    """Base of all taskraft errors; `code` and `name` are stable across versions."""

    code: ClassVar[int] = 0
    name: ClassVar[str] = "error"
    # Whether retrying the same request elsewhere or later may succeed.
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.name)
        self.message = message or self.name


class InvalidQueueName(TaskraftError):
    code, name = 1, "invalid_queue_name"


class QueueNotFound(TaskraftError):
    code, name = 2, "queue_not_found"


class QueueAlreadyExists(TaskraftError):
    code, name = 3, "queue_already_exists"


class InvalidPriorityRange(TaskraftError):
    code, name = 4, "invalid_priority_range"


class InvalidMaxSize(TaskraftError):
    code, name = 5, "invalid_max_size"


class InvalidMaxPayloadSize(TaskraftError):
    code, name = 6, "invalid_max_payload_size"


class PriorityRangeRequired(TaskraftError):
    code, name = 7, "priority_range_required"


class UnknownQueueKind(TaskraftError):
    code, name = 8, "unknown_queue_kind"


class PayloadTooLarge(TaskraftError):
    code, name = 9, "payload_too_large"


class QueueFull(TaskraftError):
    code, name = 10, "queue_full"
    retryable = True


class PriorityOutOfRange(TaskraftError):
    code, name = 11, "priority_out_of_range"


class UnknownLease(TaskraftError):
    """The lease is unknown or expired: the task may have been redelivered to someone else."""

    code, name = 12, "unknown_lease"


class NotLeader(TaskraftError):
    """This node does not lead; `leader_id` and `leader_address` say where to go, when known."""

    code, name = 13, "not_leader"
    retryable = True

    def __init__(
        self,
        message: str = "",
        *,
        leader_id: str | None = None,
        leader_address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class Overloaded(TaskraftError):
    code, name = 14, "overloaded"
    retryable = True


class BadRequest(TaskraftError):
    code, name = 15, "bad_request"


class UnsupportedProtocolVersion(TaskraftError):
    code, name = 16, "unsupported_protocol_version"


class InvalidArgument(TaskraftError):
    """An argument outside what the operation accepts (a negative delay, a bad lease time)."""

    code, name = 17, "invalid_argument"


class QueueNotEmpty(TaskraftError):
    code, name = 18, "queue_not_empty"


class Unavailable(TaskraftError):
    """The cluster cannot serve now (no leader, or the outcome of a write is unknown)."""

    code, name = 19, "unavailable"
    retryable = True


class Unauthenticated(TaskraftError):
    """The node requires a token and the caller gave none, or one it does not know.

    The answer says no more than that, so that it tells a guesser nothing; the connection is
    closed. Resending with the same token gets the same answer.
    """

    code, name = 20, "unauthenticated"


class Forbidden(TaskraftError):
    """The caller's token is valid, but its role does not allow the operation."""

    code, name = 21, "forbidden"


ERRORS_BY_CODE: dict[int, type[TaskraftError]] = {
    error.code: error
    for error in (
        InvalidQueueName,
        QueueNotFound,
        QueueAlreadyExists,
        InvalidPriorityRange,
        InvalidMaxSize,
        InvalidMaxPayloadSize,
        PriorityRangeRequired,
        UnknownQueueKind,
        PayloadTooLarge,
        QueueFull,
        PriorityOutOfRange,
        UnknownLease,
        NotLeader,
        Overloaded,
        BadRequest,
        UnsupportedProtocolVersion,
        InvalidArgument,
        QueueNotEmpty,
        Unavailable,
        Unauthenticated,
        Forbidden,
    )
}


def error_from_code(code: int, message: str) -> TaskraftError:
    """The exception for a code received from a server; unknown codes stay readable."""
    error_class = ERRORS_BY_CODE.get(code)
    if error_class is None:
        error = TaskraftError(f"error {code}: {message}")
        return error
    return error_class(message)


__all__ = [
    "ERRORS_BY_CODE",
    "BadRequest",
    "Forbidden",
    "InvalidArgument",
    "InvalidMaxPayloadSize",
    "InvalidMaxSize",
    "InvalidPriorityRange",
    "InvalidQueueName",
    "NotLeader",
    "Overloaded",
    "PayloadTooLarge",
    "PriorityOutOfRange",
    "PriorityRangeRequired",
    "QueueAlreadyExists",
    "QueueFull",
    "QueueNotEmpty",
    "QueueNotFound",
    "TaskraftError",
    "Unauthenticated",
    "Unavailable",
    "UnknownLease",
    "UnknownQueueKind",
    "UnsupportedProtocolVersion",
    "error_from_code",
]
