"""The planner's data: what the user wants, what the operator sees, what it records on the object.

The operator is split like the node (docs/architecture.md, "pure cores, thin shells"): the kopf
handlers gather facts and carry out one action; `taskraft_operator.planner` decides. This module
holds the values that cross that line, all frozen:

- `DesiredSpec`: the `QueueCluster` resource's spec and annotations, already parsed.
- `ObservedState`: the objects the operator owns as found in the API server, each pod with the
  document its node serves at `/v1/status` (`NodeStatus`, None when the node did not answer),
  the time "now" (the planner has no clock) and the status the previous plan wrote.
- `ClusterStatus`: what the planner writes to the resource's status, including the `Progress`
  record that lets a restarted operator resume a half-done roll, scale or snapshot round.

Naming is fixed so that every fact can be derived from a pod's name: pod `{name}-{ordinal}` is
Raft node `{name}-{ordinal}` (the node id comes from the pod name through the downward API), and
its peer address is `{pod}.{name}-peers.{namespace}.svc:7101` (the headless Service gives each
pod a stable DNS name). The data PVC of a pod is `data-{pod}` (StatefulSet naming).

Times are timezone-aware datetimes with whole seconds (the status stores RFC 3339 strings);
`status_to_dict` and `status_from_dict` convert the status to and from the JSON the Kubernetes
API stores, and `node_status_from_json` reads a node's `/v1/status` document.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

CLIENT_PORT = 7100
PEER_PORT = 7101
HTTP_PORT = 7102

# A config override is what a TOML scalar of the node's options can be.
ConfigValue = str | int | bool

_ORDINAL_SUFFIX = re.compile(r"-(0|[1-9][0-9]*)$")


class PvcRetention(enum.StrEnum):
    """What happens to a data PVC once its pod is gone for good."""

    RETAIN = "Retain"
    DELETE = "Delete"


class UpgradePolicy(enum.StrEnum):
    """`supervised`: a person approves (annotation) before the leader's pod is restarted."""

    AUTOMATIC = "automatic"
    SUPERVISED = "supervised"


# ---------------------------------------------------------------------------------------------
# Names


def pod_name(cluster: str, ordinal: int) -> str:
    """Pod `ordinal` of the cluster's StatefulSet; also the Raft node id of that pod."""
    return f"{cluster}-{ordinal}"


def ordinal_of(cluster: str, pod_or_node_id: str) -> int | None:
    """The ordinal in `{cluster}-{ordinal}`, or None for an id this cluster did not name."""
    if not pod_or_node_id.startswith(cluster + "-"):
        return None
    match = _ORDINAL_SUFFIX.search(pod_or_node_id)
    if match is None or match.start() != len(cluster):
        return None
    return int(match.group(1))


def peers_service_name(cluster: str) -> str:
    """The headless Service that gives each pod a stable DNS name."""
    return f"{cluster}-peers"


def pod_dns_name(cluster: str, namespace: str, ordinal: int) -> str:
    return f"{pod_name(cluster, ordinal)}.{peers_service_name(cluster)}.{namespace}.svc"


def peer_address(cluster: str, namespace: str, ordinal: int) -> str:
    """The Raft peer address of pod `ordinal`, as the other members dial it."""
    return f"{pod_dns_name(cluster, namespace, ordinal)}:{PEER_PORT}"


def http_address(cluster: str, namespace: str, ordinal: int) -> str:
    """Where the operator reaches pod `ordinal`'s HTTP API."""
    return f"{pod_dns_name(cluster, namespace, ordinal)}:{HTTP_PORT}"


def pvc_name(cluster: str, ordinal: int) -> str:
    """The data PVC the StatefulSet's volumeClaimTemplate `data` creates for pod `ordinal`."""
    return f"data-{pod_name(cluster, ordinal)}"


