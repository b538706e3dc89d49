"""A test driver for the queue state machine: numbers the log entries and keeps the time.

Every command goes through `apply` with the next log index and the driver's `now_ms`, and the
state's invariants are checked after each one, as the Raft core's tests do after every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from taskraft.queue import (
    Ack,
    AckMany,
    AckManyResult,
    Command,
    CommandResult,
    CreateQueue,
    DeleteQueue,
    DeliveredTask,
    Dequeue,
    DequeuedTasks,
    DequeueMany,
    Enqueue,
    EnqueueMany,
    EnqueueManyResult,
    EnqueueResult,
    EnqueueRow,
    Extend,
    Nack,
    QueueDescription,
    QueueStateMachine,
    Tick,
)

START_MS = 1_000_000


class Driver:
    def __init__(self, machine: QueueStateMachine | None = None, now_ms: int = START_MS) -> None:
        self.machine = machine if machine is not None else QueueStateMachine()
        self.now_ms = now_ms
        self.index = self.machine.applied_index

    def apply(self, command: Command, *, now_ms: int | None = None) -> CommandResult:
        self.index += 1
        stamp = self.now_ms if now_ms is None else now_ms
        try:
            return self.machine.apply(command, now_ms=stamp, index=self.index)
        finally:
            self.machine.check_invariants()

    def create(self, name: str, **policies: Any) -> QueueDescription:
        result = self.apply(CreateQueue(name, **policies))
        assert isinstance(result, QueueDescription)
        return result

    def delete(self, name: str) -> None:
        self.apply(DeleteQueue(name))

    def enqueue_result(
        self,
        queue: str,
        priority: int = 0,
        payload: bytes = b"",
        *,
        key: str | None = None,
        delay_ms: int = 0,
    ) -> EnqueueResult:
        result = self.apply(Enqueue(queue, priority, payload, key, delay_ms))
        assert isinstance(result, EnqueueResult)
        return result

    def enqueue(
        self,
        queue: str,
        priority: int = 0,
        payload: bytes = b"",
        *,
        key: str | None = None,
        delay_ms: int = 0,
    ) -> int:
        return self.enqueue_result(queue, priority, payload, key=key, delay_ms=delay_ms).task_id

    def dequeue(self, queue: str, lease_ms: int | None = None) -> DeliveredTask | None:
        result = self.apply(Dequeue(queue, lease_ms))
        assert result is None or isinstance(result, DeliveredTask)
        return result

    def take(self, queue: str, lease_ms: int | None = None) -> DeliveredTask:
        """Dequeue a task that must be there."""
        task = self.dequeue(queue, lease_ms)
        assert task is not None, f"queue {queue} unexpectedly empty"
        return task

    def enqueue_many(self, queue: str, tasks: Iterable[EnqueueRow]) -> EnqueueManyResult:
        """Enqueue (priority, payload, key, delay_ms) rows in one command."""
        result = self.apply(EnqueueMany.of(queue, tasks))
        assert isinstance(result, EnqueueManyResult)
        return result

    def dequeue_many(
        self,
        queue: str,
        max_tasks: int,
        lease_ms: int | None = None,
        max_bytes: int | None = None,
    ) -> DequeuedTasks:
        result = self.apply(DequeueMany(queue, max_tasks, lease_ms, max_bytes))
        assert isinstance(result, DequeuedTasks)
        return result

    def ack_many(self, tasks: Iterable[DeliveredTask]) -> AckManyResult:
        leases = [(task.task_id, task.lease_token or 0) for task in tasks]
        result = self.apply(
            AckMany(tuple(lease[0] for lease in leases), tuple(lease[1] for lease in leases))
        )
        assert isinstance(result, AckManyResult)
        return result

    def ack(self, task: DeliveredTask) -> None:
        assert task.lease_token is not None
        self.apply(Ack(task.task_id, task.lease_token))

    def nack(self, task: DeliveredTask, delay_ms: int = 0) -> None:
        assert task.lease_token is not None
        self.apply(Nack(task.task_id, task.lease_token, delay_ms))

    def extend(self, task: DeliveredTask, lease_ms: int) -> int:
        assert task.lease_token is not None
        result = self.apply(Extend(task.task_id, task.lease_token, lease_ms))
        assert isinstance(result, int)
        return result

    def advance(self, milliseconds: int) -> None:
        """Let time pass and apply a Tick stamped with the new time."""
        self.now_ms += milliseconds
        self.apply(Tick())

    def drain(self, queue: str) -> list[int]:
        """Task ids in the order the queue serves them, acknowledged at once."""
        order = []
        while (task := self.dequeue(queue, lease_ms=0)) is not None:
            order.append(task.task_id)
        return order
