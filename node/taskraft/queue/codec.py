"""Commands as the bytes of log entries: compact msgpack arrays, decoded without ever crashing.

A command is `[type tag, version, fields...]`; a log entry is `[entry version, now_ms, command]`,
where `now_ms` is the leader's time stamped when it proposed the entry (the state machine's only
source of time). Arrays rather than maps keep an enqueue command's overhead to a few bytes
beyond its payload and queue name (8 with a small priority, at most 27). A batch (`EnqueueMany`,
`AckMany`) holds its tasks column by column, one array per field, so that decoding a thousand
tasks makes a few lists rather than a thousand, and checks each column's types in one pass.

Every entry is decoded on every replica, possibly years later: a tag or version this code does
not know, a wrong field type or trailing bytes raise `BadRequest`, never anything else.
Checking values (ranges, names) is the state machine's job, so that a replica that decodes an
entry always gets the same error as every other one when applying it.

To change a command's fields, give it a new version and keep decoding the old one: entries
written by an older version stay in every replica's log until a snapshot compacts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from taskraft.errors import BadRequest
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

ENTRY_VERSION: Final = 1
COMMAND_VERSION: Final = 1

# Type tags are part of the log format: never reuse or renumber one.
TAG_CREATE_QUEUE: Final = 1
TAG_DELETE_QUEUE: Final = 2
TAG_ENQUEUE: Final = 3
TAG_DEQUEUE: Final = 4
TAG_ACK: Final = 5
TAG_NACK: Final = 6
TAG_EXTEND: Final = 7
TAG_TICK: Final = 8
TAG_ENQUEUE_MANY: Final = 9
TAG_DEQUEUE_MANY: Final = 10
TAG_ACK_MANY: Final = 11

# msgpack integers are at most 64 bits; anything else cannot be in an entry.
_INTEGER_MIN: Final = -(2**63)
_INTEGER_MAX: Final = 2**64 - 1


@dataclass(frozen=True, slots=True)
class StampedCommand:
    """A decoded log entry: the command and the time its leader stamped on it."""

    now_ms: int
    command: Command


def encode_command(command: Command) -> bytes:
    """The bytes of `command`, or BadRequest if decoding them would fail (see `encode_entry`)."""
    return _pack(_checked_command_array(command))


def decode_command(data: bytes) -> Command:
    """The command `encode_command` wrote; BadRequest for any other bytes."""
    return _decode_command_array(_unpack(data))


def encode_entry(command: Command, *, now_ms: int) -> bytes:
    """The data of the log entry carrying `command`, stamped with the leader's `now_ms`.

    Raises BadRequest for a command that decoding would refuse (a field of the wrong type, an
    integer past 64 bits), so that no entry the replicas cannot decode ever reaches the log.
    """
    return _pack([ENTRY_VERSION, _integer(now_ms, "now_ms"), _checked_command_array(command)])


def decode_entry(data: bytes) -> StampedCommand:
    """The stamped command `encode_entry` wrote; BadRequest for any other bytes."""
    value = _unpack(data)
    if not isinstance(value, list) or len(value) != 3:
        raise BadRequest("a log entry is an array [version, now_ms, command]")
    version, now_ms, command = value
    if version != ENTRY_VERSION or type(version) is not int:
        raise BadRequest(f"unknown log entry version {version!r:.40}")
    return StampedCommand(_integer(now_ms, "now_ms"), _decode_command_array(command))


def _pack(value: list[Any]) -> bytes:
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as error:
        raise BadRequest(f"the command cannot be encoded: {error}") from error
    return data


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as error:
        # msgpack raises a dozen different exceptions for bad bytes (ExtraData, FormatError,
        # StackError, UnicodeDecodeError, ...); all of them mean the same thing here.
        raise BadRequest(f"undecodable command bytes: {type(error).__name__}") from None


def _checked_command_array(command: Command) -> list[Any]:
    array = _command_array(command)
    _decode_command_array(array)
    return array


def _command_array(command: Command) -> list[Any]:
    match command:
        case Enqueue(queue, priority, payload, key, delay_ms):
            return [TAG_ENQUEUE, COMMAND_VERSION, queue, priority, payload, key, delay_ms]
        case Dequeue(queue, lease_ms):
            return [TAG_DEQUEUE, COMMAND_VERSION, queue, lease_ms]
        case Ack(task_id, lease_token):
            return [TAG_ACK, COMMAND_VERSION, task_id, lease_token]
        case Nack(task_id, lease_token, delay_ms):
            return [TAG_NACK, COMMAND_VERSION, task_id, lease_token, delay_ms]
        case Extend(task_id, lease_token, lease_ms):
            return [TAG_EXTEND, COMMAND_VERSION, task_id, lease_token, lease_ms]
        case Tick():
            return [TAG_TICK, COMMAND_VERSION]
        case EnqueueMany(queue, priorities, payloads, keys, delays_ms):
            return [
                TAG_ENQUEUE_MANY,
                COMMAND_VERSION,
                queue,
                _list(priorities),
                _list(payloads),
                _list(keys),
                _list(delays_ms),
            ]
        case DequeueMany(queue, max_tasks, lease_ms, max_bytes):
            return [TAG_DEQUEUE_MANY, COMMAND_VERSION, queue, max_tasks, lease_ms, max_bytes]
        case AckMany(task_ids, lease_tokens):
            return [TAG_ACK_MANY, COMMAND_VERSION, _list(task_ids), _list(lease_tokens)]
        case CreateQueue():
            return [
                TAG_CREATE_QUEUE,
                COMMAND_VERSION,
                command.name,
                command.kind,
                command.max_size,
                command.max_payload_bytes,
                None if command.priority_range is None else list(command.priority_range),
                command.lease_ms_default,
                command.max_deliveries,
                command.dead_letter_queue,
            ]
        case DeleteQueue(name):
            return [TAG_DELETE_QUEUE, COMMAND_VERSION, name]
    raise BadRequest(f"not a queue command: {type(command).__name__}")


def _decode_command_array(value: Any) -> Command:
    if not isinstance(value, list) or len(value) < 2:
        raise BadRequest("a command is an array [tag, version, fields...]")
    tag, version, *fields = value
    decoder = _DECODERS.get((tag, version)) if type(tag) is int and type(version) is int else None
    if decoder is None:
        raise BadRequest(f"unknown command tag {tag!r:.40} version {version!r:.40}")
    expected_count, decode = decoder
    if len(fields) != expected_count:
        raise BadRequest(f"command {tag} has {len(fields)} fields, not {expected_count}")
    return decode(fields)


def _integer(value: Any, name: str) -> int:
    # bool is an int subclass in Python but a distinct type in msgpack: refuse it.
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer, not {type(value).__name__}")
    if not _INTEGER_MIN <= value <= _INTEGER_MAX:
        raise BadRequest(f"{name} {value} does not fit in 64 bits")
    return value


def _optional_integer(value: Any, name: str) -> int | None:
    return None if value is None else _integer(value, name)


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, not {type(value).__name__}")
    return value


def _optional_string(value: Any, name: str) -> str | None:
    return None if value is None else _string(value, name)


def _bytes(value: Any, name: str) -> bytes:
    if type(value) is not bytes:
        raise BadRequest(f"{name} must be bytes, not {type(value).__name__}")
    return value


def _list(value: Any) -> Any:
    """A batch's column as the list decoding expects; anything else is left for it to refuse."""
    return list(value) if isinstance(value, tuple | list) else value


