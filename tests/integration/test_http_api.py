"""The HTTP API of real `taskraft serve` processes: status, readiness, admin, metrics, shutdown.

What is proven: every node's `/v1/status` tells the same story; `/readyz` turns 503 while a
node is cut off from its peers (they are frozen with SIGSTOP) or is not yet a member, and 200
again after; the admin endpoints add a learner, promote it, move leadership to it, remove a
member and take and stream a snapshot, each step checked through `/v1/status`, each repeat
answered as already done, and followers redirect them to the leader; `/metrics` passes
Prometheus's own `promtool check metrics` and its counters follow the operations; SIGTERM on a
leader hands leadership over while a client keeps writing, and no write fails.

How: clusters of real processes from `LocalCluster` on free ports, HTTP through `urllib`, and
every wait on a condition with a deadline.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import pytest
from process_cluster import (
    DEADLINE_S,
    TICK_INTERVAL_MS,
    ClusterFactory,
    HttpAnswer,
    free_base_port,
    http,
)

from taskraft.client import Client
from taskraft.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.timeout(180)


def answers_unready(address: str) -> HttpAnswer | None:
    """The /readyz answer when it is 503; None while it is not (or the node is not listening)."""
    try:
        answer = http("GET", address, "/readyz")
    except urllib.error.URLError:
        return None
    return answer if answer.status == 503 else None


def status(cluster: LocalCluster, node_id: str) -> dict[str, Any]:
    document = cluster.status(node_id, timeout_s=DEADLINE_S)
    assert document is not None, f"{node_id} does not answer /v1/status"
    return document


def http_address(cluster: LocalCluster, node_id: str) -> str:
    return cluster.node(node_id).http_address


def start_with_joiner(clusters: ClusterFactory) -> LocalCluster:
    """Three founders running, a fourth node defined to join later."""
    cluster = LocalCluster(
        4,
        founders=3,
        base_port=free_base_port(4),
        data_directory=clusters.directory / f"cluster-{len(clusters.started)}",
        tick_interval_ms=TICK_INTERVAL_MS,
        extra_arguments=["--shutdown-timeout-ms", "2000"],
    )
    clusters.started.append(cluster)
    cluster.start()
    cluster.wait_for_leader(DEADLINE_S)
    cluster.wait_ready(DEADLINE_S)
    return cluster


def test_every_node_reports_the_same_leader_term_and_members(clusters: ClusterFactory) -> None:
    cluster = clusters.start(3)
    leader = cluster.wait_for_leader(DEADLINE_S)

    def agreed() -> list[dict[str, Any]] | None:
        documents = [status(cluster, node_id) for node_id in cluster.node_ids]
        leaders = {document["leader"]["id"] for document in documents}
        terms = {document["term"] for document in documents}
        return documents if leaders == {leader} and len(terms) == 1 else None

    documents = wait_until(agreed, "agreement on the leader", DEADLINE_S)
    leader_document = next(d for d in documents if d["node_id"] == leader)
    for document in documents:
        assert [m["id"] for m in document["members"]] == cluster.node_ids
        assert all(member["voter"] for member in document["members"])
        assert document["leader"]["client_address"] == leader_document["addresses"]["client"]
        assert document["leader"]["http_address"] == leader_document["addresses"]["http"]
        assert document["version"] and document["configuration_hash"]
        assert document["data_dir"]["used_bytes"] > 0
    assert leader_document["role"] == "leader"
    for member in leader_document["members"]:
        assert {"match_index", "next_index", "last_contact_ms", "caught_up"} <= set(member)


def test_readiness_fails_while_a_node_is_cut_off_and_returns_after(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3)
    leader = cluster.wait_for_leader(DEADLINE_S)
    follower = next(node_id for node_id in cluster.node_ids if node_id != leader)
    others = [node_id for node_id in cluster.node_ids if node_id != follower]
    for node_id in others:
        cluster.processes[node_id].send_signal(signal.SIGSTOP)
    try:
        answer = wait_until(
            lambda: (
                (a := http("GET", http_address(cluster, follower), "/readyz")).status == 503 and a
            ),
            "the cut-off follower to turn unready",
            DEADLINE_S,
        )
        assert b"no known leader" in answer.body
    finally:
        for node_id in others:
            cluster.processes[node_id].send_signal(signal.SIGCONT)
    cluster.wait_ready(DEADLINE_S, nodes=[follower])


def test_admin_endpoints_add_promote_lead_remove_and_snapshot(clusters: ClusterFactory) -> None:
    cluster = start_with_joiner(clusters)
    leader = cluster.wait_for_leader(DEADLINE_S)
    follower = next(n for n in cluster.node_ids[:3] if n != leader)
    cluster.start_node("n4")
    joiner_http = http_address(cluster, "n4")
    not_ready = wait_until(lambda: answers_unready(joiner_http), "n4 to answer", DEADLINE_S)
    assert b"not a member" in not_ready.body
    with Client(servers=cluster.servers[:3]) as client:
        for number in range(30):
            client.enqueue("default", f"task {number}".encode())

    request = {"id": "n4", "peer_address": cluster.node("n4").peer_address}
    redirected = http("POST", http_address(cluster, follower), "/v1/members", request)
    assert redirected.status == 307
    assert redirected.headers["Location"] == f"http://{http_address(cluster, leader)}/v1/members"
    added = http("POST", http_address(cluster, leader), "/v1/members", request)
    assert added.status == 201, added.body
    assert added.json()["voter"] is False
    again = http("POST", http_address(cluster, leader), "/v1/members", request)
    assert again.status == 200 and again.json()["result"] == "already a member"
    clash = {"id": "n4", "peer_address": "127.0.0.1:9"}
    assert http("POST", http_address(cluster, leader), "/v1/members", clash).status == 409

    def learner_caught_up() -> bool:
        members = status(cluster, leader)["members"]
        return any(m["id"] == "n4" and m.get("caught_up") for m in members)

    wait_until(learner_caught_up, "n4 to catch up as a learner", DEADLINE_S)
    promoted = http("POST", http_address(cluster, leader), "/v1/members/n4/promote")
    assert promoted.status == 200 and promoted.json()["voter"] is True
    assert (
        http("POST", http_address(cluster, leader), "/v1/members/n4/promote").json()["result"]
        == "already a voter"
    )
    cluster.wait_ready(DEADLINE_S, nodes=["n4"])

    moved = http("POST", http_address(cluster, leader), "/v1/leadership/transfer", {"target": "n4"})
    assert moved.status == 200 and moved.json()["leader"] == "n4", moved.body
    wait_until(lambda: status(cluster, "n4")["role"] == "leader", "n4 to lead", DEADLINE_S)

    removed = http("DELETE", http_address(cluster, "n4"), f"/v1/members/{leader}")
    assert removed.status == 200 and removed.json()["result"] == "removed"
    members = [m["id"] for m in status(cluster, "n4")["members"]]
    assert leader not in members and "n4" in members
    gone = http("DELETE", http_address(cluster, "n4"), f"/v1/members/{leader}")
    assert gone.json()["result"] == "not a member"

    taken = http("POST", joiner_http, "/v1/snapshot")
    assert taken.status == 200, taken.body
    snapshot = taken.json()
    assert snapshot["index"] >= 30 and snapshot["size_bytes"] > 0
    assert status(cluster, "n4")["snapshot_index"] == snapshot["index"]
    download = http("GET", joiner_http, "/v1/snapshot")
    assert download.status == 200
    assert int(download.headers["X-Taskraft-Snapshot-Index"]) == snapshot["index"]
    assert len(download.body) == snapshot["size_bytes"]
    assert int(download.headers["X-Taskraft-Snapshot-Crc32"], 16) == zlib.crc32(download.body)
    # The cluster still serves, with n4 leading and the removed node gone.
    servers = [cluster.node(n).client_address for n in cluster.node_ids if n != leader]
    with Client(servers=servers) as client:
        assert client.count("default").ready == 30


def metrics_text(cluster: LocalCluster, node_id: str) -> str:
    answer = http("GET", http_address(cluster, node_id), "/metrics")
    assert answer.status == 200
    return answer.body.decode()


def sample(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    assert match is not None, f"{name}{{{labels}}} is not in the metrics"
    return float(match.group(1))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_metrics_pass_promtool_and_follow_the_operations(clusters: ClusterFactory) -> None:
    cluster = clusters.start(3)
    leader = cluster.wait_for_leader(DEADLINE_S)
    before = metrics_text(cluster, leader)
    with Client(servers=cluster.servers) as client:
        for number in range(5):
            client.enqueue("default", f"task {number}".encode())
        for _ in range(2):
            task = client.dequeue("default", lease_ms=60_000)
            assert task is not None
            client.ack(task)
    after = metrics_text(cluster, leader)
    for text in (before, after):
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    queue = 'queue="default"'
    assert (
        sample(after, "taskraft_queue_tasks_enqueued_total", queue)
        - sample(before, "taskraft_queue_tasks_enqueued_total", queue)
        == 5
    )
    assert (
        sample(after, "taskraft_queue_tasks_acked_total", queue)
        - sample(before, "taskraft_queue_tasks_acked_total", queue)
        == 2
    )
    assert sample(after, "taskraft_queue_tasks", 'queue="default",state="ready"') == 3
    assert sample(after, "taskraft_request_duration_seconds_count", 'operation="enqueue"') >= 5
    assert sample(after, "taskraft_raft_is_leader") == 1
    assert sample(after, "taskraft_storage_fsync_duration_seconds_count") > sample(
        before, "taskraft_storage_fsync_duration_seconds_count"
    )
    assert sample(after, "taskraft_raft_commit_index") > sample(
        before, "taskraft_raft_commit_index"
    )


def test_stopping_the_leader_hands_leadership_over_and_no_write_fails(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3, extra_arguments=["--shutdown-timeout-ms", "5000"])
    leader = cluster.wait_for_leader(DEADLINE_S)
    failures: list[BaseException] = []
    written: list[int] = []
    stop_writing = threading.Event()

    def write() -> None:
        with Client(servers=cluster.servers, request_timeout_s=DEADLINE_S) as client:
            while not stop_writing.is_set() and len(written) < 5_000:
                try:
                    written.append(client.enqueue("default", b"x"))
                except BaseException as error:
                    failures.append(error)
                    return

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(written) >= 50, "writes before the stop", DEADLINE_S)
        assert cluster.stop_node(leader) == 0
        count = len(written)
        wait_until(lambda: len(written) >= count + 50, "writes after the stop", DEADLINE_S)
    finally:
        stop_writing.set()
        writer.join(DEADLINE_S)
    assert not failures, failures
    survivors = [n for n in cluster.node_ids if n != leader]
    new_leader = cluster.wait_for_leader(DEADLINE_S, among=survivors)
    assert new_leader != leader
    log = Path(cluster.log_path(leader)).read_text()
    assert "handed leadership to" in log, log[-2000:]
    with Client(servers=[cluster.node(n).client_address for n in survivors]) as client:
        assert client.count("default").ready == len(set(written))
