"""`taskraft serve`: run one node until SIGTERM or Ctrl-C.

Every flag also reads an environment variable, `TASKRAFT_` and the flag's name in capitals
(`--node-id` and `TASKRAFT_NODE_ID`), because a Kubernetes pod is configured through its
environment; a flag given on the command line wins. SIGTERM and SIGINT stop the node cleanly
(the batch being written finishes, clients are told `unavailable`); a second signal exits at
once.

Exit statuses: 0 stopped on request, 1 the node failed while running (a storage failure: see
the log), 2 bad settings or a data directory it cannot use.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from taskraft.addresses import parse_address
from taskraft.raft import NodeId, RaftOptions
from taskraft.server.node import Node, NodeConfigurationError, NodeSettings
from taskraft.server.replica import ReplicaSettings
from taskraft.storage import StorageError

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

logger = logging.getLogger("taskraft.serve")

EXIT_STOPPED = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2

ENVIRONMENT_PREFIX = "TASKRAFT_"

DEFAULT_CLIENT_ADDRESS = "127.0.0.1:7100"
DEFAULT_PEER_ADDRESS = "127.0.0.1:7101"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:7102"


def environment_name(flag: str) -> str:
    """`--node-id` -> `TASKRAFT_NODE_ID`."""
    return ENVIRONMENT_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _add(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    help: str,
    default: str | None = None,
    **kw: object,
) -> None:
    """A flag whose default comes from its environment variable, then from `default`."""
    variable = environment_name(flag)
    value = os.environ.get(variable, default)
    shown = f" (env {variable}" + (f"; default {default})" if default is not None else ")")
    parser.add_argument(flag, default=value, help=help + shown, **kw)  # type: ignore[arg-type]


def register_serve_command(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run one node of a cluster",
        description=(
            "Run one taskraft node: the Raft replica, the client port, the peer port and the "
            "HTTP port. A new cluster's nodes start with the same --initial-members; a node "
            "added to a running cluster starts with --join and waits for the leader to add "
            "it. A node that restarts uses the membership stored in its data directory."
        ),
        epilog=(
            "examples:\n"
            "  taskraft serve --node-id n1 --data-dir /var/lib/taskraft \\\n"
            "      --client-address 0.0.0.0:7100 --peer-address 0.0.0.0:7101 \\\n"
            "      --http-address 0.0.0.0:7102 --advertise-peer-address n1.taskraft:7101 \\\n"
            "      --initial-members n1=n1.taskraft:7101,n2=n2.taskraft:7101,n3=n3.taskraft:7101\n"
            "  TASKRAFT_NODE_ID=n4 TASKRAFT_DATA_DIR=/data TASKRAFT_JOIN=1 taskraft serve\n\n"
            "exit status: 0 stopped by SIGTERM/SIGINT, 1 the node failed, 2 bad settings"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add(parser, "--node-id", help="this node's id, unique in the cluster and never reused")
    _add(parser, "--data-dir", help="directory for the write-ahead log and snapshots")
    _add(parser, "--client-address", default=DEFAULT_CLIENT_ADDRESS, help="HOST:PORT for clients")
    _add(parser, "--peer-address", default=DEFAULT_PEER_ADDRESS, help="HOST:PORT for other nodes")
    _add(parser, "--http-address", default=DEFAULT_HTTP_ADDRESS, help="HOST:PORT for HTTP")
    _add(
        parser,
        "--initial-members",
        help="founding members of a new cluster, ID=HOST:PEERPORT,... (this node included); "
        "used only while the data directory is empty",
    )
    join_variable = environment_name("--join")
    parser.add_argument(
        "--join",
        action="store_true",
        default=os.environ.get(join_variable, "").lower() in {"1", "true", "yes"},
        help="start empty and wait for the cluster's leader to add this node "
        f"(env {join_variable}=1)",
    )
    _add(
        parser,
        "--advertise-client-address",
        help="HOST:PORT clients use to reach this node (default: --client-address)",
    )
    _add(
        parser,
        "--advertise-peer-address",
        help="HOST:PORT other nodes use to reach this node (default: --peer-address)",
    )
    _add(
        parser,
        "--advertise-http-address",
        help="HOST:PORT for this node's HTTP API as others see it (default: --http-address)",
    )
    _add(parser, "--cluster-id", help="refuse peers of any other cluster id")
    _add(
        parser,
        "--tick-interval-ms",
        default="100",
        type=int,
        help="length of a Raft tick; elections take 10 to 20 ticks",
    )
    _add(parser, "--election-timeout-ticks", default="10", type=int, help="Raft election timeout")
    _add(
        parser,
        "--snapshot-interval-entries",
        default="100000",
        type=int,
        help="take a snapshot after this many applied entries",
    )
    _add(parser, "--connections-max", default="1000", type=int, help="client connections at once")
    _add(
        parser,
        "--client-handshake-timeout-ms",
        default="10000",
        type=int,
        help="close a client connection that sends no handshake within this time",
    )
    _add(
        parser,
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity",
    )
    parser.set_defaults(handler=run_serve)


def parse_members(text: str) -> dict[NodeId, str]:
    """`n1=host:7101,n2=host:7111` as {node id: peer address}."""
    members: dict[NodeId, str] = {}
    for item in text.split(","):
        node_id, separator, address = item.strip().partition("=")
        if not separator or not node_id:
            raise ValueError(f"not ID=HOST:PORT: {item.strip()!r}")
        parse_address(address)
        if node_id in members:
            raise ValueError(f"member {node_id} is listed twice")
        members[NodeId(node_id)] = address
    return members


def settings_from_arguments(arguments: argparse.Namespace) -> NodeSettings:
    """The node settings the arguments describe; ValueError naming what is wrong."""
    missing = [
        flag
        for flag, value in (("--node-id", arguments.node_id), ("--data-dir", arguments.data_dir))
        if not value
    ]
    if missing:
        raise ValueError(
            "missing " + " and ".join(f"{flag} (or {environment_name(flag)})" for flag in missing)
        )
    members = None
    if arguments.initial_members:
        members = parse_members(arguments.initial_members)
    return NodeSettings(
        node_id=NodeId(arguments.node_id),
        data_directory=Path(arguments.data_dir),
        client_address=arguments.client_address,
        peer_address=arguments.peer_address,
        http_address=arguments.http_address,
        initial_members=members,
        join=arguments.join,
        advertise_client_address=arguments.advertise_client_address,
        advertise_peer_address=arguments.advertise_peer_address,
        advertise_http_address=arguments.advertise_http_address,
        cluster_id=arguments.cluster_id,
        raft=RaftOptions(election_timeout_ticks=arguments.election_timeout_ticks),
        replica=ReplicaSettings(
            tick_interval_ms=arguments.tick_interval_ms,
            snapshot_interval_entries=arguments.snapshot_interval_entries,
        ),
        connections_max=arguments.connections_max,
        client_handshake_timeout_s=arguments.client_handshake_timeout_ms / 1000,
    )


def run_serve(arguments: argparse.Namespace) -> int:
    logging.basicConfig(
        level=arguments.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = settings_from_arguments(arguments)
    except ValueError as error:
        print(f"taskraft serve: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    return asyncio.run(serve(settings))


async def serve(settings: NodeSettings) -> int:
    """Run a node until a signal asks it to stop; the exit status."""
    node = Node(settings)
    try:
        await node.start()
    except (StorageError, NodeConfigurationError, OSError) as error:
        logger.error("node %s cannot start: %s", settings.node_id, error)
        return EXIT_BAD_SETTINGS
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def request_stop(signal_number: int) -> None:
        if stop_requested.is_set():
            logger.warning("second signal: exiting without a clean stop")
            os._exit(EXIT_FAILED)
        logger.info("%s received: stopping", signal.Signals(signal_number).name)
        stop_requested.set()

    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, request_stop, signal_number)
    waiting = [
        asyncio.create_task(stop_requested.wait()),
        asyncio.create_task(node.wait_stopped()),
    ]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    for task in waiting:
        task.cancel()
    failure = node.failure
    await node.stop()
    if failure is not None:
        logger.critical("node %s failed: %s", settings.node_id, failure)
        return EXIT_FAILED
    logger.info("node %s stopped", settings.node_id)
    return EXIT_STOPPED
