"""Runs the local cluster from the command line.

    PYTHONPATH=e2e .venv/bin/python -m localkube up --directory /tmp/localkube
    PYTHONPATH=e2e .venv/bin/python -m localkube run --directory /tmp/localkube -- COMMAND ...

Both first move into network and mount namespaces of their own (network.py): the cluster, its
pods and everything `run` starts live there, and nothing of it is visible on the machine's own
network. `up` runs the cluster until SIGTERM or SIGINT; once it is ready it prints the admin
kubeconfig's path and the hosts file's path, and writes both (with the API server's address and
its own PID) to `<directory>/localkube.json` and, as shell variables, `<directory>/localkube.env`.
Another process joins with `nsenter --target PID --net --mount COMMAND`.

`run` starts the cluster, puts its hosts file over /etc/hosts (in its own mount namespace
only), runs COMMAND with KUBECONFIG naming the admin kubeconfig, TASKRAFT_E2E_REACH=direct,
TASKRAFT_E2E_AUDIT_LOG naming the API server's audit log and e2e/.bin first on PATH, stops
the cluster and exits with COMMAND's status. `make e2e` runs the end-to-end suite this way.
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
import subprocess
import sys
from pathlib import Path

from localkube.cluster import DEFAULT_BINARIES, LocalCluster, start_cluster
from localkube.kubelet import NODE_NAME
from localkube.network import enter_cluster_namespace, set_up_cluster_network

# What `run` gives COMMAND once the cluster is stopped: a command that outlives the cluster's
# stop is killed.
COMMAND_STOP_SECONDS = 30.0


def parse_arguments(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localkube", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the cluster and run it until SIGTERM/SIGINT")
    run = commands.add_parser("run", help="start the cluster, run COMMAND in it, stop it")
    for command in (up, run):
        command.add_argument("--directory", type=Path, required=True, help="where everything lives")
        command.add_argument(
            "--binaries",
            type=Path,
            default=DEFAULT_BINARIES,
            help="the control plane's executables",
        )
        command.add_argument("--node-name", default=NODE_NAME)
        command.add_argument(
            "--log-level", default="info", choices=["debug", "info", "warning", "error"]
        )
    run.add_argument("arguments", nargs=argparse.REMAINDER, help="-- COMMAND [ARGUMENT ...]")
    options = parser.parse_args(arguments)
    if options.command == "run":
        if options.arguments[:1] == ["--"]:
            options.arguments = options.arguments[1:]
        if not options.arguments:
            parser.error("run needs a COMMAND after --")
    return options


def describe(cluster: LocalCluster) -> None:
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


async def watch(cluster: LocalCluster, done: asyncio.Event) -> int:
    """Wait until `done` (0) or until a component of the cluster stops by itself (1)."""
    while not done.is_set():
        failed = cluster.failed_component()
        if failed is not None:
            logging.error("the %s stopped; stopping the cluster", failed)
            return 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)
    return 0


async def run_cluster(options: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    cluster = await start_cluster(
        options.directory, binaries=options.binaries, node_name=options.node_name
    )
    try:
        describe(cluster)
        if options.command == "up":
            print(f"ready (PID {os.getpid()}); SIGTERM or SIGINT stops everything", flush=True)
            return await watch(cluster, stop)
        return await run_command(cluster, options, stop)
    finally:
        await cluster.stop()
        (options.directory / "localkube.json").unlink(missing_ok=True)


async def run_command(
    cluster: LocalCluster, options: argparse.Namespace, stop: asyncio.Event
) -> int:
    # This process's mount namespace is the cluster's own: the pods bind their own hosts files
    # over this one, and COMMAND resolves the cluster's names through it.
    subprocess.run(["mount", "--bind", str(cluster.hosts_file), "/etc/hosts"], check=True)
    binaries = options.binaries.resolve()
    environment = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "TASKRAFT_E2E_REACH": "direct",
        "TASKRAFT_E2E_AUDIT_LOG": str(cluster.control_plane.audit_log),
        "PATH": f"{binaries}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    process = await asyncio.create_subprocess_exec(*options.arguments, env=environment)
    finished = asyncio.Event()
    waiting = asyncio.create_task(process.wait())
    waiting.add_done_callback(lambda _: finished.set())
    ended = asyncio.create_task(watch(cluster, finished))
    await asyncio.wait(
        {waiting, asyncio.create_task(stop.wait()), ended}, return_when="FIRST_COMPLETED"
    )
    if not waiting.done():
        logging.error("stopping %s: the cluster or this process is stopping", options.arguments[0])
        process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(waiting), COMMAND_STOP_SECONDS)
        except TimeoutError:
            process.kill()
            await waiting
        return 1
    ended.cancel()
    return waiting.result()


def main(arguments: list[str] | None = None) -> int:
    raw_arguments = sys.argv[1:] if arguments is None else arguments
    options = parse_arguments(raw_arguments)
    enter_cluster_namespace(["-m", "localkube", *raw_arguments])
    set_up_cluster_network()
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
    return asyncio.run(run_cluster(options))


if __name__ == "__main__":
    sys.exit(main())
