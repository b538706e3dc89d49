"""ServerConnection and ClientConnection: handshake first, pipelining, bounds and failures."""

from __future__ import annotations

from unittest.mock import ANY

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskraft.errors import (
    BadRequest,
    InvalidArgument,
    NotLeader,
    Overloaded,
    PayloadTooLarge,
    QueueNotFound,
    Unavailable,
    UnknownLease,
    UnsupportedProtocolVersion,
)
from taskraft.protocol import (
    Ack,
    ClientConnection,
    ClientEvent,
    ConnectionClosed,
    ConnectionState,
    Count,
    DeliveredTask,
    Dequeue,
    Enqueue,
    Enqueued,
    ErrorFrame,
    Frame,
    FrameDecoder,
    Handshake,
    HandshakeAccepted,
    LocalProtocolError,
    ProtocolFailure,
    QueueCounts,
    Request,
    RequestRejected,
    Response,
    ServerConnection,
    ServerEvent,
    Status,
    TaskLease,
    encode_frame,
)
from taskraft.protocol.limits import PAYLOAD_SIZE_MAX_BYTES

TASK = TaskLease(task_id=8, lease=3)


def server_events(server: ServerConnection, data: bytes) -> list[ServerEvent]:
    server.receive_data(data)
    events: list[ServerEvent] = []
    while (event := server.next_event()) is not None:
        events.append(event)
        if isinstance(event, ProtocolFailure | ConnectionClosed):
            break
    return events


def client_events(client: ClientConnection, data: bytes) -> list[ClientEvent]:
    client.receive_data(data)
    events: list[ClientEvent] = []
    while (event := client.next_event()) is not None:
        events.append(event)
        if isinstance(event, ProtocolFailure | ConnectionClosed):
            break
    return events


def frames_in(data: bytes) -> list[object]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    values: list[object] = []
    while isinstance(frame := decoder.next_frame(), Frame):
        values.append(frame.value)
    assert decoder.buffered_bytes == 0, "the data ends in the middle of a frame"
    return values


def open_pair() -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection(client_name="tests")
    server = ServerConnection(node_id="n1")
    assert server_events(server, client.data_to_send()) == [Handshake(version=1, client="tests")]
    assert client_events(client, server.data_to_send()) == [HandshakeAccepted(version=1, node="n1")]
    assert client.state is server.state is ConnectionState.OPEN
    return client, server


def test_pipelined_requests_answered_out_of_order() -> None:
    client = ClientConnection()
    server = ServerConnection(node_id="n1")
    # Requests may follow the handshake before its answer arrives.
    enqueue_id = client.send_request(Enqueue(queue="jobs", payload=b"p", priority=1, key="k"))
    count_id = client.send_request(Count(queue="jobs"))
    dequeue_id = client.send_request(Dequeue(queue="jobs", wait_ms=1000))
    assert len({enqueue_id, count_id, dequeue_id}) == 3
    events = server_events(server, client.data_to_send())
    assert events == [
        Handshake(version=1, client=None),
        Request(enqueue_id, Enqueue(queue="jobs", payload=b"p", priority=1, key="k")),
        Request(count_id, Count(queue="jobs")),
        Request(dequeue_id, Dequeue(queue="jobs", wait_ms=1000)),
    ]
    assert server.requests_in_flight == 3
    delivered = DeliveredTask(
        task_id=8, lease=3, queue="jobs", priority=1, payload=b"p", deliveries=1, lease_ms=30_000
    )
    server.send_response(Response(dequeue_id, result=delivered))
    server.send_response(Response(count_id, error=QueueNotFound("no queue 'jobs'")))
    server.send_response(Response(enqueue_id, result=Enqueued(task_id=8, duplicate=False)))
    assert server.requests_in_flight == 0
    answers = client_events(client, server.data_to_send())
    assert answers[0] == HandshakeAccepted(version=1, node="n1")
    assert answers[1] == Response(dequeue_id, result=delivered)
    assert isinstance(answers[2], Response) and isinstance(answers[2].error, QueueNotFound)
    assert answers[2].error.message == "no queue 'jobs'"
    assert answers[3] == Response(enqueue_id, result=Enqueued(task_id=8, duplicate=False))
    assert client.requests_in_flight == 0


