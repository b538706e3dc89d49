"""A follower that was down catches up from the leader, from its log or from a snapshot.

Each test stops one follower of a three-node cluster of real processes, writes while it is
down, restarts it from its data directory, and waits (through `/v1/status`) until it has applied
everything the leader had committed. Then the other follower is stopped, so that the restarted
node is needed for every majority: the cluster serving every task afterwards proves that the
restarted node really holds the log (or the snapshot) it reports.

- From the log: a follower killed with SIGKILL restarts, replays its own log and receives the
  entries it missed.
- From a snapshot: with `--snapshot-interval-entries 100`, the leader snapshots and compacts its
  log past everything the stopped follower has, so the follower can only catch up by
  installing the leader's snapshot (`snapshot_index` > 0 in its status).

Every wait is on a condition with a deadline; no test sleeps to synchronise.
"""

from __future__ import annotations

import pytest
from process_cluster import (
    DEADLINE_S,
    ClusterFactory,
    client,
    drain,
    enqueue_all,
    followers,
    leader_commit_index,
    status_field,
    wait_caught_up,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


def test_follower_restarted_from_disk_catches_up_and_can_form_the_majority(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3)
    leader = cluster.wait_for_leader(DEADLINE_S)
    restarted, other = followers(cluster, leader)
    with client(cluster.servers) as session:
        session.create_queue("work")
    before = enqueue_all(cluster.servers, "work", [b"before-%d" % n for n in range(20)])

    cluster.kill_node(restarted)
    during = enqueue_all(cluster.servers, "work", [b"during-%d" % n for n in range(50)])
    cluster.start_node(restarted)
    _, commit_index = leader_commit_index(cluster)
    wait_caught_up(cluster, restarted, commit_index)

    cluster.kill_node(other)
    with client(cluster.servers) as session:
        counts = session.count("work")
        assert (counts.ready, counts.delayed, counts.leased) == (70, 0, 0)
        after_id = session.enqueue("work", b"after")
    deliveries = drain(cluster.servers, "work")

    expected = {**before, **during, b"after": after_id}
    assert sorted((d.payload, d.task_id) for d in deliveries) == sorted(expected.items())


def test_follower_far_behind_catches_up_by_installing_the_leaders_snapshot(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3, extra_arguments=["--snapshot-interval-entries", "100"])
    leader = cluster.wait_for_leader(DEADLINE_S)
    behind, other = followers(cluster, leader)
    with client(cluster.servers) as session:
        session.create_queue("work")
    before = enqueue_all(cluster.servers, "work", [b"before-%d" % n for n in range(20)])
    _, commit_index = leader_commit_index(cluster)
    document = wait_caught_up(cluster, behind, commit_index)
    assert document["snapshot_index"] == 0
    behind_last_index = int(str(document["last_log_index"]))

    assert cluster.stop_node(behind) == 0
    during = enqueue_all(cluster.servers, "work", [b"during-%d" % n for n in range(1_000)])
    # The leader compacted its log past everything the stopped follower has.
    leader, _ = leader_commit_index(cluster)
    wait_until(
        lambda: (status_field(cluster, leader, "snapshot_index") or 0) > behind_last_index,
        "a leader snapshot past the stopped follower's log",
        DEADLINE_S,
    )

    cluster.start_node(behind)
    _, commit_index = leader_commit_index(cluster)
    document = wait_caught_up(cluster, behind, commit_index)
    assert int(str(document["snapshot_index"])) > behind_last_index

    assert cluster.stop_node(other) == 0
    with client(cluster.servers) as session:
        counts = session.count("work")
        assert (counts.ready, counts.delayed, counts.leased) == (1_020, 0, 0)
    deliveries = drain(cluster.servers, "work")

    expected = {**before, **during}
    assert len(deliveries) == len(expected)
    assert sorted((d.payload, d.task_id) for d in deliveries) == sorted(expected.items())
