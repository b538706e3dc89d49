"""Who broke the peer protocol: the other node, or the code on this one.

As in the client protocol (`taskraft.protocol.exceptions`), the two faults are different
exceptions because they call for different actions. A `RemotePeerError` is the other node's
fault: log it, close that one connection and keep serving every other peer. A `LocalPeerError`
is a bug on this side, such as a message the codec cannot represent; it must reach the logs as
a bug and is never blamed on the peer.
"""

from __future__ import annotations


class PeerError(Exception):
    """The peer protocol was broken; the connection it happened on cannot continue."""


class RemotePeerError(PeerError):
    """The other node sent bytes that break the peer protocol.

    `field` names the offending part of the frame (`append_entries.entries[2].term`,
    `handshake.version`, `frame` for the framing itself) so that a log line says exactly what
    was wrong without quoting the whole frame.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class LocalPeerError(PeerError):
    """This node asked the peer protocol for something it cannot do: a bug on this side."""


__all__ = ["LocalPeerError", "PeerError", "RemotePeerError"]
