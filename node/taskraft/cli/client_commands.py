"""The `taskraft` subcommands that talk to a running cluster as a client.

Operators and scripts need to create queues, look at them, push and pull tasks by hand and see
which node leads without writing Python; these commands are that, a thin layer over
`taskraft.client.AsyncClient`. `taskraft.cli` builds the top-level parser and calls
`register_client_commands(subparsers)`; every command registered here sets `handler`, which
takes the parsed arguments and returns the exit status.

Exit statuses, the same for every command:

- 0 (`EXIT_OK`): done.
- 1 (`EXIT_ERROR`): the cluster answered an error (printed as `error: <name> (<code>):
  <message>` on stderr), or no server could be reached in time (`unavailable`); for `status`,
  no server answered. Among them `unauthenticated` (no token, or one the cluster does not know)
  and `forbidden` (the token's role does not allow the command), with a hint on stderr.

A cluster that requires tokens gets the one of `--token`, else of `$TASKRAFT_TOKEN` (the
variable is the better choice: a flag shows in the process list). The token is never printed.
A cluster that serves TLS is reached with `--tls-ca` (else `$TASKRAFT_TLS_CA`), the authority
its certificates come from, and, when a client certificate is wanted, `--tls-cert` and
`--tls-key` (else `$TASKRAFT_TLS_CERT` and `$TASKRAFT_TLS_KEY`: the same variables
`taskraft serve` reads, so a command run beside a node reaches it as the node's peers do).
- 2 (`EXIT_USAGE`): bad command line (argparse's own status), including a bad `--servers` or
  `TASKRAFT_SERVERS`.
- 3 (`EXIT_NO_TASK`): `dequeue` or `dequeue-many` found no task (within `--wait-ms`), so a
  script can tell an empty queue from a failure.
- 130 (`EXIT_INTERRUPTED`): interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import textwrap
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskraft.addresses import parse_address
from taskraft.client import AsyncClient, QueueDescription, Task
from taskraft.errors import Forbidden, TaskraftError, Unauthenticated
from taskraft.protocol import NodeStatus
from taskraft.protocol.exceptions import ProtocolError
from taskraft.tls import client_context

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_TASK = 3
EXIT_INTERRUPTED = 130

SERVERS_ENVIRONMENT_VARIABLE = "TASKRAFT_SERVERS"
TOKEN_ENVIRONMENT_VARIABLE = "TASKRAFT_TOKEN"
TLS_AUTHORITY_ENVIRONMENT_VARIABLE = "TASKRAFT_TLS_CA"
TLS_CERTIFICATE_ENVIRONMENT_VARIABLE = "TASKRAFT_TLS_CERT"
TLS_KEY_ENVIRONMENT_VARIABLE = "TASKRAFT_TLS_KEY"
DEFAULT_SERVERS = "127.0.0.1:7100"
DEFAULT_TIMEOUT_SECONDS = 10.0

ClientOperation = Callable[[AsyncClient, argparse.Namespace], Awaitable[int]]
Handler = Callable[[argparse.Namespace], int]

_HELP_WIDTH = 88

_EXIT_STATUS_HELP = (
    f"exit status: {EXIT_OK} done, {EXIT_ERROR} error from the cluster or no server reachable, "
    f"{EXIT_USAGE} bad usage,\n{EXIT_NO_TASK} dequeue or dequeue-many found no task, "
    f"{EXIT_INTERRUPTED} interrupted. Client options go after the command name."
)


# -- argument types ------------------------------------------------------------------------------


def parse_servers(text: str) -> list[str]:
    """A comma-separated list of `host:port` addresses; ValueError naming the bad one."""
    servers = [server.strip() for server in text.split(",") if server.strip()]
    if not servers:
        raise ValueError("no server address given")
    for server in servers:
        parse_address(server)
    return servers


def _servers_argument(text: str) -> list[str]:
    try:
        return parse_servers(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return seconds


def _non_negative_integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_integer(text: str) -> int:
    value = _non_negative_integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _priority_range(text: str) -> tuple[int, int]:
    low, separator, high = text.partition(":")
    try:
        if not separator:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LOW:HIGH, two integers such as 0:9, got {text!r}"
        ) from None


# -- registration --------------------------------------------------------------------------------


def _client_options() -> argparse.ArgumentParser:
    """The options every client command takes, as a parent parser."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("client options")
    group.add_argument(
        "--servers",
        type=_servers_argument,
        default=None,
        metavar="HOST:PORT[,HOST:PORT...]",
        help=(
            "client addresses of the cluster's nodes, comma-separated (default: "
            f"${SERVERS_ENVIRONMENT_VARIABLE}, else {DEFAULT_SERVERS})"
        ),
    )
    group.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help=(
            "the bearer token of a cluster that requires one (default: "
            f"${TOKEN_ENVIRONMENT_VARIABLE}, which keeps it out of the process list)"
        ),
    )
    for flag, variable, what in (
        ("--tls-ca", TLS_AUTHORITY_ENVIRONMENT_VARIABLE, "the authority (PEM) to trust"),
        ("--tls-cert", TLS_CERTIFICATE_ENVIRONMENT_VARIABLE, "a client certificate (PEM)"),
        ("--tls-key", TLS_KEY_ENVIRONMENT_VARIABLE, "the key of --tls-cert (PEM)"),
    ):
        group.add_argument(
            flag,
            default=None,
            metavar="PATH",
            help=f"TLS: {what} (default: ${variable})",
        )
    group.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=(
            "give up on a request that found no answer after this long, retries included "
            "(default: %(default)g)"
        ),
    )
    group.add_argument(
        "--json",
        dest="json_output",
        action="store_true",
        help='print machine-readable JSON instead of text; payloads as "payload_base64"',
    )
    return options