def test_bytes_arriving_one_at_a_time() -> None:
    client = ClientConnection()
    server = ServerConnection(node_id="n1")
    ids = [client.send_request(Ack(task=TaskLease(task_id=n, lease=1))) for n in range(3)]
    received: list[ServerEvent] = []
    for byte in client.data_to_send():
        received += server_events(server, bytes([byte]))
    assert [type(event) for event in received] == [Handshake, Request, Request, Request]
    for request_id in ids:
        server.send_response(Response(request_id))
    answers: list[ClientEvent] = []
    for byte in server.data_to_send():
        answers += client_events(client, bytes([byte]))
    assert answers[1:] == [Response(request_id) for request_id in ids]


def test_not_leader_redirect_reaches_the_client() -> None:
    client, server = open_pair()
    request_id = client.send_request(Enqueue(queue="q", payload=b"", priority=0))
    server_events(server, client.data_to_send())
    redirect = NotLeader("n2 leads", leader_id="n2", leader_address="10.0.0.2:7000")
    server.send_response(Response(request_id, error=redirect))
    [event] = client_events(client, server.data_to_send())
    assert isinstance(event, Response) and isinstance(event.error, NotLeader)
    assert (event.error.leader_id, event.error.leader_address) == ("n2", "10.0.0.2:7000")
    assert event.error.retryable


def test_first_frame_must_be_the_handshake() -> None:
    server = ServerConnection(node_id="n1")
    [failure] = server_events(server, encode_frame(Request(1, Status()).to_wire()))
    assert isinstance(failure, ProtocolFailure) and not failure.reported_by_peer
    assert isinstance(failure.error, BadRequest)
    assert "the first frame must be the handshake" in failure.error.message
    assert server.state is ConnectionState.FAILED
    # The client learns why before the connection closes.
    client = ClientConnection()
    [event] = client_events(client, server.data_to_send())
    assert isinstance(event, ProtocolFailure) and event.reported_by_peer
    assert isinstance(event.error, BadRequest)


def test_a_failed_connection_keeps_nothing_of_what_was_sent_after_the_failure() -> None:
    """Found by the fuzz tests: a bad handshake followed, in the same read, by many requests.
    The connection fails at the handshake and reads no more; it must not hold the rest."""
    server = ServerConnection(node_id="n1", frame_size_max_bytes=256)
    bad_handshake = encode_frame({"taskrafx": 1, "client": ""})
    requests = b"".join(encode_frame(Request(n, Status()).to_wire()) for n in range(1, 50))
    assert len(requests) > 256
    [failure] = server_events(server, bad_handshake + requests)
    assert isinstance(failure, ProtocolFailure)
    assert server.state is ConnectionState.FAILED
    assert server.buffered_bytes == 0
    # An error ended by the node itself (send_connection_error) drops them too.
    _client, open_server = open_pair()
    open_server.receive_data(encode_frame(Request(1, Status()).to_wire()) * 3)
    assert open_server.buffered_bytes > 0
    open_server.send_connection_error(Unavailable("shutting down"))
    assert open_server.buffered_bytes == 0


def test_a_nil_frame_is_a_frame_and_a_bad_request_not_a_wait_for_more_bytes() -> None:
    # As the handshake:
    server = ServerConnection(node_id="n1")
    [failure] = server_events(server, encode_frame(None))
    assert isinstance(failure, ProtocolFailure) and isinstance(failure.error, BadRequest)
    # As a request, with a valid request behind it in the same read:
    client, server = open_pair()
    data = encode_frame(None) + encode_frame(Request(1, Status()).to_wire())
    [failure] = server_events(server, data)
    assert isinstance(failure, ProtocolFailure) and isinstance(failure.error, BadRequest)
    # And at the client, an answer that is nil:
    [failure] = client_events(client, encode_frame(None))
    assert isinstance(failure, ProtocolFailure)


