"""The two ends of a client connection as state machines: bytes in, typed events out.

Following h11, a connection object holds no socket. The shell that owns the socket feeds what it
reads to `receive_data`, takes events from `next_event` until it returns None, and writes what
`data_to_send` returns. Everything the protocol demands is enforced here, once, for every
transport: the handshake comes first, request ids are unique among the requests in flight,
a server answers only requests it received, and a connection cannot make a server track more
than `requests_in_flight_max` requests (the excess is answered `overloaded`, not dropped).

A peer's violation never raises out of `next_event`: it becomes a `ProtocolFailure` event, after
which the shell sends `data_to_send()` (a server's error frame telling the client why) and
closes the connection. Misuse by the shell raises `LocalProtocolError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from taskraft.errors import BadRequest, Overloaded, TaskraftError
from taskraft.protocol.exceptions import LocalProtocolError, RemoteProtocolError
from taskraft.protocol.fields import check_text
from taskraft.protocol.framing import EndOfStream, Frame, FrameDecoder, encode_frame
from taskraft.protocol.limits import (
    CLIENT_NAME_MAX_BYTES,
    FRAME_SIZE_MAX_BYTES,
    PROTOCOL_VERSION,
    REQUEST_COLLECTION_LENGTH_MAX,
    REQUESTS_IN_FLIGHT_MAX,
    RESPONSE_COLLECTION_LENGTH_MAX,
    TOKEN_MAX_BYTES,
    UINT64_MAX,
)
from taskraft.protocol.schema import (
    ErrorFrame,
    Handshake,
    HandshakeAccepted,
    Operation,
    Request,
    Response,
    read_message_id,
)


class ConnectionState(enum.Enum):
    AWAITING_HANDSHAKE = "awaiting_handshake"
    OPEN = "open"
    # The peer ended its stream cleanly. A server may still answer the requests in flight.
    CLOSED = "closed"
    # The protocol broke: send data_to_send() and close the connection.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """A request the server connection answered by itself, with `error`, as the request arrived.

    Reported so the shell can log and count it; the answer is already in data_to_send().
    """

    request_id: int
    error: TaskraftError


@dataclass(frozen=True, slots=True)
class ProtocolFailure:
    """The connection is over: send data_to_send(), then close it.

    `error` is the peer's error frame when `reported_by_peer`, else the violation this side
    found (a server has already put it in an error frame for the client).
    """

    error: TaskraftError
    reported_by_peer: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer ended its stream cleanly, between two frames."""


ServerEvent = Handshake | Request | RequestRejected | ProtocolFailure | ConnectionClosed
ClientEvent = HandshakeAccepted | Response | ProtocolFailure | ConnectionClosed

HandshakeCheck = Callable[[Handshake], TaskraftError | None]
"""Decides on a well-formed handshake before it is answered: None accepts it; an error refuses
it (the client gets that error in an error frame, and the connection fails)."""


