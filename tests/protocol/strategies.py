"""Hypothesis strategies for every message of the client protocol, valid by construction."""

from __future__ import annotations

from hypothesis import strategies as st

from taskraft.errors import ERRORS_BY_CODE, NotLeader, TaskraftError
from taskraft.protocol import (
    Ack,
    AckedMany,
    AckMany,
    Count,
    CreateQueue,
    DeleteQueue,
    DeliveredTask,
    DeliveredTasks,
    Dequeue,
    DequeueMany,
    Enqueue,
    Enqueued,
    EnqueuedMany,
    EnqueueItem,
    EnqueueMany,
    Extend,
    ListQueues,
    Nack,
    NodeStatus,
    Operation,
    QueueCounts,
    QueueDescription,
    QueuePage,
    QueuePolicies,
    Result,
    Status,
    TaskLease,
)
from taskraft.protocol.limits import (
    BATCH_TASKS_MAX,
    DELAY_MS_MAX,
    INT64_MAX,
    INT64_MIN,
    LEASE_MS_MAX,
    LIST_QUEUES_LIMIT_MAX,
    UINT64_MAX,
    WAIT_MS_MAX,
)

# Printable ASCII without the space: what a queue name is made of.
queue_names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=255)
uint64s = st.integers(0, UINT64_MAX)
int64s = st.integers(INT64_MIN, INT64_MAX)
# Short payloads keep examples fast; the 1 MiB bound has its own test.
payloads = st.binary(max_size=256)
keys = st.text(min_size=1, max_size=64).filter(lambda key: len(key.encode()) <= 255)
lease_ms = st.integers(0, LEASE_MS_MAX)
delay_ms = st.integers(0, DELAY_MS_MAX)
task_leases = st.builds(TaskLease, task_id=uint64s, lease=uint64s)
enqueue_items = st.builds(
    EnqueueItem, payload=payloads, priority=int64s, key=st.none() | keys, delay_ms=delay_ms
)


@st.composite
def priority_ranges(draw: st.DrawFn) -> tuple[int, int]:
    low, high = sorted((draw(int64s), draw(int64s)))
    return (low, high)


kinds = st.sampled_from(["heap", "buckets"]) | st.text(
    "abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=32
)
limits = st.none() | st.integers(1, INT64_MAX)

create_queues = st.builds(
    CreateQueue,
    queue=queue_names,
    kind=st.none() | kinds,
    max_size=limits,
    max_payload_bytes=limits,
    priority_range=st.none() | priority_ranges(),
    lease_ms_default=st.none() | lease_ms,
    max_deliveries=limits,
    dead_letter_queue=st.none() | queue_names,
)


operations: st.SearchStrategy[Operation] = st.one_of(
    create_queues,
    st.builds(DeleteQueue, queue=queue_names),
    st.builds(
        ListQueues,
        after=st.none() | queue_names,
        limit=st.integers(1, LIST_QUEUES_LIMIT_MAX),
    ),
    st.builds(Count, queue=queue_names),
    st.builds(
        Enqueue,
        queue=queue_names,
        payload=payloads,
        priority=int64s,
        key=st.none() | keys,
        delay_ms=delay_ms,
    ),
    st.builds(
        Dequeue,
        queue=queue_names,
        wait_ms=st.integers(0, WAIT_MS_MAX),
        lease_ms=st.none() | lease_ms,
    ),
    st.builds(Ack, task=task_leases),
    st.builds(Nack, task=task_leases, delay_ms=delay_ms),
    st.builds(Extend, task=task_leases, lease_ms=st.integers(1, LEASE_MS_MAX)),
    st.builds(
        EnqueueMany,
        queue=queue_names,
        tasks=st.lists(enqueue_items, min_size=1, max_size=5).map(tuple),
    ),
    st.builds(
        DequeueMany,
        queue=queue_names,
        max_tasks=st.integers(1, BATCH_TASKS_MAX),
        wait_ms=st.integers(0, WAIT_MS_MAX),
        lease_ms=st.none() | lease_ms,
    ),
    st.builds(AckMany, tasks=st.lists(task_leases, min_size=1, max_size=5).map(tuple)),
    st.just(Status()),
)

short_text = st.text(max_size=32)

counts = st.builds(QueueCounts, ready=uint64s, delayed=uint64s, leased=uint64s)
descriptions = st.builds(
    QueueDescription,
    name=queue_names,
    policies=st.builds(
        QueuePolicies,
        kind=kinds,
        max_size=limits,
        max_payload_bytes=limits,
        priority_range=st.none() | priority_ranges(),
        lease_ms_default=lease_ms,
        max_deliveries=limits,
        dead_letter_queue=st.none() | queue_names,
    ),
    counts=counts,
)

delivered_tasks = st.builds(
    DeliveredTask,
    task_id=uint64s,
    lease=st.none() | uint64s,
    queue=queue_names,
    priority=int64s,
    payload=payloads,
    deliveries=st.integers(1, UINT64_MAX),
    lease_ms=st.none() | lease_ms,
)


@st.composite
def enqueued_many(draw: st.DrawFn) -> EnqueuedMany:
    count = draw(st.integers(1, 5))
    return EnqueuedMany(
        task_ids=tuple(draw(st.lists(uint64s, min_size=count, max_size=count))),
        duplicates=tuple(draw(st.lists(st.booleans(), min_size=count, max_size=count))),
    )


results: st.SearchStrategy[Result] = st.one_of(
    descriptions,
    st.builds(QueuePage, queues=st.lists(descriptions, max_size=5).map(tuple), more=st.booleans()),
    counts,
    st.builds(Enqueued, task_id=uint64s, duplicate=st.booleans()),
    delivered_tasks,
    enqueued_many(),
    st.builds(DeliveredTasks, tasks=st.lists(delivered_tasks, max_size=5).map(tuple)),
    st.builds(
        AckedMany,
        errors=st.lists(st.none() | st.integers(-(2**63), UINT64_MAX), min_size=1, max_size=5).map(
            tuple
        ),
    ),
    st.builds(
        NodeStatus,
        node=short_text,
        role=st.sampled_from(["leader", "follower", "candidate", "pre_candidate"]),
        term=uint64s,
        leader_id=st.none() | short_text,
        leader_address=st.none() | short_text,
        commit_index=uint64s,
        applied_index=uint64s,
    ),
)


@st.composite
def errors(draw: st.DrawFn) -> TaskraftError:
    error_class = draw(st.sampled_from(sorted(ERRORS_BY_CODE.values(), key=lambda c: c.code)))
    message = draw(st.text(min_size=1, max_size=64))
    if error_class is NotLeader:
        return NotLeader(
            message,
            leader_id=draw(st.none() | short_text),
            leader_address=draw(st.none() | short_text),
        )
    return error_class(message)