def test_unsupported_version_is_answered_and_ends_the_connection() -> None:
    client = ClientConnection(version=7)
    server = ServerConnection(node_id="n1")
    client.send_request(Status())
    # The request pipelined behind the rejected handshake is never read.
    [failure] = server_events(server, client.data_to_send())
    assert isinstance(failure, ProtocolFailure)
    assert isinstance(failure.error, UnsupportedProtocolVersion)
    [event] = client_events(client, server.data_to_send())
    assert isinstance(event, ProtocolFailure) and event.reported_by_peer
    assert isinstance(event.error, UnsupportedProtocolVersion)
    assert "this server speaks 1" in event.error.message
    with pytest.raises(LocalProtocolError):
        server.next_event()
    with pytest.raises(LocalProtocolError):
        client.next_event()
    with pytest.raises(LocalProtocolError):
        client.send_request(Status())


def test_a_bad_request_is_answered_and_the_connection_goes_on() -> None:
    _, server = open_pair()
    raw = {"id": 5, "op": "dequeue", "args": {"queue": "q", "wait_ms": 60_001}}
    [rejected] = server_events(server, encode_frame(raw))
    assert isinstance(rejected, RequestRejected) and rejected.request_id == 5
    assert isinstance(rejected.error, InvalidArgument)
    [answer] = frames_in(server.data_to_send())
    assert answer == {
        "id": 5,
        "error": {
            "code": 17,
            "name": "invalid_argument",
            "message": "args.wait_ms: must be between 0 and 60000, got 60001",
        },
    }
    assert server.requests_in_flight == 0
    [request] = server_events(server, encode_frame(Request(6, Status()).to_wire()))
    assert request == Request(6, Status())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2], "message: expected map, got array"),
        ({"op": "status", "args": {}}, "id: missing"),
        ({"id": "7", "op": "status", "args": {}}, "id: expected int"),
        ({"error": {"code": 1, "name": "x", "message": "y"}}, "id: missing"),
    ],
)
def test_a_request_without_a_usable_id_ends_the_connection(value: object, message: str) -> None:
    _, server = open_pair()
    [failure] = server_events(server, encode_frame(value))
    assert isinstance(failure, ProtocolFailure)
    assert failure.error.message.startswith(message)
    [frame] = frames_in(server.data_to_send())
    assert ErrorFrame.matches(frame)


def test_a_request_id_already_in_flight_ends_the_connection() -> None:
    _, server = open_pair()
    request = encode_frame(Request(3, Status()).to_wire())
    assert server_events(server, request) == [Request(3, Status())]
    [failure] = server_events(server, request)
    assert isinstance(failure, ProtocolFailure)
    assert "request 3 is already in flight" in failure.error.message


def test_requests_beyond_the_bound_are_answered_overloaded() -> None:
    server = ServerConnection(node_id="n1", requests_in_flight_max=2)
    data = encode_frame(Handshake().to_wire()) + b"".join(
        encode_frame(Request(n, Count(queue="q")).to_wire()) for n in range(4)
    )
    events = server_events(server, data)
    assert [type(event) for event in events] == [
        Handshake,
        Request,
        Request,
        RequestRejected,
        RequestRejected,
    ]
    for request_id, event in zip((2, 3), events[3:], strict=True):
        assert isinstance(event, RequestRejected) and event.request_id == request_id
        assert isinstance(event.error, Overloaded)
    assert server.requests_in_flight == 2
    accepted, *answers = frames_in(server.data_to_send())
    assert accepted == {"taskraft": 1, "node": "n1"}
    overloaded = {"code": 14, "name": "overloaded", "message": ANY}
    assert answers == [{"id": 2, "error": overloaded}, {"id": 3, "error": overloaded}]
    # Once an answer frees a slot, the next request is taken.
    server.send_response(Response(0, result=QueueCounts(ready=0, delayed=0, leased=0)))
    assert server_events(server, encode_frame(Request(9, Status()).to_wire())) == [
        Request(9, Status())
    ]


