"""The `QueueCluster` resource as the operator reads it: kopf's body -> `model.DesiredSpec`.

The CRD (crds/queueclusters.taskraft.io.yaml) is the contract: the API server has already checked
types, ranges, enums and the CEL rules of every object it stores. This module maps its camelCase
fields and the steering annotations onto the planner's values, and refuses, with `SpecError`
naming each field, what it cannot map: a body whose types do not fit (a CRD older or newer than
this operator, an object written while the schema was not installed) and what no schema can
check (annotation values, dead-letter chains among the declared queues).

Two kinds of problems are deliberately left to the planner (`planner.spec_problems`): those it
reports itself in the status (phase Invalid, reason InvalidSpec, a Warning event) and keeps
refusing until the spec is fixed: replicas outside 1 to 15, a name too long, an empty image or
version, reserved config keys, a cron expression whose fields are wrong, the snapshot history
and step timeout bounds. So a body that passes here always yields a plan.

The handler:

    try:
        desired = desired_spec_from_body(body)
        queues = declared_queues(body)
    except SpecError as error:
        # report error.problems (event, status condition); do not act: the spec must change
        raise kopf.PermanentError(str(error)) from None
    for warning in spec_warnings(desired):
        ...  # a Warning event (reason SpecWarning), once per new warning

Pure: no Kubernetes, kopf or network import (an import-linter contract), so every mapping is
tested without a cluster (tests/operator/test_crd.py, tests/operator/test_chart.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from taskraft_operator.model import (
    ConfigValue,
    DesiredSpec,
    PvcRetention,
    PvcRetentionPolicy,
    Resources,
    SnapshotPolicy,
    StorageSpec,
    UpgradePolicy,
)
from taskraft_operator.planner import (
    APPROVAL_ANNOTATION,
    PAUSED_ANNOTATION,
    SNAPSHOT_REQUEST_ANNOTATION,
)

GROUP = "taskraft.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "QueueCluster"
PLURAL = "queueclusters"

# The queue every cluster starts with (taskraft.queue.limits.DEFAULT_QUEUE_NAME): it always
# exists, so it is never declared, and declared queues may use it as their dead-letter queue.
DEFAULT_QUEUE = "default"
QUEUE_NAME_SIZE_MAX = 255
# taskraft.queue.limits: a buckets queue has at most this many priorities; a lease at most 12 h.
BUCKET_COUNT_MAX = 1024
LEASE_MS_MAX = 12 * 60 * 60 * 1000
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
QUEUE_KINDS = ("heap", "buckets")
_QUEUE_NAME = re.compile(r"[!-~]{1,255}")

QueueKind = Literal["heap", "buckets"]


class SpecError(ValueError):
    """The resource cannot be mapped onto a DesiredSpec; `problems`: one sentence each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeclaredQueue:
    """A queue of `spec.queues`, to create through the leader once the cluster has one.

    None means the node's default (no bound; for `lease_ms_default`, 30 s).
    """

    name: str
    kind: QueueKind = "heap"
    max_size: int | None = None
    max_payload_bytes: int | None = None
    priority_range: tuple[int, int] | None = None
    lease_ms_default: int | None = None
    max_deliveries: int | None = None
    dead_letter_queue: str | None = None

    def create_request(self) -> dict[str, Any]:
        """The body of `POST /v1/queues` (docs/openapi.yaml, CreateQueueRequest)."""
        request: dict[str, Any] = {"queue": self.name, "kind": self.kind}
        optional: dict[str, Any] = {
            "max_size": self.max_size,
            "max_payload_bytes": self.max_payload_bytes,
            "priority_range": None if self.priority_range is None else list(self.priority_range),
            "lease_ms_default": self.lease_ms_default,
            "max_deliveries": self.max_deliveries,
            "dead_letter_queue": self.dead_letter_queue,
        }
        request.update({key: value for key, value in optional.items() if value is not None})
        return request

    def policy_differences(
        self, policies: Mapping[str, Any], *, lease_ms_default: int = 30_000
    ) -> list[str]:
        """How an existing queue's `policies` (its description, GET /v1/queues) differ from
        this declaration, one phrase each; empty when they match. A queue's policies are fixed
        for its life, so a difference can only be reported (e.g. as a status warning)."""
        wanted = self.create_request()
        wanted.pop("queue")
        wanted.setdefault("lease_ms_default", lease_ms_default)
        differences = []
        for key in (
            "kind",
            "max_size",
            "max_payload_bytes",
            "priority_range",
            "lease_ms_default",
            "max_deliveries",
            "dead_letter_queue",
        ):
            have = policies.get(key)
            if isinstance(have, Sequence) and not isinstance(have, str):
                have = list(have)
            if have != wanted.get(key):
                differences.append(f"{key} is {have!r}, declared {wanted.get(key)!r}")
        return differences


