"""`taskraft dev`: a whole cluster on 127.0.0.1 in one command, for trying taskraft out.

It starts `--nodes` `taskraft serve` processes (see taskraft.local_cluster for ids and ports),
waits for a leader, prints where to reach them, and keeps them running until Ctrl-C or SIGTERM,
when it stops each node cleanly and exits 0. A node that exits on its own is reported and left
down (restart `taskraft dev` to bring it back with its data, when `--data-dir` is given).

With `--tls`, every node serves TLS on all its ports with one certificate for 127.0.0.1, issued
by a private authority made in the data directory (kept there, so a restart with the same
`--data-dir` keeps trusting it); the command prints the authority's path for the clients
(`TASKRAFT_TLS_CA`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from taskraft.certificates import local_node_tls
from taskraft.local_cluster import LocalCluster
from taskraft.tls import client_context

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_STOPPED = 0
EXIT_FAILED = 1

_SUPERVISE_INTERVAL_S = 0.5


def register_dev_command(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run a local N-node cluster until Ctrl-C",
        description=(
            "Start a local cluster of `taskraft serve` processes on 127.0.0.1. Node i (from 0) "
            "has id n{i+1} and listens for clients on BASE+10*i, for peers on BASE+10*i+1 and "
            "for HTTP on BASE+10*i+2. Data and logs go to --data-dir, or to a temporary "
            "directory removed at exit. Ctrl-C stops every node cleanly."
        ),
        epilog=(
            "examples:\n"
            "  taskraft dev                                  # 3 nodes, ports 7100-7122\n"
            "  taskraft dev --nodes 5 --base-port 9000 --data-dir ./cluster-data"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    parser.add_argument(
        "--base-port", type=int, default=7100, help="first node's client port (default 7100)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep data and logs here (default: a temporary directory, removed at exit)",
    )
    parser.add_argument(
        "--tick-interval-ms", type=int, default=100, help="Raft tick of every node (default 100)"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every port, from a private authority made in the data directory",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the nodes' log verbosity",
    )
    parser.set_defaults(handler=run_dev)


def run_dev(arguments: argparse.Namespace) -> int:
    if not 1 <= arguments.nodes <= 99:
        print("taskraft dev: --nodes must be between 1 and 99", file=sys.stderr)
        return 2
    if not 1 <= arguments.base_port <= 65535 - 10 * arguments.nodes:
        print("taskraft dev: --base-port leaves no room for every node's ports", file=sys.stderr)
        return 2
    stop_requested = threading.Event()

    def request_stop(signal_number: int, frame: object) -> None:
        stop_requested.set()

    previous = {
        signal_number: signal.signal(signal_number, request_stop)
        for signal_number in (signal.SIGINT, signal.SIGTERM)
    }
    cluster = LocalCluster(
        arguments.nodes,
        base_port=arguments.base_port,
        data_directory=arguments.data_dir,
        tick_interval_ms=arguments.tick_interval_ms,
        log_level=arguments.log_level,
    )
    if arguments.tls:
        cluster.tls = local_node_tls(cluster.directory / "tls")
        cluster.http_tls = client_context(cluster.tls.authority)
    try:
        cluster.start()
        print(f"started {arguments.nodes} nodes; data and logs in {cluster.directory}", flush=True)
        try:
            leader = cluster.wait_for_leader(timeout_s=30.0)
        except TimeoutError:
            print("taskraft dev: no leader was elected within 30 s; see the logs", file=sys.stderr)
            return EXIT_FAILED
        for node in cluster.layout:
            role = "leader" if node.node_id == leader else "follower"
            print(
                f"  {node.node_id}  clients {node.client_address}  peers {node.peer_address}  "
                f"http {node.http_address}  ({role})  pid {cluster.pid(node.node_id)}"
            )
        print(f"export TASKRAFT_SERVERS={','.join(cluster.servers)}")
        if cluster.tls is not None:
            print(f"export TASKRAFT_TLS_CA={cluster.tls.authority}")
        print("Ctrl-C stops the cluster.", flush=True)
        reported: set[str] = set()
        while not stop_requested.wait(_SUPERVISE_INTERVAL_S):
            for node_id, process in cluster.processes.items():
                status = process.poll()
                if status is not None and node_id not in reported:
                    reported.add(node_id)
                    print(f"node {node_id} exited with status {status}", flush=True)
        print("stopping the cluster", flush=True)
        return EXIT_STOPPED
    finally:
        statuses = cluster.stop()
        unclean = {n: s for n, s in statuses.items() if s not in (0, -signal.SIGKILL)}
        if unclean:
            print(f"nodes that did not stop cleanly: {unclean}", file=sys.stderr)
        cluster.remove_data()
        for signal_number, handler in previous.items():
            signal.signal(signal_number, handler)
