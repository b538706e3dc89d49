"""Helpers for the transport tests: an event loop that must end clean, waits with deadlines, and
a transport on 127.0.0.1 with the messages it delivered.

`test_transport.py` and `test_transport_auth.py` share them: the same node and raw connections,
with and without a cluster secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import TypeVar

from taskraft.peer import PeerAddress, PeerTransport, TransportLimits
from taskraft.raft import Message, NodeId, ReadIndexRequest, Term

T = TypeVar("T")

A, B = NodeId("a"), NodeId("b")
LOCALHOST = "127.0.0.1"

# Every wait in these tests ends at a deadline rather than hanging the run; five seconds is far
# beyond anything that succeeds on a loaded machine, and well inside a test's ten.
WAIT_DEADLINE_S = 5.0
POLL_INTERVAL_S = 0.005


def run(test: Callable[[], Coroutine[object, object, None]]) -> None:
    """Run one async test in a fresh loop and fail if it leaves any task behind."""

    async def main() -> None:
        await test()
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, f"tasks left behind: {leftover}"

    asyncio.run(main())


async def wait_until(
    condition: Callable[[], bool],
    what: str,
    *,
    deadline_s: float = WAIT_DEADLINE_S,
    while_waiting: Callable[[], None] | None = None,
) -> None:
    """Poll `condition` until it holds; fail naming `what` at the deadline.

    `while_waiting` runs at every poll, for tests that must keep sending while they wait.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        if while_waiting is not None:
            while_waiting()
        await asyncio.sleep(POLL_INTERVAL_S)


async def within_deadline(awaitable: Awaitable[T], what: str) -> T:
    try:
        async with asyncio.timeout(WAIT_DEADLINE_S):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"timed out after {WAIT_DEADLINE_S} s waiting for {what}") from None


class Node:
    """A transport and the messages it delivered; with a `secret`, it authenticates its peers."""

    def __init__(
        self,
        node_id: NodeId,
        peers: dict[NodeId, PeerAddress] | None = None,
        *,
        port: int = 0,
        limits: TransportLimits | None = None,
        on_message: Callable[[Message], None] | None = None,
        secret: bytes | None = None,
        cluster_id: str | None = None,
        admit_sender: Callable[[NodeId], bool] | None = None,
    ) -> None:
        self.received: list[Message] = []
        self.transport = PeerTransport(
            node_id,
            LOCALHOST,
            port,
            peers or {},
            on_message or self.received.append,
            cluster_id=cluster_id,
            limits=limits,
            random_source=random.Random(0),
            cluster_secret=secret,
            admit_sender=admit_sender,
        )

    @property
    def address(self) -> PeerAddress:
        return self.transport.listen_address

    def request_ids(self) -> list[int]:
        return [m.request_id for m in self.received if isinstance(m, ReadIndexRequest)]

    def refused(self, reason: str, side: str = "incoming") -> int:
        """Connections refused for `reason` on the `side` that refused them."""
        return self.transport.refusals()[side, reason]


def read_request(sender: NodeId, recipient: NodeId, request_id: int) -> ReadIndexRequest:
    return ReadIndexRequest(sender, recipient, Term(1), request_id)


async def started(*nodes: Node) -> None:
    for node in nodes:
        await node.transport.start()


async def connected_pair(
    *, secret: bytes | None = None, cluster_id: str | None = None
) -> tuple[Node, Node]:
    """Two started nodes, a and b, each with the other as its peer."""
    a = Node(A, secret=secret, cluster_id=cluster_id)
    b = Node(B, secret=secret, cluster_id=cluster_id)
    await started(a, b)
    a.transport.set_peers({B: b.address})
    b.transport.set_peers({A: a.address})
    return a, b


async def close(*nodes: Node) -> None:
    for node in nodes:
        await node.transport.close()


async def raw_connection(
    address: PeerAddress, data: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*address)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the other side wrote until it closed the connection: EOF, or a reset when it
    aborted it."""

    async def read_to_end() -> bytes:
        received = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received += chunk
        return received

    return await within_deadline(read_to_end(), "the transport to close the connection")


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await within_deadline(writer.wait_closed(), "a raw connection to close")
