"""The handshake's optional `token`: its wire form, its bounds, and a server that checks it.

Handshakes without a token, as clients written before the field send them, must still be
accepted; a server given `check_handshake` refuses a handshake before any request behind it is
read.
"""

from __future__ import annotations

import pytest

from taskraft.errors import BadRequest, Forbidden, TaskraftError, Unauthenticated
from taskraft.protocol import (
    TOKEN_MAX_BYTES,
    ClientConnection,
    ConnectionState,
    Count,
    ErrorFrame,
    FrameDecoder,
    Handshake,
    HandshakeAccepted,
    ProtocolFailure,
    Request,
    Response,
    ServerConnection,
    Status,
    encode_frame,
)

TOKEN = "0123456789abcdef0123456789abcdef"


def _frames(data: bytes) -> list[object]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    frames: list[object] = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(getattr(frame, "value", frame))
    return frames


def test_a_handshake_with_a_token_round_trips() -> None:
    handshake = Handshake(client="worker", token=TOKEN)
    wire = handshake.to_wire()
    assert wire == {"taskraft": 1, "client": "worker", "token": TOKEN}
    assert Handshake.from_wire(wire) == handshake


def test_a_handshake_without_a_token_has_no_token_field() -> None:
    wire = Handshake(client="worker").to_wire()
    assert wire == {"taskraft": 1, "client": "worker"}
    assert Handshake.from_wire(wire).token is None
    # The oldest form: the version alone.
    assert Handshake.from_wire({"taskraft": 1}) == Handshake()
    # nil means absent, as for every optional field.
    assert Handshake.from_wire({"taskraft": 1, "token": None}).token is None


def test_the_token_never_shows_in_repr() -> None:
    assert TOKEN not in repr(Handshake(client="worker", token=TOKEN))
    assert TOKEN not in str(Handshake(token=TOKEN))


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "token: must be at least 1 characters"),
        ("x" * (TOKEN_MAX_BYTES + 1), f"token: must be at most {TOKEN_MAX_BYTES} bytes"),
        ("é" * (TOKEN_MAX_BYTES // 2 + 1), f"token: must be at most {TOKEN_MAX_BYTES} bytes"),
        (b"bytes", "token: expected str"),
        (7, "token: expected str"),
    ],
)
def test_a_token_out_of_bounds_is_a_bad_request(token: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        Handshake.from_wire({"taskraft": 1, "token": token})


def test_the_longest_token_is_accepted() -> None:
    token = "t" * TOKEN_MAX_BYTES
    assert Handshake.from_wire({"taskraft": 1, "token": token}).token == token


def test_a_client_connection_sends_its_token_in_the_handshake() -> None:
    with_token = ClientConnection(client_name="cli", token=TOKEN)
    assert _frames(with_token.data_to_send()) == [{"taskraft": 1, "client": "cli", "token": TOKEN}]
    without = ClientConnection(client_name="cli")
    assert _frames(without.data_to_send()) == [{"taskraft": 1, "client": "cli"}]
    with pytest.raises(BadRequest):
        ClientConnection(token="")
    with pytest.raises(BadRequest):
        ClientConnection(token="x" * (TOKEN_MAX_BYTES + 1))


def test_a_server_without_a_check_accepts_handshakes_with_or_without_a_token() -> None:
    for client in (ClientConnection(), ClientConnection(token=TOKEN)):
        server = ServerConnection(node_id="n1")
        server.receive_data(client.data_to_send())
        event = server.next_event()
        assert isinstance(event, Handshake)
        assert server.state is ConnectionState.OPEN
        client.receive_data(server.data_to_send())
        assert isinstance(client.next_event(), HandshakeAccepted)


def test_a_refused_handshake_gets_an_error_frame_and_no_request_is_read() -> None:
    seen: list[Handshake] = []

    def check(handshake: Handshake) -> TaskraftError | None:
        seen.append(handshake)
        return None if handshake.token == TOKEN else Unauthenticated("authentication required")

    client = ClientConnection(client_name="cli", token="wrong-token")
    client.send_request(Count(queue="jobs"))
    server = ServerConnection(node_id="n1", check_handshake=check)
    server.receive_data(client.data_to_send())
    event = server.next_event()
    assert isinstance(event, ProtocolFailure)
    assert isinstance(event.error, Unauthenticated)
    assert server.state is ConnectionState.FAILED
    assert [handshake.token for handshake in seen] == ["wrong-token"]
    data = server.data_to_send()
    frames = _frames(data)
    assert frames == [
        {"error": {"code": 20, "name": "unauthenticated", "message": "authentication required"}}
    ]
    assert ErrorFrame.matches(frames[0])

    client.receive_data(data)
    failure = client.next_event()
    assert isinstance(failure, ProtocolFailure) and failure.reported_by_peer
    assert isinstance(failure.error, Unauthenticated)


def test_an_accepted_handshake_lets_the_requests_behind_it_through() -> None:
    server = ServerConnection(
        node_id="n1",
        check_handshake=lambda handshake: None if handshake.token == TOKEN else Forbidden(),
    )
    client = ClientConnection(token=TOKEN)
    request_id = client.send_request(Status())
    server.receive_data(client.data_to_send())
    assert isinstance(server.next_event(), Handshake)
    request = server.next_event()
    assert isinstance(request, Request) and request.request_id == request_id
    server.send_response(Response(request_id, error=Forbidden("status is not allowed")))
    client.receive_data(server.data_to_send())
    assert isinstance(client.next_event(), HandshakeAccepted)
    answer = client.next_event()
    assert isinstance(answer, Response) and isinstance(answer.error, Forbidden)
    assert answer.error.code == 21
    assert client.state is ConnectionState.OPEN


def test_a_malformed_handshake_is_refused_before_the_check() -> None:
    called: list[Handshake] = []

    def check(handshake: Handshake) -> TaskraftError | None:
        called.append(handshake)
        return None

    server = ServerConnection(node_id="n1", check_handshake=check)
    server.receive_data(encode_frame({"taskraft": 1, "token": 5}))
    event = server.next_event()
    assert isinstance(event, ProtocolFailure) and isinstance(event.error, BadRequest)
    assert called == []
