"""Each operation of the queue state machine, and each error with the situation that raises it."""

from __future__ import annotations

import pytest
from queue_driver import Driver

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
    TaskraftError,
    UnknownLease,
    UnknownQueueKind,
)
from taskraft.queue import (
    Ack,
    CreateQueue,
    DeliveredTask,
    Dequeue,
    Enqueue,
    Extend,
    Nack,
    QueueCounts,
    QueueKind,
    QueuePolicies,
    QueueStateMachine,
    Tick,
)
from taskraft.queue.limits import (
    DELAY_MS_MAX,
    IDEMPOTENCY_KEY_SIZE_MAX_BYTES,
    INT64_MAX,
    INT64_MIN,
    LEASE_MS_DEFAULT,
    LEASE_MS_MAX,
    PAYLOAD_SIZE_MAX_BYTES,
    QUEUE_COUNT_MAX,
)


@pytest.fixture
def driver() -> Driver:
    return Driver()


# -- queues ---------------------------------------------------------------------------------


def test_a_fresh_state_has_the_default_queue(driver: Driver) -> None:
    [default] = driver.machine.list_queues()
    assert default.name == "default"
    assert default.policies == QueuePolicies(
        kind=QueueKind.HEAP,
        max_size=None,
        max_payload_bytes=None,
        priority_range=None,
        lease_ms_default=LEASE_MS_DEFAULT,
        max_deliveries=None,
        dead_letter_queue=None,
    )
    assert default.counts == QueueCounts(ready=0, delayed=0, leased=0)


def test_create_queue_returns_its_description_and_lists_it(driver: Driver) -> None:
    description = driver.create(
        "jobs",
        kind="buckets",
        max_size=10,
        max_payload_bytes=100,
        priority_range=(1, 5),
        lease_ms_default=500,
        max_deliveries=3,
        dead_letter_queue="default",
    )
    assert description.name == "jobs"
    assert description.policies == QueuePolicies(
        kind=QueueKind.BUCKETS,
        max_size=10,
        max_payload_bytes=100,
        priority_range=(1, 5),
        lease_ms_default=500,
        max_deliveries=3,
        dead_letter_queue="default",
    )
    assert [queue.name for queue in driver.machine.list_queues()] == ["default", "jobs"]
    assert driver.machine.describe_queue("jobs") == description


def test_list_queues_is_sorted_by_name_and_counts_each_state(driver: Driver) -> None:
    driver.create("b")
    driver.create("a")
    driver.enqueue("b")
    driver.enqueue("b", delay_ms=10)
    driver.enqueue("b")
    driver.take("b")
    queues = driver.machine.list_queues()
    assert [queue.name for queue in queues] == ["a", "b", "default"]
    assert queues[1].counts == QueueCounts(ready=1, delayed=1, leased=1)
    assert queues[1].counts.total == 3
    assert driver.machine.count("b") == queues[1].counts
    assert driver.machine.ready_count("b") == 1


@pytest.mark.parametrize(
    "name",
    ["", " ", "has space", "tab\t", "é", "x" * 256, "new\nline", "\x7f", "nul\x00"],
)
def test_invalid_queue_names_are_refused(driver: Driver, name: str) -> None:
    with pytest.raises(InvalidQueueName):
        driver.create(name)
    with pytest.raises(InvalidQueueName):
        driver.enqueue(name)
    with pytest.raises(InvalidQueueName):
        driver.create("q", dead_letter_queue=name)


def test_the_longest_and_oddest_valid_names_are_accepted(driver: Driver) -> None:
    driver.create("x" * 255)
    driver.create("!~{}/\\#%")
    assert driver.machine.ready_count("x" * 255) == 0


def test_unknown_queues_are_not_found(driver: Driver) -> None:
    for command in (Enqueue("nope", 0, b""), Dequeue("nope")):
        with pytest.raises(QueueNotFound):
            driver.apply(command)
    with pytest.raises(QueueNotFound):
        driver.delete("nope")
    with pytest.raises(QueueNotFound):
        driver.machine.count("nope")
    with pytest.raises(QueueNotFound):
        driver.create("q", dead_letter_queue="nope")


def test_creating_an_existing_queue_fails(driver: Driver) -> None:
    with pytest.raises(QueueAlreadyExists):
        driver.create("default")
    driver.create("q")
    with pytest.raises(QueueAlreadyExists):
        driver.create("q", kind="buckets", priority_range=(0, 1))


def test_unknown_kind(driver: Driver) -> None:
    with pytest.raises(UnknownQueueKind):
        driver.create("q", kind="fifo")


def test_buckets_need_a_priority_range(driver: Driver) -> None:
    with pytest.raises(PriorityRangeRequired):
        driver.create("q", kind="buckets")


