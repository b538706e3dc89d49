"""A cluster of real `taskraft serve` processes on 127.0.0.1, for `taskraft dev`, the demo,
the integration tests and the benchmarks.

Each node is its own process with its own data directory and log file, so killing one with
SIGKILL is a real crash and restarting it is a real recovery from disk. Ports follow the rule of
`taskraft dev`: node i (0-based) has id `n{i+1}` and listens for clients on base+10*i, for peers
on base+10*i+1 and for HTTP on base+10*i+2.

Everything here blocks (processes and `urllib`), so that scripts and tests drive a cluster
without an event loop; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from taskraft.tls import TlsFiles, client_context

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 15.0
_POLL_INTERVAL_S = 0.05
# Where `free_base_port` looks for a layout by default, and how many random bases it tries.
PORT_LOW, PORT_HIGH = 20_000, 50_000
PORT_ATTEMPTS = 200
_EPHEMERAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LocalNode:
    """One node's id and ports."""

    node_id: str
    client_port: int
    peer_port: int
    http_port: int

    @property
    def client_address(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def peer_address(self) -> str:
        return f"{HOST}:{self.peer_port}"

    @property
    def http_address(self) -> str:
        return f"{HOST}:{self.http_port}"


def node_layout(count: int, base_port: int) -> list[LocalNode]:
    """The ids and ports of `taskraft dev --nodes count --base-port base_port`."""
    return [
        LocalNode(f"n{i + 1}", base_port + 10 * i, base_port + 10 * i + 1, base_port + 10 * i + 2)
        for i in range(count)
    ]


def layout_ports(nodes: int, base_port: int) -> list[int]:
    """Every port (client, peer and HTTP of each node) of `node_layout(nodes, base_port)`."""
    return [
        port
        for node in node_layout(nodes, base_port)
        for port in (node.client_port, node.peer_port, node.http_port)
    ]


def ports_are_free(ports: Iterable[int]) -> bool:
    """Whether every port binds on 127.0.0.1 right now, all at once (no SO_REUSEADDR: strict)."""
    probes: list[socket.socket] = []
    try:
        for port in ports:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probes.append(probe)
            probe.bind((HOST, port))
    except OSError:
        return False
    finally:
        for probe in probes:
            probe.close()
    return True


def ephemeral_port_range() -> range | None:
    """The ports the system hands to outgoing connections, when it says."""
    try:
        low, high = _EPHEMERAL_PORT_RANGE.read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return None


def free_base_port(
    nodes: int,
    *,
    low: int = PORT_LOW,
    high: int = PORT_HIGH,
    randomness: random.Random | None = None,
    attempts: int = PORT_ATTEMPTS,
) -> int:
    """A random base port (a multiple of 10) in [low, high) whose whole layout is free.

    Random, so that concurrent users (pytest-xdist workers, benchmarks) almost never pick the
    same one; checked by binding every port of the layout. Bases whose layout falls in the
    ephemeral range are avoided when others exist: there an outgoing connection may take a
    node's port while the node is down, and the node could not listen on it again when it
    restarts. RuntimeError when no free layout was found in `attempts` tries.
    """
    randomness = randomness or random.Random()
    ephemeral = ephemeral_port_range()
    bases = [
        base for base in range(low + -low % 10, high, 10) if max(layout_ports(nodes, base)) < high
    ]
    if not bases:
        raise ValueError(f"no layout of {nodes} nodes fits in {low}-{high}")
    candidates = [
        base
        for base in bases
        if ephemeral is None or not any(port in ephemeral for port in layout_ports(nodes, base))
    ] or bases
    for _ in range(attempts):
        base = randomness.choice(candidates)
        if ports_are_free(layout_ports(nodes, base)):
            return base
    raise RuntimeError(f"no free layout of {nodes} nodes in {low}-{high} after {attempts} tries")


def free_port() -> int:
    """A loopback port nothing listens on now (the system picks it; connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], _T | None], what: str, timeout_s: float) -> _T:
    """Poll `condition` until it returns something other than None/False; TimeoutError after."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {what} within {timeout_s:g} s")
        time.sleep(_POLL_INTERVAL_S)


