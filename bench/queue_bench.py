"""Queue benchmark: what a real taskraft cluster delivers to real clients on this machine.

Why it exists. The storage benchmark (`storage.py`) measures the log alone. What a user gets is
the whole path: the client protocol, the leader's proposal batching, replication to the
followers, the fsync of every node, applying to the queue state machine and the answer. This
script measures that path end to end, with a `LocalCluster` of real `taskraft serve` processes
on 127.0.0.1 (each with its own data directory on disk, so every fsync is real) and the
project's own `AsyncClient`, and it checks that nothing was lost or delivered twice on the way.

Run it on an otherwise idle machine:

    .venv/bin/python bench/queue_bench.py [--quick] [--nodes N] [--output FILE] ...

Clients. Each producer or consumer is one `AsyncClient`, so one TCP connection, as a real
deployment has one connection per producer process; each awaits every call before the next
(no pipelining within one producer). The producers of a workload are spread over
`--client-processes` worker processes (forked, each running one asyncio loop), so that one
Python process's CPU does not cap the figures; the client CPU column shows how close the
clients came to being the bottleneck. Every client connects (and finds the leader) before the
clock starts.

What each row measures:

- W1 enqueue: `--producers` concurrent producers enqueue `--messages` tasks in total
  (`--payload-bytes` each, default 64 B) into an empty queue. Rate is tasks per second of
  wall-clock time, from the first producer's start to the last producer's end; latency is one
  `enqueue` call, as the producer sees it (it includes waiting in the client's event loop).
- W2 dequeue+ack: `--consumers` concurrent consumers dequeue with a lease and ack until the W1
  tasks are gone. One operation is a dequeue plus its ack, both awaited; latency covers both.
- W3 sequential: one producer enqueues `--sequential-operations` tasks one after the other, then
  one consumer dequeues and acks them one after the other: the latency of an unloaded cluster.
- Batched: `enqueue_many` / `dequeue_many`, 8 producers in batches of up to 1,000, when the
  client has them; "not available" otherwise. Latency is one call (one batch).
- Deep queue: `--deep-tasks` tasks fill a second queue (with as many producers as W1: the fill
  rate is a row of its own), then `--deep-operations` W1-style enqueues and as many W2-style
  dequeue+acks run on top of it. The ratios to the empty-queue rates show what a deep queue
  costs. The measured tasks have a more urgent priority than the fill, so the consumers take
  exactly them and the check below stays exact. The resident memory (VmRSS) of every node is
  read before and after the fill: the difference per filled task includes everything the fill
  left in memory (tasks, idempotency keys, the part of the log not yet compacted by a snapshot,
  and allocator slack).
- Recovery, with the deep queue in place: one follower is killed with SIGKILL and restarted;
  the times are until its /readyz answers 200 and until its applied index reaches the leader's
  commit index. Then every node is stopped (SIGTERM; the stop time is reported, it includes each
  node's `--shutdown-timeout-ms`) and started again: time until a leader is elected and until
  every node is ready. The deep queue's count is checked afterwards.
- Scaling (on unless `--quick` or `--no-scaling`): W1 again on fresh clusters of 1, 3 and 5
  nodes.

CPU. "server CPU" is the user plus system CPU of every node process (from /proc/PID/stat)
during the workload, divided by its operations; "client CPU" is the same for the benchmark's
client worker processes (`time.process_time` around the workload). Both are microseconds of
CPU per operation, summed over processes: on a machine with C cores, C seconds of CPU per
second is the ceiling.

The fsync line is the disk's floor under every write: the median of 200 appends of 256 bytes,
each followed by fdatasync, in the same directory the nodes use.

Verification. Every task id an enqueue returned must be delivered exactly once by the consumers
(ids are counted: none missing, none twice, none unknown), and the queues consumed must be empty
at the end (`count` reports 0 ready, delayed and leased). The deep queue must still hold
exactly its filled tasks after the full restart. The scaling runs check that their ids are
distinct and that the queue holds exactly that many. The script exits 1 when a check fails or
could not be completed (for example when a workload was stopped at `--duration-max-s`), 2 when
the benchmark itself failed, and 0 otherwise.

Every workload is bounded: it stops starting operations after `--duration-max-s` (the deep fill
after `--deep-fill-max-s`) and is reported as partial. Clusters are always stopped, also on
Ctrl-C or SIGTERM, and their directory is removed. The results are also written as JSON to
`--output` (default: a new file under the system's temporary directory; the path is printed).
`--quick` shrinks every count so that the whole run takes under a minute: its figures only show
that the benchmark works.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import signal
import ssl
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from reporting import file_system_description, percentile, print_table

from taskraft.certificates import local_node_tls
from taskraft.client import AsyncClient, QueueCounts, Task
from taskraft.errors import TaskraftError
from taskraft.local_cluster import LocalCluster
from taskraft.local_cluster import free_base_port as free_layout_base_port
from taskraft.queue.limits import LEASE_MS_MAX
from taskraft.tls import TlsFiles, client_context

_T = TypeVar("_T")

W1_QUEUE = "bench-w1"
SEQUENTIAL_QUEUE = "bench-sequential"
BATCHED_QUEUE = "bench-batched"
DEEP_QUEUE = "bench-deep"
SCALING_QUEUE = "bench-scaling"

# Lower values are served first: the measured tasks of the deep queue jump the fill.
DEEP_FILL_PRIORITY = 10
MEASURED_PRIORITY = 0

# The batched calls are not in every client version: looked up by name when they are there.
ENQUEUE_MANY = "enqueue_many"
DEQUEUE_MANY = "dequeue_many"
ACK_MANY = "ack_many"
BATCH_PRODUCERS = 8
BATCH_SIZE = 1_000
FSYNC_SAMPLES = 200
FSYNC_RECORD_BYTES = 256

CLUSTER_START_ATTEMPTS = 3

CLUSTER_UP_TIMEOUT_S = 60.0
RECOVERY_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 0.02
CLIENT_REQUEST_TIMEOUT_S = 30.0
# A worker gets this long to connect its clients, and this long past the workload's duration
# bound to finish the calls in flight (one call may retry for CLIENT_REQUEST_TIMEOUT_S).
WORKER_CONNECT_TIMEOUT_S = 60.0
WORKER_FINISH_GRACE_S = CLIENT_REQUEST_TIMEOUT_S + 30.0
WORKER_EXIT_TIMEOUT_S = 10.0
# An actor gives up after this many failed calls in a row; errors kept for the report.
CONSECUTIVE_ERRORS_MAX = 20
ERRORS_KEPT = 10

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


class BenchmarkError(Exception):
    """The benchmark could not run (as opposed to a figure or a check that came out badly)."""


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """Every count and bound of a run."""

    quick: bool
    nodes: int
    producers: int
    consumers: int
    messages: int
    payload_bytes: int
    client_processes: int
    duration_max_s: float
    sequential_operations: int
    deep_tasks: int
    deep_operations: int
    deep_fill_max_s: float
    scaling: bool
    scaling_nodes: tuple[int, ...]
    tick_interval_ms: int
    shutdown_timeout_ms: int | None
    # Every node serves TLS on all ports (one certificate of a private authority), and the
    # clients verify it: the same workloads with the cost of encryption.
    tls: bool = False

    @property
    def lease_ms(self) -> int:
        """Long enough that no lease ends while a workload runs: no redelivery to count."""
        return min(LEASE_MS_MAX, int(max(600.0, 3 * self.duration_max_s) * 1000))


FULL_DEFAULTS: dict[str, Any] = {
    "nodes": 3,
    "producers": 64,
    "consumers": 64,
    "messages": 40_000,
    "payload_bytes": 64,
    "client_processes": 2,
    "duration_max_s": 120.0,
    "sequential_operations": 2_000,
    "deep_tasks": 1_000_000,
    "deep_operations": 20_000,
    "deep_fill_max_s": 900.0,
    "scaling": True,
    "tick_interval_ms": 100,
    "shutdown_timeout_ms": None,
}

QUICK_DEFAULTS: dict[str, Any] = {
    **FULL_DEFAULTS,
    "producers": 16,
    "consumers": 16,
    "messages": 5_000,
    "duration_max_s": 20.0,
    "sequential_operations": 200,
    # 16 producers fill about 1,500 tasks/s on 2 busy cores: 20,000 keeps the run in a minute.
    "deep_tasks": 20_000,
    "deep_operations": 5_000,
    "deep_fill_max_s": 20.0,
    "scaling": False,
    # Stopping a whole cluster waits up to this long per node for a leadership transfer that
    # cannot happen (the server's default is 10 s): the quick run would spend most of its
    # minute there.
    "shutdown_timeout_ms": 1_000,
}


# -- results -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Measurement:
    """One row of the table."""

    workload: str
    nodes: int
    operations: int
    seconds: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    server_cpu_seconds: float
    client_cpu_seconds: float
    client_processes: int
    actors: int
    stopped_early: bool = False
    error_count: int = 0
    errors: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.operations / self.seconds if self.seconds > 0 else None

    @property
    def server_cpu_microseconds_per_operation(self) -> float | None:
        if not self.operations:
            return None
        return self.server_cpu_seconds / self.operations * 1e6

    @property
    def client_cpu_microseconds_per_operation(self) -> float | None:
        if not self.operations:
            return None
        return self.client_cpu_seconds / self.operations * 1e6

    def document(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "operations_per_second": self.rate,
            "server_cpu_microseconds_per_operation": self.server_cpu_microseconds_per_operation,
            "client_cpu_microseconds_per_operation": self.client_cpu_microseconds_per_operation,
        }


@dataclass(slots=True)
class Check:
    """One verification: what was checked, whether it held, and the evidence."""

    name: str
    passed: bool
    detail: str


@dataclass(slots=True)
class Report:
    """Everything a run found; written as JSON at the end."""

    settings: Settings
    started_at: str
    work_directory: str
    machine: dict[str, Any] = field(default_factory=dict)
    fsync_p50_ms: float | None = None
    fsync_p99_ms: float | None = None
    measurements: list[Measurement] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    recovery: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    failure: str | None = None
    elapsed_seconds: float = 0.0

    def add(self, measurement: Measurement) -> Measurement:
        self.measurements.append(measurement)
        print_measurement(measurement)
        return measurement

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))
        print(f"   check {'ok    ' if passed else 'FAILED'}: {name}: {detail}", flush=True)

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def document(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "started_at": self.started_at,
            "elapsed_seconds": self.elapsed_seconds,
            "work_directory": self.work_directory,
            "machine": self.machine,
            "fsync_256_bytes_p50_ms": self.fsync_p50_ms,
            "fsync_256_bytes_p99_ms": self.fsync_p99_ms,
            "measurements": [measurement.document() for measurement in self.measurements],
            "unavailable": self.unavailable,
            "ratios_deep_to_empty": self.ratios,
            "memory": self.memory,
            "recovery": self.recovery,
            "verification": {
                "passed": self.verified,
                "checks": [asdict(check) for check in self.checks],
            },
            "failure": self.failure,
        }


# -- statistics and output ---------------------------------------------------------------------


def percentile_or_none(values: Sequence[float], fraction: float) -> float | None:
    return percentile(values, fraction) if values else None


def milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def format_number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_heading(title: str) -> None:
    print()
    print(title)
    print("-" * len(title), flush=True)


def print_measurement(measurement: Measurement) -> None:
    partial = " (PARTIAL: stopped at the duration bound)" if measurement.stopped_early else ""
    errors = f", {measurement.error_count} errors" if measurement.error_count else ""
    print(
        f"   {measurement.workload} [{measurement.nodes} nodes]: "
        f"{measurement.operations:,} ops in {measurement.seconds:.2f} s = "
        f"{format_number(measurement.rate)} ops/s, p50 "
        f"{format_number(measurement.latency_p50_ms, 2)} ms, p99 "
        f"{format_number(measurement.latency_p99_ms, 2)} ms{errors}{partial}",
        flush=True,
    )
    for error in measurement.errors:
        print(f"      error: {error}")


def say(text: str) -> None:
    print(text, flush=True)


# -- processes: CPU and memory from /proc ------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process so far (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / CLOCK_TICKS_PER_SECOND


def process_resident_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def running_pids(cluster: LocalCluster) -> dict[str, int]:
    return {
        node_id: cluster.pid(node_id) for node_id in cluster.node_ids if cluster.is_running(node_id)
    }


def cluster_cpu_seconds(pids: dict[str, int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in pids.values())


# -- the machine -------------------------------------------------------------------------------


def machine_facts(directory: Path) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpus": os.cpu_count(),
        "load_average_1_minute_at_start": os.getloadavg()[0],
        "directory": str(directory),
        "file_system": file_system_description(directory),
    }


def measure_fsync(directory: Path, samples: int = FSYNC_SAMPLES) -> list[float]:
    """Seconds of `samples` appends of 256 bytes, each made durable with fdatasync."""
    path = directory / "fsync-probe"
    record = os.urandom(FSYNC_RECORD_BYTES)
    durations: list[float] = []
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(samples):
            begin = time.perf_counter()
            os.write(descriptor, record)
            os.fdatasync(descriptor)
            durations.append(time.perf_counter() - begin)
    finally:
        os.close(descriptor)
        path.unlink(missing_ok=True)
    return durations


# -- clusters ----------------------------------------------------------------------------------


def free_base_port(nodes: int) -> int:
    try:
        return free_layout_base_port(nodes)
    except RuntimeError as error:
        raise BenchmarkError(str(error)) from None


def poll(condition: Callable[[], bool], what: str, timeout_s: float) -> float:
    """Seconds until `condition` held, polling every 20 ms; BenchmarkError after timeout_s."""
    begin = time.monotonic()
    deadline = begin + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise BenchmarkError(f"no {what} within {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)
    return time.monotonic() - begin


def all_ready(cluster: LocalCluster) -> bool:
    return all(cluster.ready(node_id) for node_id in cluster.node_ids)


class Clusters:
    """Starts the benchmark's clusters and stops every one of them, whatever happens."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        self.running: list[LocalCluster] = []
        self._started = 0
        self._tls: TlsFiles | None = None

    def tls_files(self) -> TlsFiles | None:
        """The nodes' TLS files with --tls (made once, for 127.0.0.1), else None."""
        if not self.settings.tls:
            return None
        if self._tls is None:
            self._tls = local_node_tls(self.directory / "pki")
        return self._tls

    def start(self, nodes: int) -> LocalCluster:
        """A fresh cluster with a leader and every node ready; other ports if a node exits."""
        extra_arguments: list[str] = []
        if self.settings.shutdown_timeout_ms is not None:
            extra_arguments += ["--shutdown-timeout-ms", str(self.settings.shutdown_timeout_ms)]
        for attempt in range(1, CLUSTER_START_ATTEMPTS + 1):
            self._started += 1
            cluster = LocalCluster(
                nodes,
                base_port=free_base_port(nodes),
                data_directory=self.directory / f"cluster-{self._started}-{nodes}-nodes",
                tick_interval_ms=self.settings.tick_interval_ms,
                extra_arguments=extra_arguments,
                log_level="warning",
                tls=self.tls_files(),
            )
            self.running.append(cluster)
            cluster.start()
            try:
                self._wait_up(cluster)
                return cluster
            except BenchmarkError:
                exited = [n for n in cluster.node_ids if not cluster.is_running(n)]
                self.stop(cluster, quiet=True)
                if not exited or attempt == CLUSTER_START_ATTEMPTS:
                    print_log_tails(cluster)
                    raise
                say(f"   {', '.join(exited)} exited while starting (port taken?); retrying")
        raise BenchmarkError("unreachable")

    @staticmethod
    def _wait_up(cluster: LocalCluster) -> None:
        """Wait for a leader, then for every node to be ready; BenchmarkError if a node exits."""

        def leader_elected() -> bool:
            if not all(cluster.is_running(node_id) for node_id in cluster.node_ids):
                raise BenchmarkError("a node exited while the cluster was starting")
            return cluster.leader() is not None

        poll(leader_elected, "leader", CLUSTER_UP_TIMEOUT_S)
        poll(lambda: all_ready(cluster), "ready cluster", CLUSTER_UP_TIMEOUT_S)

    def stop(self, cluster: LocalCluster, *, quiet: bool = False) -> None:
        """Stop the cluster's nodes (SIGKILL after the stop timeout) and forget it."""
        try:
            statuses = cluster.stop()
        finally:
            for node_id, process in cluster.processes.items():
                if process.poll() is None:
                    say(f"   {node_id} (pid {process.pid}) still running: killing it")
                    process.kill()
                    process.wait(10)
            if cluster in self.running:
                self.running.remove(cluster)
        if not quiet and any(status != 0 for status in statuses.values()):
            say(f"   exit statuses of the nodes: {statuses}")

    def stop_all(self) -> None:
        for cluster in list(self.running):
            try:
                self.stop(cluster)
            except Exception as error:  # keep stopping the others
                say(f"   stopping a cluster failed: {error!r}")


