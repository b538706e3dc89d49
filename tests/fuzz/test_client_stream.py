"""The node's end of a client connection fed damaged request streams in arbitrary pieces.

tests/protocol fuzzes the frame decoder with chunked streams and `ServerConnection` with whole
buffers; here `ServerConnection` gets a real client's stream (handshake and pipelined requests),
damaged or not, cut into arbitrary pieces, with a small frame bound. It raises nothing, gives
only the events it documents, answers well-framed bytes, and buffers at most one incomplete
frame. An undamaged stream gives the client's requests whatever the pieces.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuzz.budget import fuzz_settings
from fuzz.streams import damaged_stream, pieces
from taskraft.errors import Unavailable
from taskraft.protocol import (
    Ack,
    ClientConnection,
    ConnectionClosed,
    ConnectionState,
    Count,
    Dequeue,
    Enqueue,
    Frame,
    FrameDecoder,
    Handshake,
    Operation,
    ProtocolFailure,
    Request,
    RequestRejected,
    Response,
    ServerConnection,
    Status,
    TaskLease,
)
from taskraft.protocol.limits import FRAME_PREFIX_BYTES

FRAME_SIZE_MAX_BYTES = 256
NAMES = st.text(alphabet="abcxyz-_.0", min_size=1, max_size=10)
OPERATIONS: st.SearchStrategy[Operation] = st.one_of(
    st.builds(Status),
    st.builds(Count, queue=NAMES),
    st.builds(Enqueue, queue=NAMES, payload=st.binary(max_size=40), priority=st.integers(-10, 10)),
    st.builds(Dequeue, queue=NAMES, wait_ms=st.integers(0, 1000)),
    st.builds(
        Ack,
        task=st.builds(
            TaskLease, task_id=st.integers(0, 2**64 - 1), lease=st.integers(0, 2**64 - 1)
        ),
    ),
)


@st.composite
def client_streams(draw: st.DrawFn) -> tuple[bytes, list[Request]]:
    """A client's bytes (handshake then requests) and the requests they carry."""
    client = ClientConnection(client_name=draw(st.text(max_size=8)))
    requests = []
    for operation in draw(st.lists(OPERATIONS, max_size=5)):
        requests.append(Request(client.send_request(operation), operation))
    return client.data_to_send(), requests


def well_framed(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    while isinstance(decoder.next_frame(), Frame):
        pass
    assert decoder.buffered_bytes == 0


@fuzz_settings(300)
@given(data=st.data(), damage=st.booleans(), end=st.booleans())
def test_a_server_connection_survives_any_request_stream_in_any_pieces(
    data: st.DataObject, damage: bool, end: bool
) -> None:
    valid, requests = data.draw(client_streams(), label="client")
    stream = data.draw(damaged_stream(valid), label="stream") if damage else valid
    server = ServerConnection(
        node_id="n1", requests_in_flight_max=3, frame_size_max_bytes=FRAME_SIZE_MAX_BYTES
    )
    received: list[Request] = []
    for piece in [*data.draw(pieces(stream), label="pieces"), *([b""] if end else [])]:
        if server.state is ConnectionState.FAILED:
            break
        server.receive_data(piece)
        while (event := server.next_event()) is not None:
            assert isinstance(event, Handshake | Request | RequestRejected | ProtocolFailure) or (
                event == ConnectionClosed()
            )
            if isinstance(event, Request):
                received.append(event)
                server.send_response(Response(event.request_id, error=Unavailable("fuzz")))
            if isinstance(event, ProtocolFailure | ConnectionClosed):
                break
        # At most one incomplete frame waits, and its length was checked first.
        assert server._decoder.buffered_bytes < FRAME_PREFIX_BYTES + FRAME_SIZE_MAX_BYTES
        well_framed(server.data_to_send())
    if stream == valid:
        # Small well-formed requests, each answered at once: all arrive, whatever the pieces.
        assert server.state is not ConnectionState.FAILED
        assert received == requests