def content_hash(document: object) -> str:
    """A short, stable hash of a JSON-like document (key order does not matter)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def config_hash(config: Mapping[str, ConfigValue]) -> str:
    """The "config hash": pods restart (a roll) when the overrides they run with change."""
    return content_hash(dict(config))


# ---------------------------------------------------------------------------------------------
# Desired state


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """Container resources in Kubernetes quantity strings (`{"cpu": "500m"}`)."""

    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSpec:
    """Each pod's data volume; immutable once the StatefulSet exists."""

    size: str = "1Gi"
    storage_class: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PvcRetentionPolicy:
    """`when_scaled`: applied by the operator after a scale-down; `when_deleted`: by Kubernetes."""

    when_scaled: PvcRetention = PvcRetention.RETAIN
    when_deleted: PvcRetention = PvcRetention.RETAIN


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotPolicy:
    """`schedule`: a five-field cron expression (UTC) or @hourly/@daily/...; None: on demand only.

    `history_max`: how many snapshot rounds `status.snapshots` keeps (the newest last).
    """

    schedule: str | None = None
    history_max: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredSpec:
    """A `QueueCluster` as the planner needs it: spec fields plus the annotations that steer it.

    - `config`: overrides of the node's options (TOML keys of `taskraft serve --config`), e.g.
      `{"snapshot_interval_entries": 50000}`; their hash is part of the pod template, so a change
      rolls the pods.
    - `paused`: annotation `taskraft.io/paused`; the operator only reports status.
    - `leader_restart_approval`: value of annotation `taskraft.io/approve-leader-restart`; under
      the supervised upgrade policy the leader restarts once it equals the roll's target revision.
    - `snapshot_request`: value of annotation `taskraft.io/snapshot-request`; each new value asks
      for one snapshot round.
    - `step_timeout_s`: a restarted or added pod that is not ready and caught up after this long
      marks the roll or scale stalled (it keeps waiting: it never moves to another pod).
    """

    name: str
    namespace: str
    generation: int = 0
    replicas: int = 3
    image: str
    version: str
    image_pull_policy: str = "IfNotPresent"
    resources: Resources = field(default_factory=Resources)
    storage: StorageSpec = field(default_factory=StorageSpec)
    pvc_retention: PvcRetentionPolicy = field(default_factory=PvcRetentionPolicy)
    config: Mapping[str, ConfigValue] = field(default_factory=dict)
    upgrade_policy: UpgradePolicy = UpgradePolicy.AUTOMATIC
    snapshots: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    paused: bool = False
    leader_restart_approval: str | None = None
    snapshot_request: str | None = None
    step_timeout_s: int = 600
    # `spec.backup.claimName`: the PVC each completed snapshot round is copied to (a Job).
    backup_claim_name: str | None = None
    # `spec.authentication.enabled`: clients need a token of the credentials Secret.
    authentication: bool = True
    # `spec.tls.secretName`: the Secret (tls.crt, tls.key, ca.crt) of TLS on every port; None:
    # plain TCP.
    tls_secret_name: str | None = None


# ---------------------------------------------------------------------------------------------
# A node's own view (GET /v1/status)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeMember:
    """One member of the Raft configuration; `match_index` and `caught_up` only on the leader."""

    id: str
    peer_address: str
    voter: bool
    match_index: int | None = None
    caught_up: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """The fields of a node's `/v1/status` the planner uses (docs/http-api.md)."""

    node_id: str
    version: str
    configuration_hash: str = ""
    ready: bool = False
    role: str = "follower"
    term: int = 0
    leader_id: str | None = None
    commit_index: int = 0
    applied_index: int = 0
    last_log_index: int = 0
    snapshot_index: int = 0
    members: tuple[NodeMember, ...] = ()

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    def member(self, node_id: str) -> NodeMember | None:
        for member in self.members:
            if member.id == node_id:
                return member
        return None