def print_log_tails(cluster: LocalCluster, lines: int = 15) -> None:
    for node_id in cluster.node_ids:
        tail = cluster.log_tail(node_id, lines)
        if tail:
            say(f"   --- last lines of {node_id}'s log ---\n{tail}")


def authority_of(cluster: LocalCluster) -> str | None:
    tls = cluster.tls
    return None if tls is None or tls.authority is None else str(tls.authority)


def client_tls(authority: str | None) -> ssl.SSLContext | None:
    return None if authority is None else client_context(authority)


def run_with_client(cluster: LocalCluster, action: Callable[[AsyncClient], Awaitable[_T]]) -> _T:
    """Run one coroutine against the cluster with a fresh client (set-up and checks)."""

    async def go() -> _T:
        async with AsyncClient(
            cluster.servers,
            request_timeout_s=CLIENT_REQUEST_TIMEOUT_S,
            tls=client_tls(authority_of(cluster)),
        ) as client:
            return await action(client)

    return asyncio.run(go())


def create_queues(cluster: LocalCluster, names: Sequence[str]) -> None:
    async def create(client: AsyncClient) -> None:
        for name in names:
            await client.create_queue(name)

    run_with_client(cluster, create)


def count(cluster: LocalCluster, queue: str) -> QueueCounts:
    async def counts(client: AsyncClient) -> QueueCounts:
        return await client.count(queue)

    return run_with_client(cluster, counts)


