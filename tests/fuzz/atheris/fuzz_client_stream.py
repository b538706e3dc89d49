"""Coverage-guided fuzzing of the node's end of a client connection (`ServerConnection`).

tests/fuzz/test_client_stream.py damages real client streams at random; atheris instead
mutates the bytes towards code the decoder has not run yet, so it reaches the corners of the
frame, msgpack and request checks that random damage rarely hits. Each input is a prefix of a
real client's stream (so that mutations get past the handshake) followed by arbitrary bytes,
fed in arbitrary pieces. The connection must raise nothing, give only the events it documents,
keep at most one incomplete frame and answer well-framed bytes.

Run: `python tests/fuzz/atheris/fuzz_client_stream.py -runs=100000` (libFuzzer options);
tests/fuzz/test_atheris.py runs it briefly, `make fuzz` for a minute.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["taskraft"]):
    from taskraft.errors import Unavailable
    from taskraft.protocol import (
        ClientConnection,
        ConnectionClosed,
        ConnectionState,
        Count,
        Dequeue,
        Enqueue,
        Frame,
        FrameDecoder,
        Handshake,
        ProtocolFailure,
        Request,
        RequestRejected,
        Response,
        ServerConnection,
        Status,
    )
    from taskraft.protocol.limits import FRAME_PREFIX_BYTES

FRAME_SIZE_MAX_BYTES = 256
PIECE_COUNT_MAX = 16
PIECE_SIZE_MAX_BYTES = 64


def _valid_stream() -> bytes:
    """A real client's bytes: the handshake and a few pipelined requests."""
    client = ClientConnection(client_name="atheris")
    for operation in (
        Status(),
        Count(queue="jobs"),
        Enqueue(queue="jobs", payload=b"task", priority=3),
        Dequeue(queue="jobs", wait_ms=10),
    ):
        client.send_request(operation)
    return client.data_to_send()


VALID_STREAM = _valid_stream()


def _check_well_framed(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    while isinstance(decoder.next_frame(), Frame):
        pass
    assert decoder.buffered_bytes == 0, "the server sent a partial frame"


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    prefix = VALID_STREAM[: provider.ConsumeIntInRange(0, len(VALID_STREAM))]
    piece_sizes = provider.ConsumeIntListInRange(
        provider.ConsumeIntInRange(0, PIECE_COUNT_MAX), 1, PIECE_SIZE_MAX_BYTES
    )
    end = provider.ConsumeBool()
    stream = prefix + provider.ConsumeBytes(provider.remaining_bytes())
    pieces = []
    for size in piece_sizes:
        if stream:
            pieces.append(stream[:size])
            stream = stream[size:]
    if stream:
        pieces.append(stream)
    if end:
        pieces.append(b"")

    server = ServerConnection(
        node_id="n1", requests_in_flight_max=3, frame_size_max_bytes=FRAME_SIZE_MAX_BYTES
    )
    for piece in pieces:
        if server.state is ConnectionState.FAILED:
            break
        server.receive_data(piece)
        while (event := server.next_event()) is not None:
            assert isinstance(event, Handshake | Request | RequestRejected | ProtocolFailure) or (
                event == ConnectionClosed()
            ), f"an undocumented event: {event!r}"
            if isinstance(event, Request):
                server.send_response(Response(event.request_id, error=Unavailable("fuzz")))
            if isinstance(event, ProtocolFailure | ConnectionClosed):
                break
        # At most one incomplete frame waits, and its length was checked first.
        assert server._decoder.buffered_bytes < FRAME_PREFIX_BYTES + FRAME_SIZE_MAX_BYTES
        _check_well_framed(server.data_to_send())


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