class _Connection:
    """What both ends share: a frame decoder, an output buffer and the connection's state."""

    def __init__(
        self, *, frame_size_max_bytes: int, collection_length_max: int, requests_in_flight_max: int
    ) -> None:
        if requests_in_flight_max < 1:
            raise ValueError(f"requests_in_flight_max must be >= 1, got {requests_in_flight_max}")
        self._decoder = FrameDecoder(
            frame_size_max_bytes=frame_size_max_bytes, collection_length_max=collection_length_max
        )
        self._frame_size_max_bytes = frame_size_max_bytes
        self._requests_in_flight_max = requests_in_flight_max
        self._in_flight: dict[int, Operation] = {}
        self._outgoing = bytearray()
        self._state = ConnectionState.AWAITING_HANDSHAKE

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def requests_in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet turned into events: at most one incomplete frame once
        the events are taken, none once the connection failed."""
        return self._decoder.buffered_bytes

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the peer; b"" when it ended its stream."""
        if self._state is ConnectionState.FAILED:
            raise LocalProtocolError("receive_data on a failed connection; close it")
        self._decoder.receive_data(data)

    def data_to_send(self) -> bytes:
        """The bytes to write to the peer, in order; each byte is returned once."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def _send_frame(self, value: object) -> None:
        self._outgoing += encode_frame(value, frame_size_max_bytes=self._frame_size_max_bytes)

    def _refuse_if_failed(self) -> None:
        if self._state is ConnectionState.FAILED:
            raise LocalProtocolError("the connection failed; close it")

    def _next_frame(self) -> Frame | EndOfStream | ProtocolFailure | None:
        """The next frame, END_OF_STREAM, None (more bytes needed), or the peer's failure.

        The frame stays wrapped: a frame holding msgpack nil is a frame (and a protocol
        violation), not "no frame yet".
        """
        try:
            return self._decoder.next_frame()
        except RemoteProtocolError as error:
            return self._fail(BadRequest(str(error)), reported_by_peer=False)

    def _fail(self, error: TaskraftError, *, reported_by_peer: bool) -> ProtocolFailure:
        self._state = ConnectionState.FAILED
        # Nothing more is read from a failed connection: what it sent after is not kept.
        self._decoder.discard()
        return ProtocolFailure(error=error, reported_by_peer=reported_by_peer)


class ServerConnection(_Connection):
    """A node's end of one client connection.

    Answers the handshake by itself, hands requests over as `Request` events, and sends the
    shell's answers with `send_response`. A request arriving while `requests_in_flight_max`
    others await their answers is answered `overloaded` at once.

    `check_handshake`, when given, is called with each well-formed handshake before it is
    answered (to check its token, say): an error it returns refuses the handshake, and no
    request of the connection is ever read.
    """

    def __init__(
        self,
        *,
        node_id: str,
        requests_in_flight_max: int = REQUESTS_IN_FLIGHT_MAX,
        frame_size_max_bytes: int = FRAME_SIZE_MAX_BYTES,
        check_handshake: HandshakeCheck | None = None,
    ) -> None:
        super().__init__(
            frame_size_max_bytes=frame_size_max_bytes,
            collection_length_max=REQUEST_COLLECTION_LENGTH_MAX,
            requests_in_flight_max=requests_in_flight_max,
        )
        self._node_id = node_id
        self._check_handshake = check_handshake

    def next_event(self) -> ServerEvent | None:
        """The next event, or None when more bytes are needed."""
        self._refuse_if_failed()
        if self._state is ConnectionState.CLOSED:
            return ConnectionClosed()
        frame = self._next_frame()
        if frame is None or isinstance(frame, ProtocolFailure):
            return self._tell_client(frame)
        if isinstance(frame, EndOfStream):
            self._state = ConnectionState.CLOSED
            return ConnectionClosed()
        value = frame.value
        if self._state is ConnectionState.AWAITING_HANDSHAKE:
            return self._receive_handshake(value)
        return self._receive_request(value)

    def send_response(self, response: Response) -> None:
        """Answer a request in flight. Raises LocalProtocolError for an id not in flight or a
        result that is not what the request's operation answers."""
        self._refuse_if_failed()
        operation = self._in_flight.get(response.request_id)
        if operation is None:
            raise LocalProtocolError(f"request {response.request_id} is not in flight")
        wire = response.to_wire(operation)
        if response.error is None:
            try:
                operation.result_from_wire(wire["ok"])
            except TaskraftError as error:
                raise LocalProtocolError(
                    f"malformed result for {operation.name}: {error}"
                ) from error
        frame = encode_frame(wire, frame_size_max_bytes=self._frame_size_max_bytes)
        del self._in_flight[response.request_id]
        self._outgoing += frame

    def send_connection_error(self, error: TaskraftError) -> None:
        """End the connection with an error frame (say `unavailable` when shutting down).

        The connection fails: send data_to_send(), then close it.
        """
        self._refuse_if_failed()
        self._send_frame(ErrorFrame(error).to_wire())
        self._state = ConnectionState.FAILED
        self._decoder.discard()

    def _tell_client(self, failure: ProtocolFailure | None) -> ProtocolFailure | None:
        if failure is not None:
            self._send_frame(ErrorFrame(failure.error).to_wire())
        return failure

    def _receive_handshake(self, value: object) -> ServerEvent:
        try:
            handshake = Handshake.from_wire(value)
        except TaskraftError as error:
            return self._reject_connection(error)
        if self._check_handshake is not None:
            refusal = self._check_handshake(handshake)
            if refusal is not None:
                return self._reject_connection(refusal)
        self._send_frame(HandshakeAccepted(version=handshake.version, node=self._node_id).to_wire())
        self._state = ConnectionState.OPEN
        return handshake

    def _receive_request(self, value: object) -> ServerEvent:
        try:
            request_id = read_message_id(value)
        except TaskraftError as error:
            return self._reject_connection(error)
        if request_id in self._in_flight:
            return self._reject_connection(
                BadRequest(f"id: request {request_id} is already in flight on this connection")
            )
        if len(self._in_flight) >= self._requests_in_flight_max:
            return self._reject_request(
                request_id,
                Overloaded(
                    f"{self._requests_in_flight_max} requests are already in flight on this "
                    "connection; wait for answers before sending more"
                ),
            )
        try:
            request = Request.from_wire(value)
        except TaskraftError as error:
            return self._reject_request(request_id, error)
        self._in_flight[request_id] = request.operation
        return request

    def _reject_request(self, request_id: int, error: TaskraftError) -> RequestRejected:
        self._send_frame(Response(request_id=request_id, error=error).to_wire())
        return RequestRejected(request_id=request_id, error=error)

    def _reject_connection(self, error: TaskraftError) -> ProtocolFailure:
        failure = self._fail(error, reported_by_peer=False)
        self._send_frame(ErrorFrame(error).to_wire())
        return failure


