"""The limits fit together: the largest legitimate messages pass, and agree with the queue."""

from __future__ import annotations

import importlib

import pytest

from taskraft.errors import InvalidArgument, PayloadTooLarge
from taskraft.protocol import (
    AckedMany,
    AckMany,
    ClientConnection,
    DeliveredTask,
    DeliveredTasks,
    Dequeue,
    DequeueMany,
    Enqueue,
    EnqueueItem,
    EnqueueMany,
    HandshakeAccepted,
    ListQueues,
    LocalProtocolError,
    Operation,
    QueueCounts,
    QueueDescription,
    QueuePage,
    QueuePolicies,
    Request,
    Response,
    Result,
    ServerConnection,
    TaskLease,
    encode_frame,
    limits,
)
from taskraft.protocol.limits import (
    BATCH_PAYLOAD_BYTES_MAX,
    BATCH_TASKS_MAX,
    DELAY_MS_MAX,
    FRAME_PREFIX_BYTES,
    FRAME_SIZE_MAX_BYTES,
    INT64_MAX,
    INT64_MIN,
    KEY_MAX_BYTES,
    LEASE_MS_MAX,
    LIST_QUEUES_LIMIT_MAX,
    PAYLOAD_SIZE_MAX_BYTES,
    QUEUE_NAME_MAX_BYTES,
    REQUEST_COLLECTION_LENGTH_MAX,
    RESPONSE_COLLECTION_LENGTH_MAX,
    UINT64_MAX,
    WAIT_MS_MAX,
)