def test_send_response_checks_the_answer() -> None:
    client, server = open_pair()
    request_id = client.send_request(Count(queue="q"))
    server_events(server, client.data_to_send())
    with pytest.raises(LocalProtocolError, match="request 99 is not in flight"):
        server.send_response(Response(99))
    with pytest.raises(LocalProtocolError, match="count answers QueueCounts"):
        server.send_response(Response(request_id, result=Enqueued(task_id=1, duplicate=False)))
    with pytest.raises(LocalProtocolError, match=r"malformed result for count: ok\.ready"):
        server.send_response(
            Response(request_id, result=QueueCounts(ready=-1, delayed=0, leased=0))
        )
    # A refused answer leaves the request in flight, so it can still be answered.
    assert server.requests_in_flight == 1
    server.send_response(Response(request_id, error=Unavailable("no quorum")))
    with pytest.raises(LocalProtocolError, match="not in flight"):
        server.send_response(Response(request_id, error=Unavailable("twice")))
    [event] = client_events(client, server.data_to_send())
    assert isinstance(event, Response) and isinstance(event.error, Unavailable)


def test_client_refuses_requests_the_server_would_refuse() -> None:
    client = ClientConnection()
    with pytest.raises(InvalidArgument, match=r"args\.wait_ms"):
        client.send_request(Dequeue(queue="q", wait_ms=-1))
    with pytest.raises(PayloadTooLarge, match=r"args\.payload"):
        client.send_request(
            Enqueue(queue="q", payload=b"x" * (PAYLOAD_SIZE_MAX_BYTES + 1), priority=0)
        )
    with pytest.raises(BadRequest, match=r"args\.priority: expected int, got bool"):
        client.send_request(Enqueue(queue="q", payload=b"", priority=True))
    assert client.requests_in_flight == 0
    # Nothing but the handshake was queued.
    assert frames_in(client.data_to_send()) == [{"taskraft": 1}]


def test_client_name_is_bounded() -> None:
    with pytest.raises(BadRequest, match="client: must be at most 128 bytes"):
        ClientConnection(client_name="c" * 129)


def test_client_bounds_its_requests_in_flight() -> None:
    client = ClientConnection(requests_in_flight_max=2)
    client.send_request(Status())
    client.send_request(Status())
    with pytest.raises(LocalProtocolError, match="2 requests are already in flight"):
        client.send_request(Status())


def test_client_fails_on_an_answer_to_no_request() -> None:
    client, _ = open_pair()
    server_reply = encode_frame({"id": 77, "ok": None})
    [event] = client_events(client, server_reply)
    assert isinstance(event, ProtocolFailure) and not event.reported_by_peer
    assert "request 77, which is not in flight" in event.error.message


def test_client_fails_on_a_malformed_answer() -> None:
    client, _ = open_pair()
    request_id = client.send_request(Count(queue="q"))
    [event] = client_events(client, encode_frame({"id": request_id, "ok": {"ready": "many"}}))
    assert isinstance(event, ProtocolFailure)
    assert event.error.message.startswith("ok.ready: expected int, got str")


def test_client_fails_on_garbage_and_on_a_wrong_handshake_answer() -> None:
    client = ClientConnection()
    [event] = client_events(client, b"\x00\x00\x00\x00")
    assert isinstance(event, ProtocolFailure) and "zero-length frame" in event.error.message
    client = ClientConnection()
    [event] = client_events(client, encode_frame({"taskraft": 2, "node": "n1"}))
    assert isinstance(event, ProtocolFailure) and "answered version 2" in event.error.message
    client = ClientConnection()
    [event] = client_events(client, encode_frame({"id": 1, "ok": None}))
    assert isinstance(event, ProtocolFailure) and event.error.message.startswith("taskraft:")


