"""The operator's decisions: `plan(desired, observed)` names the one next action and the status.

The kopf handlers are a thin shell around this module (docs/architecture.md): they gather the
observed state (the objects the operator owns, each pod and the `/v1/status` of its node, the
time, the status written last time), call `plan`, write `Plan.status` to the resource, carry out
`Plan.action`, and call `plan` again (at once after an action, after `recheck_after_s` after a
Wait or Refuse, on the next event after Nothing). Nothing here does I/O or reads a clock, so every
rule is tested exhaustively without Kubernetes (tests/operator/test_planner.py).

One action per plan, and every action is idempotent: carrying one out twice, or not at all
(the handler crashed), leads to the same next plan. What cannot be observed is kept in
`status.progress` (model.Progress): the founding members, the pod deleted for the current roll
step and what it must reach, the scale step under way, the snapshot round; a restarted operator
reads it back and resumes.

## The order of decisions

1. Paused (annotation): Nothing; only the status is reported. Invalid spec: Refuse.
2. Owned objects, each compared by the `taskraft.io/spec-hash` annotation of the manifest built
   here: the ConfigMap, the headless Service `{name}-peers`, the client Service `{name}`, the
   StatefulSet (OnDelete, Parallel), the PodDisruptionBudget, the NetworkPolicy (only the
   cluster's pods reach the peer port). EnsureObject for the first that
   differs (the handler creates it, or applies it server-side; the StatefulSet's `replicas` is
   the observed one: only ScaleStatefulSet changes it).
3. The StatefulSet controller must have computed the update revision of the latest template.
4. A roll step under way (a pod deleted for a roll) must finish: the pod is recreated (another
   uid), ready, caught up on the leader and has applied the leader's commit index of when it was
   deleted. Until then nothing else happens; past `step_timeout_s` the roll is reported stalled
   (it keeps waiting: it never moves on to a second pod). A pod still there with the same uid
   was never deleted (the handler died first): the step is void and decided again.
5. Recovery: the only pod that is not ready, when it runs an outdated revision and does not
   lead, is replaced (DeletePod) when its node does not answer (no process: nothing to lose)
   or the restart rule below allows it (it may still acknowledge entries while behind). This
   costs no availability; it is how a bad upgrade that leaves a pod crash-looping is repaired
   by fixing the spec, and how a pod that crashed during a roll gets the new revision.
6. No leader known: Wait (no membership or restart step is safe without the leader's view).
7. Scale down (highest ordinal first): transfer leadership away from the pod, RemoveMember (the
   admin call answers once the change has committed), ScaleStatefulSet(ordinal) to delete the
   pod, wait until it is gone, DeletePvc if `pvc_retention.when_scaled` is Delete. A removed
   pod that is wanted again (the spec grew back before the shrink) re-joins as a learner: the
   leader repairs its stale log as for any follower that was away, and it votes only once
   promoted, caught up.
8. Scale up (one pod at a time): ScaleStatefulSet(+1); the new pod starts with `join`;
   AddLearner once its node serves `/v1/status`; Promote once the leader reports it
   `caught_up` and its pod is ready.
9. Roll (pods whose revision differs from the StatefulSet's update revision): every pod must be
   ready; learners and non-members first, then followers least caught-up first (the most
   caught-up follower is the last follower restarted), the leader last: under the supervised
   policy only once `taskraft.io/approve-leader-restart` equals the target revision, then
   TransferLeadership to a healthy follower (an updated one when there is one), then it is a
   follower and restarts like one.
10. Snapshots: when the main decision is Wait, Refuse or Nothing, a snapshot round (requested by
    annotation, or due by the cron schedule) asks each ready member in turn (leader first)
    with TakeSnapshot; the handler records each answer with `record_snapshot`.
11. Backups (`spec.backup.claimName` set): once a round is complete and `lastSnapshot` is not
    yet backed up, EnsureObject of the Job `{name}-backup-{index}` (backup_job_manifest), which
    streams the snapshot from the pod that took it into the claim. `status.lastBackup` records
    the Job (Running), then its outcome as observed (Succeeded, or Failed: condition Degraded
    with reason BackupFailed); never two backup Jobs at once. Like snapshots, only in the
    pauses of the work.

## Quorum rules

A voter is healthy when its pod is ready and not being deleted and the leader reports it
`caught_up` (the leader itself: its pod is ready). With V voters and H healthy ones
(majority(n) = n // 2 + 1):

- restart voter x (DeletePod): the healthy voters other than x must be at least majority(V)
  (Strimzi's check: a majority of the voters stays caught up with the leader); a single-voter
  cluster may restart its voter (there is no redundancy to keep); a two-voter one may not.
- remove voter x: H >= majority(V) now (the change must commit), and the healthy voters other
  than x at least majority(V - 1); the last voter is never removed.
- promote a learner: H + 1 >= majority(V + 1).

Otherwise Refuse (condition QuorumAtRisk with the reason, a Warning event); the plan is
re-evaluated after `recheck_after_s` and goes ahead once the pods are healthy again.

## How a pod knows whether it founds the cluster or joins it

A StatefulSet has one pod template, but a founding member must start with `initial_members` and
a later member with `join`. The container sets
`TASKRAFT_CONFIG=/etc/taskraft/$(TASKRAFT_NODE_ID).toml` (Kubernetes expands `$(VAR)` from the
earlier downward-API variable), and the ConfigMap holds one TOML file per ordinal: the config
overrides plus `initial_members = {...}` for a founder until the cluster is founded (every
founder has started once), `join = true` for everyone else and for everyone afterwards. So the
node needs no new flag. The pod template carries only the hash of the overrides, so adding a
file for a new ordinal or switching founders to `join` restarts no pod.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from taskraft_operator.model import (
    CLIENT_PORT,
    HTTP_PORT,
    PEER_PORT,
    BackupRecord,
    ClusterStatus,
    Condition,
    ConfigValue,
    DesiredSpec,
    Idle,
    MemberReport,
    NodeMember,
    NodeStatus,
    ObservedPod,
    ObservedState,
    Operation,
    Progress,
    PvcRetention,
    Rolling,
    RollStep,
    ScalingDown,
    ScalingUp,
    SnapshotProgress,
    SnapshotRecord,
    SnapshotRound,
    StorageSpec,
    UpgradePolicy,
    config_hash,
    content_hash,
    format_time,
    ordinal_of,
    peer_address,
    peers_service_name,
    pod_dns_name,
    pod_name,
    pvc_name,
)

SPEC_HASH_ANNOTATION = "taskraft.io/spec-hash"
CONFIG_HASH_ANNOTATION = "taskraft.io/config-hash"
VERSION_ANNOTATION = "taskraft.io/version"
PAUSED_ANNOTATION = "taskraft.io/paused"
APPROVAL_ANNOTATION = "taskraft.io/approve-leader-restart"
SNAPSHOT_REQUEST_ANNOTATION = "taskraft.io/snapshot-request"

# Waiting for a pod to start or catch up: what we wait for changes within seconds.
RECHECK_FAST_S = 5.0
# Refused, paused, stalled or waiting for a person: nothing changes soon by itself.
RECHECK_SLOW_S = 30.0
# Raft clusters beyond 9 voters gain little; 15 bounds the ConfigMap and the scale steps.
REPLICAS_MAX = 15
# StatefulSet pods get the label `controller-revision-hash: {name}-{10 characters}`, and a label
# value is at most 63 characters.
NAME_LENGTH_MAX = 52
# Snapshot history kept in the status: enough to see a pattern, small next to the 1.5 MiB object.
SNAPSHOT_HISTORY_MAX = 100
# Backup Jobs: retried twice by Kubernetes, then reported; a finished one is kept a day for its
# logs (the status keeps the outcome), and one that hangs is stopped after an hour.
BACKUP_BACKOFF_LIMIT = 2
BACKUP_TTL_S = 86_400
BACKUP_DEADLINE_S = 3_600
BACKUP_MOUNT_PATH = "/backup"

DATA_MOUNT_PATH = "/var/lib/taskraft/data"
# A subdirectory, so a fresh volume's lost+found never sits in the node's data directory.
DATA_DIRECTORY = f"{DATA_MOUNT_PATH}/node"
CONFIG_MOUNT_PATH = "/etc/taskraft"
# The credentials Secret (`credentials_secret_name`) and the TLS Secret (`spec.tls`), each
# mounted read-only for the node's group (fsGroup) and nobody else.
CREDENTIALS_MOUNT_PATH = "/etc/taskraft-credentials"
TLS_MOUNT_PATH = "/etc/taskraft-tls"
SECRET_FILE_MODE = 0o440
# The keys of the credentials Secret: the nodes' token file and cluster secret, and each
# generated token alone (for clients: a secretKeyRef; for the operator: the admin token).
TOKEN_FILE_KEY = "tokens"
CLUSTER_SECRET_KEY = "cluster-secret"
ADMIN_TOKEN_KEY = "admin-token"
CLIENT_TOKEN_KEY = "client-token"
READ_TOKEN_KEY = "read-token"
# The keys of a TLS Secret (kubernetes.io/tls, plus the authority as cert-manager adds it).
TLS_CERTIFICATE_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
TLS_AUTHORITY_KEY = "ca.crt"
# The node image runs as this user (node/Dockerfile); fsGroup makes the volume writable for it.
NODE_USER_ID = 10001
# The node's own graceful stop is bounded by shutdown_timeout_ms (default 10 s); the pod gets
# that plus this margin before Kubernetes kills it.
TERMINATION_MARGIN_S = 20
SHUTDOWN_TIMEOUT_DEFAULT_MS = 10_000

# Options the operator sets for every pod; an override of one would break the naming rules.
RESERVED_CONFIG_KEYS = frozenset(
    {
        "config",
        "node_id",
        "data_dir",
        "client_address",
        "peer_address",
        "http_address",
        "initial_members",
        "join",
        "advertise_client_address",
        "advertise_peer_address",
        "advertise_http_address",
        "cluster_id",
        # Credentials: the operator mounts its credentials Secret and the TLS Secret of
        # spec.tls (spec.authentication, spec.tls) and points the node at them.
        "auth_token_file",
        "cluster_secret_file",
        "tls_cert",
        "tls_key",
        "tls_ca",
        # /metrics stays open to Prometheus (docs/kubernetes.md).
        "metrics_require_token",
    }
)

CONDITION_TYPES = ("Available", "Progressing", "Degraded", "QuorumAtRisk", "Upgrading", "Scaling")


# ---------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True, slots=True, kw_only=True)
class EnsureObject:
    """Create the object, or bring it to `manifest` (server-side apply).

    For the StatefulSet, `spec.replicas` is the observed count and `volumeClaimTemplates` the
    existing ones (immutable): applying the manifest changes neither.
    """

    kind: str
    name: str
    manifest: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class AddLearner:
    """POST /v1/members {id, peer_address} on `via_pod` (the leader)."""

    node_id: str
    peer_address: str
    via_pod: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Promote:
    """POST /v1/members/{node_id}/promote on `via_pod` (the leader)."""

    node_id: str
    via_pod: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveMember:
    """DELETE /v1/members/{node_id} on `via_pod` (the leader); answers once committed."""

    node_id: str
    via_pod: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferLeadership:
    """POST /v1/leadership/transfer {target} on `via_pod` (the leader)."""

    target: str
    via_pod: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletePod:
    """Delete the pod, with the precondition `metadata.uid == uid`: a retried call never deletes
    the pod that replaced it. A plain delete: the PDB governs evictions, not this roll."""

    pod: str
    uid: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleStatefulSet:
    """Set the StatefulSet's `spec.replicas`."""

    replicas: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletePvc:
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TakeSnapshot:
    """POST /v1/snapshot on the pod; then `record_snapshot` (or `record_snapshot_failure`)."""

    pod: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Wait:
    reason: str
    recheck_after_s: float = RECHECK_FAST_S


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse:
    """A step that would lose quorum (or an invalid spec): not done, reported, retried later."""

    reason: str
    message: str
    recheck_after_s: float = RECHECK_SLOW_S


