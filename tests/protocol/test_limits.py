"""The limits fit together: the largest legitimate messages pass, and agree with the queue."""

from __future__ import annotations

import importlib

import pytest

from taskraft.protocol import (
    ClientConnection,
    DeliveredTask,
    Dequeue,
    Enqueue,
    HandshakeAccepted,
    ListQueues,
    LocalProtocolError,
    QueueCounts,
    QueueDescription,
    QueuePage,
    QueuePolicies,
    Request,
    Response,
    ServerConnection,
    encode_frame,
    limits,
)
from taskraft.protocol.limits import (
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
    UINT64_MAX,
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
