"""The replicated queue state machine: pure, deterministic, applied on every replica.

Commands (`commands.py`) travel in log entries (`codec.py`) and are applied in log order by
`QueueStateMachine.apply`, with the time the leader stamped on each entry. Nothing here performs
I/O, reads a clock, draws random numbers or uses asyncio, so every replica that applies the same
entries holds the same queues and gives the same answers. Snapshots (`snapshot.py`) stream the
whole state as bounded msgpack chunks and restore it exactly.
"""

from taskraft.queue.codec import (
    StampedCommand,
    decode_command,
    decode_entry,
    encode_command,
    encode_entry,
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
    EnqueueRow,
    Extend,
    Nack,
    Tick,
)
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
from taskraft.queue.snapshot import SNAPSHOT_FORMAT_VERSION, InvalidSnapshot, StateSnapshot
from taskraft.queue.state_machine import CommandResult, QueueStateMachine

__all__ = [
    "SNAPSHOT_FORMAT_VERSION",
    "Ack",
    "AckMany",
    "AckManyResult",
    "Command",
    "CommandResult",
    "CreateQueue",
    "DeleteQueue",
    "DeliveredTask",
    "Dequeue",
    "DequeueMany",
    "DequeuedTasks",
    "Enqueue",
    "EnqueueMany",
    "EnqueueManyResult",
    "EnqueueResult",
    "EnqueueRow",
    "Extend",
    "InvalidSnapshot",
    "Nack",
    "QueueCounts",
    "QueueDescription",
    "QueueKind",
    "QueuePolicies",
    "QueueStateMachine",
    "StampedCommand",
    "StateSnapshot",
    "Tick",
    "decode_command",
    "decode_entry",
    "encode_command",
    "encode_entry",
]
