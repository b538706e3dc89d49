"""Idempotent enqueue: a key repeated within the window returns the original task and adds
nothing; after the window (in log time or in number of keys) it enqueues again."""

from __future__ import annotations

import pytest
from queue_driver import Driver

from taskraft.errors import QueueFull
from taskraft.queue import Enqueue, EnqueueResult, QueueStateMachine
from taskraft.queue.limits import IDEMPOTENCY_KEY_COUNT_MAX, IDEMPOTENCY_WINDOW_MS


@pytest.fixture
def driver() -> Driver:
    return Driver()


def test_a_repeated_key_returns_the_original_task(driver: Driver) -> None:
    first = driver.enqueue_result("default", 1, b"a", key="order-17")
    again = driver.enqueue_result("default", 5, b"different", key="order-17")
    assert first == EnqueueResult(task_id=1, duplicate=False)
    assert again == EnqueueResult(task_id=1, duplicate=True)
    assert driver.machine.count("default").ready == 1


def test_the_key_is_remembered_after_the_task_is_done(driver: Driver) -> None:
    task_id = driver.enqueue("default", key="k")
    driver.ack(driver.take("default"))
    assert driver.enqueue_result("default", key="k") == EnqueueResult(task_id, duplicate=True)
    assert driver.machine.count("default").total == 0


def test_keys_are_per_queue(driver: Driver) -> None:
    driver.create("other")
    assert driver.enqueue("default", key="k") != driver.enqueue("other", key="k")


def test_a_duplicate_is_answered_even_when_the_queue_is_full(driver: Driver) -> None:
    driver.create("q", max_size=1)
    task_id = driver.enqueue("q", key="k")
    with pytest.raises(QueueFull):
        driver.enqueue("q", key="other")
    assert driver.enqueue_result("q", key="k") == EnqueueResult(task_id, duplicate=True)


def test_after_the_time_window_the_key_enqueues_again(driver: Driver) -> None:
    first = driver.enqueue("default", key="k")
    driver.now_ms += IDEMPOTENCY_WINDOW_MS - 1
    assert driver.enqueue_result("default", key="k").duplicate
    driver.now_ms += 1
    second = driver.enqueue_result("default", key="k")
    assert second == EnqueueResult(task_id=first + 1, duplicate=False)
    assert driver.machine.count("default").ready == 2


def test_a_queue_created_again_does_not_inherit_keys(driver: Driver) -> None:
    driver.create("q")
    first = driver.enqueue("q", key="k")
    driver.ack(driver.take("q"))
    driver.delete("q")
    driver.create("q")
    assert driver.enqueue_result("q", key="k") == EnqueueResult(first + 1, duplicate=False)


def test_the_oldest_keys_are_evicted_beyond_the_count_bound() -> None:
    machine = QueueStateMachine()
    index = 0
    for number in range(IDEMPOTENCY_KEY_COUNT_MAX + 2):
        index += 1
        machine.apply(Enqueue("default", 0, b"", f"key-{number}"), now_ms=1, index=index)
    results = []
    for number in (2, 1, 0):
        index += 1
        results.append(
            machine.apply(Enqueue("default", 0, b"", f"key-{number}"), now_ms=1, index=index)
        )
    # key-2 is still remembered; key-0 and key-1 were evicted and enqueue afresh.
    assert [result.duplicate for result in results] == [True, False, False]
    machine.check_invariants()
