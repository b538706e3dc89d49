"""Both queue kinds serve the lowest priority first and, within a priority, the earliest ready."""

from __future__ import annotations

import random

import pytest
from queue_driver import Driver

from taskraft.queue.ordering import ReadyBuckets, ReadyHeap


@pytest.fixture(params=["heap", "buckets"])
def driver(request: pytest.FixtureRequest) -> Driver:
    driver = Driver()
    if request.param == "heap":
        driver.create("q")
    else:
        driver.create("q", kind="buckets", priority_range=(-3, 3))
    return driver


def test_lowest_priority_first_then_fifo(driver: Driver) -> None:
    enqueued = [(priority, driver.enqueue("q", priority)) for priority in (2, -1, 2, 0, -1, 3, 0)]
    expected = [task_id for _, task_id in sorted(enqueued)]  # stable sort: FIFO per priority
    assert driver.drain("q") == expected


def test_a_returned_task_queues_behind_its_priority(driver: Driver) -> None:
    first = driver.enqueue("q", 1)
    second = driver.enqueue("q", 1)
    lower = driver.enqueue("q", 2)
    task = driver.take("q")
    assert task.task_id == first
    driver.nack(task)
    assert driver.drain("q") == [second, first, lower]


def test_delayed_tasks_queue_when_they_become_ready(driver: Driver) -> None:
    delayed = driver.enqueue("q", 0, delay_ms=10)
    immediate = driver.enqueue("q", 0)
    driver.advance(10)
    later = driver.enqueue("q", 0)
    assert driver.drain("q") == [immediate, delayed, later]


def test_interleaved_operations_match_a_sorted_list(driver: Driver) -> None:
    generator = random.Random(7)
    expected: list[tuple[int, int]] = []
    for _ in range(2000):
        if generator.random() < 0.6:
            priority = generator.randint(-3, 3)
            expected.append((priority, driver.enqueue("q", priority)))
        else:
            task = driver.dequeue("q", lease_ms=0)
            if expected:
                expected.sort()
                assert task is not None and task.task_id == expected.pop(0)[1]
            else:
                assert task is None


@pytest.mark.parametrize("order_type", [ReadyHeap, ReadyBuckets])
def test_ready_orders_directly(order_type: type[ReadyHeap] | type[ReadyBuckets]) -> None:
    order = order_type() if order_type is ReadyHeap else ReadyBuckets(-512, 511)
    generator = random.Random(11)
    reference: list[tuple[int, int, int]] = []
    sequence = 0
    for _ in range(5000):
        if reference and generator.random() < 0.45:
            reference.sort()
            assert order.pop() == reference.pop(0)[2]
        else:
            sequence += 1
            priority = generator.choice([-512, 511, 0, generator.randint(-512, 511)])
            order.push(priority, sequence, sequence * 10)
            reference.append((priority, sequence, sequence * 10))
        assert len(order.task_ids()) == len(reference)
    assert order.task_ids() == [task_id for _, _, task_id in sorted(reference)]
