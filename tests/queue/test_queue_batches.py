"""The batch commands: EnqueueMany, DequeueMany and AckMany against their single counterparts.

A batch is its single commands one after the other in one log entry, so most tests apply the
batch to one state machine and the single commands to another, and compare everything: the
answers, the task records, the remembered keys and the counters.
"""

from __future__ import annotations

import pytest
from queue_driver import Driver

from taskraft.errors import (
    InvalidArgument,
    InvalidQueueName,
    PayloadTooLarge,
    PriorityOutOfRange,
    QueueFull,
    QueueNotFound,
    TaskraftError,
    UnknownLease,
)
from taskraft.queue import (
    AckMany,
    DeliveredTask,
    Dequeue,
    DequeueMany,
    Enqueue,
    EnqueueMany,
    EnqueueManyResult,
    EnqueueResult,
    EnqueueRow,
    QueueCounts,
    QueueStateMachine,
)
from taskraft.queue.limits import (
    DELAY_MS_MAX,
    IDEMPOTENCY_KEY_COUNT_MAX,
    LEASE_MS_DEFAULT,
    LEASE_MS_MAX,
)


def state_of(machine: QueueStateMachine) -> object:
    """Everything a later command can observe, but the index of the last entry applied."""
    copy = machine.snapshot_copy()
    return (
        copy.clock_ms,
        copy.next_task_id,
        copy.next_sequence,
        copy.next_queue_id,
        copy.queues,
        copy.tasks,
        copy.idempotency,
        [(queue.name, queue.counts) for queue in machine.list_queues()],
        machine.next_deadline_ms(),
    )


def statistics_of(machine: QueueStateMachine) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (name, (stats.enqueued, stats.dequeued, stats.acked, stats.nacked, stats.redelivered))
        for name, _, stats in machine.queue_statistics()
    ]


def one_by_one(driver: Driver, queue: str, rows: list[EnqueueRow]) -> EnqueueManyResult:
    """The Enqueues a batch of `rows` stands for, applied in turn, as one batch result."""
    results = []
    for priority, payload, key, delay_ms in rows:
        result = driver.apply(Enqueue(queue, priority, payload, key, delay_ms))
        assert isinstance(result, EnqueueResult)
        results.append(result)
    return EnqueueManyResult(
        task_ids=tuple(result.task_id for result in results),
        duplicates=tuple(result.duplicate for result in results),
    )


def twins() -> tuple[Driver, Driver]:
    """Two drivers in the same state: a buckets queue and some tasks, one of them keyed."""
    drivers = (Driver(), Driver())
    for driver in drivers:
        driver.create("levels", kind="buckets", priority_range=(0, 9))
        driver.enqueue("default", 3, b"before", key="old")
        driver.enqueue("levels", 5, b"before")
    return drivers


ROWS: list[EnqueueRow] = [
    (2, b"a", "k1", 0),
    (1, b"b", None, 0),
    (2, b"c", "k1", 0),  # the same key again in the batch
    (0, b"d", "old", 0),  # the key of a task enqueued before
    (1, b"e", None, 250),  # delayed
    (-5, b"f", "k2", 40),
    (1, b"g", None, 0),
]


@pytest.mark.parametrize("queue", ["default", "levels"])
def test_an_enqueue_many_is_the_enqueues_of_its_tasks_in_turn(queue: str) -> None:
    rows = ROWS if queue == "default" else [(abs(p) % 10, *rest) for p, *rest in ROWS]  # type: ignore[misc]
    batch, singles = twins()
    result = batch.enqueue_many(queue, rows)
    assert result == one_by_one(singles, queue, rows)
    assert result.duplicates == (False, False, True, queue == "default", False, False, False)
    assert result.task_ids[2] == result.task_ids[0]
    assert state_of(batch.machine) == state_of(singles.machine)
    # And they stay alike: delays end, keys are forgotten, tasks come out in the same order.
    for driver in (batch, singles):
        driver.advance(300)
    assert state_of(batch.machine) == state_of(singles.machine)
    assert batch.drain(queue) == singles.drain(queue)
    assert statistics_of(batch.machine) == statistics_of(singles.machine)


