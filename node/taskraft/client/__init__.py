"""The Python client of taskraft: `AsyncClient` for asyncio code, `Client` for everything else.

Both speak the client protocol of docs/protocol.md over one TCP connection to the cluster's
leader, found among the given servers and followed through `not_leader` redirects. Requests are
retried, within a deadline, whenever doing so cannot apply them twice; errors the cluster
answers are raised as the matching class of `taskraft.errors`.
"""

from taskraft.client.async_client import AsyncClient, Task
from taskraft.client.sync_client import Client
from taskraft.protocol import EnqueueItem, QueueCounts, QueueDescription, QueuePolicies

__all__ = [
    "AsyncClient",
    "Client",
    "EnqueueItem",
    "QueueCounts",
    "QueueDescription",
    "QueuePolicies",
    "Task",
]
