"""The node server: the Raft driver (`Replica`), its client listener, and (as they are built) the
HTTP API and the `taskraft serve` process around them."""

from taskraft.server.client_listener import ClientListener
from taskraft.server.replica import PeerSender, Replica, ReplicaSettings

__all__ = ["ClientListener", "PeerSender", "Replica", "ReplicaSettings"]
