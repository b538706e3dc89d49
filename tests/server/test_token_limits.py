"""The per-token concurrency limit of the client port (`requests_per_token_max`), in one loop.

Three replicas behind client listeners (served_cluster.py) with a token store and a limit of 2:
long-poll dequeues hold their slots while they wait, the third request of the same token name
across connections is answered `overloaded` on a connection that stays open, another token is
not affected, the counts go back to 0 when the waits end or are cancelled, and without
tokens the limit is ignored. tests/integration/test_token_authentication.py checks the metrics
of a real node. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from served_cluster import ServedCluster, run, wait_for
from test_client_listener import Client

from taskraft.errors import Overloaded
from taskraft.protocol import (
    ClientConnection,
    Count,
    CreateQueue,
    DeliveredTask,
    Dequeue,
    Enqueue,
    HandshakeAccepted,
    QueueCounts,
)
from taskraft.server.authentication import TokenStore
from taskraft.server.client_listener import ClientListener

pytestmark = pytest.mark.timeout(60)

WORKER_TOKEN = "worker-" + "w" * 32
OTHER_TOKEN = "other-" + "o" * 32
LIMIT = 2
# Far longer than the test: a wait ends only when a task comes or its connection closes.
WAIT_MS = 60_000


def token_store(directory: Path) -> TokenStore:
    path = directory / "tokens"
    path.write_text(f"worker client {WORKER_TOKEN}\nother client {OTHER_TOKEN}\n")
    return TokenStore.load(path)


async def connect(listener: ClientListener, token: str | None) -> Client:
    """A raw client past an accepted handshake carrying `token`."""
    reader, writer = await asyncio.open_connection(*listener.address)
    client = Client(reader, writer)
    client.connection = ClientConnection(client_name="token-limit-test", token=token)
    await client.flush()
    accepted = await client.next_event()
    assert isinstance(accepted, HandshakeAccepted), accepted
    return client


async def start_waiting(client: Client, queue: str) -> int:
    """Send a dequeue that waits for a task of `queue`; its request id."""
    request_id = client.connection.send_request(Dequeue(queue=queue, wait_ms=WAIT_MS))
    await client.flush()
    return request_id


def test_the_third_request_of_a_token_is_overloaded_and_another_token_is_served(
    tmp_path: Path,
) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        assert listener.token_requests_in_flight() == {"worker": 0, "other": 0}
        other = await connect(listener, OTHER_TOKEN)
        await other.call(CreateQueue(queue="limited"))
        # Two connections of the same token, one waiting dequeue each: the limit is reached.
        first = await connect(listener, WORKER_TOKEN)
        second = await connect(listener, WORKER_TOKEN)
        waits = [(first, await start_waiting(first, "limited"))]
        waits.append((second, await start_waiting(second, "limited")))
        await wait_for(lambda: listener.long_polls_waiting == 2, "two waiting dequeues")
        assert listener.token_requests_in_flight() == {"worker": LIMIT, "other": 0}
        # A third, on a third connection of the same token, is refused at once.
        third = await connect(listener, WORKER_TOKEN)
        with pytest.raises(Overloaded) as refused:
            await third.call(Dequeue(queue="limited", wait_ms=WAIT_MS))
        assert "concurrency limit of this token" in refused.value.message
        assert "worker" not in refused.value.message and "other" not in refused.value.message
        assert listener.token_limit_rejections == {"worker": 1}
        assert listener.long_polls_waiting == 2
        # The other token is served meanwhile; its enqueues end the two waits.
        assert await other.call(Count(queue="limited")) == QueueCounts(ready=0, delayed=0, leased=0)
        for payload in (b"one", b"two"):
            await other.call(Enqueue(queue="limited", payload=payload, priority=0))
        for client, request_id in waits:
            answer = await client.response(request_id)
            assert isinstance(answer.result, DeliveredTask), answer
        await wait_for(
            lambda: listener.token_requests_in_flight() == {"worker": 0, "other": 0},
            "no request in flight",
        )
        # The refused connection stayed open and is served again.
        assert await third.call(Count(queue="limited")) == QueueCounts(ready=0, delayed=0, leased=2)
        assert listener.token_limit_rejections == {"worker": 1}
        for client in (first, second, third, other):
            await client.close()

    run(
        test,
        tmp_path / "cluster",
        tokens=token_store(tmp_path),
        requests_per_token_max=LIMIT,
    )


def test_waiting_dequeues_cancelled_at_close_give_their_slots_back(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        waiting = await connect(listener, WORKER_TOKEN)
        for _ in range(LIMIT):
            await start_waiting(waiting, "default")
        await wait_for(
            lambda: listener.token_requests_in_flight()["worker"] == LIMIT, "the limit reached"
        )
        # Closing the listener cancels the request tasks: each gives its slot back.
        await listener.close()
        assert listener.token_requests_in_flight() == {"worker": 0, "other": 0}
        assert listener.long_polls_waiting == 0
        assert listener.token_limit_rejections == {}
        await waiting.close()

    run(
        test,
        tmp_path / "cluster",
        tokens=token_store(tmp_path),
        requests_per_token_max=LIMIT,
    )


def test_without_tokens_the_limit_is_ignored(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        listener = cluster.leader_listener()
        client = await connect(listener, None)
        for _ in range(LIMIT + 1):
            await start_waiting(client, "default")
        await wait_for(lambda: listener.long_polls_waiting == LIMIT + 1, "every dequeue waiting")
        assert listener.token_requests_in_flight() == {}
        assert listener.token_limit_rejections == {}
        await client.close()

    run(test, tmp_path / "cluster", requests_per_token_max=LIMIT)


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="requests_per_token_max"):
        ClientListener(
            lambda: None,  # type: ignore[arg-type, return-value]
            host="127.0.0.1",
            port=0,
            node_id="n1",
            leader_address_of=lambda _leader: None,
            requests_per_token_max=-1,
        )