@pytest.mark.parametrize(
    ("kind", "priority_range"),
    [
        ("heap", (5, 4)),
        ("buckets", (5, 4)),
        ("buckets", (0, 1024)),  # 1025 buckets
        ("heap", (INT64_MIN - 1, 0)),
        ("heap", (0, INT64_MAX + 1)),
    ],
)
def test_invalid_priority_ranges(
    driver: Driver, kind: str, priority_range: tuple[int, int]
) -> None:
    with pytest.raises(InvalidPriorityRange):
        driver.create("q", kind=kind, priority_range=priority_range)


def test_the_widest_ranges_are_accepted(driver: Driver) -> None:
    driver.create("b", kind="buckets", priority_range=(-512, 511))
    driver.create("h", kind="heap", priority_range=(INT64_MIN, INT64_MAX))
    driver.create("one", kind="buckets", priority_range=(7, 7))


@pytest.mark.parametrize("max_size", [0, -1])
def test_invalid_max_size(driver: Driver, max_size: int) -> None:
    with pytest.raises(InvalidMaxSize):
        driver.create("q", max_size=max_size)


@pytest.mark.parametrize("max_payload_bytes", [0, -5])
def test_invalid_max_payload_size(driver: Driver, max_payload_bytes: int) -> None:
    with pytest.raises(InvalidMaxPayloadSize):
        driver.create("q", max_payload_bytes=max_payload_bytes)


@pytest.mark.parametrize(
    "policies",
    [{"lease_ms_default": -1}, {"lease_ms_default": LEASE_MS_MAX + 1}, {"max_deliveries": 0}],
)
def test_invalid_lease_default_or_max_deliveries(driver: Driver, policies: dict[str, int]) -> None:
    with pytest.raises(InvalidArgument):
        driver.create("q", **policies)


def test_the_number_of_queues_is_bounded() -> None:
    machine = QueueStateMachine()
    for index in range(1, QUEUE_COUNT_MAX):
        machine.apply(CreateQueue(f"q{index}"), now_ms=0, index=index)
    with pytest.raises(BadRequest):
        machine.apply(CreateQueue("one-too-many"), now_ms=0, index=QUEUE_COUNT_MAX)
    assert len(machine.list_queues()) == QUEUE_COUNT_MAX


def test_delete_queue_removes_it_and_the_name_can_be_used_again(driver: Driver) -> None:
    driver.create("q", max_size=1)
    driver.delete("q")
    with pytest.raises(QueueNotFound):
        driver.enqueue("q")
    driver.create("q", kind="buckets", priority_range=(0, 3))
    assert driver.machine.describe_queue("q").policies.kind is QueueKind.BUCKETS


def test_the_default_queue_may_be_deleted_and_created_again(driver: Driver) -> None:
    driver.delete("default")
    assert driver.machine.list_queues() == ()
    driver.create("default", max_size=5)
    driver.enqueue("default")


@pytest.mark.parametrize("state", ["ready", "delayed", "leased"])
def test_a_queue_holding_tasks_cannot_be_deleted(driver: Driver, state: str) -> None:
    driver.create("q")
    driver.enqueue("q", delay_ms=10 if state == "delayed" else 0)
    if state == "leased":
        driver.take("q")
    with pytest.raises(QueueNotEmpty):
        driver.delete("q")


def test_a_queue_used_as_dead_letter_queue_cannot_be_deleted(driver: Driver) -> None:
    driver.create("dead")
    driver.create("work", dead_letter_queue="dead")
    with pytest.raises(BadRequest, match="'work'"):
        driver.delete("dead")
    driver.delete("work")
    driver.delete("dead")


# -- enqueue --------------------------------------------------------------------------------


def test_enqueue_returns_increasing_ids(driver: Driver) -> None:
    driver.create("other")
    ids = [driver.enqueue("default"), driver.enqueue("other"), driver.enqueue("default")]
    assert ids == [1, 2, 3]


def test_payload_limits(driver: Driver) -> None:
    driver.create("small", max_payload_bytes=3)
    driver.enqueue("small", payload=b"abc")
    with pytest.raises(PayloadTooLarge):
        driver.enqueue("small", payload=b"abcd")
    driver.enqueue("default", payload=b"x" * PAYLOAD_SIZE_MAX_BYTES)
    with pytest.raises(PayloadTooLarge):
        driver.enqueue("default", payload=b"x" * (PAYLOAD_SIZE_MAX_BYTES + 1))


def test_the_global_payload_bound_applies_even_if_the_queue_allows_more(driver: Driver) -> None:
    driver.create("large", max_payload_bytes=10 * PAYLOAD_SIZE_MAX_BYTES)
    assert driver.machine.describe_queue("large").policies.max_payload_bytes == (
        10 * PAYLOAD_SIZE_MAX_BYTES
    )
    with pytest.raises(PayloadTooLarge):
        driver.enqueue("large", payload=b"x" * (PAYLOAD_SIZE_MAX_BYTES + 1))


