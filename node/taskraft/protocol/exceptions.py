"""Who broke the protocol: the peer, or the code using this library.

As in h11, the two faults are different exceptions because they call for different actions. A
`RemoteProtocolError` is the peer's fault: tell it why when possible, close the connection and
keep serving everyone else. A `LocalProtocolError` is a bug on this side, such as sending a
value msgpack cannot encode or feeding a decoder that already failed; it should reach the logs
as a bug, not be answered on the wire.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The client protocol was broken; the connection it happened on cannot continue."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol: bad framing, bad msgpack, a bad message."""


class LocalProtocolError(ProtocolError):
    """This side misused the protocol library; a bug in the caller, never the peer's doing."""


__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]