LONGEST_NAME = "~" * QUEUE_NAME_MAX_BYTES
# Four-byte characters fill the key's bytes with the fewest characters.
LONGEST_KEY = "\U0001f600" * (KEY_MAX_BYTES // 4) + "k" * (KEY_MAX_BYTES % 4)


def connected() -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection(client_name="c" * limits.CLIENT_NAME_MAX_BYTES)
    server = ServerConnection(node_id="n" * limits.NODE_ID_MAX_BYTES)
    server.receive_data(client.data_to_send())
    assert server.next_event() is not None
    client.receive_data(server.data_to_send())
    assert isinstance(client.next_event(), HandshakeAccepted)
    return client, server


def test_the_largest_enqueue_fits_in_a_frame() -> None:
    client, server = connected()
    operation = Enqueue(
        queue=LONGEST_NAME,
        payload=b"\xff" * PAYLOAD_SIZE_MAX_BYTES,
        priority=INT64_MIN,
        key=LONGEST_KEY,
        delay_ms=DELAY_MS_MAX,
    )
    assert len(LONGEST_KEY.encode()) == KEY_MAX_BYTES
    request_id = client.send_request(operation)
    data = client.data_to_send()
    assert len(data) - FRAME_PREFIX_BYTES < PAYLOAD_SIZE_MAX_BYTES + 1024
    server.receive_data(data)
    assert server.next_event() == Request(request_id, operation)


def test_the_largest_dequeue_answer_fits_in_a_frame() -> None:
    client, server = connected()
    request_id = client.send_request(Dequeue(queue=LONGEST_NAME))
    server.receive_data(client.data_to_send())
    assert server.next_event() is not None
    task = DeliveredTask(
        task_id=UINT64_MAX,
        lease=UINT64_MAX,
        queue=LONGEST_NAME,
        priority=INT64_MIN,
        payload=b"\xff" * PAYLOAD_SIZE_MAX_BYTES,
        deliveries=UINT64_MAX,
        lease_ms=LEASE_MS_MAX,
    )
    server.send_response(Response(request_id, result=task))
    data = server.data_to_send()
    assert len(data) - FRAME_PREFIX_BYTES < PAYLOAD_SIZE_MAX_BYTES + 1024
    client.receive_data(data)
    assert client.next_event() == Response(request_id, result=task)


def test_a_full_page_of_the_largest_queue_descriptions_fits_in_a_frame() -> None:
    client, server = connected()
    request_id = client.send_request(ListQueues(after=LONGEST_NAME))
    server.receive_data(client.data_to_send())
    assert server.next_event() is not None
    description = QueueDescription(
        name=LONGEST_NAME,
        policies=QueuePolicies(
            kind="buckets",
            max_size=INT64_MAX,
            max_payload_bytes=INT64_MAX,
            priority_range=(INT64_MIN, INT64_MAX),
            lease_ms_default=LEASE_MS_MAX,
            max_deliveries=INT64_MAX,
            dead_letter_queue=LONGEST_NAME,
        ),
        counts=QueueCounts(ready=UINT64_MAX, delayed=UINT64_MAX, leased=UINT64_MAX),
    )
    page = QueuePage(queues=(description,) * LIST_QUEUES_LIMIT_MAX, more=True)
    server.send_response(Response(request_id, result=page))
    data = server.data_to_send()
    assert len(data) - FRAME_PREFIX_BYTES < 800 * LIST_QUEUES_LIMIT_MAX < FRAME_SIZE_MAX_BYTES
    client.receive_data(data)
    assert client.next_event() == Response(request_id, result=page)


# The largest frames keep at least this much of the frame bound free, as the largest enqueue
# and dequeue answer do: room for fields added later.
HEADROOM_BYTES = 64 * 1024


def payloads_totalling(total: int, count: int) -> list[bytes]:
    """`count` payloads of `total` bytes together, as even as can be."""
    size, rest = divmod(total, count)
    return [b"\xff" * (size + (index < rest)) for index in range(count)]


def request_through(operation: Operation) -> int:
    """Send `operation` from a client to a server; the size of the request frame's body."""
    client, server = connected()
    request_id = client.send_request(operation)
    data = client.data_to_send()
    server.receive_data(data)
    assert server.next_event() == Request(request_id, operation)
    return len(data) - FRAME_PREFIX_BYTES


def answer_through(operation: Operation, result: Result) -> int:
    """Answer `operation` with `result` from a server to a client; the size of the answer's body."""
    client, server = connected()
    request_id = client.send_request(operation)
    server.receive_data(client.data_to_send())
    assert server.next_event() is not None
    server.send_response(Response(request_id, result=result))
    data = server.data_to_send()
    client.receive_data(data)
    assert client.next_event() == Response(request_id, result=result)
    return len(data) - FRAME_PREFIX_BYTES


def test_a_full_batch_fits_the_collection_bounds() -> None:
    assert BATCH_TASKS_MAX <= REQUEST_COLLECTION_LENGTH_MAX
    assert BATCH_TASKS_MAX <= RESPONSE_COLLECTION_LENGTH_MAX


def test_the_largest_enqueue_many_fits_in_a_frame() -> None:
    # A thousand tasks with the longest key, the widest integers and payloads of 655 bytes
    # (each with a 3-byte bin header, the largest a payload of that size can have), which
    # together take the most a batch may carry.
    tasks = tuple(
        EnqueueItem(payload=payload, priority=INT64_MIN, key=LONGEST_KEY, delay_ms=DELAY_MS_MAX)
        for payload in payloads_totalling(BATCH_PAYLOAD_BYTES_MAX, BATCH_TASKS_MAX)
    )
    assert sum(len(task.payload) for task in tasks) == BATCH_PAYLOAD_BYTES_MAX
    size = request_through(EnqueueMany(queue=LONGEST_NAME, tasks=tasks))
    assert size <= FRAME_SIZE_MAX_BYTES - HEADROOM_BYTES
    # Any way of sharing the bytes out costs at most 2 more bytes of header for each of the
    # at most 10 payloads of 64 KiB or more: no frame is larger than this one by more than that.
    assert size + 2 * (BATCH_PAYLOAD_BYTES_MAX // 65536) <= FRAME_SIZE_MAX_BYTES - HEADROOM_BYTES


def test_a_batch_of_one_task_carries_the_largest_payload() -> None:
    task = EnqueueItem(
        payload=b"\xff" * PAYLOAD_SIZE_MAX_BYTES,
        priority=INT64_MIN,
        key=LONGEST_KEY,
        delay_ms=DELAY_MS_MAX,
    )
    size = request_through(EnqueueMany(queue=LONGEST_NAME, tasks=(task,)))
    assert size < PAYLOAD_SIZE_MAX_BYTES + 1024


def test_a_batch_beyond_the_bounds_is_refused_before_it_is_sent() -> None:
    client, _ = connected()
    half = b"x" * (BATCH_PAYLOAD_BYTES_MAX // 2)
    fits = EnqueueMany(queue="q", tasks=(EnqueueItem(payload=half, priority=0),) * 2)
    client.send_request(fits)
    too_heavy = EnqueueMany(queue="q", tasks=(EnqueueItem(payload=half + b"x", priority=0),) * 2)
    with pytest.raises(PayloadTooLarge, match=r"^args\.tasks: "):
        client.send_request(too_heavy)
    too_many = EnqueueMany(queue="q", tasks=(EnqueueItem(payload=b"", priority=0),) * 1001)
    with pytest.raises(InvalidArgument, match=r"^args\.tasks: "):
        client.send_request(too_many)
    with pytest.raises(InvalidArgument, match=r"^args\.tasks: "):
        client.send_request(AckMany(tasks=(TaskLease(task_id=1, lease=1),) * 1001))


def largest_delivered_task(payload: bytes) -> DeliveredTask:
    return DeliveredTask(
        task_id=UINT64_MAX,
        lease=UINT64_MAX,
        queue=LONGEST_NAME,
        priority=INT64_MIN,
        payload=payload,
        deliveries=UINT64_MAX,
        lease_ms=LEASE_MS_MAX,
    )


def test_the_largest_dequeue_many_answer_fits_in_a_frame() -> None:
    # The server stops a dequeue_many's answer before its payloads pass the batch bound.
    tasks = tuple(
        largest_delivered_task(payload)
        for payload in payloads_totalling(BATCH_PAYLOAD_BYTES_MAX, BATCH_TASKS_MAX)
    )
    operation = DequeueMany(queue=LONGEST_NAME, max_tasks=BATCH_TASKS_MAX, wait_ms=WAIT_MS_MAX)
    size = answer_through(operation, DeliveredTasks(tasks=tasks))
    assert size <= FRAME_SIZE_MAX_BYTES - HEADROOM_BYTES
    assert size + 2 * (BATCH_PAYLOAD_BYTES_MAX // 65536) <= FRAME_SIZE_MAX_BYTES - HEADROOM_BYTES


def test_a_dequeue_many_answer_of_one_task_carries_the_largest_payload() -> None:
    task = largest_delivered_task(b"\xff" * PAYLOAD_SIZE_MAX_BYTES)
    operation = DequeueMany(queue=LONGEST_NAME, max_tasks=BATCH_TASKS_MAX)
    size = answer_through(operation, DeliveredTasks(tasks=(task,)))
    assert size < PAYLOAD_SIZE_MAX_BYTES + 1024


def test_the_largest_ack_many_and_its_answer_fit_in_a_frame() -> None:
    operation = AckMany(tasks=(TaskLease(task_id=UINT64_MAX, lease=UINT64_MAX),) * BATCH_TASKS_MAX)
    assert request_through(operation) < 32 * BATCH_TASKS_MAX
    answer = AckedMany(errors=(UINT64_MAX,) * BATCH_TASKS_MAX)
    assert answer_through(operation, answer) < 16 * BATCH_TASKS_MAX


def test_a_frame_too_large_for_the_peer_is_never_sent() -> None:
    with pytest.raises(LocalProtocolError, match="exceeds the maximum"):
        encode_frame(b"x" * FRAME_SIZE_MAX_BYTES)


def test_bounds_agree_with_the_queue_state_machine() -> None:
    try:
        queue_limits = importlib.import_module("taskraft.queue.limits")
    except ModuleNotFoundError:
        pytest.skip("the queue state machine is not part of this tree")
    assert limits.PAYLOAD_SIZE_MAX_BYTES == queue_limits.PAYLOAD_SIZE_MAX_BYTES
    assert limits.QUEUE_NAME_MAX_BYTES == queue_limits.QUEUE_NAME_SIZE_MAX_BYTES
    assert limits.KEY_MAX_BYTES == queue_limits.IDEMPOTENCY_KEY_SIZE_MAX_BYTES
    assert limits.DELAY_MS_MAX == queue_limits.DELAY_MS_MAX
    assert limits.LEASE_MS_MAX == queue_limits.LEASE_MS_MAX
    assert (limits.INT64_MIN, limits.INT64_MAX) == (
        queue_limits.INT64_MIN,
        queue_limits.INT64_MAX,
    )
    # Every queue can be listed in a bounded number of pages.
    assert queue_limits.QUEUE_COUNT_MAX <= 10 * limits.LIST_QUEUES_LIMIT_MAX