@dataclass(frozen=True, slots=True, kw_only=True)
class Nothing:
    """Nothing to do; `recheck_after_s`: when the next scheduled snapshot is due (or None)."""

    reason: str
    recheck_after_s: float | None = None


Action = (
    EnsureObject
    | AddLearner
    | Promote
    | RemoveMember
    | TransferLeadership
    | DeletePod
    | ScaleStatefulSet
    | DeletePvc
    | TakeSnapshot
    | Wait
    | Refuse
    | Nothing
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A Kubernetes event to post on the resource (only when a condition changes)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    action: Action
    status: ClusterStatus
    events: tuple[Event, ...] = ()


# ---------------------------------------------------------------------------------------------
# Entry point


def plan(desired: DesiredSpec, observed: ObservedState) -> Plan:
    """The one next action, and the status to write before carrying it out."""
    now = observed.now.astimezone(UTC).replace(microsecond=0)
    observed = replace(observed, now=now)
    view = _build_view(desired, observed)
    problems = spec_problems(desired)
    if desired.paused:
        step = _Step(
            Nothing(reason=f"paused by the annotation {PAUSED_ANNOTATION}"),
            view.progress.operation,
            context="paused",
        )
    elif problems:
        step = _Step(
            Refuse(reason="InvalidSpec", message="; ".join(problems)),
            view.progress.operation,
            context="invalid",
        )
    else:
        step = _decide(view)
    action = step.action
    snapshot = view.progress.snapshot
    backup = _observed_backup(view)
    # Snapshots and backups fill the pauses of the work: a step that can go now goes first.
    if not desired.paused and not problems and isinstance(action, Wait | Refuse | Nothing):
        snapshot_action, snapshot = _snapshot_step(view, snapshot)
        backup_action = None
        if snapshot_action is None and snapshot.round is None:
            backup_action, backup = _backup_step(view, backup)
        if snapshot_action is not None:
            action = snapshot_action
        elif backup_action is not None:
            action = backup_action
        elif isinstance(action, Nothing):
            recheck = _seconds_to_next_snapshot(view)
            if desired.backup_claim_name and backup and backup.state == "Running":
                # Nothing announces the Job's end: look again.
                recheck = RECHECK_SLOW_S if recheck is None else min(recheck, RECHECK_SLOW_S)
            action = replace(action, recheck_after_s=recheck)
    progress = replace(view.progress, operation=step.operation, snapshot=snapshot)
    status = _status(view, step, progress, backup)
    return Plan(action=action, status=status, events=_events(observed.status, status))


def _decide(view: _View) -> _Step:
    deciders: tuple[Callable[[_View], _Step | None], ...] = (
        _ensure_objects,
        _wait_for_controller,
        _finish_roll_step,
        _recover_stuck_pod,
        _wait_for_leader,
        _scale_down,
        _scale_up,
        _roll,
    )
    for decide in deciders:
        step = decide(view)
        if step is not None:
            return step
    return _Step(Nothing(reason="the cluster matches its spec"), Idle(), context="idle")


def spec_problems(desired: DesiredSpec) -> list[str]:
    """What makes the spec unusable, one sentence each; empty when it is valid."""
    problems: list[str] = []
    if not 1 <= desired.replicas <= REPLICAS_MAX:
        problems.append(f"replicas must be from 1 to {REPLICAS_MAX}, not {desired.replicas}")
    if not desired.name or len(desired.name) > NAME_LENGTH_MAX:
        problems.append(f"the name must have 1 to {NAME_LENGTH_MAX} characters")
    if not desired.image or not desired.version:
        problems.append("image and version are required")
    reserved = sorted(RESERVED_CONFIG_KEYS.intersection(desired.config))
    if reserved:
        problems.append(f"config may not set {', '.join(reserved)}: the operator sets them")
    for key, value in sorted(desired.config.items()):
        if not key or not isinstance(value, str | int | bool):
            problems.append(f"config {key!r}: expected text, an integer or a boolean")
    if desired.snapshots.schedule is not None:
        try:
            parse_cron(desired.snapshots.schedule)
        except ValueError as error:
            problems.append(f"snapshot schedule {desired.snapshots.schedule!r}: {error}")
    if not 0 <= desired.snapshots.history_max <= SNAPSHOT_HISTORY_MAX:
        problems.append(f"snapshot history must be from 0 to {SNAPSHOT_HISTORY_MAX}")
    if desired.step_timeout_s < 1:
        problems.append("step_timeout_s must be at least 1")
    return problems


# ---------------------------------------------------------------------------------------------
# The view: facts derived once from the observed state


@dataclass(frozen=True, slots=True, kw_only=True)
class _OwnedObject:
    kind: str
    name: str
    manifest: dict[str, Any]
    spec_hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _View:
    desired: DesiredSpec
    observed: ObservedState
    progress: Progress
    # The leader's /v1/status (the newest term claiming leadership), and the configuration in
    # force as the leader reports it.
    leader: NodeStatus | None
    members: Mapping[str, NodeMember]
    healthy: frozenset[str]
    objects: tuple[_OwnedObject, ...]
    template_hash: str

    @property
    def now(self) -> datetime:
        return self.observed.now

    @property
    def name(self) -> str:
        return self.desired.name

    @property
    def voters(self) -> frozenset[str]:
        return frozenset(node for node, member in self.members.items() if member.voter)

    def node(self, ordinal: int) -> str:
        return pod_name(self.desired.name, ordinal)

    def ordinal(self, node: str) -> int | None:
        return ordinal_of(self.desired.name, node)

    def pod(self, node: str) -> ObservedPod | None:
        ordinal = self.ordinal(node)
        return None if ordinal is None else self.observed.pods.get(ordinal)

    def stateful_set_replicas(self) -> int:
        stateful_set = self.observed.stateful_set
        return 0 if stateful_set is None else stateful_set.replicas

    def update_revision(self) -> str | None:
        stateful_set = self.observed.stateful_set
        return None if stateful_set is None else stateful_set.update_revision


@dataclass(frozen=True, slots=True, kw_only=True)
class _StepNotes:
    """What the status reports about a step beyond its action."""

    stalled: str | None = None
    awaiting_approval: bool = False


@dataclass(frozen=True, slots=True)
class _Step:
    action: Action
    operation: Operation
    # Which rule decided: creating, objects, controller, roll, recovery, leader, scale-down,
    # scale-up, idle, paused, invalid.
    context: str = ""
    notes: _StepNotes = _StepNotes()


def majority(voters: int) -> int:
    return voters // 2 + 1


def _build_view(desired: DesiredSpec, observed: ObservedState) -> _View:
    leader = _find_leader(observed)
    members = {} if leader is None else {member.id: member for member in leader.members}
    healthy = _healthy_voters(desired, observed, leader)
    progress = _founding_progress(desired, observed, leader, members)
    objects, template_hash = _owned_objects(desired, observed, progress)
    return _View(
        desired=desired,
        observed=observed,
        progress=progress,
        leader=leader,
        members=members,
        healthy=healthy,
        objects=objects,
        template_hash=template_hash,
    )


def _find_leader(observed: ObservedState) -> NodeStatus | None:
    claims = [
        pod.node
        for pod in observed.pods.values()
        if pod.node is not None and pod.node.is_leader and not pod.deleting
    ]
    return max(claims, key=lambda node: node.term, default=None)


def _healthy_voters(
    desired: DesiredSpec, observed: ObservedState, leader: NodeStatus | None
) -> frozenset[str]:
    if leader is None:
        return frozenset()
    healthy: set[str] = set()
    for member in leader.members:
        ordinal = ordinal_of(desired.name, member.id)
        pod = None if ordinal is None else observed.pods.get(ordinal)
        if not member.voter or pod is None or pod.deleting or not pod.ready:
            continue
        if member.id == leader.node_id or member.caught_up:
            healthy.add(member.id)
    return frozenset(healthy)


def _founding_progress(
    desired: DesiredSpec,
    observed: ObservedState,
    leader: NodeStatus | None,
    members: Mapping[str, NodeMember],
) -> Progress:
    """The recorded progress, with the founders fixed before the StatefulSet exists and the
    `founded` flag set once every founder still in the configuration has started."""
    recorded = Progress() if observed.status is None else observed.status.progress
    if not recorded.founding_members and not recorded.founded:
        if observed.stateful_set is not None:
            # The record is lost but the cluster exists: every pod joins.
            return replace(recorded, founded=True)
        founders = tuple(pod_name(desired.name, ordinal) for ordinal in range(desired.replicas))
        return replace(recorded, founding_members=founders)
    if recorded.founded or leader is None:
        return recorded
    for founder in recorded.founding_members:
        ordinal = ordinal_of(desired.name, founder)
        pod = None if ordinal is None else observed.pods.get(ordinal)
        if founder in members and (pod is None or pod.node is None):
            return recorded
    return replace(recorded, founded=True)


# ---------------------------------------------------------------------------------------------
# Steps 2-6: objects, controller, roll step, recovery, leader


def _ensure_objects(view: _View) -> _Step | None:
    stateful_set = view.observed.stateful_set
    for owned in view.objects:
        if owned.kind == "StatefulSet":
            current = None if stateful_set is None else stateful_set.spec_hash
        else:
            current = view.observed.objects.get((owned.kind, owned.name))
        exists = owned.kind == "StatefulSet" and stateful_set is not None
        exists = exists or (owned.kind, owned.name) in view.observed.objects
        if not exists or current != owned.spec_hash:
            context = "objects" if view.progress.founded else "creating"
            action = EnsureObject(kind=owned.kind, name=owned.name, manifest=owned.manifest)
            return _Step(action, view.progress.operation, context=context)
    return None


def _wait_for_controller(view: _View) -> _Step | None:
    stateful_set = view.observed.stateful_set
    assert stateful_set is not None, "ensured first"
    if stateful_set.observed_generation < stateful_set.generation or not (
        stateful_set.update_revision
    ):
        wait = Wait(reason="the StatefulSet controller has not yet seen the latest template")
        return _Step(wait, view.progress.operation, context="controller")
    return None


def _finish_roll_step(view: _View) -> _Step | None:
    operation = view.progress.operation
    if not isinstance(operation, Rolling) or operation.step is None:
        return None
    step = operation.step
    pod = view.pod(step.pod)
    if (view.ordinal(step.pod) or 0) >= view.stateful_set_replicas():
        return None  # the pod is no longer wanted: nothing to wait for
    if pod is not None and not pod.deleting and pod.uid == step.pod_uid:
        # The deletion never happened (the handler died before carrying it out): the step is
        # void, and the roll decides again with every check.
        return None
    if pod is None or pod.deleting:
        return _stallable_wait(
            view, operation, step.deleted_at, f"waiting for pod {step.pod} to be recreated", "roll"
        )
    if _pod_settled(view, step.pod, step.applied_index_to_reach):
        return None
    if not pod.ready and pod.revision != view.update_revision() and _may_replace(view, pod):
        # The spec changed again while this pod was failing: it is replaced, still one pod.
        return _delete_for_roll(view, step.pod, pod, "a newer revision replaces a failing pod")
    message = (
        f"waiting for pod {step.pod} to become ready and catch up "
        f"(applied index {step.applied_index_to_reach} or more)"
    )
    return _stallable_wait(view, operation, step.deleted_at, message, "roll")


def _pod_settled(view: _View, node: str, applied_index_to_reach: int) -> bool:
    """Ready and caught up: the next roll step may go."""
    pod = view.pod(node)
    if pod is None or pod.deleting or pod.node is None:
        return False
    member = view.members.get(node)
    if member is None:
        # Not a member (a joining pod): it can never be ready; serving its status is enough.
        return view.leader is not None
    if not pod.ready or view.leader is None:
        return False
    caught_up = node == view.leader.node_id or bool(member.caught_up)
    return caught_up and pod.node.applied_index >= applied_index_to_reach


def _may_replace(view: _View, pod: ObservedPod) -> bool:
    """Whether a pod that is not ready may be restarted.

    A node that does not answer runs no process (crash loop, image that does not start): it
    acknowledges nothing, so its restart costs nothing. One that answers may still acknowledge
    entries while it is behind, so the restart rule applies.
    """
    if pod.node is None:
        return True
    if view.leader is None:
        return view.stateful_set_replicas() <= 1
    return _restart_refusal(view, view.node(pod.ordinal)) is None


def _recover_stuck_pod(view: _View) -> _Step | None:
    update_revision = view.update_revision()
    not_ready = [
        ordinal
        for ordinal in range(view.stateful_set_replicas())
        if (pod := view.observed.pods.get(ordinal)) is None or pod.deleting or not pod.ready
    ]
    if len(not_ready) != 1:
        return None
    pod = view.observed.pods.get(not_ready[0])
    if pod is None or pod.deleting or pod.revision == update_revision:
        return None
    if pod.node is not None and pod.node.is_leader:
        return None
    if not _may_replace(view, pod):
        return None
    node = view.node(pod.ordinal)
    return _delete_for_roll(view, node, pod, "not ready and on an outdated revision: replaced")


def _delete_for_roll(view: _View, node: str, pod: ObservedPod, reason: str) -> _Step:
    step = RollStep(
        pod=node,
        pod_uid=pod.uid,
        deleted_at=view.now,
        applied_index_to_reach=0 if view.leader is None else view.leader.commit_index,
    )
    operation = replace(_rolling(view), step=step)
    return _Step(DeletePod(pod=node, uid=pod.uid, reason=reason), operation, context="roll")


def _rolling(view: _View) -> Rolling:
    """The roll record: kept while the target stays the same, else started now."""
    operation = view.progress.operation
    if isinstance(operation, Rolling) and operation.target_revision == view.template_hash:
        return replace(operation, step=None)
    return Rolling(target_revision=view.template_hash, started_at=view.now)


def _wait_for_leader(view: _View) -> _Step | None:
    if view.leader is not None:
        return None
    if not view.progress.founded:
        wait = Wait(reason="waiting for the founding members to start and elect a leader")
        return _Step(wait, view.progress.operation, context="creating")
    wait = Wait(reason="no pod reports a leader: the cluster is unavailable")
    return _Step(wait, view.progress.operation, context="leader")


def _stallable_wait(
    view: _View, operation: Operation, started_at: datetime, message: str, context: str
) -> _Step:
    overdue_s = (view.now - started_at).total_seconds() - view.desired.step_timeout_s
    stalled = None
    if overdue_s > 0:
        stalled = f"{message}: not done after {view.desired.step_timeout_s} s"
    wait = Wait(reason=message, recheck_after_s=RECHECK_SLOW_S if stalled else RECHECK_FAST_S)
    return _Step(wait, operation, context=context, notes=_StepNotes(stalled=stalled))


# ---------------------------------------------------------------------------------------------
# Steps 7-8: membership


def _scale_down(view: _View) -> _Step | None:
    desired = view.desired.replicas
    replicas = view.stateful_set_replicas()
    beyond = [
        ordinal
        for node in view.members
        if (ordinal := view.ordinal(node)) is not None and ordinal >= desired
    ]
    if replicas > desired:
        beyond.append(replicas - 1)
    cleaning = _clean_up_after_scale_down(view)
    if cleaning is not None:
        return cleaning
    if beyond:
        ordinal = max(beyond)
        operation = _scaling(view, ScalingDown, ordinal)
        node = view.node(ordinal)
        if node in view.members:
            return _remove_member(view, node, operation)
        return _Step(ScaleStatefulSet(replicas=ordinal), operation, context="scale-down")
    return None


def _clean_up_after_scale_down(view: _View) -> _Step | None:
    replicas = view.stateful_set_replicas()
    lingering = sorted(ordinal for ordinal in view.observed.pods if ordinal >= replicas)
    if lingering:
        operation = _scaling(view, ScalingDown, lingering[-1])
        message = f"waiting for pod {view.node(lingering[-1])} to terminate"
        started = operation.step_started_at
        return _stallable_wait(view, operation, started, message, "scale-down")
    if view.desired.pvc_retention.when_scaled is not PvcRetention.DELETE:
        return None
    floor = max(view.desired.replicas, replicas)
    stale = sorted(ordinal for ordinal in view.observed.pvcs if ordinal >= floor)
    if not stale:
        return None
    operation = _scaling(view, ScalingDown, stale[-1])
    action = DeletePvc(name=pvc_name(view.name, stale[-1]))
    return _Step(action, operation, context="scale-down")


def _remove_member(view: _View, node: str, operation: Operation) -> _Step:
    leader = view.leader
    assert leader is not None, "a leader is known before membership steps"
    via = leader.node_id
    if node == leader.node_id:
        desired = view.desired.replicas
        target = _transfer_target(
            view, lambda candidate: (view.ordinal(candidate) or 0) < desired, prefer_updated=False
        )
        if target is None:
            refuse = Refuse(
                reason="NoTransferTarget",
                message=f"{node} leads and must be removed, but no healthy voter that stays "
                "can take over",
            )
            return _Step(refuse, operation, context="scale-down")
        return _Step(TransferLeadership(target=target, via_pod=via), operation, "scale-down")
    refusal = _removal_refusal(view, node)
    if refusal is not None:
        return _Step(Refuse(reason="QuorumAtRisk", message=refusal), operation, "scale-down")
    return _Step(RemoveMember(node_id=node, via_pod=via), operation, context="scale-down")


def _scale_up(view: _View) -> _Step | None:
    leader = view.leader
    assert leader is not None, "a leader is known before membership steps"
    replicas = view.stateful_set_replicas()
    for ordinal in range(min(replicas, view.desired.replicas)):
        node = view.node(ordinal)
        member = view.members.get(node)
        if member is not None and member.voter:
            continue
        operation = _scaling(view, ScalingUp, ordinal)
        started = operation.step_started_at
        pod = view.observed.pods.get(ordinal)
        if member is None:
            if pod is None or pod.deleting or pod.node is None:
                message = f"waiting for pod {node} to start and serve its status"
                return _stallable_wait(view, operation, started, message, "scale-up")
            address = peer_address(view.name, view.desired.namespace, ordinal)
            action: Action = AddLearner(node_id=node, peer_address=address, via_pod=leader.node_id)
            return _Step(action, operation, context="scale-up")
        if not member.caught_up or pod is None or pod.deleting or not pod.ready:
            message = f"waiting for learner {node} to catch up"
            return _stallable_wait(view, operation, started, message, "scale-up")
        refusal = _promotion_refusal(view, node)
        if refusal is not None:
            return _Step(Refuse(reason="QuorumAtRisk", message=refusal), operation, "scale-up")
        return _Step(Promote(node_id=node, via_pod=leader.node_id), operation, "scale-up")
    if replicas < view.desired.replicas:
        operation = _scaling(view, ScalingUp, replicas)
        return _Step(ScaleStatefulSet(replicas=replicas + 1), operation, context="scale-up")
    return None


def _scaling(
    view: _View, kind: type[ScalingUp] | type[ScalingDown], ordinal: int
) -> ScalingUp | ScalingDown:
    """The scale record for `ordinal`: its start time is kept while the step is the same."""
    operation = view.progress.operation
    if isinstance(operation, kind) and operation.ordinal == ordinal:
        return replace(operation, target_replicas=view.desired.replicas)
    return kind(target_replicas=view.desired.replicas, ordinal=ordinal, step_started_at=view.now)


def _removal_refusal(view: _View, node: str) -> str | None:
    voters = view.voters
    if node not in voters:
        return None
    if len(voters) == 1:
        return f"{node} is the last voter"
    healthy = len(view.healthy)
    if healthy < majority(len(voters)):
        return (
            f"only {healthy} of {len(voters)} voters are healthy: removing {node} could not commit"
        )
    remaining = len(view.healthy - {node})
    needed = majority(len(voters) - 1)
    if remaining < needed:
        return (
            f"removing {node} would leave {remaining} healthy voters of {len(voters) - 1}; "
            f"a quorum needs {needed}"
        )
    return None


def _promotion_refusal(view: _View, node: str) -> str | None:
    voters = len(view.voters)
    healthy = len(view.healthy) + 1
    needed = majority(voters + 1)
    if healthy < needed:
        return (
            f"promoting {node} would make {voters + 1} voters with {healthy} healthy; a quorum "
            f"needs {needed}"
        )
    return None


def _restart_refusal(view: _View, node: str) -> str | None:
    voters = view.voters
    if node not in voters or len(voters) == 1:
        return None
    others = len(view.healthy - {node})
    needed = majority(len(voters))
    if others < needed:
        return (
            f"restarting {node} would leave {others} healthy voters of {len(voters)}; a quorum "
            f"needs {needed}"
        )
    return None


def _transfer_target(
    view: _View, allowed: Callable[[str], bool], *, prefer_updated: bool
) -> str | None:
    leader = view.leader
    assert leader is not None
    update_revision = view.update_revision()

    def rank(node: str) -> tuple[bool, int, int]:
        pod = view.pod(node)
        updated = pod is not None and pod.revision == update_revision
        match_index = view.members[node].match_index or 0
        return (prefer_updated and not updated, -match_index, view.ordinal(node) or 0)

    candidates = sorted(
        (node for node in view.healthy if node != leader.node_id and allowed(node)), key=rank
    )
    return candidates[0] if candidates else None


# ---------------------------------------------------------------------------------------------
# Step 9: the roll


def _roll(view: _View) -> _Step | None:
    update_revision = view.update_revision()
    replicas = view.stateful_set_replicas()
    outdated = [
        ordinal
        for ordinal in range(replicas)
        if (pod := view.observed.pods.get(ordinal)) is not None and pod.revision != update_revision
    ]
    if not outdated:
        return None
    operation = _rolling(view)
    for ordinal in range(replicas):
        pod = view.observed.pods.get(ordinal)
        if pod is None or pod.deleting or not pod.ready:
            wait = Wait(reason=f"pod {view.node(ordinal)} is not ready; the roll waits for it")
            return _Step(wait, operation, context="roll")
    leader = view.leader
    assert leader is not None, "a leader is known before roll steps"
    ordinal = min(outdated, key=lambda candidate: _roll_order(view, candidate))
    node = view.node(ordinal)
    pod = view.observed.pods[ordinal]
    if node == leader.node_id:
        if not _leader_restart_approved(view):
            message = (
                f"the leader {node} restarts last, once approved: annotate the resource with "
                f"{APPROVAL_ANNOTATION}={view.template_hash}"
            )
            notes = _StepNotes(awaiting_approval=True)
            wait = Wait(reason=message, recheck_after_s=RECHECK_SLOW_S)
            return _Step(wait, operation, context="roll", notes=notes)
        if len(view.voters) > 1:
            return _transfer_before_restart(view, operation)
    refusal = _restart_refusal(view, node)
    if refusal is not None:
        return _Step(Refuse(reason="QuorumAtRisk", message=refusal), operation, context="roll")
    return _delete_for_roll(view, node, pod, f"rolling restart onto revision {view.template_hash}")


def _roll_order(view: _View, ordinal: int) -> tuple[int, int, int]:
    """Learners and non-members first, then followers least caught-up first, the leader last."""
    node = view.node(ordinal)
    member = view.members.get(node)
    if member is None or not member.voter:
        return (0, 0, ordinal)
    assert view.leader is not None
    if node == view.leader.node_id:
        return (2, 0, 0)
    return (1, member.match_index or 0, -ordinal)


def _leader_restart_approved(view: _View) -> bool:
    if view.desired.upgrade_policy is not UpgradePolicy.SUPERVISED:
        return True
    return view.desired.leader_restart_approval == view.template_hash


def _transfer_before_restart(view: _View, operation: Rolling) -> _Step:
    leader = view.leader
    assert leader is not None
    target = _transfer_target(view, lambda _node: True, prefer_updated=True)
    if target is None:
        refuse = Refuse(
            reason="NoTransferTarget",
            message=f"the leader {leader.node_id} must restart but no healthy follower can lead",
        )
        return _Step(refuse, operation, context="roll")
    action = TransferLeadership(target=target, via_pod=leader.node_id)
    return _Step(action, operation, context="roll")


# ---------------------------------------------------------------------------------------------
# Step 10: snapshots


def _snapshot_step(
    view: _View, progress: SnapshotProgress
) -> tuple[TakeSnapshot | None, SnapshotProgress]:
    """The next snapshot request of the round under way (starting one if due)."""
    schedule = view.desired.snapshots.schedule
    if progress.schedule != schedule:
        anchor = view.now if schedule is not None else None
        progress = replace(progress, schedule=schedule, schedule_anchor=anchor)
    if progress.round is None:
        progress = _start_round(view, progress)
    round_ = progress.round
    while round_ is not None and round_.pods:
        pod = view.pod(round_.pods[0])
        if pod is not None and pod.ready and not pod.deleting:
            return TakeSnapshot(pod=round_.pods[0]), replace(progress, round=round_)
        round_ = replace(round_, pods=round_.pods[1:], done=(*round_.done, round_.pods[0]))
    return None, replace(progress, round=None)


def _start_round(view: _View, progress: SnapshotProgress) -> SnapshotProgress:
    pods = _snapshot_pods(view)
    if not pods:
        return progress
    request = view.desired.snapshot_request
    if request and request != progress.handled_request:
        round_ = SnapshotRound(trigger="request", token=request, started_at=view.now, pods=pods)
        return replace(progress, handled_request=request, round=round_)
    if progress.schedule is None or progress.schedule_anchor is None:
        return progress
    slot = previous_fire_time(parse_cron(progress.schedule), view.now)
    if slot is None or slot <= progress.schedule_anchor:
        return progress
    round_ = SnapshotRound(
        trigger="schedule", token=format_time(slot), started_at=view.now, pods=pods
    )
    return replace(progress, schedule_anchor=slot, round=round_)


def _snapshot_pods(view: _View) -> tuple[str, ...]:
    """Ready members, the leader first: its snapshot is the one `lastSnapshot` reports."""
    if view.leader is None:
        return ()
    ready = [
        node
        for node in view.members
        if (pod := view.pod(node)) is not None and pod.ready and not pod.deleting
    ]
    leader = view.leader.node_id
    return tuple(sorted(ready, key=lambda node: (node != leader, view.ordinal(node) or 0)))


def _seconds_to_next_snapshot(view: _View) -> float | None:
    schedule = view.desired.snapshots.schedule
    if schedule is None:
        return None
    fire = next_fire_time(parse_cron(schedule), view.now)
    return None if fire is None else max(1.0, (fire - view.now).total_seconds())


def record_snapshot(
    status: ClusterStatus,
    *,
    pod: str,
    index: int,
    term: int,
    size_bytes: int,
    now: datetime,
    history_max: int,
) -> ClusterStatus:
    """The status after `pod` answered a TakeSnapshot with {index, term, size_bytes}.

    The round moves on to the next pod; `lastSnapshot` and the history keep the best snapshot
    (highest index) of each round.
    """
    round_ = status.progress.snapshot.round
    trigger, token = ("request", "") if round_ is None else (round_.trigger, round_.token)
    record = SnapshotRecord(
        time=now.astimezone(UTC).replace(microsecond=0),
        pod=pod,
        index=index,
        term=term,
        size_bytes=size_bytes,
        trigger=trigger,
        token=token,
    )
    history = list(status.snapshots)
    if history and (history[-1].trigger, history[-1].token) == (trigger, token):
        if history[-1].index <= index:
            history[-1] = record
    else:
        history.append(record)
    history = history[-history_max:] if history_max > 0 else []
    return replace(
        _round_done(status, pod),
        snapshots=tuple(history),
        last_snapshot=history[-1] if history else record,
    )


def record_snapshot_failure(status: ClusterStatus, *, pod: str) -> ClusterStatus:
    """The status after `pod` could not snapshot: the round goes on without it."""
    return _round_done(status, pod)


def _round_done(status: ClusterStatus, pod: str) -> ClusterStatus:
    snapshot = status.progress.snapshot
    round_ = snapshot.round
    if round_ is None or pod not in round_.pods:
        return status
    pods = tuple(candidate for candidate in round_.pods if candidate != pod)
    new_round = replace(round_, pods=pods, done=(*round_.done, pod)) if pods else None
    progress = replace(status.progress, snapshot=replace(snapshot, round=new_round))
    return replace(status, progress=progress)


# ---------------------------------------------------------------------------------------------
# Step 11: backups


def backup_job_name(cluster: str, index: int) -> str:
    return f"{cluster}-backup-{index}"


def _observed_backup(view: _View) -> BackupRecord | None:
    """The recorded backup, with the outcome of its Job if it has finished since."""
    previous = view.observed.status
    record = None if previous is None else previous.last_backup
    if record is None or record.state != "Running":
        return record
    job = view.observed.jobs.get(record.job)
    if job is None or not job.finished:
        return record
    state: Literal["Succeeded", "Failed"] = "Succeeded" if job.succeeded else "Failed"
    return replace(record, state=state, finished_at=view.now)


def _backup_step(
    view: _View, record: BackupRecord | None
) -> tuple[EnsureObject | None, BackupRecord | None]:
    """The backup Job to ensure (with the record naming it), or None."""
    claim = view.desired.backup_claim_name
    previous = view.observed.status
    snapshot = None if previous is None else previous.last_snapshot
    if claim is None:
        return None, record
    if record is not None and record.state == "Running":
        if record.job in view.observed.jobs:
            return None, record  # still running: one at a time
        # Recorded but not there (the handler died before creating it): ensured again.
        manifest = backup_job_manifest(view.desired, pod=record.pod, index=record.index)
        return EnsureObject(kind="Job", name=record.job, manifest=manifest), record
    if snapshot is None or (
        record is not None and (record.index, record.term) == (snapshot.index, snapshot.term)
    ):
        return None, record
    if any(not job.finished for job in view.observed.jobs.values()):
        return None, record  # a Job the status does not name (the record was lost) still runs
    pod = view.pod(snapshot.pod)
    if pod is None or not pod.ready or pod.deleting:
        return None, record  # the pod holding the snapshot must serve it
    name = backup_job_name(view.name, snapshot.index)
    manifest = backup_job_manifest(view.desired, pod=snapshot.pod, index=snapshot.index)
    new_record = BackupRecord(
        index=snapshot.index,
        term=snapshot.term,
        pod=snapshot.pod,
        job=name,
        state="Running",
        started_at=view.now,
    )
    return EnsureObject(kind="Job", name=name, manifest=manifest), new_record


# Run by the node image's Python in the backup Job: `python -c SCRIPT URL DIRECTORY PREFIX`.
# Sends $TASKRAFT_TOKEN as the bearer token when set, and verifies an https URL against the
# authority file $TASKRAFT_TLS_CA.
# Streams GET URL (/v1/snapshot) into DIRECTORY/PREFIX-{index}-{term}.snapshot.partial,
# checks the crc32 the node sent, fsyncs, writes the .json of the headers the same way, then
# renames both into place and fsyncs the directory. Any failure exits non-zero (the Job
# retries) and leaves no file under the final names.
BACKUP_SCRIPT = """\
import json, os, ssl, sys, urllib.request, zlib
url, directory, prefix = sys.argv[1:4]
request = urllib.request.Request(url)
if os.environ.get("TASKRAFT_TOKEN"):
    request.add_header("Authorization", "Bearer " + os.environ["TASKRAFT_TOKEN"])
authority = os.environ.get("TASKRAFT_TLS_CA")
context = ssl.create_default_context(cafile=authority) if authority else None
with urllib.request.urlopen(request, timeout=60, context=context) as response:
    index = int(response.headers["X-Taskraft-Snapshot-Index"])
    term = int(response.headers["X-Taskraft-Snapshot-Term"])
    expected = response.headers["X-Taskraft-Snapshot-Crc32"].strip().lower()
    base = os.path.join(directory, f"{prefix}-{index}-{term}")
    partial = base + ".snapshot.partial"
    crc, size = 0, 0
    try:
        with open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = format(crc, "08x")
        if actual != expected:
            sys.exit(f"crc32 mismatch: the node sent {expected}, the data has {actual}")
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
meta = {"url": url, "index": index, "term": term, "crc32": actual, "size_bytes": size,
        "headers": {"X-Taskraft-Snapshot-Index": str(index),
                    "X-Taskraft-Snapshot-Term": str(term),
                    "X-Taskraft-Snapshot-Crc32": expected}}
with open(base + ".json.partial", "w") as out:
    json.dump(meta, out, indent=2, sort_keys=True)
    out.flush()
    os.fsync(out.fileno())
os.rename(partial, base + ".snapshot")
os.rename(base + ".json.partial", base + ".json")
descriptor = os.open(directory, os.O_RDONLY)
try:
    os.fsync(descriptor)
finally:
    os.close(descriptor)
print(f"backed up {base}.snapshot: index {index}, term {term}, {size} bytes, crc32 {actual}")
"""


def backup_job_manifest(desired: DesiredSpec, *, pod: str, index: int) -> dict[str, Any]:
    """The Job copying `pod`'s newest snapshot (taken at `index`) into the backup claim.

    Its pod does not carry the cluster's selector labels: the Services and the PDB must not
    pick it up.
    """
    ordinal = ordinal_of(desired.name, pod)
    host = pod_dns_name(desired.name, desired.namespace, 0 if ordinal is None else ordinal)
    url = f"{http_scheme(desired)}://{host}:{HTTP_PORT}/v1/snapshot"
    environment: list[dict[str, Any]] = [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}]
    mounts: list[dict[str, Any]] = [{"name": "backup", "mountPath": BACKUP_MOUNT_PATH}]
    volumes: list[dict[str, Any]] = [
        {"name": "backup", "persistentVolumeClaim": {"claimName": desired.backup_claim_name}}
    ]
    if desired.authentication:
        # Downloading a snapshot is an admin operation.
        environment.append(
            {
                "name": "TASKRAFT_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": credentials_secret_name(desired.name),
                        "key": ADMIN_TOKEN_KEY,
                    }
                },
            }
        )
    if desired.tls_secret_name is not None:
        environment.append(
            {"name": "TASKRAFT_TLS_CA", "value": f"{TLS_MOUNT_PATH}/{TLS_AUTHORITY_KEY}"}
        )
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT_PATH, "readOnly": True})
        volumes.append(
            {
                "name": "tls",
                "secret": {
                    "secretName": desired.tls_secret_name,
                    "defaultMode": SECRET_FILE_MODE,
                    "items": [{"key": TLS_AUTHORITY_KEY, "path": TLS_AUTHORITY_KEY}],
                },
            }
        )
    container = {
        "name": "backup",
        "image": desired.image,
        "imagePullPolicy": desired.image_pull_policy,
        "command": ["python", "-c", BACKUP_SCRIPT, url, BACKUP_MOUNT_PATH, desired.name],
        "env": environment,
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {
        "backoffLimit": BACKUP_BACKOFF_LIMIT,
        "ttlSecondsAfterFinished": BACKUP_TTL_S,
        "activeDeadlineSeconds": BACKUP_DEADLINE_S,
        "template": {
            "metadata": {
                "labels": {
                    "app.kubernetes.io/name": "taskraft-backup",
                    "app.kubernetes.io/instance": desired.name,
                    "app.kubernetes.io/managed-by": "taskraft-operator",
                }
            },
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": NODE_USER_ID,
                    "runAsGroup": NODE_USER_ID,
                    "fsGroup": NODE_USER_ID,
                },
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    metadata = _metadata(desired, backup_job_name(desired.name, index))
    metadata["labels"] = {**metadata["labels"], "app.kubernetes.io/component": "backup"}
    manifest: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": spec,
    }
    return _with_spec_hash(manifest, spec)


# ---------------------------------------------------------------------------------------------
# Status, conditions and events


def _status(
    view: _View, step: _Step, progress: Progress, backup: BackupRecord | None
) -> ClusterStatus:
    desired = view.desired
    previous = view.observed.status
    members = _member_reports(view)
    # The spec.version the voters' pods were created from: the version the roll has reached.
    # (Each member's `version` is what its node reports: the taskraft build in the image.)
    versions = {
        pod.version if pod is not None else None
        for pod in (view.pod(member.id) for member in members if member.voter)
    }
    if len(versions) == 1 and None not in versions:
        current_version: str | None = versions.pop()
    else:
        current_version = previous.current_version if previous is not None else None
    conditions = _conditions(view, step, backup)
    return ClusterStatus(
        phase=_phase(view, step, conditions),
        observed_generation=desired.generation,
        leader=None if view.leader is None else view.leader.node_id,
        replicas=desired.replicas,
        ready_replicas=sum(1 for pod in view.observed.pods.values() if pod.ready),
        members=members,
        current_version=current_version,
        target_version=desired.version,
        target_revision=view.template_hash,
        last_snapshot=None if previous is None else previous.last_snapshot,
        snapshots=() if previous is None else previous.snapshots,
        last_backup=backup,
        conditions=_with_transition_times(conditions, previous, view.now),
        warnings=tuple(_warnings(view)),
        progress=progress,
    )


def _member_reports(view: _View) -> tuple[MemberReport, ...]:
    nodes = set(view.members) | {view.node(ordinal) for ordinal in view.observed.pods}

    def order(node: str) -> tuple[int, str]:
        ordinal = view.ordinal(node)
        return (ordinal if ordinal is not None else REPLICAS_MAX * 1000, node)

    reports = []
    for node in sorted(nodes, key=order):
        member = view.members.get(node)
        pod = view.pod(node)
        status = None if pod is None else pod.node
        if view.leader is not None and node == view.leader.node_id:
            role = "leader"
        elif member is not None:
            role = "follower" if member.voter else "learner"
        elif view.leader is not None:
            role = "joining"
        else:
            role = status.role if status is not None else "unknown"
        reports.append(
            MemberReport(
                id=node,
                pod=None if pod is None else node,
                role=role,
                voter=None if member is None else member.voter,
                ready=pod is not None and pod.ready,
                caught_up=None if member is None else member.caught_up,
                applied_index=None if status is None else status.applied_index,
                version=None if status is None else status.version,
            )
        )
    return tuple(reports)


_ConditionValue = tuple[Literal["True", "False", "Unknown"], str, str]


def _conditions(
    view: _View, step: _Step, backup: BackupRecord | None
) -> dict[str, _ConditionValue]:
    return {
        "Available": _available(view),
        "Progressing": _progressing(view, step),
        "Degraded": _degraded(view, step, backup),
        "QuorumAtRisk": _quorum_at_risk(view, step),
        "Upgrading": _upgrading(view, step),
        "Scaling": _scaling_condition(view, step),
    }


def _available(view: _View) -> _ConditionValue:
    voters = len(view.voters)
    if view.leader is None:
        reason = "NoLeader" if view.progress.founded else "Creating"
        return ("False", reason, "no pod reports a leader")
    healthy = len(view.healthy)
    message = f"leader {view.leader.node_id}; {healthy} of {voters} voters healthy"
    if healthy < majority(voters):
        return ("False", "QuorumLost", message)
    return ("True", "QuorumHealthy", message)


def _progressing(view: _View, step: _Step) -> _ConditionValue:
    action = step.action
    if step.context == "paused":
        return ("False", "Paused", action_description(action))
    if isinstance(action, Refuse):
        return ("False", action.reason, action.message)
    if step.notes.stalled is not None:
        return ("False", "StepStalled", step.notes.stalled)
    if step.notes.awaiting_approval:
        return ("False", "AwaitingApproval", action_description(action))
    if isinstance(action, Nothing):
        return ("False", "Reconciled", action.reason)
    reasons = {
        "creating": "Creating",
        "objects": "UpdatingObjects",
        "controller": "UpdatingObjects",
        "roll": "RollingRestart",
        "scale-up": "ScalingUp",
        "scale-down": "ScalingDown",
        "leader": "WaitingForLeader",
    }
    return ("True", reasons.get(step.context, "Reconciling"), action_description(action))


def _degraded(view: _View, step: _Step, backup: BackupRecord | None) -> _ConditionValue:
    if step.notes.stalled is not None:
        return ("True", "StepStalled", step.notes.stalled)
    if view.leader is None:
        if not view.progress.founded:
            return ("False", "Creating", "the cluster is being created")
        return ("True", "NoLeader", "no pod reports a leader")
    planned = _restarting_for_roll(step)
    unhealthy = sorted(view.voters - view.healthy - planned)
    if unhealthy:
        return ("True", "MembersUnhealthy", f"voters not ready or not caught up: {unhealthy}")
    not_ready = [
        view.node(ordinal)
        for ordinal in range(view.stateful_set_replicas())
        if view.node(ordinal) in view.members
        and view.node(ordinal) not in planned
        and ((pod := view.observed.pods.get(ordinal)) is None or not pod.ready)
    ]
    if not_ready:
        return ("True", "PodsNotReady", f"pods not ready: {not_ready}")
    if planned & (view.voters - view.healthy):
        return ("False", "RollingRestart", f"{sorted(planned)[0]} is restarting for the roll")
    claim = view.desired.backup_claim_name
    if claim is not None and backup is not None and backup.state == "Failed":
        message = (
            f"backup Job {backup.job} of the snapshot at index {backup.index} failed "
            f"(claim {claim}); a snapshot at another index is backed up anew"
        )
        return ("True", "BackupFailed", message)
    return ("False", "Healthy", f"all {len(view.voters)} voters are ready and caught up")


def _restarting_for_roll(step: _Step) -> frozenset[str]:
    """The pod the roll restarted on purpose and waits for (not yet overdue)."""
    operation = step.operation
    if not isinstance(operation, Rolling) or operation.step is None or step.notes.stalled:
        return frozenset()
    return frozenset({operation.step.pod})


def _quorum_at_risk(view: _View, step: _Step) -> _ConditionValue:
    action = step.action
    if isinstance(action, Refuse) and action.reason in ("QuorumAtRisk", "NoTransferTarget"):
        return ("True", "StepRefused", action.message)
    if view.leader is None:
        if not view.progress.founded:
            return ("Unknown", "Creating", "the cluster is being created")
        return ("True", "NoLeader", "no pod reports a leader")
    voters, healthy = len(view.voters), len(view.healthy)
    tolerated = healthy - majority(voters)
    message = f"{healthy} of {voters} voters healthy; {max(tolerated, 0)} more may fail"
    if tolerated < 0:
        return ("True", "QuorumLost", message)
    if voters <= 2:
        return ("False", "NoRedundancy", f"{voters} voters tolerate no failure")
    if tolerated == 0:
        planned = _restarting_for_roll(step) & view.voters
        if planned:
            # Expected while a voter of a 3-voter cluster restarts: reported, not alarming.
            return ("True", "PlannedRestart", f"{message} while {sorted(planned)[0]} restarts")
        return ("True", "NoFaultTolerance", message)
    return ("False", "FaultTolerant", message)


def _outdated_pods(view: _View) -> list[str]:
    update_revision = view.update_revision()
    return [
        view.node(ordinal)
        for ordinal, pod in sorted(view.observed.pods.items())
        if ordinal < view.stateful_set_replicas() and pod.revision != update_revision
    ]


def _upgrading(view: _View, step: _Step) -> _ConditionValue:
    outdated = _outdated_pods(view)
    rolling = isinstance(step.operation, Rolling) and step.context == "roll"
    if not outdated and not rolling:
        return ("False", "UpToDate", f"every pod runs revision {view.template_hash}")
    total = view.stateful_set_replicas()
    message = (
        f"{total - len(outdated)} of {total} pods run revision {view.template_hash} "
        f"(version {view.desired.version}); {action_description(step.action)}"
    )
    if step.notes.awaiting_approval:
        return ("True", "AwaitingApproval", message)
    if step.notes.stalled is not None and step.context == "roll":
        return ("True", "RollStalled", message)
    if isinstance(step.action, Refuse) and step.context == "roll":
        return ("True", "RollRefused", message)
    return ("True", "RollingRestart", message)


def _scaling_condition(view: _View, step: _Step) -> _ConditionValue:
    desired = view.desired.replicas
    voters = len(view.voters)
    message = f"{voters} voters, {desired} wanted; {action_description(step.action)}"
    if step.context == "scale-down":
        return ("True", "ScalingDown", message)
    if step.context == "scale-up":
        return ("True", "ScalingUp", message)
    if view.progress.founded and (view.stateful_set_replicas() != desired or voters != desired):
        reason = "ScalingDown" if voters > desired else "ScalingUp"
        return ("True", reason, message)
    return ("False", "Steady", f"{voters} voters, as wanted")


def _phase(view: _View, step: _Step, conditions: Mapping[str, _ConditionValue]) -> str:
    if step.context == "paused":
        return "Paused"
    if step.context == "invalid":
        return "Invalid"
    if not view.progress.founded and view.leader is None:
        return "Creating"
    if conditions["Available"][0] != "True":
        return "Unavailable"
    for condition, phase in (("Upgrading", "Upgrading"), ("Scaling", "Scaling")):
        if conditions[condition][0] == "True":
            return phase
    return "Degraded" if conditions["Degraded"][0] == "True" else "Running"


def _with_transition_times(
    conditions: Mapping[str, _ConditionValue], previous: ClusterStatus | None, now: datetime
) -> tuple[Condition, ...]:
    result = []
    for condition_type in CONDITION_TYPES:
        state, reason, message = conditions[condition_type]
        before = None if previous is None else previous.condition(condition_type)
        since = before.last_transition_time if before and before.status == state else now
        result.append(
            Condition(
                type=condition_type,
                status=state,
                reason=reason,
                message=message,
                last_transition_time=since,
            )
        )
    return tuple(result)


def _warnings(view: _View) -> list[str]:
    warnings = []
    stateful_set = view.observed.stateful_set
    if (
        stateful_set is not None
        and stateful_set.storage is not None
        and stateful_set.storage != view.desired.storage
    ):
        warnings.append(
            f"storage {view.desired.storage.size} ({view.desired.storage.storage_class}) is not "
            f"applied: volumes keep {stateful_set.storage.size} "
            f"({stateful_set.storage.storage_class}); volume claim templates are immutable"
        )
    foreign = sorted(node for node in view.members if view.ordinal(node) is None)
    if foreign:
        warnings.append(f"Raft members that no pod of this cluster names: {foreign}")
    return warnings


_BAD_STATES = {
    ("Available", "False"),
    ("Degraded", "True"),
    ("QuorumAtRisk", "True"),
}
_BAD_PROGRESS_REASONS = frozenset(
    {"StepStalled", "QuorumAtRisk", "NoTransferTarget", "InvalidSpec"}
)
# Conditions that look bad but are the expected course of an operation.
_EXPECTED_REASONS = frozenset({"Creating", "PlannedRestart"})


def _events(previous: ClusterStatus | None, status: ClusterStatus) -> tuple[Event, ...]:
    """An event when a condition changes status, or turns bad for another reason, and one per
    new warning: a Warning for what needs attention, Normal for the rest."""
    events = []
    for condition in status.conditions:
        before = None if previous is None else previous.condition(condition.type)
        bad = (condition.type, condition.status) in _BAD_STATES or (
            condition.type == "Progressing" and condition.reason in _BAD_PROGRESS_REASONS
        )
        bad = bad and condition.reason not in _EXPECTED_REASONS
        if before is None:
            changed = bad
        else:
            changed = before.status != condition.status or (
                bad and before.reason != condition.reason
            )
        if not changed or condition.reason == "Creating":
            continue
        events.append(
            Event(
                type="Warning" if bad else "Normal",
                reason=condition.reason,
                message=f"{condition.type}={condition.status}: {condition.message}",
            )
        )
    old_warnings = set() if previous is None else set(previous.warnings)
    for warning in status.warnings:
        if warning not in old_warnings:
            events.append(Event(type="Warning", reason="SpecWarning", message=warning))
    return tuple(events)


def action_description(action: Action) -> str:
    """One line for logs, events and condition messages."""
    match action:
        case EnsureObject():
            return f"applying {action.kind} {action.name}"
        case AddLearner():
            return f"adding {action.node_id} as a learner"
        case Promote():
            return f"promoting {action.node_id} to voter"
        case RemoveMember():
            return f"removing {action.node_id} from the Raft configuration"
        case TransferLeadership():
            return f"transferring leadership from {action.via_pod} to {action.target}"
        case DeletePod():
            return f"restarting pod {action.pod}: {action.reason}"
        case ScaleStatefulSet():
            return f"setting the StatefulSet to {action.replicas} replicas"
        case DeletePvc():
            return f"deleting PVC {action.name}"
        case TakeSnapshot():
            return f"asking {action.pod} to snapshot"
        case Wait():
            return action.reason
        case Refuse():
            return f"refused: {action.message}"
        case Nothing():
            return action.reason


# ---------------------------------------------------------------------------------------------
# Manifests (plain dicts; the handler adds owner references)


def _owned_objects(
    desired: DesiredSpec, observed: ObservedState, progress: Progress
) -> tuple[tuple[_OwnedObject, ...], str]:
    """The objects in the order they are ensured, and the pod template's hash."""
    stateful_set = observed.stateful_set
    if stateful_set is None:
        replicas = len(progress.founding_members)
        storage = desired.storage
    else:
        replicas = stateful_set.replicas
        storage = stateful_set.storage or desired.storage
    statefulset = statefulset_manifest(desired, replicas=replicas, storage=storage)
    manifests = (
        configmap_manifest(desired, progress),
        peers_service_manifest(desired),
        client_service_manifest(desired),
        statefulset,
        pdb_manifest(desired),
        network_policy_manifest(desired),
    )
    objects = tuple(
        _OwnedObject(
            kind=manifest["kind"],
            name=manifest["metadata"]["name"],
            manifest=manifest,
            spec_hash=manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION],
        )
        for manifest in manifests
    )
    return objects, content_hash(statefulset["spec"]["template"])


