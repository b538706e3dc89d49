"""`make demo`: a local 3-node cluster of real processes, shown working and surviving a crash.

The story, narrated on stdout:

1. start three `taskraft serve` processes (real TCP, data fsynced on disk) and wait for a leader;
2. create a queue, enqueue tasks with priorities, consume a few in priority order and ack them;
3. print `taskraft status`;
4. kill the leader with SIGKILL, and show that the others elect a new leader;
5. show that every acknowledged task is still there (and the consumed ones are gone) by draining
   the queue through the new leader;
6. restart the killed node, show that it catches up, and stop everything.

It exits 0 when every check held, 1 otherwise. `python -m taskraft.demo --base-port P` moves the
ports; by default the first free block from 7100 is used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from taskraft.cli import main as taskraft_command
from taskraft.client import Client
from taskraft.local_cluster import LocalCluster, layout_ports, ports_are_free, wait_until

QUEUE = "emails"
TASKS = [
    (5, "weekly newsletter"),
    (1, "password reset for ada"),
    (3, "invoice 1042"),
    (1, "password reset for grace"),
    (9, "marketing survey"),
    (3, "invoice 1043"),
    (2, "order confirmation 77"),
]
CONSUMED_BEFORE_CRASH = 3


class DemoFailure(Exception):
    """A check of the story did not hold."""


def say(text: str = "") -> None:
    print(text, flush=True)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailure(what)
    say(f"   ok: {what}")


def first_free_base_port(start: int, nodes: int) -> int:
    for base_port in range(start, 65000 - 10 * nodes, 100):
        if ports_are_free(layout_ports(nodes, base_port)):
            return base_port
    raise DemoFailure("no free ports for the demo cluster")


def run(base_port: int) -> None:
    cluster = LocalCluster(3, base_port=base_port, tick_interval_ms=50)
    try:
        story(cluster)
    finally:
        say("\n== 6. stopping every node")
        statuses = cluster.stop()
        say(f"   exit statuses: {statuses}")
        cluster.remove_data()


def story(cluster: LocalCluster) -> None:
    say("== 1. starting a 3-node cluster (real processes, fsynced write-ahead logs)")
    cluster.start()
    leader = cluster.wait_for_leader(timeout_s=30)
    cluster.wait_ready(timeout_s=30)
    for node in cluster.layout:
        role = "leader" if node.node_id == leader else "follower"
        pid = cluster.pid(node.node_id)
        say(f"   {node.node_id}: clients {node.client_address}, pid {pid}, {role}")
    servers = ",".join(cluster.servers)

    say(f"\n== 2. queue {QUEUE!r}: enqueue {len(TASKS)} tasks, consume the most urgent ones")
    with Client(servers=cluster.servers) as client:
        client.create_queue(QUEUE, max_deliveries=5)
        acknowledged: dict[int, bytes] = {}
        for priority, text in TASKS:
            task_id = client.enqueue(QUEUE, text.encode(), priority=priority)
            acknowledged[task_id] = text.encode()
            say(f"   enqueued task {task_id} with priority {priority}: {text}")
        consumed = []
        for _ in range(CONSUMED_BEFORE_CRASH):
            task = client.dequeue(QUEUE, lease_ms=30_000)
            if task is None:
                raise DemoFailure("a task that was enqueued could not be dequeued")
            client.ack(task)
            consumed.append(task)
            text = task.payload.decode()
            say(f"   consumed and acked task {task.id} (priority {task.priority}): {text}")
        priorities = [task.priority for task in consumed]
        check(
            priorities == sorted(p for p, _ in TASKS)[:CONSUMED_BEFORE_CRASH],
            "lowest priority value first, FIFO among equals",
        )
        remaining = {k: v for k, v in acknowledged.items() if k not in {t.id for t in consumed}}

    say("\n== 3. taskraft status")
    taskraft_command(["status", "--servers", servers])

    say(f"\n== 4. kill -9 the leader ({leader}, pid {cluster.pid(leader)})")
    cluster.kill_node(leader)
    survivors = [node_id for node_id in cluster.node_ids if node_id != leader]
    new_leader = cluster.wait_for_leader(timeout_s=30, among=survivors)
    check(new_leader != leader, f"{new_leader} was elected leader in its place")

    say("\n== 5. every acknowledged task is still there, and the consumed ones are gone")
    with Client(servers=cluster.servers) as client:
        counts = client.count(QUEUE)
        say(f"   {QUEUE}: {counts.ready} ready, {counts.leased} leased")
        drained: dict[int, bytes] = {}
        while (task := client.dequeue(QUEUE, lease_ms=30_000)) is not None:
            client.ack(task)
            drained[task.id] = task.payload
            say(f"   consumed task {task.id} (priority {task.priority}): {task.payload.decode()}")
        check(drained == remaining, f"the {len(remaining)} unconsumed tasks, exactly once each")

    say(f"\n== restarting {leader}: it recovers from its disk and catches up")
    cluster.start_node(leader)

    def caught_up() -> bool:
        document = cluster.status(leader, 5.0)
        leader_document = cluster.status(new_leader, 5.0)
        return (
            document is not None
            and leader_document is not None
            and document.get("role") == "follower"
            and document.get("applied_index", -1) >= leader_document["commit_index"]
        )

    wait_until(caught_up, f"{leader} to catch up as a follower", 60)
    say(f"   ok: {leader} is back, as a follower, caught up")
    taskraft_command(["status", "--servers", servers])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskraft.demo", description=__doc__)
    parser.add_argument(
        "--base-port", type=int, help="first client port (default: first free from 7100)"
    )
    arguments = parser.parse_args(argv)
    base_port = arguments.base_port or first_free_base_port(7100, 3)
    try:
        run(base_port)
    except (DemoFailure, TimeoutError) as failure:
        say(f"\nDEMO FAILED: {failure}")
        return 1
    say("\ndemo finished: every check held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
