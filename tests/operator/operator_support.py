"""Helpers of the operator's handler tests: the world the operator lives in, made small.

- `Emulator`: kmock's emulated Kubernetes API, with what these tests need of a real API server
  on top: a uid, a resourceVersion, a creationTimestamp and a generation on each new object, a
  generation bumped by each change of `spec`, names for `generateName` (kopf's events), and
  the uid precondition of a delete enforced (409).
- `PodNodes`: real `taskraft serve` processes standing in for the pods, named as the operator
  names them (node id `{cluster}-{ordinal}`), on free 127.0.0.1 ports; `endpoints()` is the
  operator's `Endpoints` mapping each pod to its process.
- `Simulation`: the controllers Kubernetes would run, reduced to what the operator relies on:
  the StatefulSet controller (observedGeneration, updateRevision, one pod and one PVC per
  ordinal below `replicas`, each pod started as its node process) and the kubelet's readiness
  probe (a pod's Ready condition mirrors its node's /readyz).

Every wait has a deadline; nothing sleeps a fixed time to synchronize.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import aiohttp.web
import attrs
import kmock

from taskraft.local_cluster import LocalCluster, LocalNode, free_base_port, free_port
from taskraft.tls import TlsFiles, client_context
from taskraft_operator.model import content_hash, pod_name, pvc_name
from taskraft_operator.observe import (
    PODS,
    PVCS,
    QUEUE_CLUSTERS,
    STATEFUL_SETS,
    Endpoints,
    KubeApi,
    selector_labels,
)
from taskraft_operator.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION

NAMESPACE = "tests"
CLUSTER = "qc"
# Every wait: generous, since another job may share the machine's two cores.
DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.05
TICK_INTERVAL_MS = 30
SHUTDOWN_TIMEOUT_MS = 1_000

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# The emulated API server


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the metadata a real API server maintains."""

    _resource_version: int = attrs.field(default=0, init=False)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self._complete(request)
        return await super()._handle(request)

    def _complete(self, request: kmock.Request) -> None:
        if request.resource is None or not isinstance(request.data, dict):
            return
        data: dict[str, Any] = request.data
        current = None
        if request.name is not None:
            key = (request.resource, request.namespace, request.name)
            existing = self.objects[key] if key in self.objects else None  # noqa: SIM401 (no .get)
            current = None if existing is None or existing.deleted else existing.raw
        if request.action == kmock.action.CREATE:
            metadata = data.setdefault("metadata", {})
            if not metadata.get("name") and metadata.get("generateName"):
                metadata["name"] = metadata["generateName"] + secrets.token_hex(3)
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("generation", 1)
            metadata.setdefault("creationTimestamp", _now_text())
            metadata["resourceVersion"] = self._next_version()
        elif request.action == kmock.action.UPDATE and current is not None:
            metadata = data.setdefault("metadata", {})
            if request.subresource is None and "spec" in data:
                metadata["generation"] = int(current["metadata"].get("generation", 1)) + 1
            metadata["resourceVersion"] = self._next_version()
        elif request.action == kmock.action.DELETE and current is not None:
            wanted = (data.get("preconditions") or {}).get("uid")
            have = current.get("metadata", {}).get("uid")
            if wanted and wanted != have:
                raise kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message=f"Precondition failed: UID in precondition: {wanted}, "
                    f"UID in object meta: {have}",
                )

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.asynccontextmanager
async def emulated_api() -> AsyncIterator[tuple[Emulator, str]]:
    """The emulator with the built-in resources and the QueueCluster CRD, and its URL."""
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        with warnings.catch_warnings():
            # kmock 0.8 reads its bundled resource list with a deprecated importlib call.
            warnings.simplefilter("ignore", DeprecationWarning)
            emulator.resources.load_bundled()
        emulator.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
            kind=KIND,
            singular="queuecluster",
            namespaced=True,
            subresources={"status", "scale"},
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        )
        yield emulator, str(server.url)