# -- the client worker processes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process does: its actors (one AsyncClient each) and their shares.

    kind: "enqueue" (each actor enqueues its share of `actor_operations`), "consume" (the
    actors dequeue and ack until the queue has no ready task or `quota` pairs are done),
    "enqueue_batch" and "consume_batch" (the same, with `enqueue_many` / `dequeue_many`).
    """

    kind: str
    servers: tuple[str, ...]
    queue: str
    actor_operations: tuple[int, ...]
    quota: int | None
    payload_bytes: int
    priority: int
    lease_ms: int
    duration_max_s: float
    batch_size: int = 1
    # The authority file the clients verify the nodes by (None: plain TCP); a path, because a
    # context does not cross to the worker process.
    authority: str | None = None

    @property
    def actors(self) -> int:
        return len(self.actor_operations)


@dataclass(slots=True)
class WorkerResult:
    """What one worker did: task ids enqueued (or delivered), call latencies, its CPU."""

    task_ids: list[int] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    stopped_early: bool = False
    unavailable: str | None = None
    started: float = 0.0
    finished: float = 0.0
    cpu_seconds: float = 0.0

    def record_error(self, operation: str, error: BaseException) -> None:
        self.error_count += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(f"{operation}: {type(error).__name__}: {error}"[:300])


class Budget:
    """Operations left to a worker's actors (None: unbounded); one event loop, no lock."""

    def __init__(self, operations: int | None) -> None:
        self.left = operations

    def take(self, wanted: int = 1) -> int:
        if self.left is None:
            return wanted
        granted = min(wanted, self.left)
        self.left -= granted
        return granted

    def give_back(self, unused: int) -> None:
        if self.left is not None:
            self.left += unused


async def enqueue_actor(
    client: AsyncClient, spec: WorkerSpec, operations: int, deadline: float, result: WorkerResult
) -> None:
    payload = os.urandom(spec.payload_bytes)
    consecutive_errors = 0
    for _ in range(operations):
        if time.monotonic() >= deadline:
            result.stopped_early = True
            return
        begin = time.perf_counter()
        try:
            task_id = await client.enqueue(spec.queue, payload, spec.priority)
        except (TaskraftError, OSError) as error:
            result.record_error("enqueue", error)
            consecutive_errors += 1
            if consecutive_errors >= CONSECUTIVE_ERRORS_MAX:
                return
            continue
        result.latencies_s.append(time.perf_counter() - begin)
        result.task_ids.append(task_id)
        consecutive_errors = 0


