"""Runs the local cluster from the command line until SIGTERM or SIGINT.

    PYTHONPATH=e2e .venv/bin/python -m localkube up --directory /tmp/localkube

Once the cluster is ready it prints the admin kubeconfig's path and the hosts file's path, and
writes both (with the API server's address and its own PID) to `<directory>/localkube.json`
and, as shell variables, `<directory>/localkube.env`. A process that should resolve the
cluster's names runs in a private mount namespace with the hosts file over /etc/hosts:

    unshare --mount sh -c 'mount --bind DIR/hosts /etc/hosts && exec COMMAND'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from localkube.cluster import DEFAULT_BINARIES, start_cluster
from localkube.kubelet import NODE_NAME


def parse_arguments(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localkube", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the cluster and run it until SIGTERM/SIGINT")
    up.add_argument("--directory", type=Path, required=True, help="where everything lives")
    up.add_argument(
        "--binaries", type=Path, default=DEFAULT_BINARIES, help="the control plane's executables"
    )
    up.add_argument("--node-name", default=NODE_NAME)
    up.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(arguments)


async def run_up(options: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    cluster = await start_cluster(
        options.directory, binaries=options.binaries, node_name=options.node_name
    )
    try:
        description = {
            "kubeconfig": str(cluster.kubeconfig),
            "hosts": str(cluster.hosts_file),
            "server": cluster.control_plane.server,
            "pid": os.getpid(),
        }
        directory = cluster.directory
        (directory / "localkube.json").write_text(json.dumps(description, indent=2) + "\n")
        (directory / "localkube.env").write_text(
            f"KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}\n"
            f"LOCALKUBE_HOSTS={shlex.quote(str(cluster.hosts_file))}\n"
        )
        print(f"kubeconfig: {cluster.kubeconfig}", flush=True)
        print(f"hosts: {cluster.hosts_file}", flush=True)
        print(f"ready (PID {os.getpid()}); SIGTERM or SIGINT stops everything", flush=True)
        while not stop.is_set():
            failed = cluster.failed_component()
            if failed is not None:
                logging.error("the %s stopped; stopping the cluster", failed)
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return 0
    finally:
        await cluster.stop()
        (options.directory / "localkube.json").unlink(missing_ok=True)


def main(arguments: list[str] | None = None) -> int:
    options = parse_arguments(sys.argv[1:] if arguments is None else arguments)
    options.directory = options.directory.resolve()
    options.directory.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[
            logging.StreamHandler(),
            logging.FileHandler(options.directory / "localkube.log"),
        ],
    )
    return asyncio.run(run_up(options))


if __name__ == "__main__":
    sys.exit(main())
