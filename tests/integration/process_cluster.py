"""Helpers for the integration tests: clusters of real `taskraft serve` processes.

`ClusterFactory` starts `LocalCluster`s on ports no other test (nor another pytest-xdist worker)
uses, in the test's own directory, and stops them when the test ends; conftest.py adds each
node's log tail to the report of a failed test. The other helpers drive a cluster through the
public client, `/v1/status` and the HTTP API (`http`), and every one of them waits on a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from taskraft.client import AsyncClient, Client, QueueCounts, Task
from taskraft.local_cluster import LocalCluster, free_base_port, wait_until
from taskraft.tls import TlsFiles

# Every wait of the integration tests: generous, because another job may share the 2 cores.
DEADLINE_S = 30.0
# Raft ticks: an election timeout is 10 ticks, so a new leader comes within about a second.
TICK_INTERVAL_MS = 30
# How long a client keeps retrying one call before it raises Unavailable.
CLIENT_REQUEST_TIMEOUT_S = 20.0
# How long a node stopped by SIGTERM may take to hand leadership over and answer the requests
# in flight (`--shutdown-timeout-ms`); the default, 10 s, would make every teardown slow.
SHUTDOWN_TIMEOUT_MS = 1_000
# A lease long enough that nothing is redelivered while a test drains a queue.
DRAIN_LEASE_MS = 120_000

START_ATTEMPTS = 3

# The clusters a test started, for conftest.py to show their logs when the test fails.
CLUSTERS_KEY = pytest.StashKey[list[LocalCluster]]()


# -- clusters -------------------------------------------------------------------------------


class ClusterFactory:
    """Starts clusters for one test and stops every one of them in `stop_all`."""

    def __init__(self, directory: Path, started: list[LocalCluster]) -> None:
        self.directory = directory
        self.started = started

    def start(
        self,
        nodes: int = 3,
        *,
        extra_arguments: Sequence[str] = (),
        tick_interval_ms: int = TICK_INTERVAL_MS,
        tls: TlsFiles | None = None,
    ) -> LocalCluster:
        """A running cluster with a leader and every node ready.

        When a node exits while the cluster comes up (another process took one of its ports
        between the check and the start), the cluster is stopped and started again on other
        ports.
        """
        for attempt in range(START_ATTEMPTS):
            cluster = LocalCluster(
                nodes,
                base_port=free_base_port(nodes),
                data_directory=self.directory / f"cluster-{len(self.started)}",
                tick_interval_ms=tick_interval_ms,
                # The test's own arguments come last: they win over these.
                extra_arguments=[
                    "--shutdown-timeout-ms",
                    str(SHUTDOWN_TIMEOUT_MS),
                    *extra_arguments,
                ],
                tls=tls,
            )
            self.started.append(cluster)
            cluster.start()
            outcome = wait_until(partial(_leader_or_exit, cluster), "leader", DEADLINE_S)
            if outcome == "exited" and attempt + 1 < START_ATTEMPTS:
                cluster.stop()
                continue
            if outcome == "exited":
                raise RuntimeError("a node exited while the cluster started; see its log")
            cluster.wait_ready(DEADLINE_S)
            return cluster
        raise AssertionError("unreachable")

    def stop_all(self) -> None:
        for cluster in self.started:
            cluster.stop()


def _leader_or_exit(cluster: LocalCluster) -> str | None:
    if any(not cluster.is_running(node_id) for node_id in cluster.node_ids):
        return "exited"
    return cluster.leader()


def wait_serving(cluster: LocalCluster) -> None:
    """Wait for a leader and every node ready; a node that exits fails the test, with its log.

    For a cluster a test started itself, not through `ClusterFactory` (which starts again).
    """

    def leader_or_exit() -> str | None:
        for node_id in cluster.node_ids:
            if not cluster.is_running(node_id):
                raise AssertionError(f"the node {node_id} exited:\n" + cluster.log_tail(node_id))
        return cluster.leader()

    wait_until(leader_or_exit, "leader", DEADLINE_S)
    cluster.wait_ready(DEADLINE_S)


# -- observation ----------------------------------------------------------------------------


_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def metric(cluster: LocalCluster, node_id: str, name: str, **labels: str) -> float:
    """The value of one sample of the node's /metrics (0 when absent)."""
    url = cluster.http_url(node_id, "/metrics")
    with urllib.request.urlopen(url, timeout=5, context=cluster.http_tls) as response:
        text = response.read().decode()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        if found == labels:
            return float(match["value"])
    return 0.0


def followers(cluster: LocalCluster, leader: str) -> list[str]:
    return [node_id for node_id in cluster.node_ids if node_id != leader]


def status_field(cluster: LocalCluster, node_id: str, name: str) -> int | None:
    document = cluster.status(node_id)
    return None if document is None or name not in document else int(document[name])


