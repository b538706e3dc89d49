"""The node server: the Raft driver (`Replica`) and, as they are built, the listeners around it."""

from taskraft.server.replica import PeerSender, Replica, ReplicaSettings

__all__ = ["PeerSender", "Replica", "ReplicaSettings"]