def _labels(desired: DesiredSpec) -> dict[str, str]:
    return {**_selector(desired), "app.kubernetes.io/managed-by": "taskraft-operator"}


def _selector(desired: DesiredSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "taskraft", "app.kubernetes.io/instance": desired.name}


def _with_spec_hash(manifest: dict[str, Any], hashed: object) -> dict[str, Any]:
    metadata = manifest["metadata"]
    metadata.setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = content_hash(hashed)
    return manifest


def _metadata(desired: DesiredSpec, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": desired.namespace, "labels": _labels(desired)}


def configmap_name(cluster: str) -> str:
    return f"{cluster}-config"


def configmap_manifest(desired: DesiredSpec, progress: Progress) -> dict[str, Any]:
    """One TOML file per possible ordinal: the overrides plus how that pod starts (found or
    join). Every ordinal up to REPLICAS_MAX has its file, so scaling never changes the ConfigMap
    and a new pod never starts before its file exists."""
    founders = {} if progress.founded else _founder_addresses(desired, progress)
    data = {
        f"{pod_name(desired.name, ordinal)}.toml": node_config_toml(
            desired.config, pod_name(desired.name, ordinal), founders
        )
        for ordinal in range(REPLICAS_MAX)
    }
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(desired, configmap_name(desired.name)),
        "data": data,
    }
    return _with_spec_hash(manifest, data)


