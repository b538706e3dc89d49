"""Carrying out the planner's one action: `carry_out(action, context) -> Outcome`.

Every action is idempotent, as the planner requires (planner.py: "carrying one out twice, or
not at all, leads to the same next plan"):

- EnsureObject: server-side apply of the planner's manifest with an owner reference to the
  QueueCluster (controller, blockOwnerDeletion: Kubernetes deletes the objects with it); an API
  server that cannot apply a missing object (a test double) gets a create instead.
- AddLearner, Promote, RemoveMember, TransferLeadership: the node's admin API on the pod the
  planner names (the leader), following a 307 to the leader should it have changed; the node
  answers 200 for what already holds.
- DeletePod: a delete with the precondition `uid`, so a retried call never deletes the pod that
  replaced the one meant; a pod already gone or already replaced is success.
- ScaleStatefulSet: a merge patch of `spec.replicas`.
- DeletePvc: a delete; a PVC already gone is success.
- TakeSnapshot: POST /v1/snapshot on the pod; the answer (index, term, size) goes into the
  Outcome for the handler to record in the status (planner.record_snapshot).
- Wait, Refuse, Nothing: nothing to do here (the planner's events report refusals).

Each action that changes something posts one Kubernetes Event on the QueueCluster through the
`EventSink` (kopf.event in the handlers): Normal with the action's description when done, Warning
(reason ActionFailed) when it failed. A failed action raises nothing: the Outcome says so, and the
next reconcile plans again from what it then observes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from taskraft_operator import model
from taskraft_operator.observe import (
    OPEN_ACCESS,
    PODS,
    PVCS,
    RESOURCES_BY_KIND,
    STATEFUL_SETS,
    Endpoints,
    KubeApi,
    KubeApiError,
    NodeAccess,
    NodeAnswer,
    NodeHttp,
)
from taskraft_operator.planner import (
    Action,
    AddLearner,
    DeletePod,
    DeletePvc,
    EnsureObject,
    Nothing,
    Promote,
    Refuse,
    RemoveMember,
    ScaleStatefulSet,
    TakeSnapshot,
    TransferLeadership,
    Wait,
    action_description,
)

logger = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
# (type, reason, message): one Kubernetes Event on the QueueCluster.
EventSink = Callable[[EventType, str, str], None]

# The reason of each action's Normal event.
EVENT_REASONS: Mapping[type, str] = {
    EnsureObject: "ObjectApplied",
    AddLearner: "MemberAdded",
    Promote: "MemberPromoted",
    RemoveMember: "MemberRemoved",
    TransferLeadership: "LeadershipTransferred",
    DeletePod: "PodDeleted",
    ScaleStatefulSet: "StatefulSetScaled",
    DeletePvc: "PvcDeleted",
    TakeSnapshot: "SnapshotTaken",
}
FAILURE_REASON = "ActionFailed"


def action_name(action: Action) -> str:
    """The action's type name, as metrics label it."""
    return type(action).__name__


def is_side_effect(action: Action) -> bool:
    """Whether the action changes anything (Wait, Refuse and Nothing do not)."""
    return not isinstance(action, Wait | Refuse | Nothing)


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    index: int
    term: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """`done`: the action holds now (carried out, or found already done); `message` says what
    happened; `snapshot`: a TakeSnapshot's answer."""

    done: bool
    message: str
    snapshot: SnapshotTaken | None = None