# ---------------------------------------------------------------------------------------------
# Entry points


def desired_spec_from_body(body: Mapping[str, Any]) -> DesiredSpec:
    """The resource's spec and annotations as the planner's DesiredSpec; SpecError otherwise."""
    reader = _Reader()
    metadata = reader.mapping(body.get("metadata"), "metadata", required=True)
    spec = reader.mapping(body.get("spec"), "spec", required=True)
    annotations = reader.mapping(metadata.get("annotations"), "metadata.annotations")
    name = reader.text(metadata.get("name"), "metadata.name", required=True)
    namespace = reader.text(metadata.get("namespace"), "metadata.namespace", required=True)
    generation = reader.integer(metadata.get("generation"), "metadata.generation", default=0)

    resources = reader.mapping(spec.get("resources"), "spec.resources")
    storage = reader.mapping(spec.get("storage"), "spec.storage")
    retention = reader.mapping(spec.get("pvcRetention"), "spec.pvcRetention")
    snapshots = reader.mapping(spec.get("snapshots"), "spec.snapshots")
    backup = reader.mapping(spec.get("backup"), "spec.backup")
    authentication = reader.mapping(spec.get("authentication"), "spec.authentication")
    tls = reader.mapping(spec.get("tls"), "spec.tls")
    defaults = DesiredSpec(name="", namespace="", image="", version="")

    desired = DesiredSpec(
        name=name,
        namespace=namespace,
        generation=generation,
        replicas=reader.integer(spec.get("replicas"), "spec.replicas", default=defaults.replicas),
        # Missing: the planner reports "image and version are required" in the status.
        image=reader.text(spec.get("image"), "spec.image", default=""),
        version=reader.text(spec.get("version"), "spec.version", default=""),
        image_pull_policy=reader.choice(
            spec.get("imagePullPolicy"),
            "spec.imagePullPolicy",
            IMAGE_PULL_POLICIES,
            default=defaults.image_pull_policy,
        ),
        resources=Resources(
            requests=reader.quantities(resources.get("requests"), "spec.resources.requests"),
            limits=reader.quantities(resources.get("limits"), "spec.resources.limits"),
        ),
        storage=StorageSpec(
            size=reader.quantity(
                storage.get("size"), "spec.storage.size", default=defaults.storage.size
            ),
            storage_class=reader.optional_text(
                storage.get("storageClass"), "spec.storage.storageClass"
            ),
        ),
        pvc_retention=PvcRetentionPolicy(
            when_scaled=PvcRetention(
                reader.choice(
                    retention.get("whenScaled"),
                    "spec.pvcRetention.whenScaled",
                    tuple(PvcRetention),
                    default=defaults.pvc_retention.when_scaled,
                )
            ),
            when_deleted=PvcRetention(
                reader.choice(
                    retention.get("whenDeleted"),
                    "spec.pvcRetention.whenDeleted",
                    tuple(PvcRetention),
                    default=defaults.pvc_retention.when_deleted,
                )
            ),
        ),
        config=reader.config(spec.get("config"), "spec.config"),
        upgrade_policy=UpgradePolicy(
            reader.choice(
                spec.get("upgradePolicy"),
                "spec.upgradePolicy",
                tuple(UpgradePolicy),
                default=defaults.upgrade_policy,
            )
        ),
        snapshots=SnapshotPolicy(
            schedule=reader.optional_text(snapshots.get("schedule"), "spec.snapshots.schedule"),
            history_max=reader.integer(
                snapshots.get("historyMax"),
                "spec.snapshots.historyMax",
                default=defaults.snapshots.history_max,
            ),
        ),
        paused=reader.flag(annotations.get(PAUSED_ANNOTATION), PAUSED_ANNOTATION),
        leader_restart_approval=reader.annotation(
            annotations.get(APPROVAL_ANNOTATION), APPROVAL_ANNOTATION
        ),
        snapshot_request=reader.annotation(
            annotations.get(SNAPSHOT_REQUEST_ANNOTATION), SNAPSHOT_REQUEST_ANNOTATION
        ),
        step_timeout_s=reader.integer(
            spec.get("stepTimeoutSeconds"),
            "spec.stepTimeoutSeconds",
            default=defaults.step_timeout_s,
        ),
        backup_claim_name=reader.optional_text(backup.get("claimName"), "spec.backup.claimName"),
        authentication=reader.boolean(
            authentication.get("enabled"),
            "spec.authentication.enabled",
            default=defaults.authentication,
        ),
        tls_secret_name=(
            reader.text(tls.get("secretName"), "spec.tls.secretName", required=True)
            if spec.get("tls") is not None
            else None
        ),
    )
    reader.raise_problems()
    return desired


