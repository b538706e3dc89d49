"""Snapshots: a restored state answers every later command exactly as the original does."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import msgpack
import pytest

from taskraft.errors import TaskraftError
from taskraft.queue import (
    Ack,
    Command,
    CreateQueue,
    DeleteQueue,
    DeliveredTask,
    Dequeue,
    Enqueue,
    Extend,
    InvalidSnapshot,
    Nack,
    QueueStateMachine,
    Tick,
)
from taskraft.queue.limits import PAYLOAD_SIZE_MAX_BYTES, SNAPSHOT_CHUNK_SIZE_MAX_BYTES
from taskraft.queue.snapshot import SNAPSHOT_FORMAT_VERSION, read_snapshot

QUEUES = ["default", "buckets", "small", "dead"]
SETUP = [
    CreateQueue("dead", priority_range=(-5, 5)),
    CreateQueue(
        "buckets", "buckets", priority_range=(-3, 3), max_deliveries=2, dead_letter_queue="dead"
    ),
    CreateQueue("small", max_size=50, max_deliveries=1, lease_ms_default=20),
]


class Workload:
    """Random commands driven by one seed, using the leases that earlier results handed out."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.now_ms = 10_000
        self.index = 0
        self.leases: list[tuple[int, int]] = []

    def next_command(self) -> tuple[Command, int, int]:
        generator = self.random
        self.index += 1
        self.now_ms += generator.choice([0, 0, 1, 5, 20, 60, 250, -40])
        if generator.random() < 0.01:
            self.now_ms += 10 * 60 * 1000  # past the idempotency window
        roll = generator.random()
        queue = generator.choice(QUEUES)
        command: Command
        if roll < 0.4:
            key = generator.choice([None, None, None, f"key-{generator.randrange(30)}"])
            delay_ms = generator.choice([0, 0, 0, 15, 200])
            payload = generator.randbytes(generator.randrange(40))
            command = Enqueue(queue, generator.randint(-4, 4), payload, key, delay_ms)
        elif roll < 0.7:
            command = Dequeue(queue, generator.choice([None, 0, 10, 30, 300]))
        elif roll < 0.95 and self.leases:
            task_id, token = generator.choice(self.leases[-5:] + self.leases[:2])
            command = generator.choice(
                [Ack(task_id, token), Nack(task_id, token, generator.choice([0, 25])),
                 Extend(task_id, token, generator.choice([5, 100]))]
            )  # fmt: skip
        elif roll < 0.97:
            command = generator.choice([CreateQueue("extra"), DeleteQueue("extra")])
        else:
            command = Tick()
        return command, self.now_ms, self.index

    def note(self, result: object) -> None:
        if isinstance(result, DeliveredTask) and result.lease_token is not None:
            self.leases.append((result.task_id, result.lease_token))


def apply(machine: QueueStateMachine, command: Command, now_ms: int, index: int) -> object:
    try:
        return machine.apply(command, now_ms=now_ms, index=index)
    except TaskraftError as error:
        return type(error)


def random_state(seed: int, length: int) -> tuple[QueueStateMachine, Workload]:
    machine = QueueStateMachine()
    workload = Workload(seed)
    for command in SETUP:
        workload.index += 1
        machine.apply(command, now_ms=workload.now_ms, index=workload.index)
    for _ in range(length):
        workload.note(apply(machine, *workload.next_command()))
    return machine, workload


def rechunk(chunks: Iterator[bytes] | list[bytes], size: int) -> Iterator[bytes]:
    data = b"".join(chunks)
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("seed", range(12))
def test_a_restored_state_gives_the_same_results_as_the_original(seed: int) -> None:
    generator = random.Random(seed)
    original, workload = random_state(seed, generator.choice([0, 10, 200, 1500]))
    chunk_size = generator.choice([1, 7, 100, 4096, SNAPSHOT_CHUNK_SIZE_MAX_BYTES])
    chunks = list(original.snapshot_copy().chunks(chunk_size))
    assert all(len(chunk) <= chunk_size for chunk in chunks)
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    restored = QueueStateMachine.restore(rechunk(chunks, generator.choice([1, 50, 10_000])))
    restored.check_invariants()
    assert b"".join(restored.snapshot_chunks()) == b"".join(chunks)
    assert (restored.applied_index, restored.clock_ms) == (
        original.applied_index,
        original.clock_ms,
    )
    for _ in range(800):
        step = workload.next_command()
        result = apply(original, *step)
        assert apply(restored, *step) == result, step
        workload.note(result)
        assert restored.next_deadline_ms() == original.next_deadline_ms()
    assert restored.list_queues() == original.list_queues()
    assert b"".join(restored.snapshot_chunks()) == b"".join(original.snapshot_chunks())
    restored.check_invariants()


