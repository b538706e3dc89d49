"""A deliberately naive model of the queue semantics, to check the real state machine against.

Plain lists and dictionaries, linear scans and sorting everywhere, and expiry processed before
every command whether time moved or not: slow, but each rule reads like the specification.
It returns the same results and raises the same error classes as `QueueStateMachine`, except
that its lease tokens are its own (the test pairs them with the real ones). Batches are what the
specification says they are: the single commands in turn, an EnqueueMany all or nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from taskraft.errors import (
    BadRequest,
    InvalidArgument,
    InvalidMaxPayloadSize,
    InvalidMaxSize,
    InvalidPriorityRange,
    InvalidQueueName,
    PayloadTooLarge,
    PriorityOutOfRange,
    PriorityRangeRequired,
    QueueAlreadyExists,
    QueueFull,
    QueueNotEmpty,
    QueueNotFound,
    UnknownLease,
    UnknownQueueKind,
)
from taskraft.queue import (
    Ack,
    AckMany,
    AckManyResult,
    Command,
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
    Extend,
    Nack,
    QueueCounts,
    Tick,
)

WINDOW_MS = 10 * 60 * 1000
KEYS_MAX = 100_000
LEASE_MAX_MS = 12 * 60 * 60 * 1000
DELAY_MAX_MS = 7 * 24 * 60 * 60 * 1000
PAYLOAD_MAX = 1024 * 1024
LOWEST = -(2**63)
HIGHEST = 2**63 - 1


@dataclass
class ModelQueue:
    name: str
    incarnation: int
    command: CreateQueue

    @property
    def low(self) -> int:
        return self.command.priority_range[0] if self.command.priority_range else LOWEST

    @property
    def high(self) -> int:
        return self.command.priority_range[1] if self.command.priority_range else HIGHEST


@dataclass
class ModelTask:
    task_id: int
    queue: str
    priority: int
    payload: bytes
    deliveries: int = 0
    state: str = "ready"
    order: int = 0  # when it became ready, or when its timer was set
    deadline: int = 0
    token: int | None = None


@dataclass
class ReferenceModel:
    clock: int = 0
    next_task_id: int = 1
    next_order: int = 1
    next_token: int = 1
    next_incarnation: int = 2
    queues: dict[str, ModelQueue] = field(
        default_factory=lambda: {"default": ModelQueue("default", 1, CreateQueue("default"))}
    )
    tasks: list[ModelTask] = field(default_factory=list)
    # (recorded at, queue incarnation, key, task id), oldest first
    keys: list[tuple[int, int, str, int]] = field(default_factory=list)

    def apply(self, command: Command, now_ms: int) -> object:
        self.clock = max(self.clock, now_ms)
        self.keys = [entry for entry in self.keys if entry[0] + WINDOW_MS > self.clock]
        due = [
            task
            for task in self.tasks
            if task.state in ("delayed", "leased") and task.deadline <= self.clock
        ]
        for task in sorted(due, key=lambda task: (task.deadline, task.order)):
            if task.state == "delayed":
                self.make_ready(task)
            else:
                self.release(task, 0)
        match command:
            case CreateQueue():
                return self.create(command)
            case DeleteQueue(name):
                return self.delete(name)
            case Enqueue():
                return self.enqueue(command)
            case Dequeue(queue, lease_ms):
                return self.dequeue(queue, lease_ms)
            case Ack(task_id, token):
                self.tasks.remove(self.leased(task_id, token))
                return None
            case Nack(task_id, token, delay_ms):
                if not 0 <= delay_ms <= DELAY_MAX_MS:
                    raise InvalidArgument()
                self.release(self.leased(task_id, token), delay_ms)
                return None
            case Extend(task_id, token, lease_ms):
                if not 1 <= lease_ms <= LEASE_MAX_MS:
                    raise InvalidArgument()
                task = self.leased(task_id, token)
                task.deadline = self.clock + lease_ms
                task.order = self.take_order()
                return task.deadline
            case Tick():
                return None
            case EnqueueMany():
                return self.enqueue_many(command)
            case DequeueMany(queue, max_tasks, lease_ms, max_bytes):
                return self.dequeue_many(queue, max_tasks, lease_ms, max_bytes)
            case AckMany(task_ids, tokens):
                return self.ack_many(task_ids, tokens)
        raise BadRequest()

    # -- helpers -------------------------------------------------------------------------------

    def take_order(self) -> int:
        self.next_order += 1
        return self.next_order

    def make_ready(self, task: ModelTask) -> None:
        task.state, task.order, task.token = "ready", self.take_order(), None

    def release(self, task: ModelTask, delay_ms: int) -> None:
        limit = self.queues[task.queue].command.max_deliveries
        if limit is not None and task.deliveries >= limit:
            dead_letter = self.queues[task.queue].command.dead_letter_queue
            if dead_letter is None:
                self.tasks.remove(task)
                return
            target = self.queues[dead_letter]
            task.queue = dead_letter
            task.priority = min(max(task.priority, target.low), target.high)
            task.deliveries = 0
            self.make_ready(task)
        elif delay_ms > 0:
            task.state, task.deadline, task.token = "delayed", self.clock + delay_ms, None
            task.order = self.take_order()
        else:
            self.make_ready(task)

    def leased(self, task_id: int, token: int) -> ModelTask:
        for task in self.tasks:
            if task.task_id == task_id and task.state == "leased" and task.token == token:
                return task
        raise UnknownLease()

    def queue(self, name: str) -> ModelQueue:
        if name not in self.queues:
            check_name(name)
            raise QueueNotFound()
        return self.queues[name]

    def count(self, name: str) -> QueueCounts:
        states = [task.state for task in self.tasks if task.queue == self.queue(name).name]
        return QueueCounts(states.count("ready"), states.count("delayed"), states.count("leased"))

    def next_deadline(self) -> int | None:
        deadlines = [task.deadline for task in self.tasks if task.state != "ready"]
        return min(deadlines, default=None)

    # -- commands ------------------------------------------------------------------------------

    def create(self, command: CreateQueue) -> None:
        check_name(command.name)
        if command.name in self.queues:
            raise QueueAlreadyExists()
        if command.kind not in ("heap", "buckets"):
            raise UnknownQueueKind()
        if command.priority_range is None and command.kind == "buckets":
            raise PriorityRangeRequired()
        if command.priority_range is not None:
            low, high = command.priority_range
            if not LOWEST <= low <= high <= HIGHEST:
                raise InvalidPriorityRange()
            if command.kind == "buckets" and high - low >= 1024:
                raise InvalidPriorityRange()
        if command.max_size is not None and command.max_size < 1:
            raise InvalidMaxSize()
        if command.max_payload_bytes is not None and command.max_payload_bytes < 1:
            raise InvalidMaxPayloadSize()
        if not 0 <= command.lease_ms_default <= LEASE_MAX_MS:
            raise InvalidArgument()
        if command.max_deliveries is not None and command.max_deliveries < 1:
            raise InvalidArgument()
        if command.dead_letter_queue is not None:
            check_name(command.dead_letter_queue)
            if command.dead_letter_queue not in self.queues:
                raise QueueNotFound()
        self.queues[command.name] = ModelQueue(command.name, self.next_incarnation, command)
        self.next_incarnation += 1
        return None

    def delete(self, name: str) -> None:
        self.queue(name)
        if any(queue.command.dead_letter_queue == name for queue in self.queues.values()):
            raise BadRequest()
        if any(task.queue == name for task in self.tasks):
            raise QueueNotEmpty()
        del self.queues[name]

    def check_task(self, queue: ModelQueue, command: Enqueue) -> None:
        """Raise what an enqueue of this task fails with before looking at keys and room."""
        limit = min(command_limit(queue.command.max_payload_bytes), PAYLOAD_MAX)
        if len(command.payload) > limit:
            raise PayloadTooLarge()
        if not queue.low <= command.priority <= queue.high:
            raise PriorityOutOfRange()
        if not 0 <= command.delay_ms <= DELAY_MAX_MS:
            raise InvalidArgument()
        if command.key is not None and not 1 <= len(command.key.encode()) <= 255:
            raise InvalidArgument()

    def enqueue(self, command: Enqueue) -> EnqueueResult:
        queue = self.queue(command.queue)
        self.check_task(queue, command)
        if command.key is not None:
            for _, incarnation, key, task_id in self.keys:
                if (incarnation, key) == (queue.incarnation, command.key):
                    return EnqueueResult(task_id, duplicate=True)
        size = sum(1 for task in self.tasks if task.queue == queue.name)
        if queue.command.max_size is not None and size >= queue.command.max_size:
            raise QueueFull()
        task = ModelTask(self.next_task_id, queue.name, command.priority, command.payload)
        self.next_task_id += 1
        self.tasks.append(task)
        if command.delay_ms:
            task.state, task.deadline = "delayed", self.clock + command.delay_ms
            task.order = self.take_order()
        else:
            self.make_ready(task)
        if command.key is not None:
            if len(self.keys) >= KEYS_MAX:
                self.keys.pop(0)
            self.keys.append((self.clock, queue.incarnation, command.key, task.task_id))
        return EnqueueResult(task.task_id, duplicate=False)

    def dequeue(self, name: str, lease_ms: int | None) -> DeliveredTask | None:
        queue = self.queue(name)
        if lease_ms is None:
            lease_ms = queue.command.lease_ms_default
        elif not 0 <= lease_ms <= LEASE_MAX_MS:
            raise InvalidArgument()
        ready = [task for task in self.tasks if task.queue == name and task.state == "ready"]
        if not ready:
            return None
        task = min(ready, key=lambda task: (task.priority, task.order))
        task.deliveries += 1
        if lease_ms == 0:
            self.tasks.remove(task)
            return DeliveredTask(
                task.task_id, name, task.priority, task.payload, task.deliveries, None, None
            )
        task.state, task.deadline, task.token = "leased", self.clock + lease_ms, self.next_token
        task.order = self.take_order()
        self.next_token += 1
        return DeliveredTask(
            task.task_id, name, task.priority, task.payload, task.deliveries, task.token,
            task.deadline,
        )  # fmt: skip

    def enqueue_many(self, command: EnqueueMany) -> EnqueueManyResult:
        """The enqueues in turn, all or nothing; a bad task is reported before a lack of room."""
        queue = self.queue(command.queue)
        columns = (command.priorities, command.payloads, command.keys, command.delays_ms)
        if not command.payloads or len({len(column) for column in columns}) != 1:
            raise InvalidArgument()
        singles = [Enqueue(command.queue, *task) for task in zip(*columns, strict=True)]
        for single in singles:
            self.check_task(queue, single)
        before = copy.deepcopy(self.__dict__)
        try:
            results = [self.enqueue(single) for single in singles]
        except QueueFull:
            self.__dict__.update(before)
            raise
        return EnqueueManyResult(
            tuple(result.task_id for result in results),
            tuple(result.duplicate for result in results),
        )

    def dequeue_many(
        self, name: str, max_tasks: int, lease_ms: int | None, max_bytes: int | None
    ) -> DequeuedTasks:
        """The dequeues in turn, until `max_tasks`, no ready task, or a task past `max_bytes`."""
        queue = self.queue(name)
        if lease_ms is None:
            lease_ms = queue.command.lease_ms_default
        elif not 0 <= lease_ms <= LEASE_MAX_MS:
            raise InvalidArgument()
        if max_tasks < 1 or (max_bytes is not None and max_bytes < 0):
            raise InvalidArgument()
        delivered: list[DeliveredTask] = []
        while len(delivered) < max_tasks:
            ready = [task for task in self.tasks if task.queue == name and task.state == "ready"]
            if not ready:
                break
            following = min(ready, key=lambda task: (task.priority, task.order))
            taken = sum(len(task.payload) for task in delivered)
            if delivered and max_bytes is not None and taken + len(following.payload) > max_bytes:
                break
            task = self.dequeue(name, lease_ms)
            assert task is not None and task.task_id == following.task_id
            delivered.append(task)
        return DequeuedTasks(tuple(delivered), lease_ms)

    def ack_many(self, task_ids: tuple[int, ...], tokens: tuple[int, ...]) -> AckManyResult:
        """The acks in turn; a failed one is reported with the code of its error."""
        if not task_ids or len(task_ids) != len(tokens):
            raise InvalidArgument()
        failures = []
        for index, (task_id, token) in enumerate(zip(task_ids, tokens, strict=True)):
            try:
                self.tasks.remove(self.leased(task_id, token))
            except UnknownLease as error:
                failures.append((index, error.code))
        return AckManyResult(tuple(failures))


def command_limit(value: int | None) -> int:
    return PAYLOAD_MAX if value is None else value


def check_name(name: str) -> None:
    if not (1 <= len(name) <= 255 and all(33 <= ord(character) <= 126 for character in name)):
        raise InvalidQueueName()