def _founder_addresses(desired: DesiredSpec, progress: Progress) -> dict[str, str]:
    addresses = {}
    for founder in progress.founding_members:
        ordinal = ordinal_of(desired.name, founder)
        if ordinal is not None:
            addresses[founder] = peer_address(desired.name, desired.namespace, ordinal)
    return addresses


def node_config_toml(
    config: Mapping[str, ConfigValue], node: str, founders: Mapping[str, str]
) -> str:
    """The `--config` file of one node."""
    lines = [f"# {node}: written by the taskraft operator (TASKRAFT_CONFIG)."]
    if node in founders:
        members = ", ".join(
            f"{_toml_key(member)} = {_toml_string(address)}" for member, address in founders.items()
        )
        lines.append(f"initial_members = {{ {members} }}")
    else:
        lines.append("join = true")
    for key, value in sorted(config.items()):
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


_TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_TOML_ESCAPES["\r"] = "\\r"


def _toml_key(key: str) -> str:
    return key if _TOML_BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = []
    for character in text:
        if character in _TOML_ESCAPES:
            escaped.append(_TOML_ESCAPES[character])
        elif ord(character) < 0x20 or ord(character) == 0x7F:
            escaped.append(f"\\u{ord(character):04X}")
        else:
            escaped.append(character)
    return '"' + "".join(escaped) + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _toml_string(str(value))