def node_status_from_json(document: Mapping[str, Any]) -> NodeStatus:
    """A `/v1/status` document as a NodeStatus; ValueError naming the field that is malformed."""
    try:
        leader = document.get("leader") or {}
        members = tuple(
            NodeMember(
                id=_text(member["id"]),
                peer_address=_text(member.get("peer_address", "")),
                voter=bool(member["voter"]),
                match_index=_optional_integer(member.get("match_index")),
                caught_up=None if member.get("caught_up") is None else bool(member["caught_up"]),
            )
            for member in document.get("members", ())
        )
        leader_id = leader.get("id")
        return NodeStatus(
            node_id=_text(document["node_id"]),
            version=_text(document.get("version", "")),
            configuration_hash=_text(document.get("configuration_hash", "")),
            ready=bool(document.get("ready", False)),
            role=_text(document.get("role", "follower")),
            term=_integer(document.get("term", 0)),
            leader_id=None if leader_id is None else _text(leader_id),
            commit_index=_integer(document.get("commit_index", 0)),
            applied_index=_integer(document.get("applied_index", 0)),
            last_log_index=_integer(document.get("last_log_index", 0)),
            snapshot_index=_integer(document.get("snapshot_index", 0)),
            members=members,
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a /v1/status document: {error!r}") from None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {value!r}")
    return value


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _optional_integer(value: object) -> int | None:
    return None if value is None else _integer(value)


# ---------------------------------------------------------------------------------------------
# Observed state


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedPod:
    """A pod of the StatefulSet.

    `uid`: its metadata.uid (a recreated pod has another one); `revision`: its
    `controller-revision-hash` label (the StatefulSet revision it was created from); `version`:
    its `app.kubernetes.io/version` label (the `spec.version` of that template); `deleting`:
    it has a deletionTimestamp; `node`: its `/v1/status`, None when the node did not answer (not
    started, crashed, unreachable).
    """

    ordinal: int
    uid: str = ""
    phase: str = "Running"
    ready: bool = False
    revision: str | None = None
    version: str | None = None
    deleting: bool = False
    node: NodeStatus | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedStatefulSet:
    """The StatefulSet's fields the planner uses.

    `spec_hash`: its `taskraft.io/spec-hash` annotation (what the planner last applied);
    `observed_generation` < `generation` means the controller has not yet computed the
    `update_revision` of the latest template; `storage`: its volumeClaimTemplate (immutable).
    """

    replicas: int
    spec_hash: str | None = None
    generation: int = 1
    observed_generation: int = 1
    update_revision: str | None = None
    storage: StorageSpec | None = None


