"""The kopf handlers of `QueueCluster` (taskraft.io/v1alpha1): observe -> plan -> status -> act.

Run it with

    kopf run --standalone --all-namespaces -m taskraft_operator.handlers

(or `--namespace NS` for one namespace). Importing this module registers the handlers on kopf's
default registry with `OperatorConfig.from_environment()`; `register(registry, config)` does the
same on any registry (the tests use their own).

## One reconcile run (`reconcile`)

Every run, whoever triggers it, goes through `reconcile(body, api, http)`, serialized per
QueueCluster by a lock kept in kopf's per-object memo:

1. Read the QueueCluster afresh (the body kopf passes may predate this operator's last status
   write) and map it with `resource.desired_spec_from_body`. A `SpecError` is reported (a
   Warning event once per new message, status phase Invalid with condition Progressing/
   InvalidSpec) and nothing is done until the spec changes. An unreadable `status` (ValueError
   from `model.status_from_dict`) is reported and nothing is done: the progress record it
   holds is what keeps a half-done roll or scale safe.
2. Observe (observe.py): the owned objects, the pods and PVCs, every pod's `/v1/status`.
3. `planner.plan(desired, observed)`: one action and the status.
4. Write the status, when it changed, to the `status` subresource, before acting: the
   planner's contract is that the progress record (founders, roll step, scale step, snapshot
   round) is on the resource before the action it describes is carried out, so that an
   operator that dies in between resumes from it. This is why the status is written here
   through the API rather than through kopf's `patch`, which kopf applies only after the
   handler returns, i.e. after the action (and, with create/update handlers and the periodic
   loop running for the same object, possibly after the next run has begun).
5. Post the plan's events (condition changes), then carry out the action (actions.py), which
   posts its own event. A TakeSnapshot's answer is recorded (`planner.record_snapshot`) and
   the status written again.
6. Once the cluster is Available, create the declared queues (`spec.queues`) that do not exist
   yet, through `taskraft.client.AsyncClient` on the client Service; queues are never deleted
   or changed, a declared queue whose policies differ gets a Warning event.

One action per run. Runs come from `@kopf.on.create`, `@kopf.on.resume` and `@kopf.on.update`
(at once on a change) and from one operator-wide loop (started at startup, stopped at
cleanup) that every `interval_s` (5 s, the planner's RECHECK_FAST_S) lists the QueueClusters
of the operator's scope (every namespace with --all-namespaces; with --namespace, those kopf
delivered a QueueCluster from) and runs each one not being run already: the planner's recheck
hints are all at least that, and an action's follow-up comes at the next tick. The lock is
shared by the handlers and the loop (kept per (namespace, name), forgotten once the cluster
is no longer listed). The loop's events are posted by the operator, as kopf posts them.

No finalizer: kopf adds one only for timers, daemons and deletion handlers, and nothing needs
to run on deletion (the owner references have Kubernetes delete the owned objects), so a
QueueCluster can be deleted while no operator runs.

Errors of a run (API server unreachable, a node that refuses) are counted in the metrics,
logged and, for actions, posted as Warning events; the run ends, and the next one plans again
from what it observes.

## Process-level settings (startup)

Standalone (no peering objects: run one replica), kopf posts events only for its own
warnings (its "succeeded" lines would otherwise become events), and the
metrics server (metrics.py) on `TASKRAFT_OPERATOR_METRICS_PORT` (default 9090; `off` disables).
`TASKRAFT_OPERATOR_INTERVAL_S` changes the periodic loop's interval (default 5).

## What the operator does through the Kubernetes API (for least-privilege RBAC)

- taskraft.io queueclusters: get, list (this module: the runs, the periodic loop), list,
  watch, patch (kopf: its watch and annotations); queueclusters/status: patch;
  queueclusters/finalizers: update (owner references with blockOwnerDeletion, where
  OwnerReferencesPermissionEnforcement is on).
- apps statefulsets; core configmaps and services; policy poddisruptionbudgets;
  networking.k8s.io networkpolicies: get, patch
  (server-side apply, and the StatefulSet's scale), create (a server-side apply that creates
  the object is authorized as create too).
- core pods: list, delete; core persistentvolumeclaims: list, delete.
- core secrets: get (the credentials Secret and the TLS Secret of `spec.tls`), create (the
  credentials Secret, once; credentials.py).
- batch jobs: list, create, patch (the backup Jobs: server-side applied, listed by the
  cluster's labels; never deleted: ttlSecondsAfterFinished and the owner reference do that).
- core events: create (kopf posts them).
- kopf itself, cluster-wide and optional (it logs a warning and goes on without them):
  apiextensions.k8s.io customresourcedefinitions list, watch; core namespaces list, watch
  (only with --namespace patterns, not with --all-namespaces).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from taskraft.client import AsyncClient
from taskraft.errors import QueueAlreadyExists, TaskraftError
from taskraft_operator import metrics
from taskraft_operator.actions import (
    ActionContext,
    EventSink,
    EventType,
    Outcome,
    action_name,
    carry_out,
    is_side_effect,
)
from taskraft_operator.credentials import (
    CredentialsUnavailable,
    TrustCache,
    ensure_credentials,
    node_access,
)
from taskraft_operator.model import (
    ClusterStatus,
    Condition,
    DesiredSpec,
    content_hash,
    status_from_dict,
    status_to_dict,
)
from taskraft_operator.observe import (
    OPEN_ACCESS,
    QUEUE_CLUSTERS,
    ApiResource,
    Endpoints,
    KubeApi,
    KubeApiError,
    Login,
    NodeAccess,
    NodeHttp,
    close_quietly,
    default_login,
    observe,
)
from taskraft_operator.planner import (
    RECHECK_FAST_S,
    Plan,
    TakeSnapshot,
    credentials_secret_name,
    plan,
    record_snapshot,
    record_snapshot_failure,
)
from taskraft_operator.resource import (
    GROUP,
    PLURAL,
    VERSION,
    DeclaredQueue,
    SpecError,
    declared_queues,
    desired_spec_from_body,
    spec_warnings,
)

logger = logging.getLogger(__name__)

INTERVAL_S = RECHECK_FAST_S
# How long creating the declared queues may take in one run (the client retries within it).
QUEUES_TIMEOUT_S = 10.0
METRICS_PORT_VARIABLE = "TASKRAFT_OPERATOR_METRICS_PORT"
INTERVAL_VARIABLE = "TASKRAFT_OPERATOR_INTERVAL_S"
MEMO_KEY = "taskraft_cluster"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _ignore_event(event_type: EventType, reason: str, message: str) -> None:
    logger.info("event %s %s: %s", event_type, reason, message)


@dataclass(slots=True)
class ClusterMemory:
    """What the operator keeps in memory about one QueueCluster (kopf's per-object memo).

    `lock` serializes the runs; `queues_created`: hash of the declared queues last found or
    created (a restarted operator checks them once again); the `reported_*` fields keep a
    problem or warning from becoming an event every run.
    """

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queues_created: str | None = None
    # The SSL context that trusts the cluster's TLS authority, rebuilt when that changes.
    trust: TrustCache = field(default_factory=TrustCache)
    # Problem reason -> the message last posted for it, while the problem lasts.
    reported_problems: dict[str, str] = field(default_factory=dict)
    reported_warnings: frozenset[str] = frozenset()


async def reconcile(
    body: Mapping[str, Any],
    api: KubeApi,
    http: NodeHttp,
    *,
    endpoints: Endpoints | None = None,
    events: EventSink = _ignore_event,
    memory: ClusterMemory | None = None,
    clock: Callable[[], datetime] = _utc_now,
) -> Plan | None:
    """One run for the QueueCluster `body` names; the plan, with the status as written last.

    None when nothing was planned: the resource is gone or being deleted, its spec cannot be
    read, its status cannot be read back, or the API server could not be read.
    """
    memory = memory if memory is not None else ClusterMemory()
    endpoints = endpoints if endpoints is not None else Endpoints()
    metadata = body.get("metadata") or {}
    namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
    async with memory.lock:
        started = time.monotonic()
        try:
            result, outcome = await _run(
                namespace,
                name,
                api,
                http,
                endpoints=endpoints,
                events=events,
                memory=memory,
                clock=clock,
            )
        except (KubeApiError, aiohttp.ClientError, TimeoutError) as error:
            # Only the reads and the status writes get here: actions report their own errors.
            logger.warning("%s/%s: reconcile failed: %s", namespace, name, error)
            metrics.ERRORS.labels("api").inc()
            metrics.RECONCILES.labels("failed").inc()
            return None
        finally:
            metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
    if result is None:
        metrics.RECONCILES.labels("skipped").inc()
    elif outcome is not None and not outcome.done:
        metrics.RECONCILES.labels("failed").inc()
    else:
        metrics.RECONCILES.labels("acted" if is_side_effect(result.action) else "waited").inc()
    return result


async def _run(
    namespace: str,
    name: str,
    api: KubeApi,
    http: NodeHttp,
    *,
    endpoints: Endpoints,
    events: EventSink,
    memory: ClusterMemory,
    clock: Callable[[], datetime],
) -> tuple[Plan | None, Outcome | None]:
    fresh = await api.get(QUEUE_CLUSTERS, namespace, name)
    if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
        return None, None  # Kubernetes deletes the owned objects with it
    raw_status = fresh.get("status") or {}
    try:
        previous = status_from_dict(raw_status) if raw_status.get("phase") else None
    except ValueError as error:
        metrics.ERRORS.labels("status").inc()
        _report_once(memory, events, "StatusUnreadable", f"the status cannot be read: {error}")
        return None, None
    memory.reported_problems.pop("StatusUnreadable", None)
    try:
        desired = desired_spec_from_body(fresh)
    except SpecError as error:
        metrics.ERRORS.labels("spec").inc()
        _report_once(memory, events, "InvalidSpec", str(error))
        await _write_blocked_status(api, fresh, previous, str(error), clock())
        return None, None
    memory.reported_problems.pop("InvalidSpec", None)
    _report_spec_warnings(desired, memory, events)
    try:
        credentials, created = await ensure_credentials(api, desired, fresh)
        if created:
            events(
                "Normal",
                "CredentialsCreated",
                f"generated the cluster secret and tokens into the Secret "
                f"{credentials_secret_name(desired.name)}",
            )
        access = await node_access(api, desired, credentials, memory.trust)
    except CredentialsUnavailable as error:
        metrics.ERRORS.labels("credentials").inc()
        _report_once(memory, events, "CredentialsUnavailable", str(error))
        await _write_blocked_status(
            api,
            fresh,
            previous,
            str(error),
            clock(),
            phase=previous.phase if previous is not None else "Creating",
            reason="CredentialsUnavailable",
        )
        return None, None
    memory.reported_problems.pop("CredentialsUnavailable", None)

    observation = await observe(
        desired, previous, api, http, endpoints=endpoints, now=clock(), access=access
    )
    if observation.unreachable:
        logger.debug("%s/%s: no /v1/status from %s", namespace, name, observation.unreachable)
    result = plan(desired, observation.state)
    status = result.status
    if status != previous:
        await write_status(api, desired, status)
    for event in result.events:
        events(event.type, event.reason, event.message)

    action = result.action
    metrics.ACTIONS.labels(action_name(action)).inc()
    context = ActionContext(
        owner=fresh,
        desired=desired,
        api=api,
        http=http,
        endpoints=endpoints,
        events=events,
        access=access,
    )
    outcome = await carry_out(action, context)
    if not outcome.done:
        metrics.ACTION_FAILURES.labels(action_name(action)).inc()
        metrics.ERRORS.labels("act").inc()
    if isinstance(action, TakeSnapshot):
        if outcome.snapshot is not None:
            status = record_snapshot(
                status,
                pod=action.pod,
                index=outcome.snapshot.index,
                term=outcome.snapshot.term,
                size_bytes=outcome.snapshot.size_bytes,
                now=clock(),
                history_max=desired.snapshots.history_max,
            )
        else:
            status = record_snapshot_failure(status, pod=action.pod)
        await write_status(api, desired, status)

    available = status.condition("Available")
    if available is not None and available.status == "True":
        await _create_declared_queues(fresh, desired, endpoints, memory, events, access)
    return replace(result, status=status), outcome


async def write_status(api: KubeApi, desired: DesiredSpec, status: ClusterStatus) -> None:
    await api.merge_patch(
        QUEUE_CLUSTERS,
        desired.namespace,
        desired.name,
        {"status": status_to_dict(status)},
        subresource="status",
    )


async def _write_blocked_status(
    api: KubeApi,
    body: Mapping[str, Any],
    previous: ClusterStatus | None,
    message: str,
    now: datetime,
    *,
    phase: str = "Invalid",
    reason: str = "InvalidSpec",
) -> None:
    """`phase` (Invalid) and condition Progressing/`reason` (InvalidSpec) with `message`;
    the rest (the progress record above all) as it was."""
    metadata = body.get("metadata") or {}
    before = None if previous is None else previous.condition("Progressing")
    unchanged = before is not None and before.status == "False" and before.reason == reason
    progressing = Condition(
        type="Progressing",
        status="False",
        reason=reason,
        message=message,
        last_transition_time=before.last_transition_time if unchanged and before else now,
    )
    base = previous if previous is not None else ClusterStatus(phase=phase)
    others = tuple(condition for condition in base.conditions if condition.type != "Progressing")
    generation = metadata.get("generation")
    status = replace(
        base,
        phase=phase,
        observed_generation=generation if isinstance(generation, int) else 0,
        conditions=(*others, progressing),
    )
    await api.merge_patch(
        QUEUE_CLUSTERS,
        str(metadata.get("namespace")),
        str(metadata.get("name")),
        {"status": status_to_dict(status)},
        subresource="status",
    )


def _report_once(memory: ClusterMemory, events: EventSink, reason: str, message: str) -> None:
    """A Warning event for a problem, unless the same one was posted and has not gone since."""
    if memory.reported_problems.get(reason) != message:
        memory.reported_problems[reason] = message
        events("Warning", reason, message)
    logger.warning("%s: %s", reason, message)


def _report_spec_warnings(desired: DesiredSpec, memory: ClusterMemory, events: EventSink) -> None:
    warnings = frozenset(spec_warnings(desired))
    for warning in sorted(warnings - memory.reported_warnings):
        events("Warning", "SpecWarning", warning)
    memory.reported_warnings = warnings


# ---------------------------------------------------------------------------------------------
# Declared queues


async def _create_declared_queues(
    body: Mapping[str, Any],
    desired: DesiredSpec,
    endpoints: Endpoints,
    memory: ClusterMemory,
    events: EventSink,
    access: NodeAccess,
) -> None:
    try:
        queues = declared_queues(body)
    except SpecError as error:
        # The cluster itself is fine: it is reconciled, the queues wait for a valid list.
        metrics.ERRORS.labels("spec").inc()
        _report_once(memory, events, "InvalidQueues", str(error))
        return
    memory.reported_problems.pop("InvalidQueues", None)
    wanted = content_hash([queue.create_request() for queue in queues])
    if memory.queues_created == wanted:
        return
    servers = endpoints.client(desired.name, desired.namespace)
    try:
        warnings = await asyncio.wait_for(
            create_queues(servers, queues, events, access), timeout=QUEUES_TIMEOUT_S
        )
    except (TaskraftError, OSError, TimeoutError) as error:
        metrics.ERRORS.labels("queues").inc()
        logger.warning(
            "%s/%s: declared queues not created yet: %s", desired.namespace, desired.name, error
        )
        return
    for warning in warnings:
        events("Warning", "QueuePolicyDiffers", warning)
    memory.queues_created = wanted


async def create_queues(
    servers: Sequence[str],
    queues: Sequence[DeclaredQueue],
    events: EventSink,
    access: NodeAccess = OPEN_ACCESS,
) -> list[str]:
    """Create each declared queue that does not exist (in the given order: dead-letter queues
    first); the differences of existing queues from their declaration, one line each."""
    warnings: list[str] = []
    if not queues:
        return warnings
    async with AsyncClient(
        servers,
        client_name="taskraft-operator",
        # The same rule as NodeHttp's: never in the clear to nodes that do not ask for it.
        token=access.token if access.sends_token else None,
        tls=access.tls,
        request_timeout_s=QUEUES_TIMEOUT_S,
    ) as client:
        existing = {queue.name: queue for queue in await client.list_queues()}
        for queue in queues:
            found = existing.get(queue.name)
            if found is not None:
                differences = queue.policy_differences(found.policies.to_wire())
                if differences:
                    warnings.append(
                        f"queue {queue.name} exists with other policies (a queue's policies "
                        f"never change): {'; '.join(differences)}"
                    )
                continue
            try:
                await client.create_queue(
                    queue.name,
                    queue.kind,
                    max_size=queue.max_size,
                    max_payload_bytes=queue.max_payload_bytes,
                    priority_range=queue.priority_range,
                    lease_ms_default=queue.lease_ms_default,
                    max_deliveries=queue.max_deliveries,
                    dead_letter_queue=queue.dead_letter_queue,
                )
            except QueueAlreadyExists:
                continue  # a retry after a lost answer, or someone else
            events("Normal", "QueueCreated", f"created the declared queue {queue.name}")
    return warnings


# ---------------------------------------------------------------------------------------------
# kopf


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorConfig:
    """How the operator process runs; `from_environment` reads the deployment's settings."""

    login: Login = default_login
    endpoints: Endpoints = field(default_factory=Endpoints)
    # None: no metrics server; 0: any free port (tests).
    metrics_port: int | None = metrics.DEFAULT_PORT
    interval_s: float = INTERVAL_S

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> OperatorConfig:
        port_text = environ.get(METRICS_PORT_VARIABLE, "").strip().lower()
        port: int | None = metrics.DEFAULT_PORT
        if port_text in ("off", "none", "disabled"):
            port = None
        elif port_text:
            port = int(port_text)
        interval_text = environ.get(INTERVAL_VARIABLE, "").strip()
        interval = float(interval_text) if interval_text else INTERVAL_S
        return cls(metrics_port=port, interval_s=interval)


@dataclass(slots=True)
class _Runtime:
    """The transports and state of one operator (one registry): made at startup, closed at
    cleanup."""

    api: KubeApi | None = None
    http: NodeHttp | None = None
    metrics_server: metrics.MetricsServer | None = None
    # The periodic loop (`periodic_reconcile`), started at startup, cancelled at cleanup.
    loop: asyncio.Task[None] | None = None
    # kopf watches every namespace (--all-namespaces), or those of --namespace.
    clusterwide: bool = True
    # Namespaced mode: the namespaces kopf delivered a QueueCluster from (kopf calls a resume
    # or create handler for every QueueCluster it watches, so these are the namespaces of the
    # operator's scope that hold QueueClusters).
    namespaces: set[str] = field(default_factory=set)
    # (namespace, name) -> what the operator keeps about that QueueCluster, shared by the
    # event handlers and the periodic loop: its lock serializes their runs.
    memories: dict[tuple[str, str], ClusterMemory] = field(default_factory=dict)

    def memory(self, body: Mapping[str, Any]) -> ClusterMemory:
        key = _key(body)
        memory = self.memories.get(key)
        if memory is None:
            memory = self.memories[key] = ClusterMemory()
        return memory


def _key(body: Mapping[str, Any]) -> tuple[str, str]:
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace")), str(metadata.get("name"))


def cluster_memory(memo: MutableMapping[Any, Any]) -> ClusterMemory:
    memory = memo.get(MEMO_KEY)
    if not isinstance(memory, ClusterMemory):
        memory = ClusterMemory()
        memo[MEMO_KEY] = memory
    return memory


EVENTS = ApiResource("v1", "events", "Event")
# As kopf posts its events (kopf.event): the same source and name prefix.
EVENT_COMPONENT = "kopf"
EVENT_NAME_PREFIX = "kopf-event-"
EVENT_MESSAGE_MAX = 1024


async def post_event(
    api: KubeApi, body: Mapping[str, Any], event_type: EventType, reason: str, message: str
) -> None:
    """A Kubernetes event about the QueueCluster `body`, as kopf.event posts it (which works
    only within kopf's per-object handlers); failures are logged and ignored."""
    metadata = body.get("metadata") or {}
    namespace = str(metadata.get("namespace"))
    if len(message) > EVENT_MESSAGE_MAX:
        message = message[: EVENT_MESSAGE_MAX - 3] + "..."
    now = _utc_now().isoformat()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": namespace, "generateName": EVENT_NAME_PREFIX},
        "action": "Action?",
        "type": event_type,
        "reason": reason,
        "message": message,
        "reportingComponent": EVENT_COMPONENT,
        "reportingInstance": EVENT_COMPONENT,
        "source": {"component": EVENT_COMPONENT},
        "involvedObject": {
            "apiVersion": str(body.get("apiVersion") or QUEUE_CLUSTERS.api_version),
            "kind": str(body.get("kind") or QUEUE_CLUSTERS.kind),
            "namespace": namespace,
            "name": str(metadata.get("name")),
            "uid": str(metadata.get("uid")),
        },
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": now,
    }
    try:
        await api.create(EVENTS, namespace, event)
    except (KubeApiError, aiohttp.ClientError, TimeoutError) as error:
        logger.warning("could not post the event %s %s: %s", event_type, reason, error)


