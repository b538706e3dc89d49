"""The operator's own Prometheus metrics, served by `serve(port)` (a daemon thread).

- `taskraft_operator_reconciles_total{result}` (counter): reconcile runs; `acted` (an action
  was carried out), `waited` (Wait, Refuse or Nothing), `skipped` (resource gone, spec that
  cannot be read, status that cannot be read back), `failed` (API error or failed action).
- `taskraft_operator_actions_total{action}` (counter): planned actions by type
  (`EnsureObject`, `AddLearner`, `Promote`, ..., `Wait`, `Refuse`, `Nothing`).
- `taskraft_operator_action_failures_total{action}` (counter): actions that failed.
- `taskraft_operator_errors_total{stage}` (counter): errors by stage: `api` (reading or
  writing through the Kubernetes API), `spec`, `status`, `act`, `queues`, `unexpected`.
- `taskraft_operator_reconcile_duration_seconds` (histogram): one reconcile run.

The default registry also carries the process metrics of prometheus_client.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter(
    "taskraft_operator_reconciles", "Reconcile runs of QueueClusters, by result.", ["result"]
)
ACTIONS = Counter("taskraft_operator_actions", "Planned actions, by type.", ["action"])
ACTION_FAILURES = Counter(
    "taskraft_operator_action_failures", "Actions that could not be carried out.", ["action"]
)
ERRORS = Counter("taskraft_operator_errors", "Errors, by stage of the reconcile run.", ["stage"])
RECONCILE_DURATION = Histogram(
    "taskraft_operator_reconcile_duration_seconds",
    "Duration of one reconcile run.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

# The operator image exposes it (operator/Dockerfile); the chart sets it explicitly.
DEFAULT_PORT = 9090


@dataclass(frozen=True, slots=True)
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(port: int = DEFAULT_PORT, address: str = "0.0.0.0") -> MetricsServer:
    """Serve /metrics on `port` (0: any free port) in a daemon thread."""
    server, thread = start_http_server(port, addr=address)
    return MetricsServer(server=server, thread=thread)


__all__ = [
    "ACTIONS",
    "ACTION_FAILURES",
    "DEFAULT_PORT",
    "ERRORS",
    "RECONCILES",
    "RECONCILE_DURATION",
    "MetricsServer",
    "serve",
]