def peers_service_manifest(desired: DesiredSpec) -> dict[str, Any]:
    """Headless: a DNS name per pod, published before the pod is ready (peers must find a
    starting node, and a joining node is never ready before it is added)."""
    spec = {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": _selector(desired),
        "ports": _ports(("client", CLIENT_PORT), ("peer", PEER_PORT), ("http", HTTP_PORT)),
    }
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(desired, peers_service_name(desired.name)),
        "spec": spec,
    }
    return _with_spec_hash(manifest, spec)


def client_service_manifest(desired: DesiredSpec) -> dict[str, Any]:
    spec = {
        "type": "ClusterIP",
        "selector": _selector(desired),
        "ports": _ports(("client", CLIENT_PORT), ("http", HTTP_PORT)),
    }
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(desired, desired.name),
        "spec": spec,
    }
    return _with_spec_hash(manifest, spec)


def _ports(*ports: tuple[str, int]) -> list[dict[str, Any]]:
    return [
        {"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in ports
    ]


def pdb_manifest(desired: DesiredSpec) -> dict[str, Any]:
    """At most one pod evicted at a time: with 3 or more voters a quorum always remains, and it
    matches the operator's own rule of one restart at a time."""
    spec = {"maxUnavailable": 1, "selector": {"matchLabels": _selector(desired)}}
    manifest: dict[str, Any] = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(desired, desired.name),
        "spec": spec,
    }
    return _with_spec_hash(manifest, spec)


