"""The client commands against replicas that require tokens: `--token` and `$TASKRAFT_TOKEN`.

As in test_client_commands.py, three replicas (tests/server/served_cluster.py) run in their own
event loop on a background thread for the whole module, here with a token store; each command
runs in-process and its exit status and output are checked. A refusal exits 1 with the error's
name and a hint, and never prints the token.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from served_cluster import ServedCluster, served_in_a_thread

from taskraft.cli.client_commands import EXIT_ERROR, EXIT_OK, register_client_commands
from taskraft.server.authentication import TokenStore

# Long: a refusal that the client retried would take this long, and the test would see it.
COMMAND_TIMEOUT = "20"

CLIENT_TOKEN = "cli-client-" + "c" * 32
READ_TOKEN = "cli-read-" + "r" * 32


@dataclass
class Outcome:
    status: int
    out: str
    err: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCluster]:
    directory = tmp_path_factory.mktemp("cluster")
    path = directory / "tokens"
    path.write_text(f"worker client {CLIENT_TOKEN}\ndashboard read {READ_TOKEN}\n")
    with served_in_a_thread(directory / "data", tokens=TokenStore.load(path)) as served:
        yield served


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKRAFT_TOKEN", raising=False)


def run(capsys: pytest.CaptureFixture[str], cluster: ServedCluster, *argv: str) -> Outcome:
    top = argparse.ArgumentParser(prog="taskraft")
    register_client_commands(top.add_subparsers(dest="command"))
    servers = ",".join(cluster.addresses.values())
    arguments = top.parse_args([*argv, "--servers", servers, "--timeout", COMMAND_TIMEOUT])
    capsys.readouterr()
    status = arguments.handler(arguments)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    for token in (CLIENT_TOKEN, READ_TOKEN):
        assert token not in captured.out + captured.err
    return Outcome(status, captured.out, captured.err)


def test_without_a_token_every_command_exits_1_with_a_hint(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["count", "default"], ["queue", "list"], ["enqueue", "default", "x"]):
        outcome = run(capsys, cluster, *argv)
        assert outcome.status == EXIT_ERROR, argv
        assert outcome.out == ""
        lines = outcome.err.splitlines()
        assert lines[0] == "error: unauthenticated (20): authentication required"
        assert "TASKRAFT_TOKEN" in lines[1]
    status = run(capsys, cluster, "status")
    assert status.status == EXIT_ERROR
    assert "unauthenticated (20)" in status.err
    assert "TASKRAFT_TOKEN" in status.err


def test_a_wrong_token_exits_1(cluster: ServedCluster, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run(capsys, cluster, "count", "default", "--token", "wrong-" + "w" * 32)
    assert outcome.status == EXIT_ERROR
    assert outcome.err.startswith("error: unauthenticated (20): ")


def test_the_token_comes_from_the_flag_or_the_environment(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    created = run(capsys, cluster, "queue", "create", "cli-auth", "--token", CLIENT_TOKEN)
    assert created.status == EXIT_OK, created.err
    monkeypatch.setenv("TASKRAFT_TOKEN", CLIENT_TOKEN)
    enqueued = run(capsys, cluster, "enqueue", "cli-auth", "hello")
    assert enqueued.status == EXIT_OK, enqueued.err
    counted = run(capsys, cluster, "count", "cli-auth")
    assert counted.status == EXIT_OK
    assert "ready: 1" in counted.out
    status = run(capsys, cluster, "status")
    assert status.status == EXIT_OK, status.err
    # The flag wins over the environment.
    monkeypatch.setenv("TASKRAFT_TOKEN", "wrong-" + "w" * 32)
    flagged = run(capsys, cluster, "count", "cli-auth", "--token", READ_TOKEN)
    assert flagged.status == EXIT_OK, flagged.err


def test_a_role_that_does_not_allow_the_command_exits_1_with_a_hint(
    cluster: ServedCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKRAFT_TOKEN", READ_TOKEN)
    assert run(capsys, cluster, "queue", "list").status == EXIT_OK
    refused = run(capsys, cluster, "enqueue", "default", "x")
    assert refused.status == EXIT_ERROR
    lines = refused.err.splitlines()
    assert lines[0].startswith("error: forbidden (21): enqueue is not allowed to the role read")
    assert lines[1].startswith("hint: the token's role does not allow this command")
    deleted = run(capsys, cluster, "queue", "delete", "default")
    assert deleted.status == EXIT_ERROR
    assert deleted.err.startswith("error: forbidden (21): ")
