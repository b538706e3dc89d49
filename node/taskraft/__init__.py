"""taskraft: a durable, Raft-replicated priority task queue.

Producers enqueue prioritised tasks and workers lease them; every change to the
queue is agreed on by a Raft cluster of ``taskraft serve`` nodes and made durable
in a write-ahead log with snapshots, so a task survives the loss of a minority of
nodes. This package holds the node side: the Raft core, the queue state
machine, storage, networking, the client and the HTTP API.
"""

__version__ = "0.1.0"