def declared_queues(body: Mapping[str, Any]) -> tuple[DeclaredQueue, ...]:
    """`spec.queues` in an order they can be created in: each dead-letter queue before the
    queues that use it, declaration order otherwise. SpecError for a queue the node would
    refuse, a dead-letter queue that is neither declared nor `default`, or a cycle of them."""
    reader = _Reader()
    spec = reader.mapping(body.get("spec"), "spec", required=True)
    items = spec.get("queues")
    if items is None:
        items = []
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise SpecError([f"spec.queues: expected a list, got {_kind(items)}"])
    queues: list[DeclaredQueue] = []
    for index, item in enumerate(items):
        queue = reader.queue(item, f"spec.queues[{index}]")
        if queue is not None:
            queues.append(queue)
    reader.raise_problems()
    return _creation_order(queues)


def spec_warnings(desired: DesiredSpec) -> tuple[str, ...]:
    """What is allowed but probably not meant, one sentence each (for Warning events)."""
    warnings = []
    if desired.replicas >= 2 and desired.replicas % 2 == 0:
        warnings.append(
            f"replicas {desired.replicas} is even: it tolerates no more failed voters than "
            f"{desired.replicas - 1} and needs one more acknowledgement per write; "
            "an odd count is recommended"
        )
    return tuple(warnings)


def backup_claim_name(body: Mapping[str, Any]) -> str | None:
    """`spec.backup.claimName`: the PVC that snapshot files are copied to, if any."""
    reader = _Reader()
    spec = reader.mapping(body.get("spec"), "spec", required=True)
    backup = reader.mapping(spec.get("backup"), "spec.backup")
    claim = reader.optional_text(backup.get("claimName"), "spec.backup.claimName")
    reader.raise_problems()
    return claim


# ---------------------------------------------------------------------------------------------
# Reading values, collecting every problem before raising


