"""The `taskraft` command: run a node (`serve`), a local cluster (`dev`), or act as a client.

Each subcommand lives in its own module and registers itself on the one parser built here;
every subcommand sets `handler`, a function of the parsed arguments that returns the exit
status, so `main` only parses and dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import taskraft
from taskraft.cli.client_commands import register_client_commands
from taskraft.cli.dev import register_dev_command
from taskraft.cli.serve import register_serve_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskraft",
        description=(
            "taskraft: a durable, Raft-replicated priority task queue. Run nodes with `serve` "
            "(or a whole local cluster with `dev`); use the other commands as a client."
        ),
        epilog=(
            "quick start:\n"
            "  taskraft dev --nodes 3 --base-port 7100       # a local 3-node cluster\n"
            "  export TASKRAFT_SERVERS=127.0.0.1:7100,127.0.0.1:7110,127.0.0.1:7120\n"
            "  taskraft enqueue default 'hello' --priority 1\n"
            "  taskraft dequeue default\n"
            "  taskraft status\n\n"
            "run `taskraft COMMAND --help` for a command's options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taskraft {taskraft.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_serve_command(subparsers)
    register_dev_command(subparsers)
    register_client_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    status: int = arguments.handler(arguments)
    return status


def entry_point() -> None:
    """The console script: `taskraft ...`."""
    sys.exit(main())


__all__ = ["build_parser", "entry_point", "main"]