def wait_for_new_leader(cluster: LocalCluster, old_leader: str) -> str:
    """A leader other than `old_leader`, among the nodes still running."""
    survivors = [node_id for node_id in cluster.node_ids if node_id != old_leader]
    return cluster.wait_for_leader(DEADLINE_S, among=survivors)


def wait_caught_up(cluster: LocalCluster, node_id: str, index: int) -> dict[str, object]:
    """Wait until `node_id` has applied `index`; its status document then."""

    def applied() -> dict[str, object] | None:
        document = cluster.status(node_id)
        if document is None or int(document.get("applied_index", -1)) < index:
            return None
        return document

    return wait_until(applied, f"{node_id} applying index {index}", DEADLINE_S)


def leader_commit_index(cluster: LocalCluster) -> tuple[str, int]:
    """The current leader and its commit index, as it reports them."""

    def read() -> tuple[str, int] | None:
        leader = cluster.leader()
        index = None if leader is None else status_field(cluster, leader, "commit_index")
        return None if leader is None or index is None else (leader, index)

    return wait_until(read, "leader's commit index", DEADLINE_S)


# -- HTTP -----------------------------------------------------------------------------------


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *arguments: Any, **keywords: Any) -> None:
        return None


# Redirects are answers the tests check (a follower's 307 to the leader), not to follow.
OPENER_WITHOUT_REDIRECTS = urllib.request.build_opener(_NoRedirect)


def http(
    method: str, address: str, path: str, body: object = None, token: str | None = None
) -> HttpAnswer:
    """One plain-HTTP request, `body` sent as JSON and `token` as a bearer token; any status is
    an answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with OPENER_WITHOUT_REDIRECTS.open(request, timeout=DEADLINE_S) as response:
            return HttpAnswer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return HttpAnswer(error.code, dict(error.headers), error.read())


# -- clients --------------------------------------------------------------------------------


def client(servers: Sequence[str]) -> Client:
    return Client(servers, request_timeout_s=CLIENT_REQUEST_TIMEOUT_S)


def enqueue_all(servers: Sequence[str], queue: str, payloads: Iterable[bytes]) -> dict[bytes, int]:
    """Enqueue every payload concurrently (pipelined on one connection); payload -> task id."""

    async def run() -> dict[bytes, int]:
        async with AsyncClient(servers, request_timeout_s=CLIENT_REQUEST_TIMEOUT_S) as session:
            ordered = list(payloads)
            identifiers = await asyncio.gather(
                *(session.enqueue(queue, payload) for payload in ordered)
            )
            return dict(zip(ordered, identifiers, strict=True))

    return asyncio.run(run())


@dataclass(frozen=True, slots=True)
class Delivery:
    task_id: int
    payload: bytes
    deliveries: int


def drain(servers: Sequence[str], queue: str, *, workers: int = 16) -> list[Delivery]:
    """Dequeue and acknowledge until the queue has nothing ready; every delivery, in order.

    `workers` consumers share one pipelined connection; each stops when it finds nothing ready,
    so the last ones end once the others have acknowledged what they hold.
    """

    async def run() -> list[Delivery]:
        delivered: list[Delivery] = []
        async with AsyncClient(servers, request_timeout_s=CLIENT_REQUEST_TIMEOUT_S) as session:

            async def consume() -> None:
                while True:
                    task: Task | None = await session.dequeue(queue, lease_ms=DRAIN_LEASE_MS)
                    if task is None:
                        return
                    delivered.append(Delivery(task.id, task.payload, task.deliveries))
                    await session.ack(task)

            async with asyncio.timeout(DEADLINE_S * 2):
                await asyncio.gather(*(consume() for _ in range(workers)))
        return delivered

    return asyncio.run(run())


def total(counts: QueueCounts) -> int:
    """Every task the queue holds: ready, delayed and leased."""
    return counts.ready + counts.delayed + counts.leased


def log_tails(clusters: Iterable[LocalCluster], lines: int = 60) -> list[tuple[str, str]]:
    """(section title, text) for each node of each cluster."""
    sections = []
    for position, cluster in enumerate(clusters):
        for node_id in cluster.node_ids:
            with contextlib.suppress(Exception):
                sections.append(
                    (
                        f"taskraft cluster {position} node {node_id} log "
                        f"({cluster.log_path(node_id)})",
                        cluster.log_tail(node_id, lines),
                    )
                )
    return sections


__all__ = [
    "CLUSTERS_KEY",
    "DEADLINE_S",
    "DRAIN_LEASE_MS",
    "OPENER_WITHOUT_REDIRECTS",
    "SHUTDOWN_TIMEOUT_MS",
    "TICK_INTERVAL_MS",
    "ClusterFactory",
    "Delivery",
    "HttpAnswer",
    "client",
    "drain",
    "enqueue_all",
    "followers",
    "free_base_port",
    "http",
    "leader_commit_index",
    "log_tails",
    "status_field",
    "total",
    "wait_caught_up",
    "wait_for_new_leader",
    "wait_serving",
    "wait_until",
]
