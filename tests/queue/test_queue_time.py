"""Log time: delays, lease expiry and redelivery, dead letter queues, and a clock that never
goes backward."""

from __future__ import annotations

import pytest
from queue_driver import Driver

from taskraft.errors import UnknownLease
from taskraft.queue import Ack, Dequeue, Enqueue, Extend, QueueCounts, QueueStateMachine, Tick
from taskraft.queue.limits import STALE_DEADLINES_REBUILD_MIN


@pytest.fixture
def driver() -> Driver:
    return Driver()


def test_a_delayed_task_becomes_ready_at_its_time(driver: Driver) -> None:
    driver.enqueue("default", delay_ms=100)
    assert driver.machine.count("default") == QueueCounts(ready=0, delayed=1, leased=0)
    assert driver.machine.next_deadline_ms() == driver.now_ms + 100
    assert driver.dequeue("default") is None
    driver.advance(99)
    assert driver.machine.ready_count("default") == 0
    driver.advance(1)
    assert driver.machine.count("default") == QueueCounts(ready=1, delayed=0, leased=0)
    assert driver.machine.next_deadline_ms() is None


def test_any_command_releases_what_is_due_before_it_applies(driver: Driver) -> None:
    task_id = driver.enqueue("default", delay_ms=50)
    driver.now_ms += 50
    task = driver.take("default")  # no Tick needed: the dequeue's own time releases it
    assert task.task_id == task_id


def test_an_expired_lease_redelivers_with_one_more_delivery(driver: Driver) -> None:
    driver.enqueue("default", payload=b"job")
    first = driver.take("default", lease_ms=100)
    assert driver.machine.next_deadline_ms() == driver.now_ms + 100
    driver.advance(99)
    assert driver.machine.count("default").leased == 1
    driver.advance(1)
    assert driver.machine.count("default") == QueueCounts(ready=1, delayed=0, leased=0)
    second = driver.take("default", lease_ms=100)
    assert (second.task_id, second.payload, second.deliveries) == (first.task_id, b"job", 2)
    assert second.lease_token != first.lease_token


def test_ack_with_a_stale_token_after_redelivery_fails(driver: Driver) -> None:
    driver.enqueue("default")
    first = driver.take("default", lease_ms=100)
    driver.advance(100)
    second = driver.take("default", lease_ms=100)
    with pytest.raises(UnknownLease):
        driver.ack(first)
    with pytest.raises(UnknownLease):
        driver.extend(first, 100)
    with pytest.raises(UnknownLease):
        driver.nack(first)
    driver.ack(second)


def test_ack_at_the_expiry_time_is_too_late(driver: Driver) -> None:
    driver.enqueue("default")
    task = driver.take("default", lease_ms=100)
    driver.now_ms += 100
    with pytest.raises(UnknownLease):
        driver.ack(task)
    assert driver.machine.count("default").ready == 1


def test_extend_keeps_the_lease_alive(driver: Driver) -> None:
    driver.enqueue("default")
    task = driver.take("default", lease_ms=100)
    for _ in range(5):
        driver.advance(90)
        driver.extend(task, 100)
    assert driver.machine.next_deadline_ms() == driver.now_ms + 100
    driver.advance(99)
    driver.ack(task)
    assert driver.machine.next_deadline_ms() is None


def test_nack_with_delay(driver: Driver) -> None:
    task_id = driver.enqueue("default")
    task = driver.take("default")
    driver.nack(task, delay_ms=200)
    assert driver.machine.count("default") == QueueCounts(ready=0, delayed=1, leased=0)
    assert driver.machine.next_deadline_ms() == driver.now_ms + 200
    driver.advance(199)
    assert driver.dequeue("default") is None
    driver.advance(1)
    again = driver.take("default")
    assert (again.task_id, again.deliveries) == (task_id, 2)


def test_max_deliveries_moves_the_task_to_the_dead_letter_queue(driver: Driver) -> None:
    driver.create("dead", kind="buckets", priority_range=(0, 5))
    driver.create("work", max_deliveries=2, dead_letter_queue="dead")
    task_id = driver.enqueue("work", 9, b"poison")
    driver.take("work", lease_ms=10)
    driver.advance(10)
    second = driver.take("work", lease_ms=10)
    assert second.deliveries == 2
    driver.advance(10)  # a third delivery would exceed max_deliveries
    assert driver.machine.count("work").total == 0
    assert driver.machine.count("dead") == QueueCounts(ready=1, delayed=0, leased=0)
    dead = driver.take("dead")
    # A fresh task: same id and payload, priority clamped to the dead letter queue's range.
    assert (dead.task_id, dead.payload, dead.priority, dead.deliveries) == (
        task_id,
        b"poison",
        5,
        1,
    )