def test_an_enqueue_many_of_tasks_without_keys() -> None:
    driver = Driver()
    first = driver.enqueue("default")
    result = driver.enqueue_many("default", [(0, b"x", None, 0)] * 5)
    assert result == EnqueueManyResult(
        task_ids=tuple(range(first + 1, first + 6)), duplicates=(False,) * 5
    )
    assert driver.machine.count("default") == QueueCounts(ready=6, delayed=0, leased=0)


def test_an_enqueue_many_adds_nothing_when_the_queue_lacks_room_for_all() -> None:
    driver = Driver()
    driver.create("small", max_size=3)
    first = driver.enqueue("small", key="a")
    before = state_of(driver.machine)
    with pytest.raises(QueueFull, match="holds 1 tasks; 3 more would pass its max_size of 3"):
        driver.enqueue_many("small", [(0, b"", "b", 0), (0, b"", "c", 0), (0, b"", None, 0)])
    assert state_of(driver.machine) == before
    # Duplicates need no room: a batch of two new tasks and a duplicate fits.
    result = driver.enqueue_many("small", [(0, b"", "b", 0), (0, b"", "a", 0), (0, b"", "b", 0)])
    assert result.task_ids == (first + 1, first, first + 1)
    assert result.duplicates == (False, True, True)
    result = driver.enqueue_many("small", [(0, b"", None, 0)])
    assert driver.machine.count("small").total == 3
    # Full: a batch of duplicates only is still answered, anything more is refused.
    assert driver.enqueue_many("small", [(0, b"", "a", 0), (0, b"", "b", 0)]).duplicates == (
        True,
        True,
    )
    full = state_of(driver.machine)
    with pytest.raises(QueueFull):
        driver.enqueue_many("small", [(0, b"", "a", 0), (0, b"", "new", 0)])
    assert state_of(driver.machine) == full
    # The key of a refused batch was not remembered.
    driver.dequeue("small", lease_ms=0)
    assert not driver.enqueue_many("small", [(0, b"", "new", 0)]).duplicates[0]


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ((20, b"", None, 0), PriorityOutOfRange, "tasks[1]: priority 20 outside [0, 9]"),
        ((0, b"x" * 5, None, 0), PayloadTooLarge, "tasks[1]: payload of 5 bytes"),
        ((0, b"", None, -1), InvalidArgument, "tasks[1]: delay_ms must be in"),
        ((0, b"", None, DELAY_MS_MAX + 1), InvalidArgument, "tasks[1]: delay_ms must be in"),
        ((0, b"", "", 0), InvalidArgument, "tasks[1]: an idempotency key is 1 to 255 bytes"),
        ((0, b"", "é" * 128, 0), InvalidArgument, "tasks[1]: an idempotency key"),
        ((0, "text", None, 0), InvalidArgument, "tasks[1]: a payload is bytes, not str"),
        ((1.5, b"", None, 0), InvalidArgument, "tasks[1]: a priority is an integer"),
    ],
)
def test_one_bad_task_fails_the_whole_batch(
    bad: EnqueueRow, error: type[TaskraftError], message: str
) -> None:
    driver = Driver()
    driver.create("levels", kind="buckets", priority_range=(0, 9), max_payload_bytes=4)
    before = state_of(driver.machine)
    good: EnqueueRow = (3, b"ok", "good", 0)
    with pytest.raises(error) as raised:
        driver.enqueue_many("levels", [good, bad, good])
    assert raised.value.message.startswith(message), raised.value.message
    assert state_of(driver.machine) == before
    # The same task alone fails the same way, without the index.
    with pytest.raises(error) as alone:
        driver.apply(Enqueue("levels", *bad))
    assert raised.value.message == f"tasks[1]: {alone.value.message}"


def test_a_bad_task_is_reported_before_the_lack_of_room() -> None:
    driver = Driver()
    driver.create("small", max_size=1, priority_range=(0, 9))
    with pytest.raises(PriorityOutOfRange, match=r"^tasks\[2\]: "):
        driver.enqueue_many("small", [(0, b"", None, 0), (0, b"", None, 0), (10, b"", None, 0)])
    # The first bad task in task order, whatever the check.
    with pytest.raises(PayloadTooLarge, match=r"^tasks\[0\]: "):
        driver.enqueue_many("small", [(0, b"x" * (1024 * 1024 + 1), None, 0), (10, b"", None, 0)])


