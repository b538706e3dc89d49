"""The client protocol of taskraft, as a library that does no I/O.

Clients talk to a node over TCP in length-prefixed msgpack frames (docs/protocol.md). This
package is the whole protocol and nothing else, in the manner of h11: it contains no sockets, no
asyncio and no clock, so the node's server, the Python client and the tests all drive the same
code by feeding it bytes and taking back events and bytes. Three layers, each usable alone:

- `framing`: `FrameDecoder` and `encode_frame`, bytes to msgpack values and back, bounded;
- `schema`: the messages as frozen values, every field's type and range checked;
- `connection`: `ServerConnection` and `ClientConnection`, the handshake, pipelined requests
  matched by id, and the per-connection bound on requests in flight.
"""

from taskraft.protocol.connection import (
    ClientConnection,
    ClientEvent,
    ConnectionClosed,
    ConnectionState,
    ProtocolFailure,
    RequestRejected,
    ServerConnection,
    ServerEvent,
)
from taskraft.protocol.exceptions import LocalProtocolError, ProtocolError, RemoteProtocolError
from taskraft.protocol.framing import END_OF_STREAM, EndOfStream, Frame, FrameDecoder, encode_frame
from taskraft.protocol.limits import (
    FRAME_SIZE_MAX_BYTES,
    PAYLOAD_SIZE_MAX_BYTES,
    PROTOCOL_VERSION,
    REQUESTS_IN_FLIGHT_MAX,
    SUPPORTED_PROTOCOL_VERSIONS,
    WAIT_MS_MAX,
)
from taskraft.protocol.schema import (
    OPERATIONS,
    Ack,
    Count,
    CreateQueue,
    DeleteQueue,
    DeliveredTask,
    Dequeue,
    Enqueue,
    Enqueued,
    ErrorFrame,
    Extend,
    Handshake,
    HandshakeAccepted,
    ListQueues,
    Nack,
    NodeStatus,
    Operation,
    QueueCounts,
    QueueDescription,
    QueuePage,
    QueuePolicies,
    Request,
    Response,
    Result,
    Status,
    TaskLease,
    error_from_wire,
    error_to_wire,
)

__all__ = [
    "END_OF_STREAM",
    "FRAME_SIZE_MAX_BYTES",
    "OPERATIONS",
    "PAYLOAD_SIZE_MAX_BYTES",
    "PROTOCOL_VERSION",
    "REQUESTS_IN_FLIGHT_MAX",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "WAIT_MS_MAX",
    "Ack",
    "ClientConnection",
    "ClientEvent",
    "ConnectionClosed",
    "ConnectionState",
    "Count",
    "CreateQueue",
    "DeleteQueue",
    "DeliveredTask",
    "Dequeue",
    "EndOfStream",
    "Enqueue",
    "Enqueued",
    "ErrorFrame",
    "Extend",
    "Frame",
    "FrameDecoder",
    "Handshake",
    "HandshakeAccepted",
    "ListQueues",
    "LocalProtocolError",
    "Nack",
    "NodeStatus",
    "Operation",
    "ProtocolError",
    "ProtocolFailure",
    "QueueCounts",
    "QueueDescription",
    "QueuePage",
    "QueuePolicies",
    "RemoteProtocolError",
    "Request",
    "RequestRejected",
    "Response",
    "Result",
    "ServerConnection",
    "ServerEvent",
    "Status",
    "TaskLease",
    "encode_frame",
    "error_from_wire",
    "error_to_wire",
]