# An owned object other than the StatefulSet: (kind, name).
ObjectKey = tuple[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedJob:
    """A backup Job of the cluster: `succeeded`/`failed` from its Complete/Failed condition;
    neither means it still runs (or waits to)."""

    name: str
    succeeded: bool = False
    failed: bool = False

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedState:
    """Everything the planner knows about the world, gathered by the handler just before.

    `objects`: each owned ConfigMap, Service and PodDisruptionBudget that exists, with its
    `taskraft.io/spec-hash` annotation (None when it has none); `pods` by ordinal; `pvcs`: the
    ordinals whose data PVC exists; `status`: what the previous plan wrote (None on a new
    resource).
    """

    now: datetime
    stateful_set: ObservedStatefulSet | None = None
    objects: Mapping[ObjectKey, str | None] = field(default_factory=dict)
    pods: Mapping[int, ObservedPod] = field(default_factory=dict)
    pvcs: frozenset[int] = frozenset()
    status: ClusterStatus | None = None
    # The cluster's backup Jobs (listed by its labels), by name.
    jobs: Mapping[str, ObservedJob] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Progress: the part of the status that is memory, not report


@dataclass(frozen=True, slots=True, kw_only=True)
class Idle:
    kind: Literal["idle"] = "idle"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingUp:
    """Growing towards `target_replicas`; `ordinal` is the pod being added (one at a time)."""

    target_replicas: int
    ordinal: int
    step_started_at: datetime
    kind: Literal["scaling-up"] = "scaling-up"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingDown:
    """Shrinking towards `target_replicas`; `ordinal` is the pod being removed.

    The steps themselves are derived from what is observed (a member beyond the wanted count is
    removed, then its pod, then its PVC); the record keeps the step's start for the stall
    report and tells the status what is under way.
    """

    target_replicas: int
    ordinal: int
    step_started_at: datetime
    kind: Literal["scaling-down"] = "scaling-down"


@dataclass(frozen=True, slots=True, kw_only=True)
class RollStep:
    """A pod deleted for a roll, and what it must reach before the next pod may go.

    `applied_index_to_reach`: the leader's commit index when the pod was deleted; the restarted
    node must have applied that much and be caught up on the leader. `pod_uid`: the uid of the
    pod deleted; a pod of that name with another uid is the recreated one.
    """

    pod: str
    pod_uid: str
    deleted_at: datetime
    applied_index_to_reach: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Rolling:
    """Restarting pods onto the pod template whose hash is `target_revision`."""

    target_revision: str
    started_at: datetime
    step: RollStep | None = None
    kind: Literal["rolling"] = "rolling"


Operation = Idle | ScalingUp | ScalingDown | Rolling


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRound:
    """A snapshot round: each pod in `pods` is asked in turn; `done` have answered (or failed).

    `trigger`: `request` (annotation; `token` is its value) or `schedule` (`token` is the
    scheduled time).
    """

    trigger: Literal["request", "schedule"]
    token: str
    started_at: datetime
    pods: tuple[str, ...]
    done: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotProgress:
    """`handled_request`: the last request token a round was started for; `schedule_anchor`: the
    last scheduled time served (or when `schedule` was first seen); rounds start for scheduled
    times after it."""

    handled_request: str | None = None
    schedule: str | None = None
    schedule_anchor: datetime | None = None
    round: SnapshotRound | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """What the operator must remember across restarts.

    `founding_members`: node ids of the cluster's first configuration, fixed when the planner
    first creates the StatefulSet; `founded`: every founder has started once (its data directory
    holds the cluster), from then on every pod starts with `join`.
    """

    founding_members: tuple[str, ...] = ()
    founded: bool = False
    operation: Operation = field(default_factory=Idle)
    snapshot: SnapshotProgress = field(default_factory=SnapshotProgress)


# ---------------------------------------------------------------------------------------------
# The status the planner writes


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    last_transition_time: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberReport:
    """One pod or Raft member: `voter` None means not (yet) in the Raft configuration."""

    id: str
    pod: str | None
    role: str
    voter: bool | None
    ready: bool
    caught_up: bool | None = None
    applied_index: int | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRecord:
    time: datetime
    pod: str
    index: int
    term: int
    size_bytes: int
    trigger: str
    token: str


BackupState = Literal["Running", "Succeeded", "Failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupRecord:
    """The newest backup Job: the snapshot (`index`, `term`) it copies from `pod`."""

    index: int
    term: int
    pod: str
    job: str
    state: BackupState
    started_at: datetime
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatus:
    phase: str
    observed_generation: int = 0
    leader: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    members: tuple[MemberReport, ...] = ()
    current_version: str | None = None
    target_version: str | None = None
    target_revision: str | None = None
    last_snapshot: SnapshotRecord | None = None
    snapshots: tuple[SnapshotRecord, ...] = ()
    last_backup: BackupRecord | None = None
    conditions: tuple[Condition, ...] = ()
    warnings: tuple[str, ...] = ()
    progress: Progress = field(default_factory=Progress)

    def condition(self, condition_type: str) -> Condition | None:
        for condition in self.conditions:
            if condition.type == condition_type:
                return condition
        return None


# ---------------------------------------------------------------------------------------------
# Status <-> JSON (camelCase, as stored on the resource)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def status_to_dict(status: ClusterStatus) -> dict[str, Any]:
    """The status as the JSON object written to the resource's `status`."""
    return {
        "phase": status.phase,
        "observedGeneration": status.observed_generation,
        "leader": status.leader,
        "replicas": status.replicas,
        "readyReplicas": status.ready_replicas,
        "members": [_member_to_dict(member) for member in status.members],
        "currentVersion": status.current_version,
        "targetVersion": status.target_version,
        "targetRevision": status.target_revision,
        "lastSnapshot": _snapshot_to_dict(status.last_snapshot),
        "snapshots": [_snapshot_to_dict(record) for record in status.snapshots],
        "lastBackup": _backup_to_dict(status.last_backup),
        "conditions": [
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": format_time(condition.last_transition_time),
            }
            for condition in status.conditions
        ],
        "warnings": list(status.warnings),
        "progress": _progress_to_dict(status.progress),
    }


def status_from_dict(document: Mapping[str, Any]) -> ClusterStatus:
    """The status written by `status_to_dict`; ValueError when it cannot be read back.

    A handler that gets ValueError should report it and not act: the progress record it would
    lose is what keeps a half-done roll or scale safe.
    """
    try:
        return ClusterStatus(
            phase=str(document.get("phase", "")),
            observed_generation=int(document.get("observedGeneration", 0)),
            leader=document.get("leader"),
            replicas=int(document.get("replicas", 0)),
            ready_replicas=int(document.get("readyReplicas", 0)),
            members=tuple(_member_from_dict(item) for item in document.get("members", ())),
            current_version=document.get("currentVersion"),
            target_version=document.get("targetVersion"),
            target_revision=document.get("targetRevision"),
            last_snapshot=_snapshot_from_dict(document.get("lastSnapshot")),
            snapshots=tuple(
                record
                for record in (_snapshot_from_dict(item) for item in document.get("snapshots", ()))
                if record is not None
            ),
            last_backup=_backup_from_dict(document.get("lastBackup")),
            conditions=tuple(
                Condition(
                    type=item["type"],
                    status=item["status"],
                    reason=item["reason"],
                    message=item["message"],
                    last_transition_time=parse_time(item["lastTransitionTime"]),
                )
                for item in document.get("conditions", ())
            ),
            warnings=tuple(document.get("warnings", ())),
            progress=_progress_from_dict(document.get("progress") or {}),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"cannot read the recorded status: {error!r}") from None


def _member_to_dict(member: MemberReport) -> dict[str, Any]:
    return {
        "id": member.id,
        "pod": member.pod,
        "role": member.role,
        "voter": member.voter,
        "ready": member.ready,
        "caughtUp": member.caught_up,
        "appliedIndex": member.applied_index,
        "version": member.version,
    }


def _member_from_dict(item: Mapping[str, Any]) -> MemberReport:
    return MemberReport(
        id=item["id"],
        pod=item.get("pod"),
        role=item["role"],
        voter=item.get("voter"),
        ready=bool(item["ready"]),
        caught_up=item.get("caughtUp"),
        applied_index=item.get("appliedIndex"),
        version=item.get("version"),
    )


def _snapshot_to_dict(record: SnapshotRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "time": format_time(record.time),
        "pod": record.pod,
        "index": record.index,
        "term": record.term,
        "sizeBytes": record.size_bytes,
        "trigger": record.trigger,
        "token": record.token,
    }


def _snapshot_from_dict(item: Mapping[str, Any] | None) -> SnapshotRecord | None:
    if item is None:
        return None
    return SnapshotRecord(
        time=parse_time(item["time"]),
        pod=item["pod"],
        index=int(item["index"]),
        term=int(item["term"]),
        size_bytes=int(item["sizeBytes"]),
        trigger=item["trigger"],
        token=item["token"],
    )


def _backup_to_dict(record: BackupRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "index": record.index,
        "term": record.term,
        "pod": record.pod,
        "job": record.job,
        "state": record.state,
        "startedAt": format_time(record.started_at),
        "finishedAt": _optional_time(record.finished_at),
    }


def _backup_from_dict(item: Mapping[str, Any] | None) -> BackupRecord | None:
    if item is None:
        return None
    state = item["state"]
    if state not in ("Running", "Succeeded", "Failed"):
        raise KeyError(f"unknown backup state {state!r}")
    return BackupRecord(
        index=int(item["index"]),
        term=int(item["term"]),
        pod=item["pod"],
        job=item["job"],
        state=state,
        started_at=parse_time(item["startedAt"]),
        finished_at=_optional_parsed_time(item.get("finishedAt")),
    )


def _optional_time(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


def _optional_parsed_time(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


def _progress_to_dict(progress: Progress) -> dict[str, Any]:
    snapshot = progress.snapshot
    round_ = snapshot.round
    return {
        "foundingMembers": list(progress.founding_members),
        "founded": progress.founded,
        "operation": _operation_to_dict(progress.operation),
        "snapshot": {
            "handledRequest": snapshot.handled_request,
            "schedule": snapshot.schedule,
            "scheduleAnchor": _optional_time(snapshot.schedule_anchor),
            "round": None
            if round_ is None
            else {
                "trigger": round_.trigger,
                "token": round_.token,
                "startedAt": format_time(round_.started_at),
                "pods": list(round_.pods),
                "done": list(round_.done),
            },
        },
    }


def _progress_from_dict(document: Mapping[str, Any]) -> Progress:
    snapshot = document.get("snapshot") or {}
    round_document = snapshot.get("round")
    round_ = (
        None
        if round_document is None
        else SnapshotRound(
            trigger=round_document["trigger"],
            token=round_document["token"],
            started_at=parse_time(round_document["startedAt"]),
            pods=tuple(round_document["pods"]),
            done=tuple(round_document.get("done", ())),
        )
    )
    return Progress(
        founding_members=tuple(document.get("foundingMembers", ())),
        founded=bool(document.get("founded", False)),
        operation=_operation_from_dict(document.get("operation") or {"kind": "idle"}),
        snapshot=SnapshotProgress(
            handled_request=snapshot.get("handledRequest"),
            schedule=snapshot.get("schedule"),
            schedule_anchor=_optional_parsed_time(snapshot.get("scheduleAnchor")),
            round=round_,
        ),
    )


def _operation_to_dict(operation: Operation) -> dict[str, Any]:
    match operation:
        case Idle():
            return {"kind": "idle"}
        case ScalingUp() | ScalingDown():
            return {
                "kind": operation.kind,
                "targetReplicas": operation.target_replicas,
                "ordinal": operation.ordinal,
                "stepStartedAt": format_time(operation.step_started_at),
            }
        case Rolling():
            step = operation.step
            return {
                "kind": "rolling",
                "targetRevision": operation.target_revision,
                "startedAt": format_time(operation.started_at),
                "step": None
                if step is None
                else {
                    "pod": step.pod,
                    "podUid": step.pod_uid,
                    "deletedAt": format_time(step.deleted_at),
                    "appliedIndexToReach": step.applied_index_to_reach,
                },
            }


def _operation_from_dict(document: Mapping[str, Any]) -> Operation:
    kind = document["kind"]
    if kind == "idle":
        return Idle()
    if kind in ("scaling-up", "scaling-down"):
        scaling = ScalingUp if kind == "scaling-up" else ScalingDown
        return scaling(
            target_replicas=int(document["targetReplicas"]),
            ordinal=int(document["ordinal"]),
            step_started_at=parse_time(document["stepStartedAt"]),
        )
    if kind == "rolling":
        step = document.get("step")
        return Rolling(
            target_revision=document["targetRevision"],
            started_at=parse_time(document["startedAt"]),
            step=None
            if step is None
            else RollStep(
                pod=step["pod"],
                pod_uid=step.get("podUid", ""),
                deleted_at=parse_time(step["deletedAt"]),
                applied_index_to_reach=int(step["appliedIndexToReach"]),
            ),
        )
    raise KeyError(f"unknown operation kind {kind!r}")