def network_policy_manifest(desired: DesiredSpec) -> dict[str, Any]:
    """Only the cluster's own pods reach the peer port (Raft: votes, the log, snapshots).

    The client port stays open to every client, and the HTTP port to the kubelet's probes,
    Prometheus, the operator and the backup Jobs (its admin endpoints are the nodes' to guard).
    Enforced by the cluster's network plugin where it supports NetworkPolicy.
    """
    spec = {
        "podSelector": {"matchLabels": _selector(desired)},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": _selector(desired)}}],
                "ports": [{"protocol": "TCP", "port": PEER_PORT}],
            },
            {"ports": [{"protocol": "TCP", "port": CLIENT_PORT}]},
            {"ports": [{"protocol": "TCP", "port": HTTP_PORT}]},
        ],
    }
    manifest: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(desired, desired.name),
        "spec": spec,
    }
    return _with_spec_hash(manifest, spec)


def statefulset_manifest(
    desired: DesiredSpec, *, replicas: int, storage: StorageSpec
) -> dict[str, Any]:
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class is not None:
        claim_spec["storageClassName"] = storage.storage_class
    spec: dict[str, Any] = {
        "replicas": replicas,
        "serviceName": peers_service_name(desired.name),
        # Pods start together (founders must all be up to elect a leader); the order of
        # restarts is the operator's.
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": _selector(desired)},
        "persistentVolumeClaimRetentionPolicy": {
            "whenDeleted": desired.pvc_retention.when_deleted.value,
            # The operator deletes PVCs of removed members itself, after the removal.
            "whenScaled": "Retain",
        },
        "template": _pod_template(desired),
        "volumeClaimTemplates": [
            {"metadata": {"name": "data", "labels": _selector(desired)}, "spec": claim_spec}
        ],
    }
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(desired, desired.name),
        "spec": spec,
    }
    hashed = {key: value for key, value in spec.items() if key != "replicas"}
    return _with_spec_hash(manifest, hashed)


