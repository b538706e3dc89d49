"""A three-node cluster of real processes loses its leader to SIGKILL: nothing acknowledged is lost.

Each test starts `taskraft serve` processes on 127.0.0.1 with their own data directories (see
process_cluster.py), kills the leader with SIGKILL, waits for another node to lead and restarts
the killed one from its disk. What each proves:

- acknowledged enqueues survive a crash of the leader under load from concurrent clients, and
  are delivered exactly once; enqueues whose outcome was unknown (`Unavailable`) at most once;
- acknowledged (acked) tasks stay gone: a lease that would bring back a task whose ack was lost
  expires during the test, and nothing comes back;
- a leased task that is never acked comes back after its lease with `deliveries == 2`, also when
  the leader that granted the lease is killed before the lease ends.

Every wait is on a condition with a deadline; no test sleeps to synchronise.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from process_cluster import (
    DEADLINE_S,
    ClusterFactory,
    client,
    drain,
    enqueue_all,
    leader_commit_index,
    total,
    wait_caught_up,
    wait_for_new_leader,
    wait_until,
)

from taskraft.errors import Unavailable

pytestmark = pytest.mark.timeout(120)

LOAD_THREADS = 4
# Bounds the load: at most this many enqueues per thread.
ENQUEUES_PER_THREAD_MAX = 1_500
# Acknowledged enqueues to see in each phase: before the kill, under the new leader, and after
# the killed node is back.
ACKNOWLEDGED_PER_PHASE = 150


@dataclass
class LoadRecord:
    """What one load thread saw: acknowledged payloads with their task ids, and the others."""

    acknowledged: dict[bytes, int] = field(default_factory=dict)
    uncertain: set[bytes] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)


class Load:
    """Threads that enqueue distinct payloads, each with its own `Client`, until stopped."""

    def __init__(self, servers: list[str], queue: str) -> None:
        self.servers = servers
        self.queue = queue
        self.stopping = threading.Event()
        self.records = [LoadRecord() for _ in range(LOAD_THREADS)]
        self._lock = threading.Lock()
        self._acknowledged_count = 0
        self.threads = [
            threading.Thread(target=self._run, args=(number,), name=f"load-{number}", daemon=True)
            for number in range(LOAD_THREADS)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    @property
    def acknowledged_count(self) -> int:
        with self._lock:
            return self._acknowledged_count

    def wait_for_more(self, more: int) -> None:
        """Wait until `more` enqueues beyond those acknowledged so far are acknowledged."""
        target = self.acknowledged_count + more
        wait_until(
            lambda: self.acknowledged_count >= target or self._all_ended(),
            f"{more} more acknowledged enqueues",
            DEADLINE_S,
        )
        self.raise_errors()
        assert self.acknowledged_count >= target, "the load threads ended before the target"

    def _all_ended(self) -> bool:
        return not any(thread.is_alive() for thread in self.threads)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(DEADLINE_S * 2)
        assert self._all_ended(), "a load thread did not end"
        self.raise_errors()

    def raise_errors(self) -> None:
        for record in self.records:
            if record.errors:
                raise record.errors[0]

    def _run(self, number: int) -> None:
        record = self.records[number]
        try:
            with client(self.servers) as session:
                for sequence in range(ENQUEUES_PER_THREAD_MAX):
                    if self.stopping.is_set():
                        return
                    payload = f"thread-{number}-enqueue-{sequence}".encode()
                    try:
                        task_id = session.enqueue(self.queue, payload)
                    except Unavailable:
                        record.uncertain.add(payload)
                        continue
                    record.acknowledged[payload] = task_id
                    with self._lock:
                        self._acknowledged_count += 1
        except BaseException as error:
            record.errors.append(error)


def test_acknowledged_enqueues_survive_leader_kill_under_concurrent_load_exactly_once(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3)
    with client(cluster.servers) as session:
        session.create_queue("load")
    load = Load(cluster.servers, "load")
    load.start()
    try:
        load.wait_for_more(ACKNOWLEDGED_PER_PHASE)
        old_leader = cluster.wait_for_leader(DEADLINE_S)
        cluster.kill_node(old_leader)
        new_leader = wait_for_new_leader(cluster, old_leader)
        assert new_leader != old_leader
        load.wait_for_more(ACKNOWLEDGED_PER_PHASE)
        cluster.start_node(old_leader)
        load.wait_for_more(ACKNOWLEDGED_PER_PHASE)
    finally:
        load.stop()

    acknowledged: dict[bytes, int] = {}
    uncertain: set[bytes] = set()
    for record in load.records:
        acknowledged.update(record.acknowledged)
        uncertain |= record.uncertain
    assert len(acknowledged) >= 3 * ACKNOWLEDGED_PER_PHASE
    # The restarted node is back in the cluster and has everything the leader committed.
    _, commit_index = leader_commit_index(cluster)
    wait_caught_up(cluster, old_leader, commit_index)

    deliveries = drain(cluster.servers, "load")

    task_ids = Counter(delivery.task_id for delivery in deliveries)
    assert [task_id for task_id, times in task_ids.items() if times > 1] == []
    payloads = Counter(delivery.payload for delivery in deliveries)
    assert [payload for payload, times in payloads.items() if times > 1] == []
    missing = set(acknowledged) - set(payloads)
    assert missing == set(), f"{len(missing)} acknowledged enqueues were lost"
    unexpected = set(payloads) - set(acknowledged) - uncertain
    assert unexpected == set()
    delivered_ids = {delivery.payload: delivery.task_id for delivery in deliveries}
    assert {payload: delivered_ids[payload] for payload in acknowledged} == acknowledged
    assert all(delivery.deliveries == 1 for delivery in deliveries)
    with client(cluster.servers) as session:
        assert total(session.count("load")) == 0


def test_acked_tasks_are_not_delivered_again_after_leader_kill_and_restart(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3)
    lease_ms = 500
    with client(cluster.servers) as session:
        session.create_queue("work")
        enqueued = enqueue_all(cluster.servers, "work", [b"task-%d" % n for n in range(60)])
        acked = set()
        while (task := session.dequeue("work", lease_ms=lease_ms)) is not None:
            session.ack(task)
            acked.add(task.payload)
        assert acked == set(enqueued)

        old_leader = cluster.wait_for_leader(DEADLINE_S)
        cluster.kill_node(old_leader)
        wait_for_new_leader(cluster, old_leader)
        cluster.start_node(old_leader)
        _, commit_index = leader_commit_index(cluster)
        wait_caught_up(cluster, old_leader, commit_index)

        counts = session.count("work")
        assert (counts.ready, counts.delayed, counts.leased) == (0, 0, 0)
        # Had an ack been lost, its task would come back once its lease ended.
        assert session.dequeue("work", wait_ms=3 * lease_ms) is None


def test_unacked_leased_task_is_redelivered_after_its_lease_with_second_delivery(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3)
    lease_ms = 500
    with client(cluster.servers) as session:
        session.create_queue("work")
        task_id = session.enqueue("work", b"unacked")
        before_first = time.monotonic()
        first = session.dequeue("work", lease_ms=lease_ms)
        assert first is not None and first.id == task_id and first.deliveries == 1

        second = session.dequeue("work", wait_ms=15_000, lease_ms=10_000)
        elapsed_s = time.monotonic() - before_first

        assert second is not None
        assert (second.id, second.payload, second.deliveries) == (task_id, b"unacked", 2)
        # The lease started after `before_first`: it cannot have ended sooner than that.
        assert elapsed_s >= lease_ms / 1000 - 0.01
        session.ack(second)
        assert total(session.count("work")) == 0


def test_lease_granted_by_killed_leader_is_honoured_then_expired_by_new_leader(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3)
    # Far longer than an election (about a second at most with 30 ms ticks), so the new leader
    # holds the old lease for a while before it expires it, and the count below sees that.
    lease_ms = 6_000
    with client(cluster.servers) as session:
        session.create_queue("work")
        task_id = session.enqueue("work", b"leased-by-the-old-leader")
        old_leader = cluster.wait_for_leader(DEADLINE_S)
        before_first = time.monotonic()
        first = session.dequeue("work", lease_ms=lease_ms)
        assert first is not None and first.id == task_id and first.deliveries == 1

        cluster.kill_node(old_leader)
        wait_for_new_leader(cluster, old_leader)
        counts = session.count("work")
        counted_s = time.monotonic() - before_first
        second = session.dequeue("work", wait_ms=20_000, lease_ms=10_000)
        elapsed_s = time.monotonic() - before_first

    assert second is not None
    assert (second.id, second.payload, second.deliveries) == (
        task_id,
        b"leased-by-the-old-leader",
        2,
    )
    assert elapsed_s >= lease_ms / 1000 - 0.01
    # Counted before the lease could end: the new leader held the old lease.
    assert counted_s < lease_ms / 1000, f"the failover took {counted_s:.1f} s, not under the lease"
    assert (counts.ready, counts.leased) == (0, 1)