async def list_queue_clusters(
    api: KubeApi, *, clusterwide: bool, namespaces: Iterable[str]
) -> list[dict[str, Any]]:
    """The QueueClusters of the operator's scope: in every namespace, or in `namespaces`."""
    if clusterwide:
        paths = [f"/apis/{QUEUE_CLUSTERS.api_version}/{QUEUE_CLUSTERS.plural}"]
    else:
        paths = [QUEUE_CLUSTERS.path(namespace) for namespace in sorted(namespaces)]
    found: list[dict[str, Any]] = []
    for path in paths:
        _, document = await api.request("GET", path)
        items = (document or {}).get("items") if isinstance(document, dict) else None
        found.extend(item for item in items or () if isinstance(item, dict))
    return found


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the operator's handlers on `registry`.

    No timer, daemon or deletion handler: kopf then puts no finalizer on the QueueClusters.
    """
    runtime = _Runtime()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf and the operator's own client (KubeApi) log in the same way.
        return await config.login()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.posting.level = logging.WARNING
        runtime.clusterwide = settings.peering.clusterwide
        runtime.api = KubeApi(config.login)
        runtime.http = NodeHttp()
        if config.metrics_port is not None:
            runtime.metrics_server = metrics.serve(config.metrics_port)
            logger.info("metrics on port %d", runtime.metrics_server.port)
        runtime.loop = asyncio.create_task(periodic(), name="taskraft periodic reconcile")

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if runtime.loop is not None:
            runtime.loop.cancel()
            await asyncio.gather(runtime.loop, return_exceptions=True)
            runtime.loop = None
        if runtime.api is not None and runtime.http is not None:
            await close_quietly(runtime.api, runtime.http)
        if runtime.metrics_server is not None:
            await asyncio.to_thread(runtime.metrics_server.stop)
            runtime.metrics_server = None

    async def run(body: Mapping[str, Any], events: EventSink) -> None:
        assert runtime.api is not None and runtime.http is not None, "set up at startup"
        try:
            await reconcile(
                body,
                runtime.api,
                runtime.http,
                endpoints=config.endpoints,
                events=events,
                memory=runtime.memory(body),
            )
        except Exception:
            metrics.ERRORS.labels("unexpected").inc()
            raise

    async def on_event(body: kopf.Body) -> None:
        runtime.namespaces.add(_key(body)[0])

        def events(event_type: EventType, reason: str, message: str) -> None:
            kopf.event(body, type=event_type, reason=reason, message=message)

        await run(body, events)

    async def run_periodically(body: Mapping[str, Any]) -> None:
        """One periodic run; its events posted afterwards (kopf.event needs kopf's per-object
        context, which the loop has not)."""
        assert runtime.api is not None
        posted: list[tuple[EventType, str, str]] = []

        def events(event_type: EventType, reason: str, message: str) -> None:
            posted.append((event_type, reason, message))

        try:
            await run(body, events)
        finally:
            for event_type, reason, message in posted:
                await post_event(runtime.api, body, event_type, reason, message)

    async def tick() -> None:
        assert runtime.api is not None
        try:
            bodies = await list_queue_clusters(
                runtime.api, clusterwide=runtime.clusterwide, namespaces=runtime.namespaces
            )
        except (KubeApiError, aiohttp.ClientError, TimeoutError) as error:
            logger.warning("listing the QueueClusters failed: %s", error)
            metrics.ERRORS.labels("api").inc()
            return
        listed = {_key(body) for body in bodies}
        # Forget the clusters that are gone (and not in a run that began since the listing).
        for key, memory in list(runtime.memories.items()):
            if key not in listed and not memory.lock.locked():
                del runtime.memories[key]
        # A cluster an event handler is reconciling right now is skipped: that run plans
        # from what it observes anyway.
        due = [body for body in bodies if not runtime.memory(body).lock.locked()]
        results = await asyncio.gather(
            *(run_periodically(body) for body in due), return_exceptions=True
        )
        for body, result in zip(due, results, strict=True):
            if isinstance(result, Exception):
                namespace, name = _key(body)
                logger.error("%s/%s: reconcile failed", namespace, name, exc_info=result)

    async def periodic() -> None:
        """Every `interval_s`, one run for each QueueCluster of the operator's scope."""
        while True:
            await asyncio.sleep(config.interval_s)
            try:
                await tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.ERRORS.labels("unexpected").inc()
                logger.exception("the periodic reconcile failed")

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="resume", registry=registry)
    async def on_resume(body: kopf.Body, **_: Any) -> None:
        await on_event(body)

    @kopf.on.create(GROUP, VERSION, PLURAL, id="create", registry=registry)
    async def on_create(body: kopf.Body, **_: Any) -> None:
        await on_event(body)

    @kopf.on.update(GROUP, VERSION, PLURAL, id="update", registry=registry)
    async def on_update(body: kopf.Body, **_: Any) -> None:
        await on_event(body)


register(kopf.get_default_registry(), OperatorConfig.from_environment())


__all__ = [
    "ClusterMemory",
    "OperatorConfig",
    "cluster_memory",
    "create_queues",
    "reconcile",
    "register",
    "write_status",
]
