"""Client tokens on the client port, in one event loop: the listener and the Python client.

Three replicas behind client listeners (served_cluster.py), each listener given the same token
store. The Python client must raise `Unauthenticated` and `Forbidden` at once, without the
retries it spends on `unavailable` or `overloaded`; the listener counts each refusal. Every
wait has a deadline. tests/integration/test_token_authentication.py checks the same against a real
node process, with the HTTP API.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import served_cluster
from served_cluster import DEADLINE_SECONDS, ServedCluster

from taskraft.client import AsyncClient, Client
from taskraft.errors import Forbidden, QueueNotFound, Unauthenticated
from taskraft.server.authentication import TokenStore

# Long, so that a retried refusal would show as a slow one.
REQUEST_TIMEOUT_S = 20.0
# A refusal is answered within a round trip; far below REQUEST_TIMEOUT_S.
PROMPT_S = 2.0

CLIENT_TOKEN = "client-" + "c" * 32
READ_TOKEN = "read-" + "r" * 32
ADMIN_TOKEN = "admin-" + "a" * 32


def token_store(directory: Path) -> TokenStore:
    path = directory / "tokens"
    path.write_text(
        f"worker client {CLIENT_TOKEN}\ndashboard read {READ_TOKEN}\nops admin {ADMIN_TOKEN}\n"
    )
    return TokenStore.load(path)


def run(test: Callable[[ServedCluster], Awaitable[None]], directory: Path) -> None:
    """`served_cluster.run` with every listener given the token store."""
    served_cluster.run(test, directory / "cluster", tokens=token_store(directory))


def client(cluster: ServedCluster, token: str | None) -> AsyncClient:
    return AsyncClient(
        list(cluster.addresses.values()), token=token, request_timeout_s=REQUEST_TIMEOUT_S
    )


def test_no_token_or_a_wrong_one_is_refused_at_once_and_counted(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        for token in (None, "not-a-known-token"):
            async with client(cluster, token) as refused:
                started = time.monotonic()
                with pytest.raises(Unauthenticated) as raised:
                    await refused.count("default")
                assert time.monotonic() - started < PROMPT_S
                assert raised.value.message == "authentication required"
                assert refused.connected_to is None
        # Each refused client asked one node only: it did not try the others.
        failures = sum(listener.authentication_failures for listener in cluster.listeners.values())
        assert failures == 2

    run(test, tmp_path)


def test_a_read_token_reads_and_is_forbidden_to_write_on_an_open_connection(
    tmp_path: Path,
) -> None:
    async def test(cluster: ServedCluster) -> None:
        async with client(cluster, READ_TOKEN) as reader:
            assert (await reader.count("default")).ready == 0
            assert [queue.name for queue in await reader.list_queues()] == ["default"]
            assert (await reader.status()).node in cluster.addresses
            connected = reader.connected_to
            started = time.monotonic()
            with pytest.raises(Forbidden, match="enqueue is not allowed to the role read"):
                await reader.enqueue("default", b"x")
            with pytest.raises(Forbidden):
                await reader.create_queue("jobs")
            assert time.monotonic() - started < PROMPT_S
            # The connection stays open and keeps serving what the role allows.
            assert reader.connected_to == connected
            assert (await reader.count("default")).ready == 0
        leader = cluster.leader_listener()
        assert leader.authorization_failures == 2

    run(test, tmp_path)


def test_client_and_admin_tokens_may_do_every_operation(tmp_path: Path) -> None:
    async def test(cluster: ServedCluster) -> None:
        for token, queue in ((CLIENT_TOKEN, "by-client"), (ADMIN_TOKEN, "by-admin")):
            async with client(cluster, token) as allowed:
                await allowed.create_queue(queue)
                await allowed.enqueue(queue, b"one", priority=1)
                await allowed.enqueue_many(queue, [b"two", b"three"])
                task = await allowed.dequeue(queue, lease_ms=60_000)
                assert task is not None
                await allowed.extend(task, 60_000)
                await allowed.nack(task)
                tasks = await allowed.dequeue_many(queue, 3, lease_ms=60_000)
                assert len(tasks) == 3
                await allowed.ack(tasks[0])
                assert await allowed.ack_many(tasks[1:]) == []
                assert (await allowed.count(queue)).ready == 0
                await allowed.delete_queue(queue)
                with pytest.raises(QueueNotFound):
                    await allowed.count(queue)
        refusals = sum(
            listener.authentication_failures + listener.authorization_failures
            for listener in cluster.listeners.values()
        )
        assert refusals == 0

    run(test, tmp_path)


def test_the_blocking_client_takes_a_token(tmp_path: Path) -> None:
    done = threading.Event()
    failures: list[BaseException] = []

    async def test(cluster: ServedCluster) -> None:
        servers = list(cluster.addresses.values())

        def use() -> None:
            try:
                with Client(servers=servers, token=CLIENT_TOKEN) as allowed:
                    allowed.enqueue("default", b"x")
                    assert allowed.count("default").ready == 1
                anonymous = Client(servers=servers, request_timeout_s=REQUEST_TIMEOUT_S)
                with anonymous, pytest.raises(Unauthenticated):
                    anonymous.count("default")
            except BaseException as error:
                failures.append(error)
            finally:
                done.set()

        thread = threading.Thread(target=use)
        thread.start()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        thread.join(DEADLINE_SECONDS)
        assert done.is_set(), "the blocking client did not finish in time"

    run(test, tmp_path)
    if failures:
        raise failures[0]


def test_an_empty_token_is_refused_by_the_client() -> None:
    with pytest.raises(ValueError, match="token"):
        AsyncClient(["127.0.0.1:1"], token="")