def test_malformed_batches_are_refused() -> None:
    driver = Driver()
    with pytest.raises(InvalidArgument, match="1 or more tasks"):
        driver.apply(EnqueueMany("default", (), (), (), ()))
    with pytest.raises(InvalidArgument, match="got 2, 1, 1 and 1"):
        driver.apply(EnqueueMany("default", (0, 1), (b"",), (None,), (0,)))
    with pytest.raises(QueueNotFound):
        driver.enqueue_many("missing", [(0, b"", None, 0)])
    with pytest.raises(InvalidQueueName):
        driver.enqueue_many("bad name", [(0, b"", None, 0)])
    with pytest.raises(InvalidArgument, match="1 or more tasks"):
        driver.apply(AckMany((), ()))
    with pytest.raises(InvalidArgument, match="got 2 tasks and 1 leases"):
        driver.apply(AckMany((1, 2), (3,)))
    assert driver.machine.count("default").total == 0


def test_keys_pushed_out_by_the_batch_itself_are_forgotten_as_in_single_enqueues() -> None:
    # The key store is full; the batch's new keys push out the oldest, so a later task of the
    # batch naming the oldest key adds a task again, as an enqueue after those would.
    batch, singles = Driver(), Driver()
    keyed = [(0, b"", f"k{index}", 0) for index in range(IDEMPOTENCY_KEY_COUNT_MAX)]
    for driver in (batch, singles):
        driver.enqueue_many("default", keyed)
    rows: list[EnqueueRow] = [
        (0, b"", "k1", 0),  # still remembered: a duplicate
        (0, b"", "new-1", 0),  # pushes k0 out
        (0, b"", "k0", 0),  # forgotten: a new task (which pushes k1 out)
        (0, b"", "k2", 0),  # still remembered
        (0, b"", "k1", 0),  # pushed out by k0 just now
        (0, b"", "new-1", 0),
    ]
    result = batch.enqueue_many("default", rows)
    assert result == one_by_one(singles, "default", rows)
    assert result.duplicates == (True, False, False, True, False, True)
    assert state_of(batch.machine) == state_of(singles.machine)


# -- DequeueMany ----------------------------------------------------------------------------


def filled() -> Driver:
    driver = Driver()
    driver.create("levels", kind="buckets", priority_range=(0, 9), lease_ms_default=500)
    for queue in ("default", "levels"):
        for priority, payload in [(5, b"5a"), (1, b"1a"), (5, b"5b"), (2, b"2a"), (1, b"1b")]:
            driver.enqueue(queue, priority, payload)
    return driver


@pytest.mark.parametrize("queue", ["default", "levels"])
@pytest.mark.parametrize("lease_ms", [None, 0, 70])
@pytest.mark.parametrize("max_tasks", [1, 3, 5, 10])
def test_a_dequeue_many_is_the_dequeues_of_its_tasks_in_turn(
    queue: str, lease_ms: int | None, max_tasks: int
) -> None:
    batch, singles = filled(), filled()
    dequeued = batch.dequeue_many(queue, max_tasks, lease_ms)
    taken = [singles.dequeue(queue, lease_ms) for _ in range(max_tasks)]
    assert list(dequeued.tasks) == [task for task in taken if task is not None]
    assert [task.payload for task in dequeued.tasks] == [b"1a", b"1b", b"2a", b"5a", b"5b"][
        :max_tasks
    ]
    default = LEASE_MS_DEFAULT if queue == "default" else 500
    assert dequeued.lease_ms == (default if lease_ms is None else lease_ms)
    assert state_of(batch.machine) == state_of(singles.machine)
    assert statistics_of(batch.machine) == statistics_of(singles.machine)


def test_a_dequeue_many_of_an_empty_queue_takes_nothing() -> None:
    driver = Driver()
    driver.advance(0)
    before = state_of(driver.machine)
    assert driver.dequeue_many("default", 10).tasks == ()
    assert driver.dequeue_many("default", 10).lease_ms == LEASE_MS_DEFAULT
    assert state_of(driver.machine) == before


def test_a_dequeue_many_stops_before_the_task_that_would_pass_max_bytes() -> None:
    driver = Driver()
    for payload in (b"333", b"4444", b"55555", b"1"):
        driver.enqueue("default", 0, payload)
    taken = driver.dequeue_many("default", 10, max_bytes=7)
    assert [task.payload for task in taken.tasks] == [b"333", b"4444"]
    # It stopped at the task that did not fit: the next dequeue takes that one, in order.
    assert [task.payload for task in driver.dequeue_many("default", 10, max_bytes=6).tasks] == [
        b"55555",
        b"1",
    ]