class ClientConnection(_Connection):
    """A client's end of a connection to a node.

    The handshake is queued at construction (BadRequest for a client name over 128 bytes or a
    token that is empty or over 1024 bytes), with `token` when the node requires one; requests
    may be sent at once, before its answer: they are pipelined behind it.
    `send_request` chooses each request's id and returns it; the `Response` event carrying the
    same id answers it, in any order.
    """

    def __init__(
        self,
        *,
        client_name: str | None = None,
        version: int = PROTOCOL_VERSION,
        requests_in_flight_max: int = REQUESTS_IN_FLIGHT_MAX,
        frame_size_max_bytes: int = FRAME_SIZE_MAX_BYTES,
        token: str | None = None,
    ) -> None:
        super().__init__(
            frame_size_max_bytes=frame_size_max_bytes,
            collection_length_max=RESPONSE_COLLECTION_LENGTH_MAX,
            requests_in_flight_max=requests_in_flight_max,
        )
        if client_name is not None:
            check_text(client_name, "client", max_bytes=CLIENT_NAME_MAX_BYTES)
        if token is not None:
            check_text(token, "token", max_bytes=TOKEN_MAX_BYTES, min_chars=1)
        self._version = version
        self._next_request_id = 1
        self._send_frame(Handshake(version=version, client=client_name, token=token).to_wire())

    def send_request(self, operation: Operation) -> int:
        """Queue a request and return its id.

        Raises the error the server would answer (BadRequest, InvalidArgument, ...) for
        arguments it would refuse, and LocalProtocolError when the connection is not usable or
        `requests_in_flight_max` requests already await their answers.
        """
        if self._state in (ConnectionState.FAILED, ConnectionState.CLOSED):
            raise LocalProtocolError(f"cannot send on a connection that is {self._state.value}")
        if len(self._in_flight) >= self._requests_in_flight_max:
            raise LocalProtocolError(
                f"{self._requests_in_flight_max} requests are already in flight; wait for an answer"
            )
        request_id = self._allocate_request_id()
        wire = Request(request_id=request_id, operation=operation).to_wire()
        # Check the request as the server will, so a bad argument fails here, with the same error.
        Request.from_wire(wire)
        self._send_frame(wire)
        self._in_flight[request_id] = operation
        return request_id

    def next_event(self) -> ClientEvent | None:
        """The next event, or None when more bytes are needed."""
        self._refuse_if_failed()
        if self._state is ConnectionState.CLOSED:
            return ConnectionClosed()
        frame = self._next_frame()
        if frame is None or isinstance(frame, ProtocolFailure):
            return frame
        if isinstance(frame, EndOfStream):
            self._state = ConnectionState.CLOSED
            return ConnectionClosed()
        value = frame.value
        try:
            if ErrorFrame.matches(value):
                return self._fail(ErrorFrame.from_wire(value).error, reported_by_peer=True)
            if self._state is ConnectionState.AWAITING_HANDSHAKE:
                return self._receive_handshake_answer(value)
            return self._receive_response(value)
        except TaskraftError as error:
            return self._fail(error, reported_by_peer=False)

    def _allocate_request_id(self) -> int:
        # Ids wrap after 2**64 requests; the loop skips the (at most requests_in_flight_max)
        # ids still in flight.
        while True:
            request_id = self._next_request_id
            self._next_request_id = 0 if request_id == UINT64_MAX else request_id + 1
            if request_id not in self._in_flight:
                return request_id

    def _receive_handshake_answer(self, value: object) -> ClientEvent:
        accepted = HandshakeAccepted.from_wire(value)
        if accepted.version != self._version:
            raise BadRequest(
                f"taskraft: the server answered version {accepted.version} to a handshake for "
                f"version {self._version}"
            )
        self._state = ConnectionState.OPEN
        return accepted

    def _receive_response(self, value: object) -> ClientEvent:
        request_id = read_message_id(value)
        operation = self._in_flight.get(request_id)
        if operation is None:
            raise BadRequest(f"id: an answer to request {request_id}, which is not in flight")
        response = Response.from_wire(value, operation)
        del self._in_flight[request_id]
        return response


__all__ = [
    "ClientConnection",
    "ClientEvent",
    "ConnectionClosed",
    "ConnectionState",
    "HandshakeCheck",
    "ProtocolFailure",
    "RequestRejected",
    "ServerConnection",
    "ServerEvent",
]