class LocalCluster:
    """Start, crash, restart and stop `taskraft serve` processes on this machine."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        base_port: int = 7100,
        data_directory: Path | None = None,
        tick_interval_ms: int = 100,
        extra_arguments: Sequence[str] = (),
        log_level: str = "info",
        founders: int | None = None,
        http_token: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """`founders`: how many of the nodes found the cluster (default all); the others start
        with `--join` and wait to be added through the leader's HTTP API. `http_token`: the
        bearer token `status` sends, for nodes started with `--auth-token-file`. `tls`: every
        node serves TLS with these files (one certificate for all, naming 127.0.0.1), and
        `status` and `ready` use HTTPS, trusting `tls.authority`."""
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        self.layout = node_layout(nodes, base_port)
        self.founders = nodes if founders is None else founders
        if not 1 <= self.founders <= nodes:
            raise ValueError("between 1 and all of the nodes found the cluster")
        self._temporary = data_directory is None
        self.directory = data_directory or Path(tempfile.mkdtemp(prefix="taskraft-dev-"))
        self.tick_interval_ms = tick_interval_ms
        self.extra_arguments = list(extra_arguments)
        self.log_level = log_level
        self.http_token = http_token
        self.tls = tls
        # What HTTPS requests to the nodes verify them with; None for plain HTTP.
        self.http_tls = None if tls is None else client_context(tls.authority)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- addresses ---------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[str]:
        return [node.node_id for node in self.layout]

    def node(self, node_id: str) -> LocalNode:
        return next(node for node in self.layout if node.node_id == node_id)

    @property
    def servers(self) -> list[str]:
        """Every node's client address: what `Client(servers=...)` takes."""
        return [node.client_address for node in self.layout]

    def log_path(self, node_id: str) -> Path:
        return self.directory / f"{node_id}.log"

    # -- processes ---------------------------------------------------------------------------

    def command(self, node_id: str) -> list[str]:
        node = self.node(node_id)
        founders = self.layout[: self.founders]
        members = ",".join(f"{each.node_id}={each.peer_address}" for each in founders)
        bootstrap = ["--initial-members", members] if node in founders else ["--join"]
        return [
            sys.executable,
            "-m",
            "taskraft",
            "serve",
            "--node-id",
            node_id,
            "--data-dir",
            str(self.directory / node_id),
            "--client-address",
            node.client_address,
            "--peer-address",
            node.peer_address,
            "--http-address",
            node.http_address,
            *bootstrap,
            "--tick-interval-ms",
            str(self.tick_interval_ms),
            "--log-level",
            self.log_level,
            "--log-format",
            "text",
            *self._tls_arguments(),
            *self.extra_arguments,
        ]

    def _tls_arguments(self) -> list[str]:
        tls = self.tls
        if tls is None:
            return []
        arguments = ["--tls-cert", str(tls.certificate), "--tls-key", str(tls.key)]
        if tls.authority is not None:
            arguments += ["--tls-ca", str(tls.authority)]
        return arguments

    def http_url(self, node_id: str, path: str) -> str:
        """The URL of `path` (starting with /) on the node's HTTP API."""
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.node(node_id).http_address}{path}"

    def start(self) -> None:
        """Start every founding node that is not running (the others with `start_node`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for node_id in self.node_ids[: self.founders]:
            if not self.is_running(node_id):
                self.start_node(node_id)

    def start_node(self, node_id: str) -> None:
        if self.is_running(node_id):
            raise RuntimeError(f"{node_id} is already running")
        # Settings come from the command line only, never from this process's TASKRAFT_*.
        environment = {k: v for k, v in os.environ.items() if not k.startswith("TASKRAFT_")}
        with self.log_path(node_id).open("ab") as log:
            self.processes[node_id] = subprocess.Popen(
                self.command(node_id),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                # Its own process group: a Ctrl-C meant for `taskraft dev` reaches the nodes as
                # one SIGTERM each, from `stop`.
                start_new_session=True,
            )

    def is_running(self, node_id: str) -> bool:
        process = self.processes.get(node_id)
        return process is not None and process.poll() is None

    def pid(self, node_id: str) -> int:
        return self.processes[node_id].pid

    def kill_node(self, node_id: str) -> None:
        """SIGKILL: a crash, with no chance to finish anything."""
        process = self.processes[node_id]
        process.kill()
        process.wait(STOP_TIMEOUT_S)

    def stop_node(self, node_id: str, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait (SIGKILL after the timeout); the exit status."""
        process = self.processes[node_id]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return self._reap(process, timeout_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int]:
        """Stop every node at once (one SIGTERM each); their exit statuses."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return {
            node_id: self._reap(process, timeout_s) for node_id, process in self.processes.items()
        }

    @staticmethod
    def _reap(process: subprocess.Popen[bytes], timeout_s: float) -> int:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        return process.returncode

    def remove_data(self) -> None:
        """Delete the cluster's directory if this cluster made it."""
        if self._temporary:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        self.remove_data()

    # -- observation -------------------------------------------------------------------------

    def status(self, node_id: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """The node's `/v1/status` document, or None when it does not answer."""
        request = urllib.request.Request(self.http_url(node_id, "/v1/status"))
        if self.http_token is not None:
            request.add_header("Authorization", f"Bearer {self.http_token}")
        try:
            with urllib.request.urlopen(
                request, timeout=timeout_s, context=self.http_tls
            ) as response:
                document: dict[str, Any] = json.load(response)
                return document
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def ready(self, node_id: str, timeout_s: float = 1.0) -> bool:
        url = self.http_url(node_id, "/readyz")
        try:
            with urllib.request.urlopen(url, timeout=timeout_s, context=self.http_tls) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def leader(self, among: Sequence[str] | None = None) -> str | None:
        """The one node that reports itself leader in the highest term, or None."""
        best: tuple[int, str] | None = None
        for node_id in among or self.node_ids:
            if not self.is_running(node_id):
                continue
            document = self.status(node_id)
            if document is not None and document.get("role") == "leader":
                candidate = (int(document["term"]), node_id)
                best = candidate if best is None or candidate > best else best
        return None if best is None else best[1]

    def wait_for_leader(self, timeout_s: float = 30.0, among: Sequence[str] | None = None) -> str:
        return wait_until(lambda: self.leader(among), "leader", timeout_s)

    def wait_ready(self, timeout_s: float = 30.0, nodes: Sequence[str] | None = None) -> None:
        """Wait until every running node (or each of `nodes`) answers /readyz with 200."""

        def all_ready() -> bool:
            targets = nodes or [n for n in self.node_ids if self.is_running(n)]
            return all(self.ready(node_id) for node_id in targets)

        wait_until(all_ready, "readiness of every node", timeout_s)

    def log_tail(self, node_id: str, lines: int = 40) -> str:
        try:
            text = self.log_path(node_id).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


__all__ = ["LocalCluster", "LocalNode", "node_layout", "wait_until"]