async def consume_actor(
    client: AsyncClient, spec: WorkerSpec, budget: Budget, deadline: float, result: WorkerResult
) -> None:
    consecutive_errors = 0
    while budget.take():
        if time.monotonic() >= deadline:
            budget.give_back(1)
            result.stopped_early = True
            return
        begin = time.perf_counter()
        try:
            task = await client.dequeue(spec.queue, lease_ms=spec.lease_ms)
        except (TaskraftError, OSError) as error:
            budget.give_back(1)
            result.record_error("dequeue", error)
            consecutive_errors += 1
            if consecutive_errors >= CONSECUTIVE_ERRORS_MAX:
                return
            continue
        if task is None:  # nothing ready: with no producer running, the queue is drained
            budget.give_back(1)
            return
        result.task_ids.append(task.id)
        try:
            await client.ack(task)
        except (TaskraftError, OSError) as error:
            result.record_error("ack", error)
            consecutive_errors += 1
            if consecutive_errors >= CONSECUTIVE_ERRORS_MAX:
                return
            continue
        result.latencies_s.append(time.perf_counter() - begin)
        consecutive_errors = 0


async def enqueue_batch_actor(
    client: AsyncClient, spec: WorkerSpec, operations: int, deadline: float, result: WorkerResult
) -> None:
    enqueue_many = getattr(client, ENQUEUE_MANY)
    payload = os.urandom(spec.payload_bytes)
    left = operations
    while left > 0:
        if time.monotonic() >= deadline:
            result.stopped_early = True
            return
        size = min(spec.batch_size, left)
        begin = time.perf_counter()
        try:
            task_ids = await enqueue_many(spec.queue, [payload] * size)
        except (TypeError, ValueError, AttributeError) as error:  # a signature it does not know
            result.unavailable = f"enqueue_many has another signature: {error}"
            return
        except (TaskraftError, OSError) as error:
            result.record_error("enqueue_many", error)
            if result.error_count >= CONSECUTIVE_ERRORS_MAX:
                return
            continue
        result.latencies_s.append(time.perf_counter() - begin)
        result.task_ids.extend(int(task_id) for task_id in task_ids)
        left -= size