def test_a_payload_must_be_bytes(driver: Driver) -> None:
    with pytest.raises(InvalidArgument):
        driver.apply(Enqueue("default", 0, bytearray(b"mutable")))  # type: ignore[arg-type]


def test_priority_bounds(driver: Driver) -> None:
    driver.create("b", kind="buckets", priority_range=(-2, 2))
    driver.create("h", priority_range=(10, 20))
    for queue, priority in (("b", -3), ("b", 3), ("h", 9), ("h", 21)):
        with pytest.raises(PriorityOutOfRange):
            driver.enqueue(queue, priority)
    driver.enqueue("b", -2)
    driver.enqueue("b", 2)
    driver.enqueue("h", 20)
    driver.enqueue("default", INT64_MIN)
    driver.enqueue("default", INT64_MAX)
    for priority in (INT64_MIN - 1, INT64_MAX + 1):
        with pytest.raises(PriorityOutOfRange):
            driver.enqueue("default", priority)


def test_max_size_counts_ready_delayed_and_leased_tasks(driver: Driver) -> None:
    driver.create("q", max_size=3)
    driver.enqueue("q")
    driver.enqueue("q", delay_ms=100)
    driver.enqueue("q")
    with pytest.raises(QueueFull):
        driver.enqueue("q")
    task = driver.take("q")
    with pytest.raises(QueueFull):
        driver.enqueue("q")
    driver.ack(task)
    driver.enqueue("q")
    assert driver.machine.count("q").total == 3


@pytest.mark.parametrize("delay_ms", [-1, DELAY_MS_MAX + 1])
def test_invalid_enqueue_delay(driver: Driver, delay_ms: int) -> None:
    with pytest.raises(InvalidArgument):
        driver.enqueue("default", delay_ms=delay_ms)


@pytest.mark.parametrize("key", ["", "k" * (IDEMPOTENCY_KEY_SIZE_MAX_BYTES + 1), "é" * 128])
def test_invalid_idempotency_keys(driver: Driver, key: str) -> None:
    with pytest.raises(InvalidArgument):
        driver.enqueue("default", key=key)


