"""`taskraft serve`: run one node until SIGTERM or Ctrl-C.

Options are declared once in `taskraft.server.configuration` (`OPTIONS`): each is a flag here,
an environment variable `TASKRAFT_<NAME>` and a key of the TOML file given by `--config`, in
that order of precedence over the default. `--print-config` shows the effective configuration
and where each value came from, then exits.

SIGTERM and SIGINT stop the node gracefully: a leader hands leadership to the most caught-up
voter, requests in flight are answered, then everything closes (within `shutdown_timeout_ms`).
A second signal exits at once.

Exit statuses: 0 stopped on request (or `--print-config`), 1 the node failed while running (a
storage failure: the last log line says why), 2 bad settings or a data directory or port it
cannot use.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from taskraft.raft import NodeId, RaftOptions
from taskraft.server.configuration import (
    OPTIONS,
    OPTIONS_BY_NAME,
    ConfigurationError,
    ResolvedConfiguration,
    resolve,
    unknown_environment_variables,
)
from taskraft.server.logs import configure_logging, set_log_context
from taskraft.server.node import Node, NodeConfigurationError, NodeSettings
from taskraft.server.replica import ReplicaSettings
from taskraft.storage import StorageError
from taskraft.tls import TlsFiles

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

logger = logging.getLogger("taskraft.serve")

EXIT_STOPPED = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2

# Allocations between two collections of the youngest generation (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000

# Variables of the client side that may share a pod's environment with the node.
CLIENT_ENVIRONMENT_VARIABLES = ("TASKRAFT_SERVERS", "TASKRAFT_TOKEN")


def register_serve_command(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run one node of a cluster",
        description=(
            "Run one taskraft node: the Raft replica, the client port, the peer port and the "
            "HTTP port. A new cluster's nodes start with the same --initial-members; a node "
            "added to a running cluster starts with --join and waits for the leader to add "
            "it. A node that restarts uses the membership stored in its data directory. "
            "Every option is also read from TASKRAFT_<OPTION> and from the --config file."
        ),
        epilog=(
            "examples:\n"
            "  taskraft serve --node-id n1 --data-dir /var/lib/taskraft \\\n"
            "      --client-address 0.0.0.0:7100 --peer-address 0.0.0.0:7101 \\\n"
            "      --http-address 0.0.0.0:7102 --advertise-peer-address n1.taskraft:7101 \\\n"
            "      --initial-members n1=n1.taskraft:7101,n2=n2.taskraft:7101,n3=n3.taskraft:7101\n"
            "  TASKRAFT_NODE_ID=n4 TASKRAFT_DATA_DIR=/data TASKRAFT_JOIN=1 taskraft serve\n"
            "  taskraft serve --config node.toml --print-config\n\n"
            "exit status: 0 stopped by SIGTERM/SIGINT, 1 the node failed, 2 bad settings"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for option in OPTIONS:
        default = "" if option.default is None else f"; default {option.default}"
        unit = f" ({option.unit})" if option.unit and option.kind == "integer" else ""
        text = f"{option.help}{unit} [env {option.environment_variable}{default}]"
        if option.kind == "boolean":
            parser.add_argument(option.flag, action="store_const", const="true", help=text)
        else:
            metavar = option.name.upper() if option.kind != "choice" else None
            parser.add_argument(
                option.flag,
                metavar=metavar,
                choices=option.choices or None,
                help=text,
            )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration and where each value came from, then exit",
    )
    parser.set_defaults(handler=run_serve)


def settings_from_configuration(configuration: ResolvedConfiguration) -> NodeSettings:
    """The node settings of a resolved configuration; ConfigurationError naming what is wrong."""
    missing = [
        OPTIONS_BY_NAME[name] for name in ("node_id", "data_dir") if configuration[name] is None
    ]
    if missing:
        raise ConfigurationError(
            "missing "
            + " and ".join(
                f"{option.flag} (or {option.environment_variable})" for option in missing
            )
        )
    try:
        raft = RaftOptions(
            election_timeout_ticks=configuration["election_timeout_ticks"],
            heartbeat_interval_ticks=configuration["heartbeat_interval_ticks"],
        )
    except ValueError as error:
        raise ConfigurationError(
            f"options election_timeout_ticks ({configuration['election_timeout_ticks']}) and "
            f"heartbeat_interval_ticks ({configuration['heartbeat_interval_ticks']}): {error}"
        ) from None
    if configuration["metrics_require_token"] and configuration["auth_token_file"] is None:
        raise ConfigurationError(
            "option metrics_require_token needs auth_token_file (--auth-token-file, "
            "TASKRAFT_AUTH_TOKEN_FILE): without tokens there is none to require"
        )
    tls_given = [name for name in ("tls_cert", "tls_key", "tls_ca") if configuration[name]]
    if tls_given and len(tls_given) < 3:
        raise ConfigurationError(
            "TLS needs all of tls_cert, tls_key and tls_ca (--tls-cert, --tls-key, --tls-ca, or "
            "TASKRAFT_TLS_CERT, TASKRAFT_TLS_KEY, TASKRAFT_TLS_CA); only "
            + ", ".join(tls_given)
            + " given"
        )
    members: Mapping[str, str] | None = configuration["initial_members"]
    return NodeSettings(
        node_id=NodeId(configuration["node_id"]),
        data_directory=configuration["data_dir"],
        client_address=configuration["client_address"],
        peer_address=configuration["peer_address"],
        http_address=configuration["http_address"],
        initial_members=(
            None
            if members is None
            else {NodeId(node): address for node, address in members.items()}
        ),
        join=configuration["join"],
        advertise_client_address=configuration["advertise_client_address"],
        advertise_peer_address=configuration["advertise_peer_address"],
        advertise_http_address=configuration["advertise_http_address"],
        cluster_id=configuration["cluster_id"],
        cluster_secret_file=configuration["cluster_secret_file"],
        raft=raft,
        replica=ReplicaSettings(
            tick_interval_ms=configuration["tick_interval_ms"],
            snapshot_interval_entries=configuration["snapshot_interval_entries"],
            pending_proposals_max=configuration["pending_proposals_max"],
        ),
        ready_lag_max_entries=configuration["ready_lag_max_entries"],
        connections_max=configuration["connections_max"],
        client_handshake_timeout_s=configuration["client_handshake_timeout_ms"] / 1000,
        long_polls_max=configuration["long_polls_max"],
        requests_per_token_max=configuration["requests_per_token_max"],
        shutdown_timeout_s=configuration["shutdown_timeout_ms"] / 1000,
        status_log_interval_s=configuration["status_log_interval_s"],
        auth_token_file=configuration["auth_token_file"],
        metrics_require_token=configuration["metrics_require_token"],
        tls=(
            TlsFiles(
                certificate=configuration["tls_cert"],
                key=configuration["tls_key"],
                authority=configuration["tls_ca"],
            )
            if tls_given
            else None
        ),
    )


def resolve_arguments(
    arguments: argparse.Namespace, environment: Mapping[str, str] | None = None
) -> ResolvedConfiguration:
    flags = {option.name: getattr(arguments, option.name) for option in OPTIONS}
    return resolve(flags, os.environ if environment is None else environment)


def settings_from_arguments(
    arguments: argparse.Namespace, environment: Mapping[str, str] | None = None
) -> NodeSettings:
    """The node settings of parsed `serve` arguments and the environment; ValueError if wrong."""
    return settings_from_configuration(resolve_arguments(arguments, environment))


def run_serve(arguments: argparse.Namespace) -> int:
    try:
        configuration = resolve_arguments(arguments)
        if arguments.print_config:
            print(configuration.describe())
        settings = settings_from_configuration(configuration)
        loop_factory = event_loop_factory(configuration["event_loop"])
    except ValueError as error:
        print(f"taskraft serve: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if arguments.print_config:
        return EXIT_STOPPED
    configure_logging(configuration["log_level"], configuration["log_format"])
    for name in unknown_environment_variables(os.environ, CLIENT_ENVIRONMENT_VARIABLES):
        logger.warning("ignoring the environment variable %s: no option has that name", name)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(settings))


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when chosen (or when `auto` finds it installed), else the standard one."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                "option event_loop is uvloop, but uvloop is not installed "
                "(pip install 'taskraft[fast]')"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def tune_garbage_collector() -> None:
    """Collect young objects less often: a node allocates a few objects per request and keeps
    millions (tasks, log entries) that the default thresholds would rescan over and over."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)


async def serve(settings: NodeSettings) -> int:
    """Run a node until a signal asks it to stop; the exit status."""
    tune_garbage_collector()
    node = Node(settings)
    set_log_context(node.log_context)
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
    await node.stop(graceful=failure is None)
    if failure is not None:
        logger.critical("node %s failed: %s", settings.node_id, failure)
        return EXIT_FAILED
    logger.info("node %s stopped", settings.node_id)
    return EXIT_STOPPED