async def consume_batch_actor(
    client: AsyncClient, spec: WorkerSpec, budget: Budget, deadline: float, result: WorkerResult
) -> None:
    dequeue_many = getattr(client, DEQUEUE_MANY)
    while granted := budget.take(spec.batch_size):
        if time.monotonic() >= deadline:
            budget.give_back(granted)
            result.stopped_early = True
            return
        begin = time.perf_counter()
        try:
            tasks: list[Task] = list(
                await dequeue_many(spec.queue, granted, lease_ms=spec.lease_ms)
            )
        except (TypeError, ValueError, AttributeError) as error:
            budget.give_back(granted)
            result.unavailable = f"dequeue_many has another signature: {error}"
            return
        except (TaskraftError, OSError) as error:
            budget.give_back(granted)
            result.record_error("dequeue_many", error)
            if result.error_count >= CONSECUTIVE_ERRORS_MAX:
                return
            continue
        budget.give_back(granted - len(tasks))
        if not tasks:
            return
        result.task_ids.extend(task.id for task in tasks)
        # One ack_many when the client has it (unacked tasks show in the final count), else
        # the acks pipelined on the connection.
        ack_many = getattr(client, ACK_MANY, None)
        if ack_many is not None:
            try:
                await ack_many(tasks)
            except (TaskraftError, OSError) as error:
                result.record_error("ack_many", error)
        else:
            outcomes = await asyncio.gather(
                *(client.ack(task) for task in tasks), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    result.record_error("ack", outcome)
        result.latencies_s.append(time.perf_counter() - begin)


async def run_worker(spec: WorkerSpec, connection: Connection, start: EventType) -> WorkerResult:
    result = WorkerResult()
    clients = [
        AsyncClient(
            list(spec.servers),
            request_timeout_s=CLIENT_REQUEST_TIMEOUT_S,
            tls=client_tls(spec.authority),
        )
        for _ in range(spec.actors)
    ]
    try:
        # Connect every client to the leader before the clock starts (`count` is served by the
        # leader, so a client that reached a follower follows its redirect now).
        async with asyncio.timeout(WORKER_CONNECT_TIMEOUT_S):
            await asyncio.gather(*(client.count(spec.queue) for client in clients))
        connection.send(("ready", None))
        # Blocking the loop is harmless here: nothing is in flight.
        if not start.wait(WORKER_CONNECT_TIMEOUT_S * 2):
            raise BenchmarkError("the start signal never came")
        cpu_before = time.process_time()
        result.started = time.monotonic()
        deadline = result.started + spec.duration_max_s
        budget = Budget(spec.quota)
        actors: list[Awaitable[None]] = []
        for client, operations in zip(clients, spec.actor_operations, strict=True):
            if spec.kind == "enqueue":
                actors.append(enqueue_actor(client, spec, operations, deadline, result))
            elif spec.kind == "consume":
                actors.append(consume_actor(client, spec, budget, deadline, result))
            elif spec.kind == "enqueue_batch":
                actors.append(enqueue_batch_actor(client, spec, operations, deadline, result))
            elif spec.kind == "consume_batch":
                actors.append(consume_batch_actor(client, spec, budget, deadline, result))
            else:
                raise ValueError(f"unknown workload kind {spec.kind!r}")
        await asyncio.gather(*actors)
        result.finished = time.monotonic()
        result.cpu_seconds = time.process_time() - cpu_before
        return result
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def worker_main(spec: WorkerSpec, connection: Connection, start: EventType) -> None:
    """Entry point of a forked worker process: run the spec, send back the result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        result = asyncio.run(run_worker(spec, connection, start))
        connection.send(("result", result))
    except BaseException:
        connection.send(("failed", traceback.format_exc()))
    finally:
        connection.close()


def receive(connection: Connection, deadline: float, what: str) -> tuple[str, Any]:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not connection.poll(remaining):
        raise BenchmarkError(f"a client worker sent no {what} in time")
    try:
        message: tuple[str, Any] = connection.recv()
    except EOFError as error:
        raise BenchmarkError(f"a client worker exited without sending its {what}") from error
    if message[0] == "failed":
        raise BenchmarkError(f"a client worker failed:\n{message[1]}")
    return message


@dataclass(slots=True)
class ClientRun:
    """The merged results of a workload's worker processes, and the servers' CPU meanwhile."""

    results: list[WorkerResult]
    server_cpu_seconds: float

    @property
    def task_ids(self) -> list[int]:
        return [task_id for result in self.results for task_id in result.task_ids]

    @property
    def seconds(self) -> float:
        started = [result.started for result in self.results]
        finished = [result.finished for result in self.results]
        return max(finished) - min(started) if started else 0.0

    def measurement(
        self, workload: str, nodes: int, operations: int, actors: int, note: str = ""
    ) -> Measurement:
        latencies = [value for result in self.results for value in result.latencies_s]
        errors = [error for result in self.results for error in result.errors][:ERRORS_KEPT]
        return Measurement(
            workload=workload,
            nodes=nodes,
            operations=operations,
            seconds=self.seconds,
            latency_p50_ms=milliseconds(percentile_or_none(latencies, 0.50)),
            latency_p99_ms=milliseconds(percentile_or_none(latencies, 0.99)),
            server_cpu_seconds=self.server_cpu_seconds,
            client_cpu_seconds=sum(result.cpu_seconds for result in self.results),
            client_processes=len(self.results),
            actors=actors,
            stopped_early=any(result.stopped_early for result in self.results),
            error_count=sum(result.error_count for result in self.results),
            errors=errors,
            note=note,
        )


def run_clients(cluster: LocalCluster, specs: Sequence[WorkerSpec]) -> ClientRun:
    """Fork one worker per spec, start them together, collect their results (bounded)."""
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers: list[tuple[BaseProcess, Connection]] = []
    try:
        for spec in specs:
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_main, args=(spec, sender, start), name="taskraft-bench-client"
            )
            process.daemon = True
            process.start()
            sender.close()
            workers.append((process, receiver))
        connect_deadline = time.monotonic() + WORKER_CONNECT_TIMEOUT_S
        for _, receiver in workers:
            receive(receiver, connect_deadline, "ready signal")
        pids = running_pids(cluster)
        cpu_before = cluster_cpu_seconds(pids)
        start.set()
        finish_deadline = (
            time.monotonic() + max(spec.duration_max_s for spec in specs) + WORKER_FINISH_GRACE_S
        )
        results: list[WorkerResult] = []
        for _, receiver in workers:
            _, result = receive(receiver, finish_deadline, "result")
            results.append(result)
        cpu_after = cluster_cpu_seconds(pids)
        return ClientRun(results, cpu_after - cpu_before)
    finally:
        for worker, receiver in workers:
            receiver.close()
            worker.join(WORKER_EXIT_TIMEOUT_S)
            if worker.is_alive():
                worker.terminate()
                worker.join(WORKER_EXIT_TIMEOUT_S)
            if worker.is_alive():
                worker.kill()
                worker.join(WORKER_EXIT_TIMEOUT_S)


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` shares that differ by at most one."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def worker_specs(
    template: WorkerSpec, actors: int, operations: int, processes: int
) -> list[WorkerSpec]:
    """Spread `actors` (and `operations`, per actor) over at most `processes` workers."""
    processes = max(1, min(processes, actors))
    actor_operations = split(operations, actors)
    specs: list[WorkerSpec] = []
    first = 0
    for actors_here in split(actors, processes):
        shares = tuple(actor_operations[first : first + actors_here])
        first += actors_here
        specs.append(replace(template, actor_operations=shares))
    return specs


def consume_specs(
    template: WorkerSpec, actors: int, quota: int | None, processes: int
) -> list[WorkerSpec]:
    """Consumers spread over workers; a quota is split in proportion to their actors."""
    specs = worker_specs(template, actors, 0, processes)
    if quota is None:
        return specs
    quotas = split(quota, actors)
    shares: list[WorkerSpec] = []
    first = 0
    for spec in specs:
        shares.append(replace(spec, quota=sum(quotas[first : first + spec.actors])))
        first += spec.actors
    return shares


# -- the workloads -----------------------------------------------------------------------------


class Bench:
    """The workloads, in order, on one cluster; each adds its row to the report."""

    def __init__(self, settings: Settings, report: Report, clusters: Clusters) -> None:
        self.settings = settings
        self.report = report
        self.clusters = clusters
        self.batch_available = all(
            hasattr(AsyncClient, name) for name in (ENQUEUE_MANY, DEQUEUE_MANY)
        )

    def template(self, cluster: LocalCluster, kind: str, queue: str) -> WorkerSpec:
        return WorkerSpec(
            kind=kind,
            servers=tuple(cluster.servers),
            queue=queue,
            actor_operations=(),
            quota=None,
            payload_bytes=self.settings.payload_bytes,
            priority=MEASURED_PRIORITY,
            lease_ms=self.settings.lease_ms,
            duration_max_s=self.settings.duration_max_s,
            authority=authority_of(cluster),
        )

    def enqueue(
        self,
        cluster: LocalCluster,
        workload: str,
        queue: str,
        *,
        producers: int,
        messages: int,
        processes: int,
        priority: int = MEASURED_PRIORITY,
        duration_max_s: float | None = None,
    ) -> tuple[Measurement, list[int]]:
        template = replace(
            self.template(cluster, "enqueue", queue),
            priority=priority,
            duration_max_s=duration_max_s or self.settings.duration_max_s,
        )
        run = run_clients(cluster, worker_specs(template, producers, messages, processes))
        task_ids = run.task_ids
        measurement = run.measurement(
            workload, len(cluster.node_ids), len(task_ids), producers, note=f"of {messages:,}"
        )
        return self.report.add(measurement), task_ids

    def consume(
        self,
        cluster: LocalCluster,
        workload: str,
        queue: str,
        *,
        consumers: int,
        quota: int | None,
        processes: int,
    ) -> tuple[Measurement, list[int]]:
        template = self.template(cluster, "consume", queue)
        run = run_clients(cluster, consume_specs(template, consumers, quota, processes))
        task_ids = run.task_ids
        measurement = run.measurement(workload, len(cluster.node_ids), len(task_ids), consumers)
        return self.report.add(measurement), task_ids

    def check_exactly_once(
        self, name: str, enqueued: Sequence[int], delivered: Sequence[int], stopped_early: bool
    ) -> None:
        """Every enqueued id delivered once: none missing, none twice, none unknown."""
        enqueued_counts = Counter(enqueued)
        delivered_counts = Counter(delivered)
        enqueued_twice = sum(1 for value in enqueued_counts.values() if value > 1)
        delivered_twice = sum(1 for value in delivered_counts.values() if value > 1)
        missing = len(enqueued_counts.keys() - delivered_counts.keys())
        unknown = len(delivered_counts.keys() - enqueued_counts.keys())
        passed = not (enqueued_twice or delivered_twice or missing or unknown)
        detail = (
            f"{len(enqueued):,} ids enqueued ({enqueued_twice} repeated), {len(delivered):,} "
            f"deliveries: {missing:,} never delivered, {delivered_twice:,} delivered more than "
            f"once, {unknown:,} not enqueued"
        )
        if stopped_early and missing:
            detail += " (the consumers were stopped at the duration bound: incomplete)"
        self.report.check(name, passed, detail)

    def check_counts(
        self, cluster: LocalCluster, name: str, queue: str, *, ready: int, stage: str = ""
    ) -> None:
        counts = count(cluster, queue)
        passed = counts.ready == ready and counts.delayed == 0 and counts.leased == 0
        self.report.check(
            name,
            passed,
            f"{queue}{stage}: {counts.ready:,} ready, {counts.delayed:,} delayed, "
            f"{counts.leased:,} leased (expected {ready:,} ready, none delayed or leased)",
        )

    # -- W1, W2, W3 ------------------------------------------------------------------------

    def empty_queue_workloads(self, cluster: LocalCluster) -> tuple[Measurement, Measurement]:
        settings = self.settings
        say(
            f"\n== W1: {settings.producers} producers enqueue {settings.messages:,} tasks of "
            f"{settings.payload_bytes} B (awaited one by one)"
        )
        w1, enqueued = self.enqueue(
            cluster,
            "W1 enqueue",
            W1_QUEUE,
            producers=settings.producers,
            messages=settings.messages,
            processes=settings.client_processes,
        )
        say(f"\n== W2: {settings.consumers} consumers dequeue (leased) and ack until empty")
        w2, delivered = self.consume(
            cluster,
            "W2 dequeue+ack",
            W1_QUEUE,
            consumers=settings.consumers,
            quota=None,
            processes=settings.client_processes,
        )
        self.check_exactly_once("W1 -> W2 exactly once", enqueued, delivered, w2.stopped_early)
        self.check_counts(cluster, "W1 queue empty", W1_QUEUE, ready=0)

        operations = settings.sequential_operations
        say(f"\n== W3: one producer, {operations:,} sequential enqueues, then one consumer")
        _, enqueued = self.enqueue(
            cluster,
            "W3 sequential enqueue",
            SEQUENTIAL_QUEUE,
            producers=1,
            messages=operations,
            processes=1,
        )
        sequential_consume, delivered = self.consume(
            cluster,
            "W3 sequential dequeue+ack",
            SEQUENTIAL_QUEUE,
            consumers=1,
            quota=None,
            processes=1,
        )
        self.check_exactly_once(
            "W3 exactly once", enqueued, delivered, sequential_consume.stopped_early
        )
        self.check_counts(cluster, "W3 queue empty", SEQUENTIAL_QUEUE, ready=0)
        return w1, w2

    # -- batched ---------------------------------------------------------------------------

    def batched(self, cluster: LocalCluster) -> None:
        if not self.batch_available:
            reason = "not available: AsyncClient has no enqueue_many/dequeue_many"
            self.report.unavailable["batched"] = reason
            say(f"\n== Batched: {reason}")
            return
        settings = self.settings
        say(
            f"\n== Batched: {BATCH_PRODUCERS} producers, enqueue_many of up to {BATCH_SIZE:,}, "
            f"{settings.messages:,} tasks; then dequeue_many + ack"
        )
        template = replace(
            self.template(cluster, "enqueue_batch", BATCHED_QUEUE), batch_size=BATCH_SIZE
        )
        specs = worker_specs(
            template, BATCH_PRODUCERS, settings.messages, settings.client_processes
        )
        run = run_clients(cluster, specs)
        reasons = [result.unavailable for result in run.results if result.unavailable]
        enqueued = run.task_ids
        if reasons and not enqueued:
            self.report.unavailable["batched"] = f"not available: {reasons[0]}"
            say(f"   not available: {reasons[0]}")
            return
        self.report.add(
            run.measurement(
                "batched enqueue (latency per call)",
                len(cluster.node_ids),
                len(enqueued),
                BATCH_PRODUCERS,
            )
        )
        template = replace(
            self.template(cluster, "consume_batch", BATCHED_QUEUE), batch_size=BATCH_SIZE
        )
        specs = consume_specs(template, BATCH_PRODUCERS, None, settings.client_processes)
        run = run_clients(cluster, specs)
        delivered = run.task_ids
        measurement = self.report.add(
            run.measurement(
                "batched dequeue+ack (latency per call)",
                len(cluster.node_ids),
                len(delivered),
                BATCH_PRODUCERS,
            )
        )
        reasons = [result.unavailable for result in run.results if result.unavailable]
        if reasons:
            self.report.unavailable["batched dequeue"] = reasons[0]
        self.check_exactly_once(
            "batched exactly once", enqueued, delivered, measurement.stopped_early
        )
        self.check_counts(cluster, "batched queue empty", BATCHED_QUEUE, ready=0)

    # -- deep queue ------------------------------------------------------------------------

    def deep_queue(self, cluster: LocalCluster, w1: Measurement, w2: Measurement) -> None:
        """Fill the deep queue, then measure enqueues and dequeue+acks on top of it."""
        settings = self.settings
        resident_before = {
            node_id: process_resident_bytes(pid) for node_id, pid in running_pids(cluster).items()
        }
        say(
            f"\n== Deep queue: {settings.producers} producers fill {DEEP_QUEUE} with "
            f"{settings.deep_tasks:,} tasks (priority {DEEP_FILL_PRIORITY})"
        )
        _, filled = self.enqueue(
            cluster,
            "deep fill",
            DEEP_QUEUE,
            producers=settings.producers,
            messages=settings.deep_tasks,
            processes=settings.client_processes,
            priority=DEEP_FILL_PRIORITY,
            duration_max_s=settings.deep_fill_max_s,
        )
        resident_after = {
            node_id: process_resident_bytes(pid) for node_id, pid in running_pids(cluster).items()
        }
        self.report.memory = memory_report(resident_before, resident_after, len(filled))
        repeated = len(filled) - len(set(filled))
        self.report.check(
            "deep fill ids distinct", repeated == 0, f"{len(filled):,} ids, {repeated} repeated"
        )
        self.check_counts(cluster, "deep queue holds the fill", DEEP_QUEUE, ready=len(filled))

        operations = settings.deep_operations
        say(f"\n== Deep queue: {operations:,} enqueues, then dequeue+acks, on top of it")
        deep_enqueue, enqueued = self.enqueue(
            cluster,
            "deep enqueue",
            DEEP_QUEUE,
            producers=settings.producers,
            messages=operations,
            processes=settings.client_processes,
        )
        deep_consume, delivered = self.consume(
            cluster,
            "deep dequeue+ack",
            DEEP_QUEUE,
            consumers=settings.consumers,
            quota=len(enqueued),
            processes=settings.client_processes,
        )
        self.check_exactly_once(
            "deep enqueue -> dequeue exactly once", enqueued, delivered, deep_consume.stopped_early
        )
        self.check_counts(cluster, "deep queue back to the fill", DEEP_QUEUE, ready=len(filled))
        self.report.ratios = {
            "enqueue_rate_deep_over_empty": ratio(deep_enqueue.rate, w1.rate),
            "dequeue_ack_rate_deep_over_empty": ratio(deep_consume.rate, w2.rate),
        }

    # -- recovery --------------------------------------------------------------------------

    def recovery(self, cluster: LocalCluster) -> None:
        deep_ready = count(cluster, DEEP_QUEUE).ready
        say(f"\n== Recovery with {deep_ready:,} tasks queued")
        leader = cluster.wait_for_leader(timeout_s=30)
        follower = next(node_id for node_id in cluster.node_ids if node_id != leader)
        follower_times = restart_follower(cluster, follower, leader)
        say(
            f"   follower {follower} killed (SIGKILL) and restarted: ready after "
            f"{follower_times['ready_seconds']:.2f} s, applied index at the leader's commit "
            f"index ({follower_times['leader_commit_index']:,}) after "
            f"{follower_times['caught_up_seconds']:.2f} s"
        )
        whole = restart_cluster(cluster)
        say(
            f"   whole cluster stopped in {whole['stop_seconds']:.2f} s (SIGTERM), started: "
            f"leader after {whole['leader_seconds']:.2f} s, every node ready after "
            f"{whole['ready_seconds']:.2f} s"
        )
        self.report.recovery = {
            "queued_tasks": deep_ready,
            "follower_restart": follower_times,
            "cluster_restart": whole,
        }
        self.check_counts(
            cluster,
            "deep queue intact after the restarts",
            DEEP_QUEUE,
            ready=deep_ready,
            stage=" (as many ready as before the restarts)",
        )

    # -- scaling ---------------------------------------------------------------------------

    def scaling(self) -> None:
        settings = self.settings
        for nodes in settings.scaling_nodes:
            say(f"\n== Scaling: W1 on a fresh {nodes}-node cluster")
            cluster = self.clusters.start(nodes)
            try:
                create_queues(cluster, [SCALING_QUEUE])
                _, enqueued = self.enqueue(
                    cluster,
                    "W1 enqueue (scaling)",
                    SCALING_QUEUE,
                    producers=settings.producers,
                    messages=settings.messages,
                    processes=settings.client_processes,
                )
                repeated = len(enqueued) - len(set(enqueued))
                self.report.check(
                    f"scaling {nodes} nodes: ids distinct",
                    repeated == 0,
                    f"{len(enqueued):,} ids, {repeated} repeated",
                )
                self.check_counts(
                    cluster, f"scaling {nodes} nodes: count", SCALING_QUEUE, ready=len(enqueued)
                )
            finally:
                self.clusters.stop(cluster)

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> None:
        settings = self.settings
        say(f"\n== Starting a {settings.nodes}-node cluster")
        cluster = self.clusters.start(settings.nodes)
        try:
            pids = running_pids(cluster)
            say(
                f"   nodes: {', '.join(f'{n} pid {p}' for n, p in pids.items())}; "
                f"leader {cluster.leader()}; data in {cluster.directory}"
            )
            create_queues(cluster, [W1_QUEUE, SEQUENTIAL_QUEUE, BATCHED_QUEUE, DEEP_QUEUE])
            w1, w2 = self.empty_queue_workloads(cluster)
            self.batched(cluster)
            self.deep_queue(cluster, w1, w2)
            self.recovery(cluster)
        finally:
            say("\n== Stopping the cluster")
            self.clusters.stop(cluster)
        if settings.scaling:
            self.scaling()


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def memory_report(
    before: dict[str, int | None], after: dict[str, int | None], tasks: int
) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for node_id, resident_before in before.items():
        resident_after = after.get(node_id)
        per_task = None
        if resident_before is not None and resident_after is not None and tasks:
            per_task = (resident_after - resident_before) / tasks
        nodes[node_id] = {
            "resident_bytes_before_fill": resident_before,
            "resident_bytes_after_fill": resident_after,
            "bytes_per_queued_task": per_task,
        }
    return {"filled_tasks": tasks, "nodes": nodes}


def restart_follower(cluster: LocalCluster, follower: str, leader: str) -> dict[str, Any]:
    """SIGKILL the follower, start it again: seconds until ready and until caught up."""
    cluster.kill_node(follower)
    begin = time.monotonic()
    cluster.start_node(follower)
    deadline = begin + RECOVERY_TIMEOUT_S
    ready_seconds: float | None = None
    caught_up_seconds: float | None = None
    leader_commit = -1
    follower_status: dict[str, Any] | None = None
    while ready_seconds is None or caught_up_seconds is None:
        if time.monotonic() >= deadline:
            raise BenchmarkError(f"{follower} did not recover within {RECOVERY_TIMEOUT_S:g} s")
        if not cluster.is_running(follower):
            raise BenchmarkError(f"{follower} exited while recovering")
        if ready_seconds is None and cluster.ready(follower):
            ready_seconds = time.monotonic() - begin
        if caught_up_seconds is None:
            follower_status = cluster.status(follower)
            leader_status = cluster.status(leader)
            if follower_status is not None and leader_status is not None:
                leader_commit = int(leader_status["commit_index"])
                if int(follower_status.get("applied_index", -1)) >= leader_commit:
                    caught_up_seconds = time.monotonic() - begin
        time.sleep(POLL_INTERVAL_S)
    return {
        "node": follower,
        "ready_seconds": ready_seconds,
        "caught_up_seconds": caught_up_seconds,
        "leader_commit_index": leader_commit,
        "snapshot_index": None if follower_status is None else follower_status["snapshot_index"],
    }


def restart_cluster(cluster: LocalCluster) -> dict[str, Any]:
    """Stop every node (SIGTERM), start them all: seconds to stop, to a leader, to ready."""
    begin = time.monotonic()
    statuses = cluster.stop()
    stop_seconds = time.monotonic() - begin
    begin = time.monotonic()
    cluster.start()
    leader_seconds = poll(
        lambda: cluster.leader() is not None, "leader after the restart", RECOVERY_TIMEOUT_S
    )
    poll(lambda: all_ready(cluster), "ready cluster after the restart", RECOVERY_TIMEOUT_S)
    return {
        "stop_seconds": stop_seconds,
        "exit_statuses": statuses,
        "leader_seconds": leader_seconds,
        "ready_seconds": time.monotonic() - begin,
    }


# -- the report --------------------------------------------------------------------------------


def print_summary(report: Report) -> None:
    settings = report.settings
    print_heading("taskraft queue benchmark: results")
    print(
        f"clients: one AsyncClient (one connection) per producer/consumer, each call awaited, "
        f"spread over up to {settings.client_processes} forked worker processes; payload "
        f"{settings.payload_bytes} B; tick {settings.tick_interval_ms} ms"
    )
    machine = report.machine
    print(
        f"machine: {machine.get('cpus')} CPUs, 1-minute load average "
        f"{format_number(machine.get('load_average_1_minute_at_start'), 2)} at the start and "
        f"{format_number(machine.get('load_average_1_minute_at_end'), 2)} at the end "
        "(near or above the CPU count: other work shared the CPUs)"
    )
    print(
        f"fsync floor (256 B append + fdatasync, {FSYNC_SAMPLES} samples): p50 "
        f"{format_number(report.fsync_p50_ms, 2)} ms, p99 {format_number(report.fsync_p99_ms, 2)}"
        " ms\n"
    )
    headers = (
        "workload",
        "nodes",
        "ops",
        "seconds",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "server CPU µs/op",
        "client CPU µs/op",
    )
    rows = [
        (
            measurement.workload + (" PARTIAL" if measurement.stopped_early else ""),
            str(measurement.nodes),
            f"{measurement.operations:,}",
            f"{measurement.seconds:.2f}",
            format_number(measurement.rate),
            format_number(measurement.latency_p50_ms, 2),
            format_number(measurement.latency_p99_ms, 2),
            format_number(measurement.server_cpu_microseconds_per_operation),
            format_number(measurement.client_cpu_microseconds_per_operation),
        )
        for measurement in report.measurements
    ]
    rows += [
        (f"{name}: not available", str(settings.nodes), "-", "-", "-", "-", "-", "-", "-")
        for name in report.unavailable
    ]
    print_table(headers, rows)
    for name, reason in report.unavailable.items():
        print(f"{name}: {reason}")
    if report.ratios:
        print(
            "deep queue / empty queue: enqueue rate x"
            f"{format_number(report.ratios['enqueue_rate_deep_over_empty'], 2)}, dequeue+ack rate"
            f" x{format_number(report.ratios['dequeue_ack_rate_deep_over_empty'], 2)}"
        )
    if report.memory:
        print(f"memory (VmRSS) before and after filling {report.memory['filled_tasks']:,} tasks:")
        for node_id, figures in report.memory["nodes"].items():
            before = figures["resident_bytes_before_fill"]
            after = figures["resident_bytes_after_fill"]
            print(
                f"   {node_id}: {format_number(None if before is None else before / 1e6, 1)} MB -> "
                f"{format_number(None if after is None else after / 1e6, 1)} MB, "
                f"{format_number(figures['bytes_per_queued_task'])} bytes per queued task"
            )
    if report.recovery:
        follower = report.recovery["follower_restart"]
        whole = report.recovery["cluster_restart"]
        print(
            f"recovery with {report.recovery['queued_tasks']:,} tasks queued: follower "
            f"{follower['node']} (SIGKILL, restart) ready in {follower['ready_seconds']:.2f} s, "
            f"caught up in {follower['caught_up_seconds']:.2f} s; whole cluster: stop "
            f"{whole['stop_seconds']:.2f} s, leader {whole['leader_seconds']:.2f} s and every "
            f"node ready {whole['ready_seconds']:.2f} s after the start"
        )
    failed = [check for check in report.checks if not check.passed]
    if report.failure is not None:
        print(f"\nBENCHMARK FAILED: {report.failure}")
    if failed:
        print(f"\nVERIFICATION FAILED: {len(failed)} of {len(report.checks)} checks:")
        for check in failed:
            print(f"   {check.name}: {check.detail}")
    elif report.failure is not None:
        print(f"\nverification incomplete: the {len(report.checks)} checks made before it held")
    elif report.checks:
        print(
            f"\nverification passed: {len(report.checks)} checks (every enqueued task delivered "
            "exactly once, consumed queues empty, deep queue intact)"
        )
    print(f"total time: {report.elapsed_seconds:.1f} s", flush=True)


def write_report(report: Report, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report.document(), indent=2) + "\n")
    print(f"results written to {output}", flush=True)


# -- main --------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Defaults are for a full run; --quick changes those it names in its help.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small counts, under a minute: 5,000 messages, 16 producers and consumers, 20,000 "
        "deep tasks, 200 sequential operations, 20 s bounds, no scaling",
    )
    parser.add_argument("--nodes", type=int, help="nodes of the main cluster (3)")
    parser.add_argument("--producers", type=int, help="concurrent producers (64)")
    parser.add_argument("--consumers", type=int, help="concurrent consumers (64)")
    parser.add_argument("--messages", type=int, help="tasks enqueued by W1 (40,000)")
    parser.add_argument("--payload-bytes", type=int, help="bytes per task payload (64)")
    parser.add_argument(
        "--client-processes", type=int, help="worker processes the clients are spread over (2)"
    )
    parser.add_argument(
        "--duration-max-s", type=float, help="bound of each workload, then partial (120)"
    )
    parser.add_argument(
        "--sequential-operations", type=int, help="enqueues (and dequeues) of W3 (2,000)"
    )
    parser.add_argument("--deep-tasks", type=int, help="tasks of the deep queue (1,000,000)")
    parser.add_argument(
        "--deep-operations", type=int, help="enqueues and dequeue+acks on the deep queue (20,000)"
    )
    parser.add_argument(
        "--deep-fill-max-s", type=float, help="bound of the deep fill, then partial (900)"
    )
    parser.add_argument(
        "--scaling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run W1 on fresh clusters of 1, 3 and 5 nodes (on; off with --quick)",
    )
    parser.add_argument("--tick-interval-ms", type=int, help="the nodes' Raft tick interval (100)")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every port of every node, verified by the clients (default: plain TCP)",
    )
    parser.add_argument(
        "--shutdown-timeout-ms",
        type=int,
        help="the nodes' --shutdown-timeout-ms (server default, 10,000; quick: 1,000)",
    )
    parser.add_argument(
        "--directory",
        type=Path,
        help="where to create the temporary working directory of the nodes (default: the "
        "system's temporary directory); put it on the volume to measure",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="the JSON results file (default: a new file under the system's temporary directory)",
    )
    arguments = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if arguments.quick else FULL_DEFAULTS
    values = {
        name: getattr(arguments, name) if getattr(arguments, name) is not None else default
        for name, default in defaults.items()
    }
    settings = Settings(
        quick=arguments.quick, scaling_nodes=(1, 3, 5), tls=arguments.tls, **values
    )
    positive = (
        "nodes",
        "producers",
        "consumers",
        "messages",
        "client_processes",
        "sequential_operations",
        "deep_tasks",
        "deep_operations",
    )
    for name in positive:
        if getattr(settings, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if settings.payload_bytes < 0 or settings.duration_max_s <= 0 or settings.deep_fill_max_s <= 0:
        parser.error("payload size must not be negative and durations must be positive")
    return settings, arguments


def raise_keyboard_interrupt(signal_number: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal_number}")


def main(argv: Sequence[str] | None = None) -> int:
    settings, arguments = parse_arguments(argv)
    began = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, through the finally blocks that stop the clusters.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    if arguments.directory is not None:
        arguments.directory.mkdir(parents=True, exist_ok=True)
    work_directory = Path(tempfile.mkdtemp(prefix="taskraft-queue-bench-", dir=arguments.directory))
    started_at = time.strftime("%Y%m%d-%H%M%S")
    output: Path = arguments.output or (
        Path(tempfile.gettempdir()) / "taskraft-queue-bench" / f"queue_bench-{started_at}.json"
    )
    report = Report(settings=settings, started_at=started_at, work_directory=str(work_directory))
    clusters = Clusters(work_directory, settings)
    exit_status = 0
    try:
        report.machine = machine_facts(work_directory)
        mode = "quick (small counts: checks that it works)" if settings.quick else "full"
        if settings.tls:
            mode += ", TLS on every port"
        say(f"taskraft queue benchmark, {mode}; nodes' data under {work_directory}")
        machine = report.machine
        say(
            f"{machine['cpus']} CPUs, load average {machine['load_average_1_minute_at_start']:.2f};"
            f" {machine['file_system']}"
        )
        fsync = measure_fsync(work_directory)
        report.fsync_p50_ms = milliseconds(percentile_or_none(fsync, 0.50))
        report.fsync_p99_ms = milliseconds(percentile_or_none(fsync, 0.99))
        say(f"fsync (256 B append + fdatasync): p50 {report.fsync_p50_ms:.2f} ms")
        Bench(settings, report, clusters).run()
    except KeyboardInterrupt:
        report.failure = "interrupted"
        exit_status = 130
    except (BenchmarkError, TaskraftError, TimeoutError, OSError) as error:
        report.failure = f"{type(error).__name__}: {error}"
        exit_status = 2
    finally:
        clusters.stop_all()
        shutil.rmtree(work_directory, ignore_errors=True)
    report.elapsed_seconds = time.monotonic() - began
    report.machine["load_average_1_minute_at_end"] = os.getloadavg()[0]
    print_summary(report)
    write_report(report, output)
    if exit_status:
        return exit_status
    return 0 if report.verified else 1


if __name__ == "__main__":
    sys.exit(main())
