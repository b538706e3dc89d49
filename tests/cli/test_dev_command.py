"""`taskraft dev` as a user runs it: a local cluster until SIGTERM, with and without `--tls`.

The command is started as a process; what it prints (the servers, and with `--tls` the
authority to trust) is what the client commands are then given, through the same environment
variables a user would export. Every read of its output has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskraft.local_cluster import free_base_port

pytestmark = pytest.mark.timeout(120)

DEADLINE_S = 60.0
EXIT_STOPPED = 0
EXIT_ERROR = 1


class Output:
    """The lines a process prints, read on a thread of their own (a pipe read with a deadline
    from this one would block on a line split across reads)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._stream = process.stdout
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self._stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, marker: str, timeout_s: float) -> list[str]:
        """The lines up to the one containing `marker`; AssertionError at the deadline or
        when the process exits first."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} within {timeout_s} s: {seen}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"the command exited before {marker!r}: {seen}"
            seen.append(line)
            if marker in line:
                return seen


@pytest.fixture
def dev_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """The `taskraft dev` processes a test started, each in a session of its own: whatever
    happens, the whole group (the command and the nodes it runs) is stopped at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        for stop_signal in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, stop_signal)
            try:
                process.wait(DEADLINE_S / 2)
                break
            except subprocess.TimeoutExpired:
                continue
        # The nodes too, should the command have died before stopping them.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def start_dev(
    started: list[subprocess.Popen[str]], data_directory: Path, *extra: str
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`taskraft dev --nodes 1` started; the variables it printed to export."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASKRAFT_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskraft",
            "dev",
            "--nodes",
            "1",
            "--base-port",
            str(free_base_port(1)),
            "--tick-interval-ms",
            "30",
            "--data-dir",
            str(data_directory),
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        start_new_session=True,
    )
    started.append(process)
    lines = Output(process).read_until("Ctrl-C stops the cluster", DEADLINE_S)
    exported = dict(
        line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export ")
    )
    return process, exported


def cli(*args: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKRAFT_")}
    return subprocess.run(
        [sys.executable, "-m", "taskraft", *args, "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env={**clean, **environment},
    )


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(DEADLINE_S)


def test_dev_serves_a_cluster_until_sigterm(
    dev_process: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    process, exported = start_dev(dev_process, tmp_path / "plain")
    assert set(exported) == {"TASKRAFT_SERVERS"}
    enqueued = cli("enqueue", "default", "hello", environment=exported)
    assert enqueued.returncode == 0, enqueued.stderr
    assert stop(process) == EXIT_STOPPED


def test_dev_with_tls_prints_the_authority_the_clients_need(
    dev_process: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    data = tmp_path / "secure"
    process, exported = start_dev(dev_process, data, "--tls")
    authority = Path(exported["TASKRAFT_TLS_CA"])
    assert authority.is_file() and authority.is_relative_to(data)
    enqueued = cli("enqueue", "default", "over tls", environment=exported)
    assert enqueued.returncode == 0, enqueued.stderr
    counted = cli("count", "default", "--json", environment=exported)
    assert counted.returncode == 0 and '"ready": 1' in counted.stdout, counted
    # Without the authority the client does not trust the node, and says so.
    untrusting = cli(
        "count", "default", environment={"TASKRAFT_SERVERS": exported["TASKRAFT_SERVERS"]}
    )
    assert untrusting.returncode == EXIT_ERROR
    assert "unavailable" in untrusting.stderr
    assert stop(process) == EXIT_STOPPED
    # A restart on the same data directory keeps the same authority: the clients still trust it.
    before = authority.read_bytes()
    process, exported = start_dev(dev_process, data, "--tls")
    assert Path(exported["TASKRAFT_TLS_CA"]).read_bytes() == before
    counted = cli("count", "default", "--json", environment=exported)
    assert counted.returncode == 0 and '"ready": 1' in counted.stdout, counted
    assert stop(process) == EXIT_STOPPED