class ActionFailed(Exception):
    """The action could not be carried out this time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionContext:
    """What carrying out an action needs: the resource (its body, for the owner reference and
    the events), the transports and where the nodes are."""

    owner: Mapping[str, Any]
    desired: model.DesiredSpec
    api: KubeApi
    http: NodeHttp
    endpoints: Endpoints
    events: EventSink
    access: NodeAccess = OPEN_ACCESS

    @property
    def name(self) -> str:
        return self.desired.name

    @property
    def namespace(self) -> str:
        return self.desired.namespace

    def http_address(self, pod: str) -> str:
        ordinal = model.ordinal_of(self.name, pod)
        if ordinal is None:
            raise ActionFailed(f"{pod} is not a pod of {self.name}")
        return self.endpoints.http(self.name, self.namespace, ordinal)


async def carry_out(action: Action, context: ActionContext) -> Outcome:
    """Carry out one action and post its event; never raises for a failure of the action."""
    if not is_side_effect(action):
        return Outcome(done=True, message=action_description(action))
    description = action_description(action)
    try:
        outcome = await _carry_out(action, context)
    except (ActionFailed, KubeApiError, aiohttp.ClientError, TimeoutError) as error:
        message = f"{description}: failed: {_error_text(error)}"
        logger.warning("%s/%s: %s", context.namespace, context.name, message)
        context.events("Warning", FAILURE_REASON, message)
        return Outcome(done=False, message=message)
    context.events("Normal", EVENT_REASONS[type(action)], outcome.message)
    return outcome


def _error_text(error: BaseException) -> str:
    text = str(error)
    return text if text else type(error).__name__


async def _carry_out(action: Action, context: ActionContext) -> Outcome:
    description = action_description(action)
    match action:
        case EnsureObject():
            await ensure_object(action, context)
            return Outcome(done=True, message=f"applied {action.kind} {action.name}")
        case AddLearner():
            ordinal = model.ordinal_of(context.name, action.node_id)
            address = action.peer_address
            if ordinal is not None:
                address = context.endpoints.peer(context.name, context.namespace, ordinal)
            answer = await _admin(
                context,
                action.via_pod,
                "POST",
                "/v1/members",
                {"id": action.node_id, "peer_address": address},
            )
            return Outcome(done=True, message=f"{description}: {_result(answer)}")
        case Promote():
            answer = await _admin(
                context, action.via_pod, "POST", f"/v1/members/{action.node_id}/promote"
            )
            return Outcome(done=True, message=f"{description}: {_result(answer)}")
        case RemoveMember():
            answer = await _admin(
                context, action.via_pod, "DELETE", f"/v1/members/{action.node_id}"
            )
            return Outcome(done=True, message=f"{description}: {_result(answer)}")
        case TransferLeadership():
            answer = await _admin(
                context,
                action.via_pod,
                "POST",
                "/v1/leadership/transfer",
                {"target": action.target},
            )
            return Outcome(done=True, message=f"{description}: {_result(answer)}")
        case DeletePod():
            return await _delete_pod(action, context)
        case ScaleStatefulSet():
            await context.api.merge_patch(
                STATEFUL_SETS,
                context.namespace,
                context.name,
                {"spec": {"replicas": action.replicas}},
            )
            return Outcome(done=True, message=description)
        case DeletePvc():
            deleted = await context.api.delete(PVCS, context.namespace, action.name)
            message = description if deleted else f"PVC {action.name} was already gone"
            return Outcome(done=True, message=message)
        case TakeSnapshot():
            answer = await _admin(context, action.pod, "POST", "/v1/snapshot")
            snapshot = _snapshot_answer(answer)
            return Outcome(
                done=True,
                message=(
                    f"{action.pod} took a snapshot at index {snapshot.index} (term "
                    f"{snapshot.term}, {snapshot.size_bytes} bytes)"
                ),
                snapshot=snapshot,
            )
    raise ActionFailed(f"no way to carry out {description}")


async def ensure_object(action: EnsureObject, context: ActionContext) -> None:
    resource = RESOURCES_BY_KIND.get(action.kind)
    if resource is None:
        raise ActionFailed(f"unknown kind {action.kind}")
    manifest = owned_manifest(action.manifest, context.owner)
    try:
        await context.api.apply(resource, context.namespace, action.name, manifest)
    except KubeApiError as error:
        if error.status != 404:
            raise
        # Server-side apply creates a missing object; an API server that does not (kmock)
        # answers 404, and a create does the same.
        try:
            await context.api.create(resource, context.namespace, manifest)
        except KubeApiError as create_error:
            if create_error.status != 409:
                raise
            await context.api.apply(resource, context.namespace, action.name, manifest)


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    metadata = owner.get("metadata") or {}
    uid = metadata.get("uid")
    if not uid:
        raise ActionFailed("the QueueCluster has no uid: no owner reference can name it")
    return {
        "apiVersion": owner.get("apiVersion") or RESOURCES_BY_KIND["QueueCluster"].api_version,
        "kind": owner.get("kind") or "QueueCluster",
        "name": metadata.get("name"),
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_manifest(manifest: Mapping[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest with the QueueCluster as its controlling owner."""
    owned = copy.deepcopy(dict(manifest))
    metadata = owned.setdefault("metadata", {})
    metadata["ownerReferences"] = [owner_reference(owner)]
    return owned


async def _delete_pod(action: DeletePod, context: ActionContext) -> Outcome:
    try:
        deleted = await context.api.delete(PODS, context.namespace, action.pod, uid=action.uid)
    except KubeApiError as error:
        if error.status == 409:
            # The precondition failed: the pod of that uid is gone and another one took the
            # name. What the step wanted has happened.
            return Outcome(done=True, message=f"pod {action.pod} was already replaced")
        raise
    if not deleted:
        return Outcome(done=True, message=f"pod {action.pod} was already gone")
    return Outcome(done=True, message=action_description(action))


async def _admin(
    context: ActionContext,
    pod: str,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
) -> NodeAnswer:
    answer = await context.http.call(
        context.http_address(pod), method, path, body, context.access
    )
    if not answer.ok:
        raise ActionFailed(f"{method} {path} on {pod}: {answer.error_message()}")
    return answer


def _result(answer: NodeAnswer) -> str:
    document = answer.document
    if isinstance(document, Mapping) and document.get("result"):
        return str(document["result"])
    return f"HTTP {answer.status}"


def _snapshot_answer(answer: NodeAnswer) -> SnapshotTaken:
    document = answer.document
    try:
        if not isinstance(document, Mapping):
            raise TypeError("not an object")
        return SnapshotTaken(
            index=int(document["index"]),
            term=int(document["term"]),
            size_bytes=int(document["size_bytes"]),
        )
    except (KeyError, TypeError, ValueError):
        raise ActionFailed(f"not a snapshot answer: {str(document)[:200]}") from None


__all__ = [
    "EVENT_REASONS",
    "FAILURE_REASON",
    "ActionContext",
    "ActionFailed",
    "EventSink",
    "EventType",
    "Outcome",
    "SnapshotTaken",
    "action_name",
    "carry_out",
    "ensure_object",
    "is_side_effect",
    "owned_manifest",
    "owner_reference",
]