def _column(value: Any, name: str, types: frozenset[type]) -> tuple[Any, ...]:
    """A batch's column: a list whose items all have one of `types` (exactly), as a tuple."""
    if type(value) is not list:
        raise BadRequest(f"{name} must be an array, not {type(value).__name__}")
    # One pass in C over the items' types; the loop below only runs to say what is wrong.
    if not set(map(type, value)) <= types:
        for index, item in enumerate(value):
            if type(item) not in types:
                raise BadRequest(f"{name}[{index}] must not be a {type(item).__name__}")
    return tuple(value)


_INTEGER: Final[frozenset[type]] = frozenset((int,))
_BYTES: Final[frozenset[type]] = frozenset((bytes,))
_OPTIONAL_STRING: Final[frozenset[type]] = frozenset((str, type(None)))


def _priority_range(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise BadRequest("priority_range must be [low, high] or nil")
    return (_integer(value[0], "priority_range low"), _integer(value[1], "priority_range high"))


def _decode_create_queue(fields: list[Any]) -> Command:
    name, kind, max_size, max_payload, priority_range, lease_ms, max_deliveries, dead_letter = (
        fields
    )
    return CreateQueue(
        name=_string(name, "name"),
        kind=_string(kind, "kind"),
        max_size=_optional_integer(max_size, "max_size"),
        max_payload_bytes=_optional_integer(max_payload, "max_payload_bytes"),
        priority_range=_priority_range(priority_range),
        lease_ms_default=_integer(lease_ms, "lease_ms_default"),
        max_deliveries=_optional_integer(max_deliveries, "max_deliveries"),
        dead_letter_queue=_optional_string(dead_letter, "dead_letter_queue"),
    )


# The decoders of the commands on every write's path check the exact types msgpack produces in
# one expression, and only when that fails go field by field to say what is wrong. Integers
# need no range check: msgpack cannot carry one past 64 bits, and packing refuses to write one.


def _decode_enqueue(fields: list[Any]) -> Command:
    queue, priority, payload, key, delay_ms = fields
    if (
        type(queue) is str
        and type(priority) is int
        and type(payload) is bytes
        and (key is None or type(key) is str)
        and type(delay_ms) is int
    ):
        return Enqueue(queue, priority, payload, key, delay_ms)
    return Enqueue(
        queue=_string(queue, "queue"),
        priority=_integer(priority, "priority"),
        payload=_bytes(payload, "payload"),
        key=_optional_string(key, "key"),
        delay_ms=_integer(delay_ms, "delay_ms"),
    )


def _decode_dequeue(fields: list[Any]) -> Command:
    queue, lease_ms = fields
    if type(queue) is str and (lease_ms is None or type(lease_ms) is int):
        return Dequeue(queue, lease_ms)
    return Dequeue(queue=_string(queue, "queue"), lease_ms=_optional_integer(lease_ms, "lease_ms"))


def _decode_ack(fields: list[Any]) -> Command:
    task_id, lease_token = fields
    if type(task_id) is int and type(lease_token) is int:
        return Ack(task_id, lease_token)
    return Ack(_integer(task_id, "task_id"), _integer(lease_token, "lease_token"))


def _decode_nack(fields: list[Any]) -> Command:
    task_id, lease_token, delay_ms = fields
    if type(task_id) is int and type(lease_token) is int and type(delay_ms) is int:
        return Nack(task_id, lease_token, delay_ms)
    return Nack(
        _integer(task_id, "task_id"),
        _integer(lease_token, "lease_token"),
        _integer(delay_ms, "delay_ms"),
    )


def _decode_extend(fields: list[Any]) -> Command:
    task_id, lease_token, lease_ms = fields
    if type(task_id) is int and type(lease_token) is int and type(lease_ms) is int:
        return Extend(task_id, lease_token, lease_ms)
    return Extend(
        _integer(task_id, "task_id"),
        _integer(lease_token, "lease_token"),
        _integer(lease_ms, "lease_ms"),
    )


def _decode_enqueue_many(fields: list[Any]) -> Command:
    queue, priorities, payloads, keys, delays_ms = fields
    command = EnqueueMany(
        _string(queue, "queue"),
        _column(priorities, "priorities", _INTEGER),
        _column(payloads, "payloads", _BYTES),
        _column(keys, "keys", _OPTIONAL_STRING),
        _column(delays_ms, "delays_ms", _INTEGER),
    )
    count = len(command.priorities)
    if not len(command.payloads) == len(command.keys) == len(command.delays_ms) == count:
        raise BadRequest("the columns of an enqueue_many differ in length")
    return command


def _decode_dequeue_many(fields: list[Any]) -> Command:
    queue, max_tasks, lease_ms, max_bytes = fields
    return DequeueMany(
        _string(queue, "queue"),
        _integer(max_tasks, "max_tasks"),
        _optional_integer(lease_ms, "lease_ms"),
        _optional_integer(max_bytes, "max_bytes"),
    )


def _decode_ack_many(fields: list[Any]) -> Command:
    task_ids, lease_tokens = fields
    command = AckMany(
        _column(task_ids, "task_ids", _INTEGER), _column(lease_tokens, "lease_tokens", _INTEGER)
    )
    if len(command.task_ids) != len(command.lease_tokens):
        raise BadRequest("the columns of an ack_many differ in length")
    return command


def _decode_delete_queue(fields: list[Any]) -> Command:
    return DeleteQueue(_string(fields[0], "name"))


def _decode_tick(fields: list[Any]) -> Command:
    return Tick()


# (tag, version) -> (number of fields, decoder)
_DECODERS: Final[dict[tuple[int, int], tuple[int, Callable[[list[Any]], Command]]]] = {
    (TAG_CREATE_QUEUE, 1): (8, _decode_create_queue),
    (TAG_DELETE_QUEUE, 1): (1, _decode_delete_queue),
    (TAG_ENQUEUE, 1): (5, _decode_enqueue),
    (TAG_DEQUEUE, 1): (2, _decode_dequeue),
    (TAG_ACK, 1): (2, _decode_ack),
    (TAG_NACK, 1): (3, _decode_nack),
    (TAG_EXTEND, 1): (3, _decode_extend),
    (TAG_TICK, 1): (0, _decode_tick),
    (TAG_ENQUEUE_MANY, 1): (5, _decode_enqueue_many),
    (TAG_DEQUEUE_MANY, 1): (4, _decode_dequeue_many),
    (TAG_ACK_MANY, 1): (2, _decode_ack_many),
}

__all__ = [
    "StampedCommand",
    "decode_command",
    "decode_entry",
    "encode_command",
    "encode_entry",
]