@contextlib.asynccontextmanager
async def emulated_api_in_thread() -> AsyncIterator[str]:
    """The emulated API on its own thread and event loop, as a real API server is elsewhere;
    its URL. For kopf run in the test's loop: kopf waits for every task started in its loop
    while it ran (the emulator's request handlers would be such tasks) before it stops."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        async with emulated_api() as (_, url):
            box.update(url=url, loop=asyncio.get_running_loop(), stop=stop)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    if not await asyncio.to_thread(started.wait, DEADLINE_S):
        raise TimeoutError("the emulated API did not start")
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        await asyncio.to_thread(thread.join, DEADLINE_S)


def queue_cluster(
    *,
    replicas: int = 3,
    queues: Sequence[dict[str, Any]] = (),
    annotations: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A QueueCluster manifest named CLUSTER in NAMESPACE."""
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": CLUSTER, "namespace": NAMESPACE, "annotations": annotations or {}},
        "spec": {
            "replicas": replicas,
            "image": "taskraft:test",
            "version": "0.1.0",
            "queues": list(queues),
            **(spec or {}),
        },
    }
    return body


# ---------------------------------------------------------------------------------------------
# Node processes standing in for the pods


class PodNodes:
    """`taskraft serve` processes whose node ids are the pod names `{cluster}-{ordinal}`.

    The first `founders` found the cluster (--initial-members); the others start with --join,
    as the operator's ConfigMap would have them do.
    """

    def __init__(self, directory: Path, *, cluster: str, founders: int, capacity: int) -> None:
        self.cluster = cluster
        self.local = LocalCluster(
            capacity,
            base_port=free_base_port(capacity),
            data_directory=directory,
            tick_interval_ms=TICK_INTERVAL_MS,
            founders=founders,
            extra_arguments=["--shutdown-timeout-ms", str(SHUTDOWN_TIMEOUT_MS)],
            log_level="info",
        )
        self.local.layout = [
            LocalNode(pod_name(cluster, ordinal), node.client_port, node.peer_port, node.http_port)
            for ordinal, node in enumerate(self.local.layout)
        ]
        self._session: aiohttp.ClientSession | None = None

    def node(self, ordinal: int) -> LocalNode:
        return self.local.layout[ordinal]

    def secure(
        self,
        *,
        tls: TlsFiles | None,
        token_file: Path | None,
        cluster_secret_file: Path,
        admin_token: str | None,
    ) -> None:
        """Start the nodes from now on as the pods of a secured cluster: with the files the
        operator's Secrets hold (the test writes them, as the kubelet would mount them)."""
        self.local.tls = tls
        self.local.http_tls = None if tls is None else client_context(tls.authority)
        self.local.http_token = admin_token
        self.local.extra_arguments += ["--cluster-secret-file", str(cluster_secret_file)]
        if token_file is not None:
            self.local.extra_arguments += ["--auth-token-file", str(token_file)]

    def start(self, pod: str) -> None:
        if not self.local.is_running(pod):
            self.local.directory.mkdir(parents=True, exist_ok=True)
            self.local.start_node(pod)

    def running(self, pod: str) -> bool:
        return self.local.is_running(pod)

    def endpoints(self) -> Endpoints:
        def http(cluster: str, namespace: str, ordinal: int) -> str:
            return self.node(ordinal).http_address

        def peer(cluster: str, namespace: str, ordinal: int) -> str:
            return self.node(ordinal).peer_address

        def client(cluster: str, namespace: str) -> list[str]:
            return [node.client_address for node in self.local.layout]

        return Endpoints(http=http, peer=peer, client=client)

    async def ready(self, pod: str) -> bool:
        """The readiness probe: /readyz answers 200."""
        if not self.running(pod):
            return False
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                self.local.http_url(pod, "/readyz"),
                timeout=aiohttp.ClientTimeout(total=1.0),
                ssl=True if self.local.http_tls is None else self.local.http_tls,
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def status(self, pod: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.local.status, pod)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self.local.stop)

    def log_tails(self) -> str:
        return "\n\n".join(
            f"--- {node.node_id} ---\n{self.local.log_tail(node.node_id)}"
            for node in self.local.layout
            if node.node_id in self.local.processes
        )


