"""Nodes work on the standard asyncio loop as well as on uvloop (the default when installed).

Every other process test runs nodes on the default loop; this one runs a cluster with
`--event-loop asyncio` through writes, a leader crash and a restart, and checks in the logs that
each node really ran on the loop it was told to use.
"""

from __future__ import annotations

import pytest
from process_cluster import DEADLINE_S, ClusterFactory

from taskraft.client import Client
from taskraft.local_cluster import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_a_cluster_serves_and_fails_over_on_each_event_loop(
    clusters: ClusterFactory, event_loop: str
) -> None:
    cluster = clusters.start(3, extra_arguments=["--event-loop", event_loop])
    with Client(servers=cluster.servers, request_timeout_s=DEADLINE_S) as client:
        ids = {client.enqueue("default", f"task {n}".encode()) for n in range(20)}
        leader = cluster.wait_for_leader(DEADLINE_S)
        cluster.kill_node(leader)
        survivors = [n for n in cluster.node_ids if n != leader]
        cluster.wait_for_leader(DEADLINE_S, among=survivors)
        cluster.start_node(leader)
        delivered = set()
        while (task := client.dequeue("default", lease_ms=60_000)) is not None:
            client.ack(task)
            delivered.add(task.id)
    assert delivered == ids
    other_loop = "uvloop" if event_loop == "asyncio" else "asyncio"
    line = f"on the {event_loop} event loop"
    for node_id in cluster.node_ids:
        # One line per start (the restarted leader logs a second one once it is up), and never
        # the other loop.
        starts = 2 if node_id == leader else 1
        wait_until(
            lambda node_id=node_id, starts=starts: (
                cluster.log_path(node_id).read_text().count(line) >= starts
            ),
            f"{node_id} to log its start {starts} time(s)",
            DEADLINE_S,
        )
        log = cluster.log_path(node_id).read_text()
        assert log.count(line) == starts, log[-2000:]
        assert f"on the {other_loop} event loop" not in log