def test_a_fresh_state_round_trips() -> None:
    machine = QueueStateMachine()
    restored = QueueStateMachine.restore(machine.snapshot_chunks())
    assert restored.list_queues() == machine.list_queues()
    assert restored.applied_index == 0
    restored.apply(Enqueue("default", 0, b""), now_ms=0, index=1)


def test_a_copy_does_not_see_later_commands() -> None:
    machine, workload = random_state(3, 300)
    copy = machine.snapshot_copy()
    expected = b"".join(copy.chunks())
    for _ in range(300):
        workload.note(apply(machine, *workload.next_command()))
    assert b"".join(copy.chunks()) == expected
    assert b"".join(machine.snapshot_chunks()) != expected


def test_chunks_can_be_encoded_on_another_thread_while_commands_apply() -> None:
    machine, workload = random_state(5, 3000)
    copy = machine.snapshot_copy()
    expected = b"".join(copy.chunks(4096))
    encoded: list[bytes] = []
    encoder = threading.Thread(target=lambda: encoded.extend(copy.chunks(4096)))
    encoder.start()
    for _ in range(3000):
        workload.note(apply(machine, *workload.next_command()))
    encoder.join(timeout=30)
    assert b"".join(encoded) == expected
    assert QueueStateMachine.restore(encoded).applied_index == copy.applied_index