def _pod_template(desired: DesiredSpec) -> dict[str, Any]:
    shutdown_ms = desired.config.get("shutdown_timeout_ms", SHUTDOWN_TIMEOUT_DEFAULT_MS)
    if not isinstance(shutdown_ms, int) or isinstance(shutdown_ms, bool):
        shutdown_ms = SHUTDOWN_TIMEOUT_DEFAULT_MS
    return {
        "metadata": {
            "labels": {**_labels(desired), "app.kubernetes.io/version": desired.version},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(HTTP_PORT),
                "prometheus.io/path": "/metrics",
                "prometheus.io/scheme": http_scheme(desired),
                CONFIG_HASH_ANNOTATION: config_hash(desired.config),
                VERSION_ANNOTATION: desired.version,
            },
        },
        "spec": {
            "terminationGracePeriodSeconds": -(-shutdown_ms // 1000) + TERMINATION_MARGIN_S,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": NODE_USER_ID,
                "runAsGroup": NODE_USER_ID,
                "fsGroup": NODE_USER_ID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [_node_container(desired)],
            "volumes": [
                {"name": "config", "configMap": {"name": configmap_name(desired.name)}},
                # The root file system is read-only; anything that wants a scratch file gets
                # this (the node itself writes only to its data volume).
                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                _credentials_volume(desired),
                *_tls_volumes(desired),
            ],
        },
    }


