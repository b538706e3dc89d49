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
from fuzz.checks import check_client_stream
from fuzz.streams import damaged_stream, pieces
from taskraft.protocol import (
    Ack,
    ClientConnection,
    ConnectionState,
    Count,
    Dequeue,
    Enqueue,
    Operation,
    Request,
    Status,
    TaskLease,
)

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


@fuzz_settings(300)
@given(data=st.data(), damage=st.booleans(), end=st.booleans())
def test_a_server_connection_survives_any_request_stream_in_any_pieces(
    data: st.DataObject, damage: bool, end: bool
) -> None:
    valid, requests = data.draw(client_streams(), label="client")
    stream = data.draw(damaged_stream(valid), label="stream") if damage else valid
    served = check_client_stream(
        [*data.draw(pieces(stream), label="pieces"), *([b""] if end else [])]
    )
    if stream == valid:
        # Small well-formed requests, each answered at once: all arrive, whatever the pieces.
        assert served.server.state is not ConnectionState.FAILED
        assert served.requests == requests