def _wrap(text: str) -> str:
    """A paragraph wrapped for help output (the raw formatter keeps the examples' lines)."""
    return textwrap.fill(text, width=_HELP_WIDTH)


def _add_command(
    subparsers: SubParsers,
    name: str,
    *,
    summary: str,
    description: str,
    examples: str,
    operation: ClientOperation,
    parents: list[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=_wrap(description),
        epilog=f"examples:\n{examples}\n\n{_EXIT_STATUS_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    parser.set_defaults(handler=client_command(operation))
    return parser


def _add_wait_and_lease_options(parser: argparse.ArgumentParser, *, plural: bool) -> None:
    """`--wait-ms` and `--lease-ms`, shared by `dequeue` and `dequeue-many`."""
    task, stays, it = ("tasks", "stay", "them") if plural else ("task", "stays", "it")
    gone = "they are gone" if plural else "it is gone"
    parser.add_argument(
        "--wait-ms",
        type=_non_negative_integer,
        default=0,
        metavar="MS",
        help="wait up to this long for a task when none is ready (default: %(default)s)",
    )
    parser.add_argument(
        "--lease-ms",
        type=_non_negative_integer,
        default=None,
        metavar="MS",
        help=(
            f"how long the {task} {stays} leased before {'they are' if plural else 'it is'} "
            f"delivered again (default: the queue's); 0 takes {it} without a lease: {gone} "
            "once delivered"
        ),
    )


def register_client_commands(subparsers: SubParsers) -> None:
    """Add the client commands to the `taskraft` parser's subcommands.

    `subparsers` is what `parser.add_subparsers(dest="command")` returned; each command sets
    `handler`, a function of the parsed arguments that returns the exit status.
    """
    parents = [_client_options()]

    queue_parser = subparsers.add_parser(
        "queue",
        help="create, delete and list queues",
        description="Create, delete and list the cluster's queues.",
        epilog=(
            "examples:\n"
            "  taskraft queue create jobs\n"
            "  taskraft queue list --servers 10.0.0.1:7100,10.0.0.2:7100\n"
            "  taskraft queue delete jobs\n\n"
            "run `taskraft queue COMMAND --help` for a command's options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    queue_commands = queue_parser.add_subparsers(
        dest="queue_command", metavar="COMMAND", required=True
    )

    create = _add_command(
        queue_commands,
        "create",
        summary="create a queue",
        description=(
            "Create a queue. Unset limits take the cluster's defaults; the queue's settings "
            "cannot be changed afterwards. Prints the new queue."
        ),
        examples=(
            "  taskraft queue create jobs\n"
            "  taskraft queue create emails --max-size 10000 --lease-ms-default 60000 \\\n"
            "      --max-deliveries 5 --dead-letter-queue emails-dead\n"
            "  taskraft queue create levels --kind buckets --priority-range 0:9\n"
            "  taskraft queue create signed --priority-range=-5:5   "
            "# '=' before a negative value"
        ),
        operation=_create_queue,
        parents=parents,
    )
    create.add_argument("name", metavar="NAME", help="the queue's name")
    create.add_argument(
        "--kind",
        choices=("heap", "buckets"),
        default="heap",
        help=(
            "heap: any priority, ordered by a heap; buckets: one FIFO per priority, "
            "needs --priority-range (default: %(default)s)"
        ),
    )
    create.add_argument(
        "--max-size", type=_non_negative_integer, metavar="N", help="most tasks the queue holds"
    )
    create.add_argument(
        "--max-payload-bytes",
        type=_non_negative_integer,
        metavar="N",
        help="largest payload the queue accepts, in bytes",
    )
    create.add_argument(
        "--priority-range",
        type=_priority_range,
        metavar="LOW:HIGH",
        help="the priorities the queue accepts, both included (lower is served first)",
    )
    create.add_argument(
        "--lease-ms-default",
        type=_non_negative_integer,
        metavar="MS",
        help="lease of a dequeue that names none, in milliseconds",
    )
    create.add_argument(
        "--max-deliveries",
        type=_non_negative_integer,
        metavar="N",
        help="deliveries after which a nacked or expired task is dead-lettered or dropped",
    )
    create.add_argument(
        "--dead-letter-queue",
        metavar="NAME",
        help="the queue that receives tasks past --max-deliveries",
    )

    delete = _add_command(
        queue_commands,
        "delete",
        summary="delete an empty queue",
        description="Delete a queue. Only an empty queue can be deleted (queue_not_empty).",
        examples="  taskraft queue delete jobs",
        operation=_delete_queue,
        parents=parents,
    )
    delete.add_argument("name", metavar="NAME", help="the queue's name")

    _add_command(
        queue_commands,
        "list",
        summary="list the queues with their settings and counts",
        description=(
            "List every queue, in name order: its kind, its ready, delayed and leased tasks "
            "and its settings ('-' is no limit)."
        ),
        examples="  taskraft queue list\n  taskraft queue list --json | jq '.[].name'",
        operation=_list_queues,
        parents=parents,
    )

    enqueue = _add_command(
        subparsers,
        "enqueue",
        summary="add a task to a queue; prints its id",
        description=(
            "Add a task to a queue and print its id. PAYLOAD is taken as UTF-8 text; '-' reads "
            "the payload's bytes from standard input, unchanged."
        ),
        examples=(
            "  taskraft enqueue jobs 'resize image 17'\n"
            "  taskraft enqueue jobs urgent --priority -5\n"
            "  taskraft enqueue jobs 'send report' --delay-ms 60000 --key report-2024-06\n"
            "  gzip -c data.json | taskraft enqueue jobs -"
        ),
        operation=_enqueue,
        parents=parents,
    )
    enqueue.add_argument("queue", metavar="QUEUE", help="the queue's name")
    enqueue.add_argument(
        "payload", metavar="PAYLOAD", help="the task's payload as text, or '-' for standard input"
    )
    enqueue.add_argument(
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help="lower priorities are served first (default: %(default)s)",
    )
    enqueue.add_argument(
        "--key",
        metavar="KEY",
        help=(
            "idempotency key: enqueueing the same key again within 10 minutes returns the first "
            "task's id instead of adding a task (default: a fresh random key)"
        ),
    )
    enqueue.add_argument(
        "--delay-ms",
        type=_non_negative_integer,
        default=0,
        metavar="MS",
        help="the task becomes ready this many milliseconds from now (default: %(default)s)",
    )

    dequeue = _add_command(
        subparsers,
        "dequeue",
        summary="take the next task from a queue",
        description=(
            "Take the ready task with the lowest priority and print it: id, priority, "
            "deliveries, lease and payload (as text if it is valid UTF-8, else as a Python "
            "bytes literal). Settle it afterwards with `taskraft ack|nack|extend TASK_ID "
            f"LEASE`. When no task came, prints 'no task' and exits with {EXIT_NO_TASK}."
        ),
        examples=(
            "  taskraft dequeue jobs\n"
            "  taskraft dequeue jobs --wait-ms 5000 --lease-ms 60000\n"
            "  taskraft dequeue jobs --json | jq -r .payload_base64 | base64 -d"
        ),
        operation=_dequeue,
        parents=parents,
    )
    dequeue.add_argument("queue", metavar="QUEUE", help="the queue's name")
    _add_wait_and_lease_options(dequeue, plural=False)

    enqueue_many = _add_command(
        subparsers,
        "enqueue-many",
        summary="add one task per line of input; prints their ids",
        description=(
            "Add one task per line of FILE (default: standard input) to a queue, in order, and "
            "print their ids, one per line. A line's bytes without its line ending are the "
            "payload; empty lines are skipped. The tasks travel in batches of up to 1000 tasks "
            "and 640 KiB, each added whole or not at all; if one fails, the tasks of the "
            "batches before it stay enqueued. Every task gets a fresh idempotency key, so a "
            "batch retried after a lost answer is not added twice."
        ),
        examples=(
            "  seq 1 100 | taskraft enqueue-many jobs\n"
            "  taskraft enqueue-many jobs urls.txt --priority 2\n"
            "  taskraft enqueue-many jobs --json < lines.txt | jq '.task_ids | length'"
        ),
        operation=_enqueue_many,
        parents=parents,
    )
    enqueue_many.add_argument("queue", metavar="QUEUE", help="the queue's name")
    enqueue_many.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        default="-",
        help="the file to read, one payload per line; '-' for standard input (default)",
    )
    enqueue_many.add_argument(
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help="the priority of every task; lower is served first (default: %(default)s)",
    )
    enqueue_many.add_argument(
        "--delay-ms",
        type=_non_negative_integer,
        default=0,
        metavar="MS",
        help="the tasks become ready this many milliseconds from now (default: %(default)s)",
    )

    dequeue_many = _add_command(
        subparsers,
        "dequeue-many",
        summary="take up to N tasks from a queue",
        description=(
            "Take up to --max-tasks ready tasks, lowest priority first, and print one row per "
            "task: id, priority, deliveries, lease and payload (as text if it is valid, "
            "printable UTF-8, else as a Python bytes literal). Fewer tasks may come than asked "
            "when the answer reaches 640 KiB of payloads. When no task came, prints 'no task' "
            f"and exits with {EXIT_NO_TASK}."
        ),
        examples=(
            "  taskraft dequeue-many jobs --max-tasks 100\n"
            "  taskraft dequeue-many jobs --max-tasks 10 --wait-ms 5000 --lease-ms 60000\n"
            "  taskraft dequeue-many jobs --max-tasks 50 --json | jq -r '.[].id'"
        ),
        operation=_dequeue_many,
        parents=parents,
    )
    dequeue_many.add_argument("queue", metavar="QUEUE", help="the queue's name")
    dequeue_many.add_argument(
        "--max-tasks",
        type=_positive_integer,
        required=True,
        metavar="N",
        help="the most tasks to take (more than 1000 are asked in several requests)",
    )
    _add_wait_and_lease_options(dequeue_many, plural=True)

    ack = _add_command(
        subparsers,
        "ack",
        summary="mark a dequeued task done",
        description=(
            "Acknowledge a task: it is done and removed. TASK_ID and LEASE are the ones "
            "`taskraft dequeue` printed; unknown_lease means the lease had ended."
        ),
        examples="  taskraft ack 42 918273",
        operation=_ack,
        parents=parents,
    )
    _add_task_arguments(ack)

    nack = _add_command(
        subparsers,
        "nack",
        summary="give a dequeued task back",
        description=(
            "Give a task back: it is ready again (after --delay-ms), or dead-lettered once it "
            "reached the queue's max deliveries."
        ),
        examples="  taskraft nack 42 918273\n  taskraft nack 42 918273 --delay-ms 30000",
        operation=_nack,
        parents=parents,
    )
    _add_task_arguments(nack)
    nack.add_argument(
        "--delay-ms",
        type=_non_negative_integer,
        default=0,
        metavar="MS",
        help="the task is ready again after this many milliseconds (default: %(default)s)",
    )

    extend = _add_command(
        subparsers,
        "extend",
        summary="extend the lease of a dequeued task",
        description="Keep a task leased: its lease now ends LEASE_MS milliseconds from now.",
        examples="  taskraft extend 42 918273 60000",
        operation=_extend,
        parents=parents,
    )
    _add_task_arguments(extend)
    extend.add_argument(
        "lease_ms", type=_non_negative_integer, metavar="LEASE_MS", help="the new lease, in ms"
    )

    count = _add_command(
        subparsers,
        "count",
        summary="count a queue's ready, delayed and leased tasks",
        description="Print how many tasks of a queue are ready, delayed and leased.",
        examples="  taskraft count jobs\n  taskraft count jobs --json",
        operation=_count,
        parents=parents,
    )
    count.add_argument("queue", metavar="QUEUE", help="the queue's name")

    status = subparsers.add_parser(
        "status",
        help="show every server's role, term and log position",
        description=_wrap(
            "Ask every server of --servers for its status and print one row per server: node, "
            "address, role, term, the leader it knows, commit index, applied index and lag "
            "(the highest commit index among the rows minus the row's applied index). A "
            "server that did not answer within --timeout gets an 'unreachable' row and a note "
            "on stderr. Exits with 0 when at least one server answered, else 1."
        ),
        epilog=(
            "examples:\n"
            "  taskraft status --servers 10.0.0.1:7100,10.0.0.2:7100,10.0.0.3:7100\n"
            "  TASKRAFT_SERVERS=10.0.0.1:7100,10.0.0.2:7100 taskraft status --timeout 2\n\n"
            f"{_EXIT_STATUS_HELP}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    status.set_defaults(handler=_status)


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "task_id", type=_non_negative_integer, metavar="TASK_ID", help="the task's id"
    )
    parser.add_argument(
        "lease",
        type=_non_negative_integer,
        metavar="LEASE",
        help="the lease token the dequeue printed",
    )


# -- running a command ---------------------------------------------------------------------------


def _servers_of(arguments: argparse.Namespace) -> list[str]:
    """--servers, else $TASKRAFT_SERVERS, else the default; ValueError for a bad variable."""
    servers: list[str] | None = arguments.servers
    if servers is not None:
        return servers
    from_environment = os.environ.get(SERVERS_ENVIRONMENT_VARIABLE, "").strip()
    if not from_environment:
        return [DEFAULT_SERVERS]
    try:
        return parse_servers(from_environment)
    except ValueError as error:
        raise ValueError(f"${SERVERS_ENVIRONMENT_VARIABLE}: {error}") from None


def _token_of(arguments: argparse.Namespace) -> str | None:
    """--token, else $TASKRAFT_TOKEN, else None (a cluster without authentication)."""
    token: str | None = getattr(arguments, "token", None)
    if token is None:
        token = os.environ.get(TOKEN_ENVIRONMENT_VARIABLE, "").strip() or None
    return token


def _tls_of(arguments: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context of --tls-ca/--tls-cert/--tls-key (or their variables), None for plain
    TCP; TlsConfigurationError for files that cannot be used."""
    paths = {}
    for name, variable in (
        ("tls_ca", TLS_AUTHORITY_ENVIRONMENT_VARIABLE),
        ("tls_cert", TLS_CERTIFICATE_ENVIRONMENT_VARIABLE),
        ("tls_key", TLS_KEY_ENVIRONMENT_VARIABLE),
    ):
        value: str | None = getattr(arguments, name, None)
        if value is None:
            value = os.environ.get(variable, "").strip() or None
        paths[name] = value
    if all(value is None for value in paths.values()):
        return None
    return client_context(paths["tls_ca"], certificate=paths["tls_cert"], key=paths["tls_key"])


def _report_error(error: BaseException) -> None:
    if isinstance(error, TaskraftError):
        print(f"error: {error.name} ({error.code}): {error.message}", file=sys.stderr)
    else:
        print(f"error: {error}", file=sys.stderr)
    _report_hint(error)


def _report_hint(error: BaseException) -> None:
    if isinstance(error, Unauthenticated):
        print(
            f"hint: the cluster requires a token it knows: set ${TOKEN_ENVIRONMENT_VARIABLE} "
            "(or --token)",
            file=sys.stderr,
        )
    elif isinstance(error, Forbidden):
        print(
            "hint: the token's role does not allow this command; use a token whose role does",
            file=sys.stderr,
        )


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine to its exit status, turning expected failures into messages."""
    try:
        return asyncio.run(coroutine)
    except (TaskraftError, ProtocolError, OSError) as error:
        # OSError: reading the payload from stdin failed. The client turns connection failures
        # into `Unavailable`, a TaskraftError.
        _report_error(error)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _client(
    servers: Sequence[str], arguments: argparse.Namespace, tls: ssl.SSLContext | None
) -> AsyncClient:
    return AsyncClient(
        servers,
        client_name="taskraft-cli",
        token=_token_of(arguments),
        tls=tls,
        request_timeout_s=arguments.timeout,
    )


def client_command(operation: ClientOperation) -> Handler:
    """A handler that runs `operation` with a client of --servers and returns its exit status."""

    def handler(arguments: argparse.Namespace) -> int:
        try:
            servers = _servers_of(arguments)
            tls = _tls_of(arguments)
        except ValueError as error:
            # TlsConfigurationError is a ValueError.
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE

        async def with_client() -> int:
            async with _client(servers, arguments, tls) as client:
                return await operation(client, arguments)

        return _run(with_client())

    return handler


def _print_json(value: object) -> None:
    print(json.dumps(value))


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _payload_text(payload: bytes) -> str:
    """The payload as text when it is valid UTF-8, else as a Python bytes literal."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return repr(payload)


def _payload_cell(payload: bytes) -> str:
    """The payload as one table cell: text when it is printable UTF-8, else a bytes literal."""
    text = _payload_text(payload)
    return text if text.isprintable() else repr(payload)


def _task_json(task: Task) -> dict[str, object]:
    return {
        "id": task.id,
        "queue": task.queue,
        "priority": task.priority,
        "deliveries": task.deliveries,
        "lease": task.lease,
        "lease_ms": task.lease_ms,
        "payload_base64": base64.b64encode(task.payload).decode("ascii"),
    }


def _settled_task(arguments: argparse.Namespace) -> Task:
    """A `Task` naming the task and lease of the command line, for ack, nack and extend.

    Those calls send only the id and the lease (`Task._task_lease`); the other fields are
    placeholders the client never reads.
    """
    return Task(
        id=arguments.task_id,
        priority=0,
        payload=b"",
        deliveries=0,
        lease=arguments.lease,
        queue="",
        lease_ms=None,
    )


# -- the commands --------------------------------------------------------------------------------


async def _create_queue(client: AsyncClient, arguments: argparse.Namespace) -> int:
    description = await client.create_queue(
        arguments.name,
        arguments.kind,
        max_size=arguments.max_size,
        max_payload_bytes=arguments.max_payload_bytes,
        priority_range=arguments.priority_range,
        lease_ms_default=arguments.lease_ms_default,
        max_deliveries=arguments.max_deliveries,
        dead_letter_queue=arguments.dead_letter_queue,
    )
    if arguments.json_output:
        _print_json(description.to_wire())
    else:
        print(f"created queue {description.name}")
        _print_queue_table([description])
    return EXIT_OK


async def _delete_queue(client: AsyncClient, arguments: argparse.Namespace) -> int:
    await client.delete_queue(arguments.name)
    if arguments.json_output:
        _print_json({"deleted": arguments.name})
    else:
        print(f"deleted queue {arguments.name}")
    return EXIT_OK


async def _list_queues(client: AsyncClient, arguments: argparse.Namespace) -> int:
    queues = await client.list_queues()
    if arguments.json_output:
        _print_json([description.to_wire() for description in queues])
    elif not queues:
        print("no queues")
    else:
        _print_queue_table(queues)
    return EXIT_OK


def _print_queue_table(queues: Sequence[QueueDescription]) -> None:
    header = (
        "NAME",
        "KIND",
        "READY",
        "DELAYED",
        "LEASED",
        "MAX SIZE",
        "MAX PAYLOAD BYTES",
        "PRIORITY RANGE",
        "LEASE MS DEFAULT",
        "MAX DELIVERIES",
        "DEAD LETTER QUEUE",
    )
    rows = []
    for description in queues:
        policies, counts = description.policies, description.counts
        priority_range = policies.priority_range
        rows.append(
            (
                description.name,
                policies.kind,
                str(counts.ready),
                str(counts.delayed),
                str(counts.leased),
                _or_dash(policies.max_size),
                _or_dash(policies.max_payload_bytes),
                "-" if priority_range is None else f"{priority_range[0]}:{priority_range[1]}",
                str(policies.lease_ms_default),
                _or_dash(policies.max_deliveries),
                _or_dash(policies.dead_letter_queue),
            )
        )
    _print_table(header, rows)


def _read_payload(text: str) -> bytes:
    if text == "-":
        return sys.stdin.buffer.read()
    # surrogateescape gives back the exact bytes of an argument that was not valid UTF-8.
    return text.encode("utf-8", "surrogateescape")


async def _enqueue(client: AsyncClient, arguments: argparse.Namespace) -> int:
    payload = _read_payload(arguments.payload)
    task_id = await client.enqueue(
        arguments.queue,
        payload,
        arguments.priority,
        key=arguments.key,
        delay_ms=arguments.delay_ms,
    )
    if arguments.json_output:
        _print_json({"task_id": task_id, "queue": arguments.queue})
    else:
        print(task_id)
    return EXIT_OK


async def _dequeue(client: AsyncClient, arguments: argparse.Namespace) -> int:
    task = await client.dequeue(
        arguments.queue, wait_ms=arguments.wait_ms, lease_ms=arguments.lease_ms
    )
    if task is None:
        if arguments.json_output:
            _print_json(None)
        else:
            print("no task")
        return EXIT_NO_TASK
    if arguments.json_output:
        _print_json(_task_json(task))
        return EXIT_OK
    lease = "none (taken without a lease)" if task.lease is None else str(task.lease)
    print(f"id: {task.id}")
    print(f"queue: {task.queue}")
    print(f"priority: {task.priority}")
    print(f"deliveries: {task.deliveries}")
    print(f"lease: {lease}")
    print(f"lease ms: {_or_dash(task.lease_ms)}")
    print(f"payload: {_payload_text(task.payload)}")
    return EXIT_OK


def _read_lines(path: str) -> list[bytes]:
    """The non-empty lines of a file ('-': standard input), as bytes without line endings."""
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as file:
            data = file.read()
    return [line for line in data.splitlines() if line]


async def _enqueue_many(client: AsyncClient, arguments: argparse.Namespace) -> int:
    payloads = _read_lines(arguments.file)
    task_ids = await client.enqueue_many(
        arguments.queue, payloads, priority=arguments.priority, delay_ms=arguments.delay_ms
    )
    if arguments.json_output:
        _print_json({"queue": arguments.queue, "task_ids": task_ids})
    else:
        for task_id in task_ids:
            print(task_id)
    return EXIT_OK


async def _dequeue_many(client: AsyncClient, arguments: argparse.Namespace) -> int:
    tasks = await client.dequeue_many(
        arguments.queue,
        arguments.max_tasks,
        wait_ms=arguments.wait_ms,
        lease_ms=arguments.lease_ms,
    )
    if arguments.json_output:
        _print_json([_task_json(task) for task in tasks])
    elif not tasks:
        print("no task")
    else:
        _print_table(
            ("ID", "PRIORITY", "DELIVERIES", "LEASE", "PAYLOAD"),
            [
                (
                    str(task.id),
                    str(task.priority),
                    str(task.deliveries),
                    _or_dash(task.lease),
                    _payload_cell(task.payload),
                )
                for task in tasks
            ],
        )
    return EXIT_OK if tasks else EXIT_NO_TASK


async def _ack(client: AsyncClient, arguments: argparse.Namespace) -> int:
    await client.ack(_settled_task(arguments))
    if arguments.json_output:
        _print_json({"task_id": arguments.task_id, "acked": True})
    else:
        print(f"acked task {arguments.task_id}")
    return EXIT_OK


async def _nack(client: AsyncClient, arguments: argparse.Namespace) -> int:
    await client.nack(_settled_task(arguments), delay_ms=arguments.delay_ms)
    if arguments.json_output:
        _print_json({"task_id": arguments.task_id, "nacked": True})
    else:
        print(f"nacked task {arguments.task_id}")
    return EXIT_OK


async def _extend(client: AsyncClient, arguments: argparse.Namespace) -> int:
    await client.extend(_settled_task(arguments), arguments.lease_ms)
    if arguments.json_output:
        _print_json({"task_id": arguments.task_id, "lease_ms": arguments.lease_ms})
    else:
        print(f"extended the lease of task {arguments.task_id} to {arguments.lease_ms} ms")
    return EXIT_OK


async def _count(client: AsyncClient, arguments: argparse.Namespace) -> int:
    counts = await client.count(arguments.queue)
    if arguments.json_output:
        _print_json({"queue": arguments.queue, **counts.to_wire()})
    else:
        print(f"ready: {counts.ready}")
        print(f"delayed: {counts.delayed}")
        print(f"leased: {counts.leased}")
    return EXIT_OK


# -- status --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ServerStatus:
    """One server's answer to `status`, or why there was none."""

    address: str
    status: NodeStatus | None
    error: str | None


async def _status_of(
    address: str, arguments: argparse.Namespace, tls: ssl.SSLContext | None
) -> _ServerStatus:
    # One client per server: a client only ever asks the one node it is connected to, and
    # `status` is answered by any node, so this client's node is `address` itself.
    try:
        async with _client([address], arguments, tls) as client:
            return _ServerStatus(address, await client.status(), None)
    except (TaskraftError, ProtocolError) as error:
        if isinstance(error, TaskraftError):
            reason = f"{error.name} ({error.code}): {error.message}"
        else:
            reason = str(error)
        return _ServerStatus(address, None, reason)


async def _statuses(
    servers: Sequence[str], arguments: argparse.Namespace, tls: ssl.SSLContext | None
) -> int:
    answers = await asyncio.gather(
        *(_status_of(address, arguments, tls) for address in servers)
    )
    answered = [answer.status for answer in answers if answer.status is not None]
    highest_commit = max((status.commit_index for status in answered), default=0)
    for answer in answers:
        if answer.error is not None:
            print(f"taskraft status: {answer.address} unreachable: {answer.error}", file=sys.stderr)
    if arguments.json_output:
        _print_json([_status_to_json(answer, highest_commit) for answer in answers])
    else:
        header = (
            "NODE",
            "ADDRESS",
            "ROLE",
            "TERM",
            "LEADER",
            "COMMIT INDEX",
            "APPLIED INDEX",
            "LAG",
        )
        rows = []
        for answer in answers:
            status = answer.status
            if status is None:
                rows.append(("-", answer.address, "unreachable", "-", "-", "-", "-", "-"))
                continue
            rows.append(
                (
                    status.node,
                    answer.address,
                    status.role,
                    str(status.term),
                    _or_dash(status.leader_id),
                    str(status.commit_index),
                    str(status.applied_index),
                    str(highest_commit - status.applied_index),
                )
            )
        _print_table(header, rows)
    if not answered:
        print(f"error: none of {len(servers)} server(s) answered", file=sys.stderr)
        refusals = [answer.error for answer in answers if answer.error is not None]
        if any(error.startswith(f"{Unauthenticated.name} (") for error in refusals):
            _report_hint(Unauthenticated())
        return EXIT_ERROR
    return EXIT_OK


def _status_to_json(answer: _ServerStatus, highest_commit: int) -> dict[str, object]:
    status = answer.status
    if status is None:
        return {"address": answer.address, "reachable": False, "error": answer.error}
    return {
        "address": answer.address,
        "reachable": True,
        **status.to_wire(),
        "lag": highest_commit - status.applied_index,
    }


def _status(arguments: argparse.Namespace) -> int:
    try:
        servers = _servers_of(arguments)
        tls = _tls_of(arguments)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return _run(_statuses(servers, arguments, tls))


__all__ = [
    "DEFAULT_SERVERS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NO_TASK",
    "EXIT_OK",
    "EXIT_USAGE",
    "SERVERS_ENVIRONMENT_VARIABLE",
    "TOKEN_ENVIRONMENT_VARIABLE",
    "client_command",
    "parse_servers",
    "register_client_commands",
]