# ---------------------------------------------------------------------------------------------
# The StatefulSet controller and the kubelet


def revision_of(stateful_set: dict[str, Any]) -> str:
    """What the StatefulSet controller names a template's revision: `{name}-{hash}`."""
    name = stateful_set["metadata"]["name"]
    template = stateful_set.get("spec", {}).get("template", {})
    return f"{name}-{content_hash(template)[:10]}"


@dataclass
class Simulation:
    """One `step()` does what the StatefulSet controller and the kubelet would have done."""

    api: KubeApi
    nodes: PodNodes
    namespace: str = NAMESPACE
    cluster: str = CLUSTER
    started: list[str] = field(default_factory=list)

    async def step(self) -> None:
        stateful_set = await self.api.get(STATEFUL_SETS, self.namespace, self.cluster)
        if stateful_set is None:
            return
        revision = revision_of(stateful_set)
        generation = stateful_set["metadata"].get("generation", 1)
        status = stateful_set.get("status") or {}
        if status.get("observedGeneration") != generation or status.get("updateRevision") != (
            revision
        ):
            await self.api.merge_patch(
                STATEFUL_SETS,
                self.namespace,
                self.cluster,
                {"status": {"observedGeneration": generation, "updateRevision": revision}},
                subresource="status",
            )
        labels = selector_labels(self.cluster)
        replicas = int(stateful_set["spec"]["replicas"])
        pods = {
            pod["metadata"]["name"]: pod
            for pod in await self.api.list(PODS, self.namespace, labels)
        }
        claims = {
            claim["metadata"]["name"] for claim in await self.api.list(PVCS, self.namespace, labels)
        }
        for ordinal in range(replicas):
            name = pod_name(self.cluster, ordinal)
            if pvc_name(self.cluster, ordinal) not in claims:
                await self.api.create(
                    PVCS,
                    self.namespace,
                    {
                        "metadata": {"name": pvc_name(self.cluster, ordinal), "labels": labels},
                        "spec": {"accessModes": ["ReadWriteOnce"]},
                    },
                )
            if name not in pods:
                pods[name] = await self.api.create(
                    PODS,
                    self.namespace,
                    {
                        "metadata": {
                            "name": name,
                            "labels": {**labels, "controller-revision-hash": revision},
                        },
                        "status": {"phase": "Pending"},
                    },
                )
            if not self.nodes.running(name):
                self.nodes.start(name)
                self.started.append(name)
        for name, pod in pods.items():
            ready = await self.nodes.ready(name)
            condition = {"type": "Ready", "status": "True" if ready else "False"}
            status = pod.get("status") or {}
            if status.get("phase") != "Running" or status.get("conditions") != [condition]:
                await self.api.merge_patch(
                    PODS,
                    self.namespace,
                    name,
                    {"status": {"phase": "Running", "conditions": [condition]}},
                    subresource="status",
                )


# ---------------------------------------------------------------------------------------------
# Waiting


async def eventually(
    probe: Callable[[], Awaitable[_T | None]], what: str, timeout_s: float = DEADLINE_S
) -> _T:
    """Call `probe` until it returns something other than None or False; TimeoutError after
    `timeout_s`, naming `what`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result
        if asyncio.get_running_loop().time() >= deadline:
            raise TimeoutError(f"no {what} within {timeout_s:g} s")
        await asyncio.sleep(POLL_INTERVAL_S)


@dataclass
class EventLog:
    """The operator's events, as (type, reason, message)."""

    events: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self, event_type: str, reason: str, message: str) -> None:
        self.events.append((event_type, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


async def get_cluster(api: KubeApi) -> dict[str, Any]:
    body = await api.get(QUEUE_CLUSTERS, NAMESPACE, CLUSTER)
    assert body is not None
    return body


__all__ = [
    "CLUSTER",
    "DEADLINE_S",
    "NAMESPACE",
    "Emulator",
    "EventLog",
    "PodNodes",
    "Simulation",
    "emulated_api",
    "emulated_api_in_thread",
    "eventually",
    "free_base_port",
    "free_port",
    "get_cluster",
    "queue_cluster",
    "revision_of",
]
