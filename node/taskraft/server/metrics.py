"""Prometheus metrics of a node (`GET /metrics`), every name prefixed `taskraft_`.

Two kinds, so that serving traffic costs as little as possible:

- Events are counted where they happen (a request answered, a batch fsynced, a Raft message
  sent or received, a snapshot written, an election), through hooks the listener, the replica
  and the node call; each hook is a dictionary lookup and an increment.
- Everything that is a state (term, role, indexes, per-peer lag, queue sizes, per-queue totals,
  connections, WAL segments) is read when Prometheus scrapes, by `_NodeCollector`, from the
  node's memory and its data directory.

Each node has its own registry, so several nodes in one process (tests) do not mix.
The names are listed in docs/http-api.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from taskraft.errors import Overloaded, TaskraftError
from taskraft.raft import Entry, Message, Role

if TYPE_CHECKING:
    from taskraft.server.client_listener import ClientListener
    from taskraft.server.node import Node

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    60.0,
)


class NodeMetrics:
    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.request_duration = Histogram(
            "taskraft_request_duration_seconds",
            "Time to answer a client request, by operation (a waiting dequeue includes its wait)",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_errors = Counter(
            "taskraft_request_errors",
            "Client requests answered with an error, by operation and error name",
            ["operation", "error"],
            registry=registry,
        )
        self.overloaded = Counter(
            "taskraft_overloaded_rejections",
            "Requests and connections refused because a bound was reached, by which bound",
            ["bound"],
            registry=registry,
        )
        self.http_rejected = self.overloaded.labels(bound="http_requests")
        self.snapshot_downloads = Counter(
            "taskraft_snapshot_downloads",
            "Snapshots streamed through GET /v1/snapshot",
            registry=registry,
        )
        self.fsync_duration = Histogram(
            "taskraft_storage_fsync_duration_seconds",
            "Time to write and fsync one batch of Raft state (entries, hard state) to the log",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.bytes_written = Counter(
            "taskraft_storage_entry_bytes_written",
            "Bytes of log entry data written to the write-ahead log",
            registry=registry,
        )
        self.entries_written = Counter(
            "taskraft_storage_entries_written",
            "Log entries written to the write-ahead log",
            registry=registry,
        )
        self.snapshot_duration = Histogram(
            "taskraft_snapshot_duration_seconds",
            "Time to encode and write a snapshot of the state machine",
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=registry,
        )
        self.snapshot_size = Gauge(
            "taskraft_snapshot_size_bytes",
            "Size of the state machine data in the latest snapshot this node wrote",
            registry=registry,
        )
        self.messages_sent = Counter(
            "taskraft_raft_messages_sent",
            "Raft messages handed to the peer transport, by type",
            ["type"],
            registry=registry,
        )
        self.messages_received = Counter(
            "taskraft_raft_messages_received",
            "Raft messages received from peers, by type",
            ["type"],
            registry=registry,
        )
        self.leader_changes = Counter(
            "taskraft_raft_leader_changes",
            "Times this node saw a new leader",
            registry=registry,
        )
        self.elections = Counter(
            "taskraft_raft_elections",
            "Elections this node started (it became a candidate in a new term)",
            registry=registry,
        )
        self._sent_by_type: dict[type, Counter] = {}
        self._received_by_type: dict[type, Counter] = {}
        self._request_by_operation: dict[str, Histogram] = {}
        registry.register(_NodeCollector(node))

    # -- hooks -------------------------------------------------------------------------------

    def request_done(self, operation: str, seconds: float, error: TaskraftError | None) -> None:
        histogram = self._request_by_operation.get(operation)
        if histogram is None:
            histogram = self.request_duration.labels(operation=operation)
            self._request_by_operation[operation] = histogram
        histogram.observe(seconds)
        if error is not None:
            self.request_errors.labels(operation=operation, error=error.name).inc()
            if isinstance(error, Overloaded):
                self.overloaded.labels(bound="requests").inc()

    def persisted(self, seconds: float, entries: Sequence[Entry]) -> None:
        self.fsync_duration.observe(seconds)
        if entries:
            self.entries_written.inc(len(entries))
            self.bytes_written.inc(sum(len(entry.data) for entry in entries))

    def snapshot_written(self, seconds: float, size_bytes: int) -> None:
        self.snapshot_duration.observe(seconds)
        self.snapshot_size.set(size_bytes)

    def message_sent(self, message: Message) -> None:
        kind = type(message)
        counter = self._sent_by_type.get(kind)
        if counter is None:
            counter = self.messages_sent.labels(type=kind.__name__)
            self._sent_by_type[kind] = counter
        counter.inc()

    def message_received(self, message: Message) -> None:
        kind = type(message)
        counter = self._received_by_type.get(kind)
        if counter is None:
            counter = self.messages_received.labels(type=kind.__name__)
            self._received_by_type[kind] = counter
        counter.inc()

    # -- exposition --------------------------------------------------------------------------

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper asked for, and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _NodeCollector(Collector):
    """States read at scrape time: Raft, peers, queues, connections, the data directory."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        node = self._node
        yield from self._raft(node)
        yield from self._peer_handshakes(node)
        yield from self._queues(node)
        yield from self._connections(node)
        yield from self._authentication(node)
        yield from self._tls(node)
        yield from self._storage(node)
        uptime = GaugeMetricFamily(
            "taskraft_uptime_seconds", "Seconds since this node process started"
        )
        uptime.add_metric([], time.monotonic() - node.started_monotonic)
        yield uptime

    def _tls(self, node: Node) -> Iterator[Metric]:
        """The certificate in force and its reloads; nothing for a node without TLS."""
        tls = node.tls
        if tls is None:
            return
        if tls.not_after is not None:
            expiry = GaugeMetricFamily(
                "taskraft_tls_certificate_expiry_timestamp_seconds",
                "When the certificate this node serves with expires (Unix time); alert well "
                "before it",
            )
            expiry.add_metric([], tls.not_after)
            yield expiry
        reloads = CounterMetricFamily(
            "taskraft_tls_reloads",
            "Times the TLS files changed and were loaded (ok) or could not be used and the "
            "certificate in force was kept (failed)",
            labels=["result"],
        )
        reloads.add_metric(["ok"], tls.reloads)
        reloads.add_metric(["failed"], tls.reload_failures)
        yield reloads
        failures = CounterMetricFamily(
            "taskraft_tls_handshake_failures",
            "TLS handshakes that failed on the client port and on the HTTP port: a client whose "
            "certificate this node does not trust, one that does not trust this node, one "
            "that speaks no TLS, or a timeout (the peer port counts them in "
            "taskraft_peer_handshakes_refused_total, reason tls)",
            labels=["port"],
        )
        listener, http = node.listener, node.http
        failures.add_metric(["client"], 0 if listener is None else listener.tls_handshake_failures)
        failures.add_metric(["http"], 0 if http is None else http.tls_handshake_failures)
        yield failures
        evicted = CounterMetricFamily(
            "taskraft_tls_handshakes_evicted",
            "TLS handshakes ended to make room, by port: as many were under way as the port "
            "allows (the client port's connections_max, 64 on the peer port, 256 on HTTP), and "
            "these were the oldest",
            labels=["port"],
        )
        transport = node.transport
        evicted.add_metric(["client"], 0 if listener is None else listener.tls_handshakes_evicted)
        evicted.add_metric(["peer"], 0 if transport is None else transport.tls_handshakes_evicted)
        evicted.add_metric(["http"], 0 if http is None else http.tls_handshakes_evicted)
        yield evicted

    def _raft(self, node: Node) -> Iterator[Metric]:
        replica = node.replica
        if replica is None:
            return
        raft = replica.raft
        simple = {
            "taskraft_raft_term": ("Current Raft term", raft.term),
            "taskraft_raft_is_leader": ("1 when this node leads", raft.role is Role.LEADER),
            "taskraft_raft_commit_index": ("Highest log index known committed", raft.commit_index),
            "taskraft_raft_applied_index": ("Highest log index applied", raft.applied_index),
            "taskraft_raft_last_log_index": ("Index of the last log entry", raft.log.last_index()),
            "taskraft_raft_snapshot_index": (
                "Log index the latest snapshot covers",
                raft.log.snapshot.metadata.index,
            ),
            "taskraft_raft_voters": ("Voters in the configuration", len(raft.configuration.voters)),
            "taskraft_raft_learners": (
                "Learners in the configuration",
                len(raft.configuration.learners),
            ),
        }
        for name, (documentation, value) in simple.items():
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], float(value))
            yield gauge
        role = GaugeMetricFamily(
            "taskraft_raft_role", "1 for the role this node has now", labels=["role"]
        )
        for each in Role:
            role.add_metric([each.value], 1.0 if raft.role is each else 0.0)
        yield role
        lag = GaugeMetricFamily(
            "taskraft_raft_peer_replication_lag_entries",
            "Entries the leader holds that a peer has not acknowledged (leader only)",
            labels=["peer"],
        )
        contact = GaugeMetricFamily(
            "taskraft_raft_peer_last_contact_seconds",
            "Seconds since a message from the peer last arrived",
            labels=["peer"],
        )
        now = time.monotonic()
        last_index = raft.log.last_index()
        for peer in sorted(raft.configuration.members):
            if peer == raft.id:
                continue
            if raft.role is Role.LEADER and peer in raft.progress:
                lag.add_metric([peer], float(last_index - raft.progress[peer].match_index))
            seen = node.last_contact.get(peer)
            if seen is not None:
                contact.add_metric([peer], now - seen)
        yield lag
        yield contact

    def _peer_handshakes(self, node: Node) -> Iterator[Metric]:
        transport = node.transport
        if transport is None:
            return
        refused = CounterMetricFamily(
            "taskraft_peer_handshakes_refused",
            "Peer connections closed before any Raft message, by side (incoming: another "
            "process connected; outgoing: this node did) and reason (tls, malformed, "
            "cluster_id, unauthenticated, bad_proof, unknown_sender, timeout, closed)",
            labels=["side", "reason"],
        )
        for (side, reason), count in transport.refusals().items():
            refused.add_metric([side, reason], count)
        yield refused
        counters = transport.counters
        authenticated = CounterMetricFamily(
            "taskraft_peer_handshakes_authenticated",
            "Peer connections whose other side proved the cluster secret, by side",
            labels=["side"],
        )
        authenticated.add_metric(["incoming"], counters.authenticated_incoming)
        authenticated.add_metric(["outgoing"], counters.authenticated_outgoing)
        yield authenticated
        bounds = {
            "taskraft_peer_connections_refused": (
                "Incoming peer connections closed unserved because incoming_connections_max "
                "were open already",
                counters.incoming_refused,
            ),
            "taskraft_peer_messages_dropped": (
                "Raft messages this node gave up sending: a peer's send queue was at its "
                "bound, or its connection failed with them queued (Raft sends again what "
                "still matters)",
                counters.dropped,
            ),
        }
        for name, (documentation, count) in bounds.items():
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], count)
            yield counter

    def _queues(self, node: Node) -> Iterator[Metric]:
        replica = node.replica
        if replica is None:
            return
        tasks = GaugeMetricFamily(
            "taskraft_queue_tasks", "Tasks in a queue, by state", labels=["queue", "state"]
        )
        totals = {
            name: CounterMetricFamily(
                f"taskraft_queue_tasks_{name}", documentation, labels=["queue"]
            )
            for name, documentation in (
                ("enqueued", "Tasks enqueued (applied on this node since it started)"),
                ("dequeued", "Deliveries of tasks"),
                ("acked", "Tasks acknowledged"),
                ("nacked", "Deliveries given back with a nack"),
                ("redelivered", "Leases that expired, returning their task to the queue"),
                ("dead_lettered", "Tasks moved to the dead letter queue (or dropped)"),
            )
        }
        for queue, counts, statistics in replica.state_machine.queue_statistics():
            tasks.add_metric([queue, "ready"], counts.ready)
            tasks.add_metric([queue, "delayed"], counts.delayed)
            tasks.add_metric([queue, "leased"], counts.leased)
            for name, family in totals.items():
                family.add_metric([queue], getattr(statistics, name))
        yield tasks
        yield from totals.values()

    def _connections(self, node: Node) -> Iterator[Metric]:
        listener = node.listener
        if listener is None:
            return
        gauges = {
            "taskraft_client_connections": (
                "Client connections open now",
                listener.connection_count,
            ),
            "taskraft_requests_in_flight": (
                "Client requests being served now",
                listener.requests_in_flight,
            ),
            "taskraft_long_polls_waiting": (
                "Dequeues waiting for a task now",
                listener.long_polls_waiting,
            ),
        }
        for name, (documentation, value) in gauges.items():
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], float(value))
            yield gauge
        refused = CounterMetricFamily(
            "taskraft_client_connections_refused",
            "Client connections refused because connections_max was reached",
        )
        refused.add_metric([], listener.connections_refused)
        yield refused
        rejected = CounterMetricFamily(
            "taskraft_client_requests_rejected",
            "Requests refused because one connection had too many in flight",
        )
        rejected.add_metric([], listener.requests_rejected)
        yield rejected
        counters = {
            "taskraft_client_handshake_timeouts": (
                "Client connections closed because no handshake came within the handshake timeout",
                listener.handshake_timeouts,
            ),
            "taskraft_long_polls_refused": (
                "Dequeues refused `overloaded` because long_polls_max were waiting already",
                listener.long_polls_refused,
            ),
            "taskraft_client_protocol_failures": (
                "Client connections closed for breaking the protocol: a frame beyond the size "
                "bound, malformed msgpack, a bad handshake, a request id reused in flight",
                listener.protocol_failures,
            ),
        }
        for name, (documentation, count) in counters.items():
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], count)
            yield counter
        yield from self._token_limits(listener)

    def _token_limits(self, listener: ClientListener) -> Iterator[Metric]:
        """Per token name (names are not secret; only those of the token file, or of
        connections still open with a removed token, appear): requests in flight and those
        refused at requests_per_token_max. Nothing without tokens."""
        if listener.tokens is None:
            return
        in_flight = GaugeMetricFamily(
            "taskraft_token_requests_in_flight",
            "Client requests being served now, by the name of the token they came with",
            labels=["token"],
        )
        for name, count in sorted(listener.token_requests_in_flight().items()):
            in_flight.add_metric([name], float(count))
        yield in_flight
        rejections = CounterMetricFamily(
            "taskraft_token_limit_rejections",
            "Client requests refused `overloaded` because their token had "
            "requests_per_token_max in flight already, by token name",
            labels=["token"],
        )
        for name, count in sorted(listener.token_limit_rejections.items()):
            rejections.add_metric([name], count)
        yield rejections

    def _authentication(self, node: Node) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "taskraft_authentication_failures",
            "Connections and HTTP requests refused for a missing or unknown token, by surface "
            "(client, http)",
            labels=["surface"],
        )
        denials = CounterMetricFamily(
            "taskraft_authorization_failures",
            "Requests refused `forbidden`: the token's role does not allow them, by surface",
            labels=["surface"],
        )
        for surface, server in (("client", node.listener), ("http", node.http)):
            if server is None:
                continue
            failures.add_metric([surface], server.authentication_failures)
            denials.add_metric([surface], server.authorization_failures)
        yield failures
        yield denials

    def _storage(self, node: Node) -> Iterator[Metric]:
        wal = node.settings.data_directory / "wal"
        count = 0
        size = 0
        try:
            with os.scandir(wal) as entries:
                for entry in entries:
                    if entry.is_file():
                        count += 1
                        size += entry.stat().st_size
        except OSError:
            return
        segments = GaugeMetricFamily(
            "taskraft_storage_wal_segments", "Files of the write-ahead log"
        )
        segments.add_metric([], count)
        yield segments
        total = GaugeMetricFamily(
            "taskraft_storage_wal_size_bytes", "Bytes of the write-ahead log on disk"
        )
        total.add_metric([], size)
        yield total


__all__ = ["NodeMetrics"]