class _Reader:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def raise_problems(self) -> None:
        if self.problems:
            raise SpecError(self.problems)

    def problem(self, path: str, expected: str, value: object) -> None:
        self.problems.append(f"{path}: expected {expected}, got {_kind(value)}")

    def mapping(self, value: object, path: str, *, required: bool = False) -> Mapping[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, "an object", value)
            return {}
        return value

    def text(self, value: object, path: str, *, required: bool = False, default: str = "") -> str:
        if value is None and not required:
            return default
        if not isinstance(value, str) or (required and not value):
            self.problem(path, "text" if not required else "non-empty text", value)
            return default
        return value

    def optional_text(self, value: object, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(path, "text", value)
            return None
        return value

    def integer(self, value: object, path: str, *, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, "an integer", value)
            return default
        return value

    def optional_integer(
        self, value: object, path: str, *, low: int = INT64_MIN, high: int = INT64_MAX
    ) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problem(path, f"an integer from {low} to {high}", value)
            return None
        return value

    def choice(self, value: object, path: str, choices: Sequence[str], *, default: str) -> str:
        if value is None:
            return default
        if value not in choices:
            self.problem(path, "one of " + ", ".join(choices), value)
            return default
        assert isinstance(value, str)
        return value

    def quantity(self, value: object, path: str, *, default: str) -> str:
        """A Kubernetes quantity: the schema allows an integer or a string; kept as text."""
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
            self.problem(path, "a quantity (e.g. 500m, 1Gi)", value)
            return default
        return str(value)

    def quantities(self, value: object, path: str) -> dict[str, str]:
        result = {}
        for key, item in self.mapping(value, path).items():
            result[str(key)] = self.quantity(item, f"{path}.{key}", default="")
        return result

    def config(self, value: object, path: str) -> dict[str, ConfigValue]:
        result: dict[str, ConfigValue] = {}
        for key, item in self.mapping(value, path).items():
            if isinstance(item, str | int | bool):
                result[str(key)] = item
            else:
                self.problem(f"{path}.{key}", "text, an integer or a boolean", item)
        return result

    def boolean(self, value: object, path: str, *, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(path, "a boolean", value)
            return default
        return value

    def flag(self, value: object, annotation: str) -> bool:
        """A boolean annotation: "true" or "false" (any case); absent or empty is false. A typo
        is refused rather than read as false: it would silently unpause a paused cluster."""
        if value is None:
            return False
        if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
            return value.strip().lower() == "true"
        self.problems.append(
            f'annotation {annotation}: expected "true" or "false", got {_kind(value)}'
        )
        # Unreadable: treat as paused, so nothing is done while the problem is reported.
        return True

    def annotation(self, value: object, annotation: str) -> str | None:
        """A token annotation: its value, stripped; absent or empty is None."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.problems.append(f"annotation {annotation}: expected text, got {_kind(value)}")
            return None
        return value.strip() or None

    def queue(self, value: object, path: str) -> DeclaredQueue | None:
        if not isinstance(value, Mapping):
            self.problem(path, "an object", value)
            return None
        before = len(self.problems)
        name = value.get("name")
        if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
            self.problem(
                f"{path}.name", f"1 to {QUEUE_NAME_SIZE_MAX} printable ASCII characters", name
            )
            name = ""
        elif name == DEFAULT_QUEUE:
            self.problems.append(f"{path}.name: the queue {DEFAULT_QUEUE!r} always exists")
        kind = self.choice(value.get("kind"), f"{path}.kind", QUEUE_KINDS, default="heap")
        priority_range = self.priority_range(value.get("priorityRange"), f"{path}.priorityRange")
        if kind == "buckets":
            if priority_range is None:
                self.problems.append(f"{path}.priorityRange: a buckets queue needs one")
            elif priority_range[1] - priority_range[0] + 1 > BUCKET_COUNT_MAX:
                self.problems.append(
                    f"{path}.priorityRange: a buckets queue spans at most {BUCKET_COUNT_MAX} "
                    "priorities (use a heap queue for wider ranges)"
                )
        dead_letter = value.get("deadLetterQueue")
        if dead_letter is not None and (
            not isinstance(dead_letter, str) or not _QUEUE_NAME.fullmatch(dead_letter)
        ):
            self.problem(f"{path}.deadLetterQueue", "a queue name", dead_letter)
            dead_letter = None
        queue = DeclaredQueue(
            name=name,
            kind="buckets" if kind == "buckets" else "heap",
            max_size=self.optional_integer(value.get("maxSize"), f"{path}.maxSize", low=1),
            max_payload_bytes=self.optional_integer(
                value.get("maxPayloadBytes"), f"{path}.maxPayloadBytes", low=1
            ),
            priority_range=priority_range,
            lease_ms_default=self.optional_integer(
                value.get("leaseMsDefault"), f"{path}.leaseMsDefault", low=0, high=LEASE_MS_MAX
            ),
            max_deliveries=self.optional_integer(
                value.get("maxDeliveries"), f"{path}.maxDeliveries", low=1
            ),
            dead_letter_queue=dead_letter,
        )
        return queue if len(self.problems) == before else None

    def priority_range(self, value: object, path: str) -> tuple[int, int] | None:
        if value is None:
            return None
        if (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and len(value) == 2
            and all(
                isinstance(item, int) and not isinstance(item, bool) and item >= INT64_MIN
                for item in value
            )
            and value[0] <= value[1] <= INT64_MAX
        ):
            return (value[0], value[1])
        self.problem(path, "[low, high] with low <= high, both 64-bit integers", value)
        return None


def _kind(value: object) -> str:
    """A value for an error message: short, with its JSON type."""
    if value is None:
        return "nothing"
    json_type = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "text",
    }.get(type(value))
    if json_type is None:
        json_type = "object" if isinstance(value, Mapping) else "list"
        if not isinstance(value, Mapping | list | tuple):
            json_type = type(value).__name__
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{json_type} {shown}"


def _creation_order(queues: Sequence[DeclaredQueue]) -> tuple[DeclaredQueue, ...]:
    by_name: dict[str, DeclaredQueue] = {}
    problems = []
    for queue in queues:
        if queue.name in by_name:
            problems.append(f"spec.queues: {queue.name!r} is declared twice")
        by_name[queue.name] = queue
    for queue in queues:
        target = queue.dead_letter_queue
        if target is None or target == DEFAULT_QUEUE:
            continue
        if target == queue.name:
            problems.append(f"spec.queues: {queue.name!r} cannot be its own dead-letter queue")
        elif target not in by_name:
            problems.append(
                f"spec.queues: the dead-letter queue {target!r} of {queue.name!r} is neither "
                f"declared nor {DEFAULT_QUEUE!r}"
            )
    if problems:
        raise SpecError(problems)
    ordered: list[DeclaredQueue] = []
    placed: set[str] = set()

    def place(queue: DeclaredQueue, chain: tuple[str, ...]) -> None:
        if queue.name in placed:
            return
        if queue.name in chain:
            cycle = " -> ".join((*chain[chain.index(queue.name) :], queue.name))
            raise SpecError(
                [f"spec.queues: dead-letter queues form a cycle ({cycle}): none can be created"]
            )
        target = queue.dead_letter_queue
        if target is not None and target in by_name:
            place(by_name[target], (*chain, queue.name))
        placed.add(queue.name)
        ordered.append(queue)

    for queue in queues:
        place(queue, ())
    return tuple(ordered)


__all__ = [
    "API_VERSION",
    "DEFAULT_QUEUE",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "DeclaredQueue",
    "SpecError",
    "backup_claim_name",
    "declared_queues",
    "desired_spec_from_body",
    "spec_warnings",
]