def test_a_dequeue_many_always_takes_its_first_task_however_large() -> None:
    driver = Driver()
    driver.create("levels", kind="buckets", priority_range=(0, 9))
    for queue in ("default", "levels"):
        driver.enqueue(queue, 1, b"x" * 100)
        driver.enqueue(queue, 2, b"")
        driver.enqueue(queue, 3, b"y")
        taken = [driver.dequeue_many(queue, 10, max_bytes=0).tasks for _ in range(4)]
        assert [[task.payload for task in tasks] for tasks in taken] == [
            [b"x" * 100],
            [b""],
            [b"y"],
            [],
        ]


@pytest.mark.parametrize(
    "command",
    [
        DequeueMany("default", 0),
        DequeueMany("default", -1),
        DequeueMany("default", 1, -1),
        DequeueMany("default", 1, LEASE_MS_MAX + 1),
        DequeueMany("default", 1, None, -1),
    ],
)
def test_a_dequeue_many_with_invalid_arguments_is_refused(command: DequeueMany) -> None:
    driver = Driver()
    driver.enqueue("default")
    with pytest.raises(InvalidArgument):
        driver.apply(command)
    assert driver.machine.count("default").ready == 1


def test_a_dequeue_many_of_a_missing_queue_is_refused() -> None:
    with pytest.raises(QueueNotFound):
        Driver().apply(DequeueMany("missing", 1))


# -- AckMany --------------------------------------------------------------------------------


def test_an_ack_many_acks_each_task_on_its_own() -> None:
    driver = Driver()
    for payload in (b"a", b"b", b"c", b"d"):
        driver.enqueue("default", 0, payload)
    a, b, c, d = driver.dequeue_many("default", 4, lease_ms=100).tasks
    stale = DeliveredTask(b.task_id, b.queue, b.priority, b.payload, 1, b.lease_token + 99, None)  # type: ignore[operator]
    unknown = DeliveredTask(999, "default", 0, b"", 1, 1, None)
    result = driver.ack_many([a, stale, unknown, c, a])
    code = UnknownLease.code
    assert result.failures == ((1, code), (2, code), (4, code))
    assert driver.machine.count("default") == QueueCounts(ready=0, delayed=0, leased=2)
    # Each outcome is what an Ack in turn would have been.
    driver.ack(b)
    with pytest.raises(UnknownLease):
        driver.ack(a)
    # A lease that ended fails too; the others are acknowledged.
    driver.advance(100)
    assert driver.ack_many([d]).failures == ((0, code),)
    assert driver.machine.count("default") == QueueCounts(ready=1, delayed=0, leased=0)
    [(_, _, statistics)] = driver.machine.queue_statistics()
    assert statistics.acked == 3


def test_an_ack_many_is_the_acks_of_its_tasks_in_turn() -> None:
    batch, singles = filled(), filled()
    tasks = {driver: driver.dequeue_many("default", 5).tasks for driver in (batch, singles)}
    assert tasks[batch] == tasks[singles]
    chosen = [tasks[batch][index] for index in (3, 0, 3, 4)]
    result = batch.ack_many(chosen)
    outcomes = []
    for task in chosen:
        try:
            singles.ack(task)
            outcomes.append(None)
        except UnknownLease:
            outcomes.append(UnknownLease.code)
    assert result.failures == tuple(
        (index, code) for index, code in enumerate(outcomes) if code is not None
    )
    assert state_of(batch.machine) == state_of(singles.machine)


def test_batches_survive_a_snapshot_round_trip() -> None:
    driver = Driver()
    driver.enqueue_many("default", ROWS)
    driver.dequeue_many("default", 3, lease_ms=50)
    restored = QueueStateMachine.restore(driver.machine.snapshot_chunks())
    restored.check_invariants()
    assert state_of(restored) == state_of(driver.machine)
    again = Driver(restored, now_ms=driver.now_ms)
    assert again.enqueue_many("default", ROWS[:1]).duplicates == (True,)
    assert again.dequeue_many("default", 10).tasks == driver.dequeue_many("default", 10).tasks
    assert again.apply(Dequeue("default")) == driver.apply(Dequeue("default"))
