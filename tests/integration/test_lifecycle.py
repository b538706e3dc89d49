"""Real `taskraft serve` processes start, serve, redirect clients and stop cleanly.

- A single-node cluster serves on its own, and what it acknowledged survives a restart (the
  node stops on SIGTERM with exit status 0, and recovers from its data directory).
- SIGTERM stops every node with exit status 0 within a few seconds (the shutdown timeout the
  cluster is given, `--shutdown-timeout-ms`, and a margin): all at once, while a client is
  connected and a dequeue is waiting on the leader; and one at a time, the leader first (it
  hands leadership over before it exits, so the others have a leader at once), down to the
  last node, which has no majority left.
- A client that knows only a follower's address follows the follower's `not_leader` answer to
  the leader, and a follower's `/v1/status` names the leader and the leader's addresses.

Every wait is on a condition with a deadline; no test sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
from process_cluster import (
    DEADLINE_S,
    SHUTDOWN_TIMEOUT_MS,
    ClusterFactory,
    client,
    followers,
    free_base_port,
    status_field,
    total,
    wait_until,
)

from taskraft.client import AsyncClient, Client, Task
from taskraft.errors import TaskraftError
from taskraft.local_cluster import LocalCluster

pytestmark = pytest.mark.timeout(120)

HAND_OVER_SHUTDOWN_TIMEOUT_MS = 3_000


def test_single_node_cluster_serves_and_keeps_its_data_across_a_restart(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(1)
    (node_id,) = cluster.node_ids
    with client(cluster.servers) as session:
        session.create_queue("work")
        first_id = session.enqueue("work", b"first", priority=1)
        second_id = session.enqueue("work", b"second", priority=2)
        third_id = session.enqueue("work", b"third", priority=3)
        task = session.dequeue("work")
        assert task is not None and (task.id, task.payload) == (first_id, b"first")
        session.ack(task)
        counts = session.count("work")
        assert (counts.ready, counts.delayed, counts.leased) == (2, 0, 0)

    assert cluster.stop_node(node_id) == 0
    cluster.start_node(node_id)
    cluster.wait_for_leader(DEADLINE_S)

    with client(cluster.servers) as session:
        assert "work" in [queue.name for queue in session.list_queues()]
        counts = session.count("work")
        assert (counts.ready, counts.delayed, counts.leased) == (2, 0, 0)
        delivered: list[Task] = []
        while (task := session.dequeue("work")) is not None:
            delivered.append(task)
            session.ack(task)
        assert [(task.id, task.payload, task.deliveries) for task in delivered] == [
            (second_id, b"second", 1),
            (third_id, b"third", 1),
        ]
        assert total(session.count("work")) == 0


def test_sigterm_stops_every_node_with_status_zero_within_seconds_while_clients_wait(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3)
    leader = cluster.wait_for_leader(DEADLINE_S)
    with client(cluster.servers) as session:
        session.create_queue("work")
        session.enqueue("work", b"task")
        assert session.dequeue("work") is not None

    # A dequeue waiting on the leader, over a connection that stays open during the stop. A
    # dequeue that finds nothing first commits its Dequeue, then waits: the leader's applied
    # index moving past its commit index of before (nothing else writes) shows that it waits.
    commit_index = status_field(cluster, leader, "commit_index")
    assert commit_index is not None

    def dequeue_applied() -> bool:
        return (status_field(cluster, leader, "applied_index") or 0) > commit_index

    async def stop_while_a_dequeue_waits() -> tuple[dict[str, int], float]:
        async with AsyncClient([cluster.node(leader).client_address]) as waiter_client:
            waiting = asyncio.create_task(waiter_client.dequeue("work", wait_ms=60_000))
            try:
                await asyncio.to_thread(
                    wait_until, dequeue_applied, "the waiting dequeue applied", DEADLINE_S
                )
                assert not waiting.done()
                started = time.monotonic()
                statuses = await asyncio.to_thread(cluster.stop, _stop_within_s())
                return statuses, time.monotonic() - started
            finally:
                # After the stop the client keeps retrying the dequeue until its deadline.
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError, TaskraftError):
                    await waiting

    statuses, elapsed_s = asyncio.run(stop_while_a_dequeue_waits())

    assert statuses == dict.fromkeys(cluster.node_ids, 0)
    assert elapsed_s < _stop_within_s()


def test_sigterm_stops_nodes_one_at_a_time_with_status_zero_the_leader_handing_over_first(
    clusters: ClusterFactory,
) -> None:
    # Time enough for the hand-over even on a busy machine: a leader that cannot hand over
    # exits anyway once this has passed, and the check below that it handed over would fail.
    cluster = clusters.start(
        3, extra_arguments=["--shutdown-timeout-ms", str(HAND_OVER_SHUTDOWN_TIMEOUT_MS)]
    )
    leader = cluster.wait_for_leader(DEADLINE_S)
    survivors = followers(cluster, leader)
    with client(cluster.servers) as session:
        session.create_queue("work")
        session.enqueue("work", b"before")

    _assert_stops_cleanly(cluster, leader, HAND_OVER_SHUTDOWN_TIMEOUT_MS)
    # The leader handed leadership over before it exited: the survivors did not have to wait
    # for an election timeout to find a new leader, and the leader's log says so.
    second_leader = cluster.leader(among=survivors)
    assert second_leader is not None
    first_log = cluster.log_path(leader).read_text()
    assert f"handed leadership to {second_leader}" in first_log, first_log[-2000:]
    with client(cluster.servers) as session:
        session.enqueue("work", b"after")
        assert session.count("work").ready == 2

    # The second leader hands over to the last node, which then has no majority left.
    _assert_stops_cleanly(cluster, second_leader, HAND_OVER_SHUTDOWN_TIMEOUT_MS)
    (last,) = [node_id for node_id in survivors if node_id != second_leader]
    second_log = cluster.log_path(second_leader).read_text()
    assert f"handed leadership to {last}" in second_log, second_log[-2000:]
    _assert_stops_cleanly(cluster, last, HAND_OVER_SHUTDOWN_TIMEOUT_MS)


def _assert_stops_cleanly(
    cluster: LocalCluster, node_id: str, shutdown_timeout_ms: int = SHUTDOWN_TIMEOUT_MS
) -> None:
    within_s = _stop_within_s(shutdown_timeout_ms)
    started = time.monotonic()
    status = cluster.stop_node(node_id, timeout_s=within_s)
    elapsed_s = time.monotonic() - started
    assert (node_id, status) == (node_id, 0)
    assert elapsed_s < within_s


def _stop_within_s(shutdown_timeout_ms: int = SHUTDOWN_TIMEOUT_MS) -> float:
    """What "within a few seconds" means for a clean stop: the time a node may take to hand
    leadership over and finish requests (`--shutdown-timeout-ms`), and a margin to exit.
    LocalCluster kills a node that takes longer, which makes its exit status -9."""
    return shutdown_timeout_ms / 1000 + 5.0


def test_client_given_only_a_follower_address_follows_the_redirect_to_the_leader(
    clusters: ClusterFactory,
) -> None:
    cluster = clusters.start(3)
    leader = cluster.wait_for_leader(DEADLINE_S)
    follower = followers(cluster, leader)[0]
    leader_node = cluster.node(leader)

    document = wait_until(
        lambda: _status_naming_a_leader(cluster, follower), "follower status", DEADLINE_S
    )
    assert document["role"] == "follower"
    assert document["leader"] == {
        "id": leader,
        "client_address": leader_node.client_address,
        "http_address": leader_node.http_address,
    }

    with Client([cluster.node(follower).client_address], request_timeout_s=20.0) as session:
        session.create_queue("work")
        task_id = session.enqueue("work", b"through-a-follower")
        task = session.dequeue("work")
        assert task is not None and (task.id, task.payload) == (task_id, b"through-a-follower")
        session.ack(task)
        assert total(session.count("work")) == 0
        # The connection the client ended up on is the leader's.
        assert session.status().node == leader


def _status_naming_a_leader(cluster: LocalCluster, node_id: str) -> dict[str, object] | None:
    document = cluster.status(node_id)
    if document is None:
        return None
    leader = document.get("leader")
    if not isinstance(leader, dict) or leader.get("client_address") is None:
        return None
    return document


def test_client_close_makes_a_call_in_flight_in_another_thread_fail_promptly() -> None:
    # Nothing listens there: the call keeps retrying to connect until the client is closed.
    nowhere = f"127.0.0.1:{free_base_port(1)}"
    # The request timeout is far longer than the wait for the call below: a call that ended
    # only at its own deadline would fail the test, not pass it.
    session = Client([nowhere], request_timeout_s=DEADLINE_S)
    outcome: list[BaseException] = []
    call_started = threading.Event()

    def count_where_no_node_listens() -> None:
        call_started.set()
        try:
            session.count("work")
        except BaseException as error:
            outcome.append(error)

    caller = threading.Thread(target=count_where_no_node_listens, daemon=True)
    caller.start()
    assert call_started.wait(DEADLINE_S)
    # Close only once the call is submitted to the client's loop: closed any earlier, the call
    # would fail at its entry and nothing in flight would be tested.
    wait_until(lambda: len(session._in_flight) == 1, "the call in flight", DEADLINE_S)
    session.close()
    # AsyncClient.close fails the calls in flight; Client.close must end them as well.
    caller.join(3.0)
    assert not caller.is_alive(), "the call in flight outlived Client.close()"
    assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError | TaskraftError)
