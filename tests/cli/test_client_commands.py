"""The client commands of the `taskraft` command line against three real replicas.

The cluster (tests/server/served_cluster.py) runs in its own event loop on a background thread
for the whole module; each command runs in the test's thread, in-process, through a parser built
as `taskraft.cli` builds it, and its exit status, stdout and stderr are checked. Every wait has a
deadline: the cluster's start and stop, and each command's own `--timeout`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The shared in-loop cluster lives with the server tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from served_cluster import ServedCluster, served_in_a_thread

from taskraft.cli.client_commands import (
    EXIT_ERROR,
    EXIT_NO_TASK,
    EXIT_OK,
    EXIT_USAGE,
    register_client_commands,
)
from taskraft.queue.limits import LEASE_MS_DEFAULT

COMMAND_TIMEOUT = "5"


@dataclass
class Outcome:
    status: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCluster]:
    with served_in_a_thread(tmp_path_factory.mktemp("cluster")) as served:
        yield served


def parser() -> argparse.ArgumentParser:
    """The top-level parser as `taskraft.cli.main` builds it, with only the client commands."""
    top = argparse.ArgumentParser(prog="taskraft")
    register_client_commands(top.add_subparsers(dest="command"))
    return top


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Outcome:
    capsys.readouterr()
    arguments = parser().parse_args(list(argv))
    status = arguments.handler(arguments)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return Outcome(status, captured.out, captured.err)


def servers_of(cluster: ServedCluster) -> str:
    return ",".join(cluster.addresses.values())


def client(capsys: pytest.CaptureFixture[str], cluster: ServedCluster, *argv: str) -> Outcome:
    """Run a client command against the cluster."""
    return run(capsys, *argv, "--servers", servers_of(cluster), "--timeout", COMMAND_TIMEOUT)


def closed_port_address() -> str:
    """An address on 127.0.0.1 where nothing listens (a port just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_create_list_and_delete_a_queue(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    created = client(
        capsys,
        cluster,
        "queue",
        "create",
        "reports",
        "--kind",
        "buckets",
        "--priority-range=-2:9",
        "--max-size",
        "100",
        "--max-payload-bytes",
        "4096",
        "--lease-ms-default",
        "15000",
        "--max-deliveries",
        "4",
    )
    assert created.status == EXIT_OK, created.err
    assert created.out.startswith("created queue reports\n")

    listed = client(capsys, cluster, "queue", "list")
    assert listed.status == EXIT_OK, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split()[:5] == ["NAME", "KIND", "READY", "DELAYED", "LEASED"]
    row = next(row.split() for row in rows if row.split()[0] == "reports")
    assert row == ["reports", "buckets", "0", "0", "0", "100", "4096", "-2:9", "15000", "4", "-"]

    listed_json = client(capsys, cluster, "queue", "list", "--json")
    assert listed_json.status == EXIT_OK
    queues = listed_json.json()
    assert isinstance(queues, list)
    reports = next(queue for queue in queues if queue["name"] == "reports")
    assert reports["policies"]["kind"] == "buckets"
    assert reports["policies"]["priority_range"] == [-2, 9]
    assert reports["counts"] == {"ready": 0, "delayed": 0, "leased": 0}

    deleted = client(capsys, cluster, "queue", "delete", "reports")
    assert deleted.status == EXIT_OK, deleted.err
    assert deleted.out == "deleted queue reports\n"
    after = client(capsys, cluster, "queue", "list", "--json")
    remaining = after.json()
    assert isinstance(remaining, list)
    assert "reports" not in [queue["name"] for queue in remaining]

    again = client(capsys, cluster, "queue", "delete", "reports")
    assert again.status == EXIT_ERROR
    assert again.err.startswith("error: queue_not_found (2): ")


def test_enqueue_then_dequeue_in_priority_order_and_ack(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client(capsys, cluster, "queue", "create", "jobs").status == EXIT_OK
    task_ids = {}
    for priority in ("5", "-1", "3"):
        enqueued = client(
            capsys, cluster, "enqueue", "jobs", f"task {priority}", "--priority", priority
        )
        assert enqueued.status == EXIT_OK, enqueued.err
        task_ids[int(priority)] = int(enqueued.out)
    assert len(set(task_ids.values())) == 3

    counted = client(capsys, cluster, "count", "jobs")
    assert counted.status == EXIT_OK
    assert counted.out == "ready: 3\ndelayed: 0\nleased: 0\n"

    delivered = []
    for priority in (-1, 3, 5):
        dequeued = client(capsys, cluster, "dequeue", "jobs")
        assert dequeued.status == EXIT_OK, dequeued.err
        fields = dict(line.split(": ", 1) for line in dequeued.out.splitlines())
        assert fields["id"] == str(task_ids[priority])
        assert fields["priority"] == str(priority)
        assert fields["payload"] == f"task {priority}"
        assert fields["deliveries"] == "1"
        delivered.append(fields)

    for fields in delivered:
        acked = client(capsys, cluster, "ack", fields["id"], fields["lease"])
        assert acked.status == EXIT_OK, acked.err
        assert acked.out == f"acked task {fields['id']}\n"
    assert client(capsys, cluster, "count", "jobs", "--json").json() == {
        "queue": "jobs",
        "ready": 0,
        "delayed": 0,
        "leased": 0,
    }

    # The lease is gone once acknowledged.
    stale = client(capsys, cluster, "ack", delivered[0]["id"], delivered[0]["lease"])
    assert stale.status == EXIT_ERROR
    assert stale.err.startswith("error: unknown_lease (12): ")


def test_nack_puts_the_task_back_and_extend_keeps_it(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client(capsys, cluster, "queue", "create", "retries").status == EXIT_OK
    assert client(capsys, cluster, "enqueue", "retries", "flaky").status == EXIT_OK
    first = client(capsys, cluster, "dequeue", "retries", "--json", "--lease-ms", "30000")
    assert first.status == EXIT_OK, first.err
    task = first.json()
    assert isinstance(task, dict)
    assert task["deliveries"] == 1 and task["lease_ms"] == 30000

    extended = client(capsys, cluster, "extend", str(task["id"]), str(task["lease"]), "60000")
    assert extended.status == EXIT_OK, extended.err
    assert client(capsys, cluster, "count", "retries").out == "ready: 0\ndelayed: 0\nleased: 1\n"

    nacked = client(capsys, cluster, "nack", str(task["id"]), str(task["lease"]))
    assert nacked.status == EXIT_OK, nacked.err
    assert nacked.out == f"nacked task {task['id']}\n"
    assert client(capsys, cluster, "count", "retries").out == "ready: 1\ndelayed: 0\nleased: 0\n"

    second = client(capsys, cluster, "dequeue", "retries", "--json")
    assert second.status == EXIT_OK, second.err
    again = second.json()
    assert isinstance(again, dict)
    assert again["id"] == task["id"] and again["deliveries"] == 2
    assert base64.b64decode(again["payload_base64"]) == b"flaky"

    delayed = client(
        capsys, cluster, "nack", str(again["id"]), str(again["lease"]), "--delay-ms", "600000"
    )
    assert delayed.status == EXIT_OK, delayed.err
    assert client(capsys, cluster, "count", "retries").out == "ready: 0\ndelayed: 1\nleased: 0\n"


def test_payload_from_stdin_and_json_output(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client(capsys, cluster, "queue", "create", "blobs", "--json").json() == {
        "name": "blobs",
        "policies": {
            "kind": "heap",
            "max_size": None,
            "max_payload_bytes": None,
            "priority_range": None,
            "lease_ms_default": LEASE_MS_DEFAULT,
            "max_deliveries": None,
            "dead_letter_queue": None,
        },
        "counts": {"ready": 0, "delayed": 0, "leased": 0},
    }
    binary = b"\xff\x00not utf-8\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(binary)))
    enqueued = client(capsys, cluster, "enqueue", "blobs", "-", "--json", "--key", "blob-1")
    assert enqueued.status == EXIT_OK, enqueued.err
    result = enqueued.json()
    assert isinstance(result, dict) and result["queue"] == "blobs"
    assert isinstance(result["task_id"], int)

    text = client(capsys, cluster, "dequeue", "blobs", "--lease-ms", "0")
    assert text.status == EXIT_OK, text.err
    assert f"payload: {binary!r}\n" in text.out
    assert "lease: none (taken without a lease)\n" in text.out

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(binary)))
    assert client(capsys, cluster, "enqueue", "blobs", "-", "--priority", "2").status == EXIT_OK
    as_json = client(capsys, cluster, "dequeue", "blobs", "--json")
    task = as_json.json()
    assert isinstance(task, dict)
    assert set(task) == {
        "id",
        "queue",
        "priority",
        "deliveries",
        "lease",
        "lease_ms",
        "payload_base64",
    }
    assert base64.b64decode(task["payload_base64"]) == binary
    assert task["priority"] == 2 and task["queue"] == "blobs"


def test_dequeue_with_no_task_exits_with_its_own_status(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client(capsys, cluster, "queue", "create", "empty").status == EXIT_OK
    waited = client(capsys, cluster, "dequeue", "empty", "--wait-ms", "50")
    assert (waited.status, waited.out, waited.err) == (EXIT_NO_TASK, "no task\n", "")
    as_json = client(capsys, cluster, "dequeue", "empty", "--json")
    assert as_json.status == EXIT_NO_TASK
    assert as_json.json() is None


def test_enqueue_many_from_stdin_or_a_file_and_dequeue_many(
    cluster: ServedCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert client(capsys, cluster, "queue", "create", "lines").status == EXIT_OK
    lines = b"first line\nsecond \xff line\r\n\n  third  \n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines)))
    enqueued = client(capsys, cluster, "enqueue-many", "lines", "--priority", "4")
    assert enqueued.status == EXIT_OK, enqueued.err
    first_ids = [int(line) for line in enqueued.out.splitlines()]
    assert len(first_ids) == len(set(first_ids)) == 3  # the empty line is skipped

    path = tmp_path / "urgent.txt"
    path.write_bytes(b"urgent 1\nurgent 2")
    as_json = client(capsys, cluster, "enqueue-many", "lines", str(path), "--priority=-1", "--json")
    assert as_json.status == EXIT_OK, as_json.err
    result = as_json.json()
    assert isinstance(result, dict) and result["queue"] == "lines"
    assert len(result["task_ids"]) == 2

    table = client(capsys, cluster, "dequeue-many", "lines", "--max-tasks", "3")
    assert table.status == EXIT_OK, table.err
    header, *rows = table.out.splitlines()
    assert header.split() == ["ID", "PRIORITY", "DELIVERIES", "LEASE", "PAYLOAD"]
    cells = [row.split(maxsplit=4) for row in rows]
    assert [cell[0] for cell in cells] == [
        str(task_id) for task_id in [*result["task_ids"], first_ids[0]]
    ]
    assert [cell[1] for cell in cells] == ["-1", "-1", "4"]
    assert [cell[4] for cell in cells] == ["urgent 1", "urgent 2", "first line"]
    assert all(cell[2] == "1" and cell[3].isdigit() for cell in cells)

    rest = client(
        capsys, cluster, "dequeue-many", "lines", "--max-tasks", "5", "--json", "--lease-ms", "0"
    )
    assert rest.status == EXIT_OK, rest.err
    tasks = rest.json()
    assert isinstance(tasks, list)
    assert [base64.b64decode(task["payload_base64"]) for task in tasks] == [
        b"second \xff line",
        b"  third  ",
    ]
    assert all(task["lease"] is None and task["lease_ms"] is None for task in tasks)
    assert set(tasks[0]) == {
        "id",
        "queue",
        "priority",
        "deliveries",
        "lease",
        "lease_ms",
        "payload_base64",
    }

    empty = client(capsys, cluster, "dequeue-many", "lines", "--max-tasks", "5", "--wait-ms", "20")
    assert (empty.status, empty.out, empty.err) == (EXIT_NO_TASK, "no task\n", "")
    empty_json = client(capsys, cluster, "dequeue-many", "lines", "--max-tasks", "5", "--json")
    assert empty_json.status == EXIT_NO_TASK and empty_json.json() == []


def test_enqueue_many_of_nothing_and_its_errors(
    cluster: ServedCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n\n")))
    nothing = client(capsys, cluster, "enqueue-many", "default", "--json")
    assert nothing.status == EXIT_OK, nothing.err
    assert nothing.json() == {"queue": "default", "task_ids": []}

    missing_file = client(capsys, cluster, "enqueue-many", "default", str(tmp_path / "none"))
    assert missing_file.status == EXIT_ERROR
    assert missing_file.err.startswith("error: ") and "No such file" in missing_file.err

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\nb\n")))
    missing_queue = client(capsys, cluster, "enqueue-many", "no-such-queue")
    assert missing_queue.status == EXIT_ERROR and missing_queue.out == ""
    assert missing_queue.err.startswith("error: queue_not_found (2): ")

    assert client(capsys, cluster, "queue", "create", "tiny", "--max-size", "1").status == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\nb\n")))
    full = client(capsys, cluster, "enqueue-many", "tiny")
    assert full.status == EXIT_ERROR
    assert full.err.startswith("error: queue_full (10): ")
    assert client(capsys, cluster, "count", "tiny").out == "ready: 0\ndelayed: 0\nleased: 0\n"

    unknown = client(capsys, cluster, "dequeue-many", "no-such-queue", "--max-tasks", "2")
    assert unknown.status == EXIT_ERROR
    assert unknown.err.startswith("error: queue_not_found (2): ")


def test_status_lists_every_node_with_one_leader(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    table = client(capsys, cluster, "status")
    assert table.status == EXIT_OK, table.err
    header, *rows = table.out.splitlines()
    assert header.split() == [
        "NODE", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "INDEX", "APPLIED", "INDEX", "LAG",
    ]  # fmt: skip
    cells = [row.split() for row in rows]
    assert sorted(row[0] for row in cells) == ["n1", "n2", "n3"]
    assert {row[0]: row[1] for row in cells} == cluster.addresses
    leaders = [row[0] for row in cells if row[2] == "leader"]
    assert len(leaders) == 1
    assert all(int(row[7]) >= 0 for row in cells)

    as_json = client(capsys, cluster, "status", "--json")
    assert as_json.status == EXIT_OK
    nodes = as_json.json()
    assert isinstance(nodes, list) and len(nodes) == 3
    assert all(node["reachable"] for node in nodes)
    assert [node["role"] for node in nodes].count("leader") == 1
    highest_commit = max(node["commit_index"] for node in nodes)
    assert all(node["lag"] == highest_commit - node["applied_index"] for node in nodes)


def test_status_marks_an_unreachable_server_and_still_succeeds(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    down = closed_port_address()
    up = cluster.addresses["n1"]
    outcome = run(capsys, "status", "--servers", f"{up},{down}", "--timeout", "0.5")
    assert outcome.status == EXIT_OK
    rows = [row.split() for row in outcome.out.splitlines()[1:]]
    assert rows[0][:2] == ["n1", up]
    assert rows[1][:3] == ["-", down, "unreachable"]
    assert f"{down} unreachable" in outcome.err


def test_unreachable_servers_exit_1_with_a_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    servers = f"{closed_port_address()},{closed_port_address()}"
    status = run(capsys, "status", "--servers", servers, "--timeout", "0.3")
    assert status.status == EXIT_ERROR
    assert [row.split()[2] for row in status.out.splitlines()[1:]] == ["unreachable"] * 2
    assert "error: none of 2 server(s) answered" in status.err

    enqueue = run(capsys, "enqueue", "jobs", "x", "--servers", servers, "--timeout", "0.3")
    assert enqueue.status == EXIT_ERROR
    assert enqueue.out == ""
    assert enqueue.err.startswith("error: unavailable (19): ")
    assert "no server could be reached" in enqueue.err


def test_cluster_errors_exit_1_with_the_error_name(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = client(capsys, cluster, "enqueue", "no-such-queue", "payload")
    assert missing.status == EXIT_ERROR
    assert missing.out == ""
    assert missing.err.startswith("error: queue_not_found (2): ")
    assert missing.err.count("\n") == 1

    assert client(capsys, cluster, "queue", "create", "dup").status == EXIT_OK
    duplicate = client(capsys, cluster, "queue", "create", "dup")
    assert duplicate.status == EXIT_ERROR
    assert duplicate.err.startswith("error: queue_already_exists (3): ")

    # Refused by the client before sending, with the error the server would answer.
    zero_lease = client(capsys, cluster, "extend", "1", "1", "0")
    assert zero_lease.status == EXIT_ERROR
    assert zero_lease.err.startswith("error: invalid_argument (17): ")


def test_servers_come_from_the_environment(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKRAFT_SERVERS", servers_of(cluster))
    assert run(capsys, "queue", "create", "from-env", "--timeout", COMMAND_TIMEOUT).status == 0
    counted = run(capsys, "count", "from-env", "--timeout", COMMAND_TIMEOUT)
    assert counted.status == EXIT_OK, counted.err

    monkeypatch.setenv("TASKRAFT_SERVERS", "not-an-address")
    bad = run(capsys, "count", "from-env")
    assert bad.status == EXIT_USAGE
    assert bad.err.startswith("error: $TASKRAFT_SERVERS: not a host:port address")


@pytest.mark.parametrize(
    "argv",
    [
        ["count", "jobs", "--servers", "no-port"],
        ["count", "jobs", "--timeout", "0"],
        ["queue", "create", "jobs", "--priority-range", "9"],
        ["queue", "create", "jobs", "--kind", "list"],
        ["enqueue", "jobs"],
        ["dequeue", "jobs", "--wait-ms", "-1"],
        ["ack", "1"],
        ["queue"],
        ["enqueue-many"],
        ["enqueue-many", "jobs", "--delay-ms", "-5"],
        ["dequeue-many", "jobs"],
        ["dequeue-many", "jobs", "--max-tasks", "0"],
        ["dequeue-many", "jobs", "--max-tasks", "ten"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == EXIT_USAGE
    assert "usage: taskraft" in capsys.readouterr().err
