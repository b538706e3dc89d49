"""Random command sequences, with random time steps (some stamped in the past), applied to the
state machine and to a naive reference model: every result, error and count must agree, also
across snapshot round trips in the middle of a sequence. Batches are checked against the model's
single commands in turn."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from queue_reference_model import HIGHEST, LOWEST, WINDOW_MS, ReferenceModel

from taskraft.errors import TaskraftError
from taskraft.queue import (
    Ack,
    AckMany,
    Command,
    CreateQueue,
    DeleteQueue,
    DeliveredTask,
    Dequeue,
    DequeuedTasks,
    DequeueMany,
    Enqueue,
    EnqueueMany,
    Extend,
    Nack,
    QueueDescription,
    QueueStateMachine,
    Tick,
)

# Mostly commands that succeed, so that tasks pile up, expire and move; sometimes wrong ones.
QUEUE_NAMES = st.sampled_from(
    ["default"] * 3
    + ["buckets"] * 3
    + ["limited"] * 2
    + ["dead"] * 2
    + ["scratch", "missing", "bad name"]
)
# Most commands arrive at the same or a slightly later time; some carry an older stamp, as
# from a new leader whose clock is behind.
TIME_STEPS = st.sampled_from([0, 0, 0, 1, 2, 7, 25, 40, 100, 400, -30])
PRIORITIES = st.sampled_from([*range(-3, 4), *range(-3, 4), -4, 4, LOWEST, HIGHEST, HIGHEST + 1])
DELAYS_MS = st.sampled_from([0, 0, 0, 0, 0, 0, 3, 30, 300, -1])
LEASES_MS = st.sampled_from([None, None, None, 0, 5, 5, 50, 50, 500, -1])
KEYS = st.none() | st.sampled_from(["a", "b", "c", ""])
# The tasks of a batch are mostly valid in every queue, so that most batches apply (one bad task
# fails the whole batch) and their keys repeat; a few are not, in any field. Each task is one
# draw from every combination, which keeps generating batches cheap.
BATCH_TASKS = st.lists(
    st.sampled_from(
        list(
            itertools.product(
                [-1, 0, 1] * 6 + [-3, 3, LOWEST, HIGHEST + 1],
                [b"", b"p", b"pq", b"pqr", b"four"],
                [None, None, "a", "b", "c"] * 4 + [""],
                [0] * 12 + [3, 30, 300, -1],
            )
        )
    ),
    max_size=6,
)


CREATE_QUEUE = st.builds(
    CreateQueue,
    name=st.sampled_from(["scratch", "scratch", "default", "bad name"]),
    kind=st.sampled_from(["heap", "buckets", "fifo"]),
    max_size=st.none() | st.integers(-1, 3),
    max_payload_bytes=st.none() | st.integers(-1, 4),
    priority_range=st.none()
    | st.tuples(st.integers(-3, 3), st.integers(-3, 3))
    | st.just((0, 1024)),
    lease_ms_default=st.sampled_from([0, 20, 30_000, -1]),
    max_deliveries=st.none() | st.integers(0, 3),
    dead_letter_queue=st.none() | st.sampled_from(["dead", "default", "missing", "scratch"]),
)
DELETE_QUEUE = st.builds(
    DeleteQueue,
    st.sampled_from(["scratch"] * 6 + ["dead", "limited", "default", "missing", "bad name"]),
)
ADMINISTRATION = CREATE_QUEUE | DELETE_QUEUE | st.builds(Ack, st.integers(0, 40), st.just(-1))


def rechunk(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    data = b"".join(chunks)
    for start in range(0, len(data), size):
        yield data[start : start + size]


class QueueMachineAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.real = QueueStateMachine()
        self.model = ReferenceModel()
        self.now_ms = 1_000
        self.index = 0
        # Every lease handed out: (task id, real token, model token); stale ones stay.
        self.leases: list[tuple[int, int, int]] = []
        for command in (
            CreateQueue("dead", priority_range=(-1, 1), max_size=2),
            CreateQueue(
                "buckets",
                kind="buckets",
                priority_range=(-3, 3),
                max_deliveries=2,
                dead_letter_queue="dead",
                lease_ms_default=40,
            ),
            CreateQueue("limited", max_size=3, max_payload_bytes=3, max_deliveries=1),
        ):
            self.run(command, 0)

    def run(self, command: Command, step_ms: int) -> None:
        self.now_ms += step_ms
        self.index += 1
        real_result: object = None
        model_result: object = None
        real_error = model_error = None
        try:
            real_result = self.real.apply(command, now_ms=self.now_ms, index=self.index)
        except TaskraftError as error:
            real_error = error
        try:
            model_result = self.model.apply(command, self.now_ms)
        except TaskraftError as error:
            model_error = error
        assert type(real_error) is type(model_error), (command, real_error, model_error)
        if real_error is None:
            self.compare(command, real_result, model_result)

    def compare(self, command: Command, real: object, model: object) -> None:
        if isinstance(real, DequeuedTasks):
            assert isinstance(model, DequeuedTasks) and real.lease_ms == model.lease_ms
            assert len(real.tasks) == len(model.tasks), (command, real, model)
            for real_task, model_task in zip(real.tasks, model.tasks, strict=True):
                self.compare(command, real_task, model_task)
        elif isinstance(real, QueueDescription):
            assert isinstance(command, CreateQueue) and model is None
            assert real.name == command.name and real.counts.total == 0
        elif isinstance(real, DeliveredTask):
            assert isinstance(model, DeliveredTask)
            real_fields = (real.task_id, real.queue, real.priority, real.payload, real.deliveries)
            model_fields = (model.task_id, model.queue, model.priority, model.payload)
            assert real_fields == (*model_fields, model.deliveries), command
            assert real.lease_expires_ms == model.lease_expires_ms
            if real.lease_token is None:
                assert model.lease_token is None
            else:
                assert model.lease_token is not None
                assert all(real.lease_token != lease[1] for lease in self.leases), "reused"
                self.leases.append((real.task_id, real.lease_token, model.lease_token))
        else:
            assert real == model, (command, real, model)

    @rule(
        queue=QUEUE_NAMES,
        priority=PRIORITIES,
        payload=st.binary(max_size=5),
        key=KEYS,
        delay_ms=DELAYS_MS,
        step_ms=TIME_STEPS,
    )
    def enqueue(
        self,
        queue: str,
        priority: int,
        payload: bytes,
        key: str | None,
        delay_ms: int,
        step_ms: int,
    ) -> None:
        self.run(Enqueue(queue, priority, payload, key, delay_ms), step_ms)

    @rule(
        queue=QUEUE_NAMES,
        lease_ms=LEASES_MS,
        step_ms=TIME_STEPS,
    )
    def dequeue(self, queue: str, lease_ms: int | None, step_ms: int) -> None:
        self.run(Dequeue(queue, lease_ms), step_ms)

    @rule(
        queue=QUEUE_NAMES,
        # Short batches, so that keys repeat within one; now and then an empty one (refused).
        tasks=BATCH_TASKS,
        step_ms=TIME_STEPS,
    )
    def enqueue_many(
        self, queue: str, tasks: list[tuple[int, bytes, str | None, int]], step_ms: int
    ) -> None:
        self.run(EnqueueMany.of(queue, tasks), step_ms)

    @rule(
        queue=QUEUE_NAMES,
        max_tasks=st.sampled_from([1, 2, 3, 3, 5, 5, 100, 0]),
        lease_ms=LEASES_MS,
        max_bytes=st.sampled_from([None, None, None, 0, 1, 2, 3, 4, 6, -1]),
        step_ms=TIME_STEPS,
    )
    def dequeue_many(
        self,
        queue: str,
        max_tasks: int,
        lease_ms: int | None,
        max_bytes: int | None,
        step_ms: int,
    ) -> None:
        self.run(DequeueMany(queue, max_tasks, lease_ms, max_bytes), step_ms)

    @precondition(lambda self: self.leases)
    @rule(
        data=st.data(),
        action=st.sampled_from(["ack", "ack", "nack", "extend"]),
        delay_ms=st.sampled_from([0, 0, 10, 100, -1]),
        lease_ms=st.sampled_from([1, 20, 200, 0, -1]),
        step_ms=TIME_STEPS,
    )
    def end_or_extend_a_lease(
        self, data: st.DataObject, action: str, delay_ms: int, lease_ms: int, step_ms: int
    ) -> None:
        # Any lease ever handed out, the newest ones most likely; older ones are often stale.
        recent = self.leases[-3:]
        task_id, real_token, model_token = data.draw(
            st.sampled_from(recent) | st.sampled_from(self.leases)
        )
        commands: dict[str, tuple[Command, Command]] = {
            "ack": (Ack(task_id, real_token), Ack(task_id, model_token)),
            "nack": (Nack(task_id, real_token, delay_ms), Nack(task_id, model_token, delay_ms)),
            "extend": (
                Extend(task_id, real_token, lease_ms),
                Extend(task_id, model_token, lease_ms),
            ),
        }
        self.run_lease_command(*commands[action], step_ms)

    @precondition(lambda self: self.leases)
    @rule(
        data=st.data(),
        count=st.integers(1, 4),
        unknown=st.booleans(),
        step_ms=TIME_STEPS,
    )
    def ack_many(self, data: st.DataObject, count: int, unknown: bool, step_ms: int) -> None:
        recent = self.leases[-4:]
        leases = [
            data.draw(st.sampled_from(recent) | st.sampled_from(self.leases)) for _ in range(count)
        ]
        if unknown:  # a task that never was
            leases.insert(data.draw(st.integers(0, count)), (10**9, 1, 1))
        real = AckMany(tuple(lease[0] for lease in leases), tuple(lease[1] for lease in leases))
        model = AckMany(tuple(lease[0] for lease in leases), tuple(lease[2] for lease in leases))
        self.run_lease_command(real, model, step_ms)

    def run_lease_command(self, real_command: Command, model_command: Command, step: int) -> None:
        """Like `run`, for commands whose lease token differs between the two sides."""
        self.now_ms += step
        self.index += 1
        outcomes = []
        for apply in (
            lambda: self.real.apply(real_command, now_ms=self.now_ms, index=self.index),
            lambda: self.model.apply(model_command, self.now_ms),
        ):
            try:
                outcomes.append(apply())
            except TaskraftError as error:
                outcomes.append(type(error))
        assert outcomes[0] == outcomes[1], (real_command, outcomes)

    @rule(step_ms=st.sampled_from([1, 10, 100, 1000, WINDOW_MS // 2, WINDOW_MS]))
    def tick(self, step_ms: int) -> None:
        self.run(Tick(), step_ms)

    @rule(queue_command=ADMINISTRATION)
    def administer(self, queue_command: Command) -> None:
        self.run(queue_command, 0)

    @rule(chunk_size=st.integers(1, 3000), rechunk_size=st.integers(1, 5000))
    def snapshot_round_trip(self, chunk_size: int, rechunk_size: int) -> None:
        chunks = list(self.real.snapshot_copy().chunks(chunk_size))
        assert all(len(chunk) <= chunk_size for chunk in chunks)
        assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
        restored = QueueStateMachine.restore(rechunk(iter(chunks), rechunk_size))
        assert b"".join(restored.snapshot_chunks()) == b"".join(chunks)
        self.real = restored

    @invariant()
    def states_agree(self) -> None:
        self.real.check_invariants()
        assert self.real.clock_ms == self.model.clock
        assert [queue.name for queue in self.real.list_queues()] == sorted(self.model.queues)
        for queue in self.real.list_queues():
            assert queue.counts == self.model.count(queue.name), queue.name
            assert self.real.ready_count(queue.name) == queue.counts.ready
        assert self.real.next_deadline_ms() == self.model.next_deadline()


QueueMachineAgainstModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachineAgainstModel = QueueMachineAgainstModel.TestCase
