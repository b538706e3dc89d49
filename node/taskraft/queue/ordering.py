"""The order in which a queue serves its ready tasks: a heap, or an array of FIFO buckets.

Both serve the lowest priority first and, within one priority, the task with the lowest
sequence first. Sequences come from one counter of the state machine and are given to a task
each time it becomes ready, so "lowest sequence" means "ready earliest" (FIFO). Both structures
hold task ids only; the task records live in the state machine.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Protocol


class ReadyOrder(Protocol):
    def push(self, priority: int, sequence: int, task_id: int) -> None:
        """Add a ready task; `sequence` is larger than that of every task pushed before."""
        ...

    def pop(self) -> int:
        """Remove and return the first task's id; the structure must not be empty."""
        ...

    def task_ids(self) -> list[int]:
        """Every task id in serving order; O(n log n), for invariant checks only."""
        ...


class ReadyHeap:
    """A binary heap on (priority, sequence, task id): O(log n) push and pop.

    Sequences are unique, so the key is a total order and the serving order does not depend on
    how the heap happens to be laid out (which lets a restored replica rebuild it with heapify).
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: list[tuple[int, int, int]] | None = None) -> None:
        self._entries = entries if entries is not None else []
        heapq.heapify(self._entries)

    def push(self, priority: int, sequence: int, task_id: int) -> None:
        heapq.heappush(self._entries, (priority, sequence, task_id))

    def pop(self) -> int:
        return heapq.heappop(self._entries)[2]

    def task_ids(self) -> list[int]:
        return [task_id for _, _, task_id in sorted(self._entries)]


class ReadyBuckets:
    """One FIFO per priority in [low, low + bucket count), and a bitmap of the non-empty ones.

    Push appends to its bucket; pop takes the lowest set bit of the bitmap (a few machine-word
    operations, the bitmap being at most BUCKET_COUNT_MAX bits) and pops that bucket's head:
    both O(1). Since every pushed sequence is larger than all earlier ones, each bucket's FIFO
    order is its sequence order. Buckets are created on first use and kept.
    """

    __slots__ = ("_buckets", "_low", "_non_empty")

    def __init__(self, low: int, high: int) -> None:
        self._low = low
        self._buckets: list[deque[int] | None] = [None] * (high - low + 1)
        # Bit i is set exactly when bucket i holds a task.
        self._non_empty = 0

    def push(self, priority: int, sequence: int, task_id: int) -> None:
        index = priority - self._low
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._buckets[index] = deque()
        if not bucket:
            self._non_empty |= 1 << index
        bucket.append(task_id)

    def pop(self) -> int:
        non_empty = self._non_empty
        assert non_empty, "pop from empty buckets"
        index = (non_empty & -non_empty).bit_length() - 1
        bucket = self._buckets[index]
        assert bucket is not None
        task_id = bucket.popleft()
        if not bucket:
            self._non_empty = non_empty ^ (1 << index)
        return task_id

    def task_ids(self) -> list[int]:
        order: list[int] = []
        for index, bucket in enumerate(self._buckets):
            assert bool(bucket) == bool(self._non_empty >> index & 1), f"bitmap wrong at {index}"
            if bucket:
                order.extend(bucket)
        return order


__all__ = ["ReadyBuckets", "ReadyHeap", "ReadyOrder"]