def test_many_tasks_span_many_batches_and_chunks() -> None:
    machine = QueueStateMachine()
    machine.apply(CreateQueue("b", "buckets", priority_range=(0, 9)), now_ms=0, index=1)
    index = 1
    for number in range(5000):
        index += 1
        queue = "b" if number % 2 else "default"
        delay_ms = 100 if number % 5 == 0 else 0
        key = f"k{number}" if number % 3 == 0 else None
        command = Enqueue(queue, number % 10, number.to_bytes(4, "big"), key, delay_ms)
        machine.apply(command, now_ms=number // 100, index=index)
    for _ in range(700):
        index += 1
        machine.apply(Dequeue("b", 1000), now_ms=50, index=index)
    chunks = list(machine.snapshot_copy().chunks(16 * 1024))
    assert len(chunks) > 3
    restored = QueueStateMachine.restore(chunks)
    restored.check_invariants()
    for queue in ("b", "default"):
        assert restored.count(queue) == machine.count(queue)
    for _ in range(6000):
        for name in ("b", "default"):
            index += 1
            expected = machine.apply(Dequeue(name, 0), now_ms=2000, index=index)
            assert restored.apply(Dequeue(name, 0), now_ms=2000, index=index) == expected


def test_maximal_payloads_restore_from_small_chunks() -> None:
    machine = QueueStateMachine()
    payloads = [bytes([number]) * PAYLOAD_SIZE_MAX_BYTES for number in range(3)]
    for index, payload in enumerate(payloads, start=1):
        machine.apply(Enqueue("default", 0, payload), now_ms=0, index=index)
    chunks = list(machine.snapshot_copy().chunks(64 * 1024))
    assert max(len(chunk) for chunk in chunks) == 64 * 1024
    restored = QueueStateMachine.restore(chunks)
    delivered = [
        restored.apply(Dequeue("default", 0), now_ms=0, index=10 + number) for number in range(3)
    ]
    assert [task.payload for task in delivered if task is not None] == payloads
    # One chunk holding the whole state is fed to the decoder in bounded pieces.
    assert QueueStateMachine.restore([b"".join(chunks)]).count("default").ready == 3


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        next(QueueStateMachine().snapshot_copy().chunks(0))


# -- damaged snapshots ------------------------------------------------------------------------


def small_snapshot() -> bytes:
    machine, _ = random_state(1, 60)
    return b"".join(machine.snapshot_chunks())


def test_every_truncation_is_detected() -> None:
    data = small_snapshot()
    for length in range(len(data)):
        with pytest.raises(InvalidSnapshot):
            QueueStateMachine.restore([data[:length]])


def test_trailing_data_is_detected() -> None:
    data = small_snapshot()
    for extra in (b"\x00", msgpack.packb([1, 2]), b"\x92"):
        with pytest.raises(InvalidSnapshot):
            QueueStateMachine.restore([data, extra])


def test_random_damage_is_detected_or_harmless() -> None:
    """Storage checks a CRC before restoring; this only shows the decoder never crashes."""
    data = small_snapshot()
    generator = random.Random(0)
    for _ in range(300):
        damaged = bytearray(data)
        damaged[generator.randrange(len(data))] = generator.randrange(256)
        try:
            restored = QueueStateMachine.restore([bytes(damaged)])
        except InvalidSnapshot:
            continue
        restored.check_invariants()


def encode_objects(objects: list[object]) -> bytes:
    return b"".join(msgpack.packb(value, use_bin_type=True) for value in objects)


def decode_objects(data: bytes) -> list[object]:
    unpacker = msgpack.Unpacker(raw=False, use_list=True)
    unpacker.feed(data)
    return list(unpacker)


def snapshot_of_one_task() -> list[object]:
    machine = QueueStateMachine()
    machine.apply(Enqueue("default", 0, b"x", "key"), now_ms=5, index=1)
    return decode_objects(b"".join(machine.snapshot_chunks()))


def test_the_layout_is_versioned() -> None:
    objects = snapshot_of_one_task()
    assert objects[0] == ["taskraft-queue-snapshot", SNAPSHOT_FORMAT_VERSION]
    read_snapshot([encode_objects(objects)])


@pytest.mark.parametrize(
    ("position", "value"),
    [
        (0, ["taskraft-queue-snapshot", SNAPSHOT_FORMAT_VERSION + 1]),
        (0, ["something-else", SNAPSHOT_FORMAT_VERSION]),
        (1, [1, 5, 2, 2, 2, 1, 1]),  # counters missing one
        (1, [1, 5, 2, 2, 2, 1, 2, 1]),  # two tasks announced, one present
        (1, [1, 5, 2, 2, 2, 1, 1, 2]),  # two keys announced, one present
        (1, [1, 5, 1, 2, 2, 1, 1, 1]),  # the task id is not below the next one
        (1, [1, 5, 2, 1, 2, 1, 1, 1]),  # the sequence is not below the next one
        (1, [1, 5, 2, 2, 1, 1, 1, 1]),  # the queue id is not below the next one
        (2, [1, "bad name", "heap", None, None, None, 30000, None, None]),
        (2, [1, "default", "stack", None, None, None, 30000, None, None]),
        (2, [1, "default", "heap", None, None, None, 30000, None, "missing"]),
        (2, [1, "default", "heap", None, None, [1], 30000, None, None]),
        (3, [[1, 9, 0, b"x", 0, 0, 1, 0, 0]]),  # an unknown queue
        (3, [[1, 1, 0, b"x", 0, 7, 1, 0, 0]]),  # an unknown state
        (3, [[1, 1, 0, b"x", 0, 1, 1, 5, 0]]),  # delayed but already due
        (3, [[1, 1, 0, b"x", 0, 0, 1, 0]]),  # a field missing
        (3, []),
        (4, [[6, 1, "key", 1]]),  # a key recorded after the snapshot's clock
        (4, [[5, 1, "key", 1], [5, 1, "key", 1]]),  # a key twice
        (5, ["end", 2]),
    ],
)
def test_inconsistent_snapshots_are_refused(position: int, value: object) -> None:
    objects = snapshot_of_one_task()
    objects[position] = value
    with pytest.raises(InvalidSnapshot):
        QueueStateMachine.restore([encode_objects(objects)])