def test_a_nack_past_max_deliveries_dead_letters_at_once(driver: Driver) -> None:
    driver.create("dead")
    driver.create("work", max_deliveries=1, dead_letter_queue="dead")
    driver.enqueue("work", -4)
    task = driver.take("work")
    driver.nack(task, delay_ms=1000)  # the delay does not matter: it is dead already
    assert driver.machine.count("work").total == 0
    assert driver.take("dead").priority == -4


def test_without_a_dead_letter_queue_the_task_is_dropped(driver: Driver) -> None:
    driver.create("work", max_deliveries=1)
    driver.enqueue("work")
    task = driver.take("work", lease_ms=10)
    driver.advance(10)
    assert driver.machine.count("work").total == 0
    with pytest.raises(UnknownLease):
        driver.ack(task)


def test_a_dead_letter_queue_takes_tasks_past_its_max_size(driver: Driver) -> None:
    driver.create("dead", max_size=1)
    driver.create("work", max_deliveries=1, dead_letter_queue="dead")
    driver.enqueue("dead")
    driver.enqueue("work")
    driver.nack(driver.take("work"))
    assert driver.machine.count("dead").ready == 2


def test_dead_letter_queues_chain(driver: Driver) -> None:
    driver.create("last")
    driver.create("middle", max_deliveries=1, dead_letter_queue="last")
    driver.create("first", max_deliveries=1, dead_letter_queue="middle")
    task_id = driver.enqueue("first")
    driver.nack(driver.take("first"))
    driver.nack(driver.take("middle"))
    assert driver.take("last").task_id == task_id


def test_time_never_goes_backward() -> None:
    machine = QueueStateMachine()
    machine.apply(Enqueue("default", 0, b""), now_ms=1000, index=1)
    task = machine.apply(Dequeue("default", 100), now_ms=1000, index=2)
    assert task is not None and task.lease_token is not None
    # A new leader whose clock is behind stamps an older time: the clock stays put...
    machine.apply(Tick(), now_ms=500, index=3)
    assert machine.clock_ms == 1000
    # ...so a lease is measured from the newest time, not from the stale one.
    machine.apply(Enqueue("default", 0, b""), now_ms=1050, index=4)
    second = machine.apply(Dequeue("default", 100), now_ms=900, index=5)
    assert second is not None and second.lease_expires_ms == 1150
    machine.apply(Tick(), now_ms=1099, index=6)
    machine.apply(Ack(task.task_id, task.lease_token), now_ms=0, index=7)
    machine.apply(Tick(), now_ms=1100, index=8)
    assert machine.count("default").ready == 0  # the first lease was acked in time
    machine.apply(Tick(), now_ms=1150, index=9)
    assert machine.count("default").ready == 1  # the second expired at 1150
    machine.check_invariants()


def test_expirations_due_together_are_processed_in_deadline_order(driver: Driver) -> None:
    driver.create("q")
    ids = [driver.enqueue("q") for _ in range(4)]
    tasks = [driver.take("q", lease_ms=lease) for lease in (30, 10, 20, 10)]
    driver.advance(1000)
    # Deadline first, then the order the leases were taken in.
    assert driver.drain("q") == [ids[1], ids[3], ids[2], ids[0]]
    assert [task.task_id for task in tasks] == ids


def test_next_deadline_ignores_stale_entries(driver: Driver) -> None:
    driver.enqueue("default")
    driver.enqueue("default", delay_ms=500)
    task = driver.take("default", lease_ms=100)
    driver.ack(task)
    assert driver.machine.next_deadline_ms() == driver.now_ms + 500


def test_stale_deadlines_are_compacted(driver: Driver) -> None:
    driver.enqueue("default")
    task = driver.take("default", lease_ms=1000)
    for _ in range(3 * STALE_DEADLINES_REBUILD_MIN):
        driver.machine.apply(
            # Extensions without the driver: it checks invariants (O(n)) after every command.
            Extend(task.task_id, task.lease_token or 0, 1000),
            now_ms=driver.now_ms,
            index=driver.index + 1,
        )
        driver.index += 1
    driver.machine.check_invariants()
    assert len(driver.machine._deadlines) <= 2 * STALE_DEADLINES_REBUILD_MIN