def test_server_may_answer_after_the_client_ends_its_stream() -> None:
    client, server = open_pair()
    request_id = client.send_request(Ack(task=TASK))
    events = server_events(server, client.data_to_send() + b"")
    server.receive_data(b"")
    assert server.next_event() == ConnectionClosed()
    assert server.next_event() == ConnectionClosed()
    assert server.state is ConnectionState.CLOSED
    assert events == [Request(request_id, Ack(task=TASK))]
    server.send_response(Response(request_id, error=UnknownLease("expired")))
    client.receive_data(server.data_to_send())
    client.receive_data(b"")
    event = client.next_event()
    assert isinstance(event, Response) and isinstance(event.error, UnknownLease)
    assert client.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError, match="closed"):
        client.send_request(Status())


def test_end_of_stream_in_the_middle_of_a_frame_is_a_failure() -> None:
    server = ServerConnection(node_id="n1")
    server.receive_data(encode_frame(Handshake().to_wire())[:-1])
    server.receive_data(b"")
    event = server.next_event()
    assert isinstance(event, ProtocolFailure)
    assert "end of stream in the middle of a frame" in event.error.message


def test_server_can_end_a_connection_with_an_error() -> None:
    client, server = open_pair()
    server.send_connection_error(Unavailable("the node is shutting down"))
    assert server.state is ConnectionState.FAILED
    [event] = client_events(client, server.data_to_send())
    assert isinstance(event, ProtocolFailure) and event.reported_by_peer
    assert isinstance(event.error, Unavailable) and event.error.retryable


def test_an_oversized_frame_from_a_client_is_refused_unread() -> None:
    server = ServerConnection(node_id="n1")
    server.receive_data(b"\xff\xff\xff\xff" + b"\x00" * 1000)
    [failure] = server_events(server, b"")
    assert isinstance(failure, ProtocolFailure)
    assert "exceeds the maximum" in failure.error.message
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), handshake_first=st.booleans())
def test_fuzz_server_turns_any_bytes_into_events(data: bytes, handshake_first: bool) -> None:
    server = ServerConnection(node_id="n1", requests_in_flight_max=4)
    prefix = encode_frame(Handshake().to_wire()) if handshake_first else b""
    # An empty piece means the end of the stream, so it comes only last.
    for piece in [piece for piece in (prefix + data,) if piece] + [b""]:
        if server.state is ConnectionState.FAILED:
            break
        events = server_events(server, piece)
        assert all(
            isinstance(event, Handshake | Request | RequestRejected | ProtocolFailure)
            or event == ConnectionClosed()
            for event in events
        )
    # Whatever the server sends is well framed.
    frames_in(server.data_to_send())


FIELD_NAMES = ["id", "op", "args", "queue", "payload", "task", "lease", "wait_ms", "taskraft"]
wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.sampled_from(["status", "enqueue", "ack", "q", ""])
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(wire_values, max_size=5))
def test_fuzz_server_turns_any_messages_into_events(values: list[object]) -> None:
    server = ServerConnection(node_id="n1", requests_in_flight_max=2)
    data = encode_frame(Handshake().to_wire()) + b"".join(encode_frame(v) for v in values)
    events = server_events(server, data)
    assert all(
        isinstance(event, Handshake | Request | RequestRejected | ProtocolFailure)
        for event in events
    )
    for event in events:
        if isinstance(event, Request):
            server.send_response(Response(event.request_id, error=Unavailable("fuzz")))
    frames_in(server.data_to_send())


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(st.binary(min_size=1, max_size=40), max_size=4))
def test_fuzz_client_turns_any_frames_into_events(bodies: list[bytes]) -> None:
    client = ClientConnection()
    client.send_request(Status())
    data = b"".join(len(body).to_bytes(4, "big") + body for body in bodies)
    for event in client_events(client, data) if data else []:
        assert isinstance(event, HandshakeAccepted | Response | ProtocolFailure)