def test_a_key_of_the_maximal_size_is_accepted(driver: Driver) -> None:
    driver.enqueue("default", key="k" * IDEMPOTENCY_KEY_SIZE_MAX_BYTES)
    driver.enqueue("default", key="é" * (IDEMPOTENCY_KEY_SIZE_MAX_BYTES // 2))


# -- dequeue, ack, nack, extend -------------------------------------------------------------


def test_dequeue_from_an_empty_queue_returns_none(driver: Driver) -> None:
    assert driver.dequeue("default") is None
    assert driver.machine.ready_count("default") == 0


def test_dequeue_leases_the_task(driver: Driver) -> None:
    task_id = driver.enqueue("default", 7, b"work")
    task = driver.take("default", lease_ms=1000)
    assert task == DeliveredTask(
        task_id=task_id,
        queue="default",
        priority=7,
        payload=b"work",
        deliveries=1,
        lease_token=task.lease_token,
        lease_expires_ms=driver.now_ms + 1000,
    )
    assert task.lease_token is not None
    assert driver.machine.count("default") == QueueCounts(ready=0, delayed=0, leased=1)


def test_dequeue_without_lease_time_uses_the_queue_default(driver: Driver) -> None:
    driver.create("q", lease_ms_default=1234)
    driver.enqueue("q")
    assert driver.take("q").lease_expires_ms == driver.now_ms + 1234
    driver.enqueue("default")
    assert driver.take("default").lease_expires_ms == driver.now_ms + LEASE_MS_DEFAULT


def test_lease_zero_removes_the_task_at_once(driver: Driver) -> None:
    task_id = driver.enqueue("default", payload=b"p")
    task = driver.take("default", lease_ms=0)
    assert (task.task_id, task.payload, task.deliveries) == (task_id, b"p", 1)
    assert task.lease_token is None and task.lease_expires_ms is None
    assert driver.machine.count("default").total == 0
    assert driver.machine.next_deadline_ms() is None


def test_a_queue_whose_default_lease_is_zero_auto_acknowledges(driver: Driver) -> None:
    driver.create("fire-and-forget", lease_ms_default=0)
    driver.enqueue("fire-and-forget")
    assert driver.take("fire-and-forget").lease_token is None
    assert driver.machine.count("fire-and-forget").total == 0


@pytest.mark.parametrize("lease_ms", [-1, LEASE_MS_MAX + 1])
def test_invalid_dequeue_lease(driver: Driver, lease_ms: int) -> None:
    driver.enqueue("default")
    with pytest.raises(InvalidArgument):
        driver.dequeue("default", lease_ms=lease_ms)
    assert driver.machine.ready_count("default") == 1


def test_ack_removes_the_task_and_a_second_ack_fails(driver: Driver) -> None:
    driver.enqueue("default")
    task = driver.take("default")
    driver.ack(task)
    assert driver.machine.count("default").total == 0
    with pytest.raises(UnknownLease):
        driver.ack(task)


def test_ack_with_a_wrong_token_or_unknown_task_fails(driver: Driver) -> None:
    driver.enqueue("default")
    task = driver.take("default")
    assert task.lease_token is not None
    with pytest.raises(UnknownLease):
        driver.apply(Ack(task.task_id, task.lease_token + 1))
    with pytest.raises(UnknownLease):
        driver.apply(Ack(task.task_id + 100, task.lease_token))
    assert driver.machine.count("default").leased == 1


def test_ack_of_a_ready_task_fails(driver: Driver) -> None:
    task_id = driver.enqueue("default")
    with pytest.raises(UnknownLease):
        driver.apply(Ack(task_id, 0))


def test_nack_returns_the_task_at_once(driver: Driver) -> None:
    driver.enqueue("default", payload=b"again")
    first = driver.take("default")
    driver.nack(first)
    assert driver.machine.count("default") == QueueCounts(ready=1, delayed=0, leased=0)
    second = driver.take("default")
    assert (second.task_id, second.payload, second.deliveries) == (first.task_id, b"again", 2)
    assert second.lease_token != first.lease_token
    with pytest.raises(UnknownLease):
        driver.nack(first)


@pytest.mark.parametrize("delay_ms", [-1, DELAY_MS_MAX + 1])
def test_invalid_nack_delay(driver: Driver, delay_ms: int) -> None:
    driver.enqueue("default")
    task = driver.take("default")
    with pytest.raises(InvalidArgument):
        driver.nack(task, delay_ms)
    assert driver.machine.count("default").leased == 1


def test_extend_moves_the_expiry_from_now(driver: Driver) -> None:
    driver.enqueue("default")
    task = driver.take("default", lease_ms=100)
    driver.now_ms += 60
    assert driver.extend(task, 500) == driver.now_ms + 500
    driver.now_ms += 400
    driver.ack(task)


@pytest.mark.parametrize("lease_ms", [0, -1, LEASE_MS_MAX + 1])
def test_invalid_extend_lease(driver: Driver, lease_ms: int) -> None:
    driver.enqueue("default")
    task = driver.take("default")
    with pytest.raises(InvalidArgument):
        driver.extend(task, lease_ms)


def test_extend_with_an_unknown_lease_fails(driver: Driver) -> None:
    with pytest.raises(UnknownLease):
        driver.apply(Extend(1, 1, 100))


def test_tick_returns_nothing(driver: Driver) -> None:
    assert driver.apply(Tick()) is None


# -- the envelope ---------------------------------------------------------------------------


def test_indexes_must_increase() -> None:
    machine = QueueStateMachine()
    machine.apply(Tick(), now_ms=0, index=5)
    machine.apply(Tick(), now_ms=0, index=9)  # gaps are fine
    for index in (9, 3):
        with pytest.raises(ValueError):
            machine.apply(Tick(), now_ms=0, index=index)
    assert machine.applied_index == 9


def test_an_object_that_is_not_a_command_is_a_bad_request(driver: Driver) -> None:
    with pytest.raises(BadRequest):
        driver.apply("enqueue")  # type: ignore[arg-type]


def test_a_failed_command_changes_nothing_but_time(driver: Driver) -> None:
    driver.create("q", max_size=2, priority_range=(0, 9))
    driver.enqueue("q", 1, key="k")
    before = driver.machine.snapshot_copy()
    failing = [
        Enqueue("q", 10, b""),
        Enqueue("q", 1, b"", "fresh-key", -1),
        Dequeue("q", -1),
        Ack(1, 1),
        Nack(1, 1, 0),
        Extend(1, 1, 10),
        CreateQueue("q"),
        CreateQueue("r", kind="nope"),
        CreateQueue("r", dead_letter_queue="missing"),
    ]
    for command in failing:
        with pytest.raises(TaskraftError):
            driver.apply(command)
    after = driver.machine.snapshot_copy()
    assert after.applied_index == before.applied_index + len(failing)
    assert (after.next_task_id, after.next_sequence, after.next_queue_id) == (
        before.next_task_id,
        before.next_sequence,
        before.next_queue_id,
    )
    assert after.queues == before.queues
    assert dict(after.tasks) == dict(before.tasks)
    assert after.idempotency == before.idempotency