def _node_container(desired: DesiredSpec) -> dict[str, Any]:
    dns = f"$(TASKRAFT_NODE_ID).{peers_service_name(desired.name)}.{desired.namespace}.svc"
    environment = [
        {"name": "TASKRAFT_NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # Expanded by Kubernetes from the variable above: each pod reads its own file.
        {"name": "TASKRAFT_CONFIG", "value": f"{CONFIG_MOUNT_PATH}/$(TASKRAFT_NODE_ID).toml"},
        {"name": "TASKRAFT_DATA_DIR", "value": DATA_DIRECTORY},
        {"name": "TASKRAFT_CLIENT_ADDRESS", "value": f"0.0.0.0:{CLIENT_PORT}"},
        {"name": "TASKRAFT_PEER_ADDRESS", "value": f"0.0.0.0:{PEER_PORT}"},
        {"name": "TASKRAFT_HTTP_ADDRESS", "value": f"0.0.0.0:{HTTP_PORT}"},
        {"name": "TASKRAFT_ADVERTISE_CLIENT_ADDRESS", "value": f"{dns}:{CLIENT_PORT}"},
        {"name": "TASKRAFT_ADVERTISE_PEER_ADDRESS", "value": f"{dns}:{PEER_PORT}"},
        {"name": "TASKRAFT_ADVERTISE_HTTP_ADDRESS", "value": f"{dns}:{HTTP_PORT}"},
        {"name": "TASKRAFT_CLUSTER_ID", "value": f"{desired.namespace}.{desired.name}"},
        {
            "name": "TASKRAFT_CLUSTER_SECRET_FILE",
            "value": f"{CREDENTIALS_MOUNT_PATH}/{CLUSTER_SECRET_KEY}",
        },
    ]
    if desired.authentication:
        environment.append(
            {
                "name": "TASKRAFT_AUTH_TOKEN_FILE",
                "value": f"{CREDENTIALS_MOUNT_PATH}/{TOKEN_FILE_KEY}",
            }
        )
    environment.extend(_tls_environment(desired))
    resources: dict[str, Any] = {}
    if desired.resources.requests:
        resources["requests"] = dict(desired.resources.requests)
    if desired.resources.limits:
        resources["limits"] = dict(desired.resources.limits)
    return {
        "name": "node",
        "image": desired.image,
        "imagePullPolicy": desired.image_pull_policy,
        "command": ["taskraft", "serve"],
        "env": environment,
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
            {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        ],
        # A node replaying a long log does not serve HTTP yet: up to 10 minutes to start.
        "startupProbe": _probe(desired, "/healthz", period_s=5, failures=120),
        "livenessProbe": _probe(desired, "/healthz", period_s=10, failures=6),
        "readinessProbe": _probe(desired, "/readyz", period_s=5, failures=2),
        "resources": resources,
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_MOUNT_PATH},
            {"name": "config", "mountPath": CONFIG_MOUNT_PATH, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "credentials", "mountPath": CREDENTIALS_MOUNT_PATH, "readOnly": True},
            *_tls_mounts(desired),
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _probe(desired: DesiredSpec, path: str, *, period_s: int, failures: int) -> dict[str, Any]:
    # Under TLS the kubelet probes over HTTPS (it does not verify the certificate).
    return {
        "httpGet": {"path": path, "port": "http", "scheme": http_scheme(desired).upper()},
        "periodSeconds": period_s,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def credentials_secret_name(cluster: str) -> str:
    """The Secret of the cluster's generated tokens and cluster secret (made by the handler,
    never by the planner: its content is random)."""
    return f"{cluster}-credentials"


def http_scheme(desired: DesiredSpec) -> str:
    return "https" if desired.tls_secret_name is not None else "http"


def _credentials_volume(desired: DesiredSpec) -> dict[str, Any]:
    keys = [CLUSTER_SECRET_KEY] + ([TOKEN_FILE_KEY] if desired.authentication else [])
    return {
        "name": "credentials",
        "secret": {
            "secretName": credentials_secret_name(desired.name),
            "defaultMode": SECRET_FILE_MODE,
            # Only what the node reads: the tokens alone stay out of the pod.
            "items": [{"key": key, "path": key} for key in keys],
        },
    }


def _tls_volumes(desired: DesiredSpec) -> list[dict[str, Any]]:
    if desired.tls_secret_name is None:
        return []
    keys = (TLS_CERTIFICATE_KEY, TLS_KEY_KEY, TLS_AUTHORITY_KEY)
    return [
        {
            "name": "tls",
            "secret": {
                "secretName": desired.tls_secret_name,
                "defaultMode": SECRET_FILE_MODE,
                "items": [{"key": key, "path": key} for key in keys],
            },
        }
    ]


def _tls_mounts(desired: DesiredSpec) -> list[dict[str, Any]]:
    if desired.tls_secret_name is None:
        return []
    return [{"name": "tls", "mountPath": TLS_MOUNT_PATH, "readOnly": True}]


def _tls_environment(desired: DesiredSpec) -> list[dict[str, Any]]:
    if desired.tls_secret_name is None:
        return []
    return [
        {"name": "TASKRAFT_TLS_CERT", "value": f"{TLS_MOUNT_PATH}/{TLS_CERTIFICATE_KEY}"},
        {"name": "TASKRAFT_TLS_KEY", "value": f"{TLS_MOUNT_PATH}/{TLS_KEY_KEY}"},
        {"name": "TASKRAFT_TLS_CA", "value": f"{TLS_MOUNT_PATH}/{TLS_AUTHORITY_KEY}"},
    ]


# ---------------------------------------------------------------------------------------------
# Cron schedules (UTC): minute hour day-of-month month day-of-week


@dataclass(frozen=True, slots=True)
class CronSchedule:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: frozenset[int]
    months: frozenset[int]
    # 0 = Sunday, as in cron (7 is read as 0).
    days_of_week: frozenset[int]
    # Vixie cron: when both day fields are restricted, a day matching either one fires.
    day_of_month_restricted: bool
    day_of_week_restricted: bool

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_month_day = day.day in self.days_of_month
        by_week_day = day.isoweekday() % 7 in self.days_of_week
        if self.day_of_month_restricted and self.day_of_week_restricted:
            return by_month_day or by_week_day
        return by_month_day and by_week_day


_CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# A schedule such as "0 0 29 2 1" may fire only every few years; the search looks this far
# (8 years covers February 29 across a skipped leap year such as 2100).
CRON_SEARCH_DAYS_MAX = 8 * 366


def parse_cron(text: str) -> CronSchedule:
    """A five-field cron expression or an @alias; ValueError saying what is wrong."""
    fields = _CRON_ALIASES.get(text.strip().lower(), text).split()
    if len(fields) != 5:
        raise ValueError("expected five fields: minute hour day-of-month month day-of-week")
    minutes = _cron_field(fields[0], 0, 59, ())
    hours = _cron_field(fields[1], 0, 23, ())
    days = _cron_field(fields[2], 1, 31, ())
    months = _cron_field(fields[3], 1, 12, _MONTH_NAMES)
    weekdays = {day % 7 for day in _cron_field(fields[4], 0, 7, _DAY_NAMES)}
    return CronSchedule(
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days_of_month=frozenset(days),
        months=frozenset(months),
        days_of_week=frozenset(weekdays),
        day_of_month_restricted=not fields[2].startswith("*"),
        day_of_week_restricted=not fields[4].startswith("*"),
    )


def _cron_field(text: str, low: int, high: int, names: tuple[str, ...]) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = _cron_number(step_text, names=(), offset=0) if step_text else 1
        if step < 1:
            raise ValueError(f"step {step_text!r} must be positive")
        if span == "*":
            first, last = low, high
        else:
            start, dash, end = span.partition("-")
            first = _cron_number(start, names, low)
            last = _cron_number(end, names, low) if dash else (high if step_text else first)
        if not low <= first <= last <= high:
            raise ValueError(f"{item!r} is outside {low}-{high}")
        values.update(range(first, last + 1, step))
    return values


def _cron_number(text: str, names: tuple[str, ...], offset: int) -> int:
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + offset
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a number")
    return int(text)


def previous_fire_time(schedule: CronSchedule, at: datetime) -> datetime | None:
    """The latest scheduled minute at or before `at`, or None within the search horizon."""
    at = at.astimezone(UTC)
    for days_back in range(CRON_SEARCH_DAYS_MAX):
        day = at.date() - timedelta(days=days_back)
        if not schedule.matches_day(day):
            continue
        limit = (at.hour, at.minute) if days_back == 0 else (23, 59)
        times = _times_of_day(schedule, reverse=True)
        found = next((moment for moment in times if moment <= limit), None)
        if found is not None:
            return _at(day, found)
    return None


def next_fire_time(schedule: CronSchedule, after: datetime) -> datetime | None:
    """The earliest scheduled minute strictly after `after`, or None within the horizon."""
    after = after.astimezone(UTC)
    for days_ahead in range(CRON_SEARCH_DAYS_MAX):
        day = after.date() + timedelta(days=days_ahead)
        if not schedule.matches_day(day):
            continue
        times = _times_of_day(schedule, reverse=False)
        found = next(
            (moment for moment in times if days_ahead > 0 or moment > (after.hour, after.minute)),
            None,
        )
        if found is not None:
            return _at(day, found)
    return None


def _times_of_day(schedule: CronSchedule, *, reverse: bool) -> Iterable[tuple[int, int]]:
    hours = sorted(schedule.hours, reverse=reverse)
    minutes = sorted(schedule.minutes, reverse=reverse)
    return ((hour, minute) for hour in hours for minute in minutes)


def _at(day: date, moment: tuple[int, int]) -> datetime:
    return datetime.combine(day, time(moment[0], moment[1]), tzinfo=UTC)
