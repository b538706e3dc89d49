"""The QueueCluster CRD: a structural schema that refuses what the operator cannot run.

Without an API server, an object is validated the way the API server does it, step by step:
defaults from the schema are applied, the schema is checked as JSON schema (with `nullable`
read as "or null", and every object that lists its properties closed: that is kubectl's strict
field validation, which refuses unknown fields that the server would otherwise prune), list-map
keys must be unique, and every CEL rule (`x-kubernetes-validations`) is evaluated with
cel-python at the node it is attached to. `validate_object` returns the errors, each naming its
path.

The schema is also held against its sources: the node's options (configuration.OPTIONS), the
queue rules (taskraft.queue), the planner's bounds and the model's defaults, and the status the
planner writes (every status of a simulated cluster's life must validate, or the API server
would prune what the operator needs back).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import celpy
import jsonschema
import kopf
import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_scenarios import Operator, SimCluster

from taskraft.errors import InvalidQueueName
from taskraft.queue.limits import (
    BUCKET_COUNT_MAX,
    DEFAULT_QUEUE_NAME,
    LEASE_MS_DEFAULT,
    LEASE_MS_MAX,
    QUEUE_NAME_SIZE_MAX_BYTES,
)
from taskraft.queue.validation import check_queue_name
from taskraft.server.configuration import OPTIONS
from taskraft_operator import resource
from taskraft_operator.model import (
    ClusterStatus,
    Condition,
    DesiredSpec,
    MemberReport,
    Progress,
    PvcRetention,
    PvcRetentionPolicy,
    Resources,
    Rolling,
    RollStep,
    SnapshotPolicy,
    SnapshotRecord,
    StorageSpec,
    UpgradePolicy,
    status_to_dict,
)
from taskraft_operator.planner import (
    NAME_LENGTH_MAX,
    REPLICAS_MAX,
    RESERVED_CONFIG_KEYS,
    SNAPSHOT_HISTORY_MAX,
    EnsureObject,
    spec_problems,
)
from taskraft_operator.resource import DeclaredQueue, SpecError

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "queueclusters.taskraft.io.yaml"
EXAMPLE_PATH = ROOT / "examples" / "queuecluster.yaml"
# A Kubernetes version whose object schemas kubernetes-validate bundles.
KUBERNETES_VERSION = "1.31"

# Formats the API server knows (k8s.io/apiextensions-apiserver: supported formats); any other
# is refused or ignored depending on the version.
KNOWN_FORMATS = {
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "datetime",
    "duration",
    "password",
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}
# Keywords a structural schema may not use (apiextensions validation).
FORBIDDEN_KEYWORDS = {"$ref", "definitions", "dependencies", "patternProperties", "id", "$schema"}


# ---------------------------------------------------------------------------------------------
# Loading and validating, as the API server would


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    return copy.deepcopy(_parsed_yaml(path))


@cache
def _parsed_yaml(path: Path) -> dict[str, Any]:
    document = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert isinstance(document, dict)
    return document


def crd_version(crd: Mapping[str, Any] | None = None) -> dict[str, Any]:
    versions = (crd or load_crd())["spec"]["versions"]
    assert len(versions) == 1
    return dict(versions[0])


def crd_schema(crd: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return dict(crd_version(crd)["schema"]["openAPIV3Schema"])


def load_example() -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE_PATH.read_text())
    assert isinstance(document, dict)
    return document


def json_schema_of(node: Any, *, path: str = "") -> Any:
    """The structural schema as JSON schema: `nullable` adds null, x-kubernetes-* keys are
    dropped, and objects with `properties` are closed (strict field validation), except the
    root's `metadata` (ObjectMeta, validated by the API server itself) and objects that
    preserve unknown fields."""
    if isinstance(node, list):
        return [json_schema_of(item, path=path) for item in node]
    if not isinstance(node, dict):
        return node
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description"):
            continue
        if key == "properties":
            result[key] = {
                name: json_schema_of(child, path=f"{path}.{name}") for name, child in value.items()
            }
        elif key in ("default", "enum", "example"):
            result[key] = value
        elif key == "pattern" and value.endswith("$") and not value.endswith("\\$"):
            # The API server matches patterns with Go's regexp, where `$` is the end of the
            # text; Python's `$` also matches before a final newline.
            result[key] = value[:-1] + r"\Z"
        else:
            result[key] = json_schema_of(value, path=path)
    if node.get("nullable"):
        if "type" in result:
            result["type"] = [result["type"], "null"]
        if "enum" in result:
            result["enum"] = [*result["enum"], None]
    if (
        "properties" in node
        and path != ".metadata"
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@_FORMATS.checks("date-time")
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return (
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value) is not None
    )


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Structural defaulting: a missing property with a default gets it (then its own)."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name, child in properties.items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
        for name, item in value.items():
            if name in properties:
                apply_defaults(properties[name], item)
            elif isinstance(schema.get("additionalProperties"), dict):
                apply_defaults(schema["additionalProperties"], item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)
    return value


_CEL = celpy.Environment()


@cache
def cel_program(rule: str) -> Any:
    return _CEL.program(_CEL.compile(rule))


def walk_values(
    schema: Mapping[str, Any], value: Any, path: str = ""
) -> Iterator[tuple[str, Mapping[str, Any], Any]]:
    """(path, schema, value) for every value present in the document and described by the
    schema, parents first."""
    yield path, schema, value
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                yield from walk_values(properties[name], item, f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from walk_values(schema["additionalProperties"], item, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from walk_values(schema["items"], item, f"{path}[{index}]")


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json_schema_of(crd_schema()), format_checker=_FORMATS)


def validate_object(
    document: Mapping[str, Any],
    crd: Mapping[str, Any] | None = None,
    *,
    old: Mapping[str, Any] | None = None,
) -> list[str]:
    """The API server's verdict on creating `document` (or, with `old`, on updating `old` to
    it): empty when it would be stored. Transition rules (those that read `oldSelf`) are
    evaluated only on an update, where the value exists in both, as the API server does."""
    schema = crd_schema(crd)
    defaulted = apply_defaults(schema, copy.deepcopy(dict(document)))
    old_values: dict[str, Any] = {}
    if old is not None:
        old_defaulted = apply_defaults(schema, copy.deepcopy(dict(old)))
        old_values = {path: value for path, _, value in walk_values(schema, old_defaulted)}
    validator = (
        _validator()
        if crd is None
        else jsonschema.Draft202012Validator(json_schema_of(schema), format_checker=_FORMATS)
    )
    errors = [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(defaulted)
    ]
    if errors:
        # The API server evaluates CEL rules only on values that passed the schema.
        return sorted(errors)
    for path, node_schema, value in walk_values(schema, defaulted):
        if node_schema.get("x-kubernetes-list-type") == "map":
            keys = node_schema["x-kubernetes-list-map-keys"]
            seen = [tuple(item.get(key) for key in keys) for item in value]
            if len(seen) != len(set(seen)):
                errors.append(f"{path}: duplicate entries for key {keys}")
        for validation in node_schema.get("x-kubernetes-validations", ()):
            activation = {"self": celpy.json_to_cel(value)}
            if "oldSelf" in validation["rule"]:
                if path not in old_values:
                    continue
                activation["oldSelf"] = celpy.json_to_cel(old_values[path])
            result = cel_program(validation["rule"]).evaluate(activation)
            if not isinstance(result, celpy.celtypes.BoolType) or not result:
                errors.append(f"{path}: {validation['message']}")
    return errors


def queue_cluster(**spec: Any) -> dict[str, Any]:
    """A QueueCluster with the required fields and `spec` merged in."""
    return {
        "apiVersion": "taskraft.io/v1alpha1",
        "kind": "QueueCluster",
        "metadata": {"name": "jobs", "namespace": "queues", "generation": 1},
        "spec": {"image": "taskraft:0.1.0", "version": "0.1.0", **spec},
    }


def schema_nodes(
    node: Mapping[str, Any], path: str = ""
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    for keyword in ("anyOf", "allOf", "oneOf"):
        for index, child in enumerate(node.get(keyword, ())):
            yield from schema_nodes(child, f"{path}.{keyword}[{index}]")


# ---------------------------------------------------------------------------------------------
# The CRD object


def test_the_crd_names_the_resource() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "queueclusters.taskraft.io"
    spec = crd["spec"]
    assert spec["group"] == resource.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == resource.KIND
    assert spec["names"]["plural"] == resource.PLURAL
    assert spec["names"]["singular"] == "queuecluster"
    assert spec["names"]["shortNames"] == ["qc"]
    version = crd_version(crd)
    assert version["name"] == resource.VERSION
    assert version["served"] is True and version["storage"] is True


def test_the_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(load_crd(), KUBERNETES_VERSION, strict=True)


def test_the_schema_is_structural() -> None:
    """What the API server demands of a CRD schema, checked node by node."""
    schema = crd_schema()
    problems = []
    for path, node in schema_nodes(schema):
        in_junctor = any(part in path for part in (".anyOf[", ".allOf[", ".oneOf["))
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        if in_junctor:
            # Only the int-or-string pattern may name types inside anyOf, and nothing else.
            if set(node) != {"type"}:
                problems.append(f"{path}: only `type` in the anyOf of int-or-string")
            continue
        if int_or_string:
            if node.get("anyOf") != [{"type": "integer"}, {"type": "string"}] or "type" in node:
                problems.append(f"{path}: int-or-string is anyOf [integer, string], no type")
        elif node.get("type") not in TYPES:
            problems.append(f"{path}: every node needs a type, has {node.get('type')!r}")
        if FORBIDDEN_KEYWORDS & set(node) or node.get("uniqueItems"):
            problems.append(f"{path}: forbidden keyword {sorted(FORBIDDEN_KEYWORDS & set(node))}")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties are exclusive")
        if "properties" in node and node.get("type") != "object":
            problems.append(f"{path}: properties on a non-object")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: an array needs one items schema")
        if "format" in node and node["format"] not in KNOWN_FORMATS:
            problems.append(f"{path}: unknown format {node['format']!r}")
        if node.get("x-kubernetes-preserve-unknown-fields") and path != ".status.progress":
            problems.append(f"{path}: only status.progress may preserve unknown fields")
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                if key not in item.get("required", ()) and "default" not in item["properties"][key]:
                    problems.append(f"{path}: list-map key {key} must be required")
        for rule in node.get("x-kubernetes-validations", ()):
            assert set(rule) <= {"rule", "message", "messageExpression", "reason", "fieldPath"}
            try:
                cel_program(rule["rule"])
            except celpy.CELParseError as error:
                problems.append(f"{path}: CEL rule does not parse: {error}")
        if "default" in node:
            subschema = json_schema_of(node, path=path)
            if not jsonschema.Draft202012Validator(subschema).is_valid(
                apply_defaults(node, copy.deepcopy(node["default"]))
            ):
                problems.append(f"{path}: the default {node['default']!r} is invalid")
    # At the root, metadata may only restrict name and generateName.
    assert set(schema["properties"]["metadata"]["properties"]) <= {"name", "generateName"}
    assert problems == []


def test_the_cel_rules_are_cheap_enough() -> None:
    """The API server estimates each rule's worst-case cost from maxItems and maxLength; the
    lists and strings the rules iterate over are bounded."""
    schema = crd_schema()
    queues = schema["properties"]["spec"]["properties"]["queues"]
    assert queues["maxItems"] <= 100
    for name in ("name", "deadLetterQueue"):
        assert queues["items"]["properties"][name]["maxLength"] <= 255
    assert queues["items"]["properties"]["priorityRange"]["maxItems"] == 2


def test_subresources_and_printer_columns() -> None:
    version = crd_version()
    schema = crd_schema()
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.readyReplicas",
    }
    # Both paths must lead to integers.
    for path in (scale["specReplicasPath"], scale["statusReplicasPath"]):
        node = schema
        for part in path.strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] == "integer"
    columns = version["additionalPrinterColumns"]
    assert [column["name"] for column in columns] == [
        "Replicas",
        "Ready",
        "Leader",
        "Phase",
        "Version",
        "Age",
    ]
    for column in columns:
        parts = column["jsonPath"].strip(".").split(".")
        if parts[0] == "metadata":
            continue
        node = schema
        for part in parts:
            node = node["properties"][part]
        assert node["type"] == column["type"], column


# ---------------------------------------------------------------------------------------------
# The schema against its sources


def spec_schema() -> dict[str, Any]:
    return dict(crd_schema()["properties"]["spec"])


def test_config_lists_the_options_a_node_reads_from_its_file() -> None:
    """Every option `taskraft serve --config` accepts, except those the operator sets itself,
    with the node's type and range: a new node option fails here until the CRD lists it."""
    config = spec_schema()["properties"]["config"]["properties"]
    overridable = [o for o in OPTIONS if o.file and o.name not in RESERVED_CONFIG_KEYS]
    assert sorted(config) == sorted(option.name for option in overridable)
    for option in overridable:
        node = config[option.name]
        if option.kind == "integer":
            assert node["type"] == "integer", option.name
            assert (node["minimum"], node["maximum"]) == (option.minimum, option.maximum)
        elif option.kind == "choice":
            assert node == {"type": "string", "enum": list(option.choices)}, option.name
        else:
            raise AssertionError(f"option {option.name} of kind {option.kind}: add it to the CRD")


def test_defaults_and_bounds_match_the_model_and_the_planner() -> None:
    spec = spec_schema()["properties"]
    defaults = DesiredSpec(name="", namespace="", image="", version="")
    assert spec["replicas"]["default"] == defaults.replicas
    assert (spec["replicas"]["minimum"], spec["replicas"]["maximum"]) == (1, REPLICAS_MAX)
    assert spec["imagePullPolicy"]["default"] == defaults.image_pull_policy
    assert spec["storage"]["properties"]["size"]["default"] == defaults.storage.size
    retention = spec["pvcRetention"]["properties"]
    assert retention["whenScaled"]["default"] == defaults.pvc_retention.when_scaled
    assert retention["whenDeleted"]["default"] == defaults.pvc_retention.when_deleted
    assert retention["whenScaled"]["enum"] == list(PvcRetention)
    assert spec["upgradePolicy"]["default"] == defaults.upgrade_policy
    assert spec["upgradePolicy"]["enum"] == list(UpgradePolicy)
    history = spec["snapshots"]["properties"]["historyMax"]
    assert history["default"] == defaults.snapshots.history_max
    assert history["maximum"] == SNAPSHOT_HISTORY_MAX
    assert spec["stepTimeoutSeconds"]["default"] == defaults.step_timeout_s
    assert crd_schema()["properties"]["metadata"]["properties"]["name"]["maxLength"] == (
        NAME_LENGTH_MAX
    )


def test_queue_bounds_match_the_state_machine() -> None:
    queue = spec_schema()["properties"]["queues"]["items"]["properties"]
    assert queue["name"]["maxLength"] == QUEUE_NAME_SIZE_MAX_BYTES
    assert queue["leaseMsDefault"]["maximum"] == LEASE_MS_MAX
    assert resource.LEASE_MS_MAX == LEASE_MS_MAX
    assert resource.BUCKET_COUNT_MAX == BUCKET_COUNT_MAX
    assert resource.DEFAULT_QUEUE == DEFAULT_QUEUE_NAME
    # A declaration without a lease compares with the node's default lease.
    assert DeclaredQueue(name="q").policy_differences({"kind": "heap"}) == [
        f"lease_ms_default is None, declared {LEASE_MS_DEFAULT}"
    ]


def _node_accepts_queue_name(name: str) -> bool:
    try:
        check_queue_name(name)
    except InvalidQueueName:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=4),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7F), min_size=1),
        st.text(max_size=3),
        st.integers(250, 260).map(lambda size: "q" * size),
    )
)
def test_queue_names_are_refused_exactly_as_the_node_refuses_them(name: str) -> None:
    accepted_by_crd = not validate_object(queue_cluster(queues=[{"name": name}]))
    node_accepts = _node_accepts_queue_name(name) and name != DEFAULT_QUEUE_NAME
    assert accepted_by_crd == node_accepts, name
    try:
        resource.declared_queues(queue_cluster(queues=[{"name": name}]))
        accepted_by_operator = True
    except SpecError:
        accepted_by_operator = False
    assert accepted_by_operator == node_accepts, name


# ---------------------------------------------------------------------------------------------
# Objects accepted and refused


def test_the_example_is_accepted_and_read() -> None:
    example = load_example()
    assert validate_object(example) == []
    example["metadata"].update(namespace="queues", generation=4)
    desired = resource.desired_spec_from_body(kopf.Body(example))
    assert desired == DesiredSpec(
        name="jobs",
        namespace="queues",
        generation=4,
        replicas=3,
        image="taskraft:0.1.0",
        version="0.1.0",
        resources=Resources(
            requests={"cpu": "250m", "memory": "256Mi"}, limits={"memory": "512Mi"}
        ),
        storage=StorageSpec(size="5Gi"),
        pvc_retention=PvcRetentionPolicy(when_scaled=PvcRetention.DELETE),
        config={"snapshot_interval_entries": 50000, "log_level": "info"},
        upgrade_policy=UpgradePolicy.AUTOMATIC,
        snapshots=SnapshotPolicy(schedule="30 2 * * *", history_max=14),
        step_timeout_s=600,
        authentication=True,
        tls_secret_name="jobs-tls",
    )
    assert spec_problems(desired) == []
    assert resource.spec_warnings(desired) == ()
    queues = resource.declared_queues(example)
    assert [queue.name for queue in queues] == ["emails-dead", "emails"]
    assert queues[1] == DeclaredQueue(
        name="emails",
        kind="buckets",
        max_size=100000,
        priority_range=(0, 9),
        lease_ms_default=60000,
        max_deliveries=5,
        dead_letter_queue="emails-dead",
    )
    assert resource.backup_claim_name(example) is None


def test_a_minimal_object_gets_the_model_defaults() -> None:
    document = queue_cluster()
    assert validate_object(document) == []
    defaulted = apply_defaults(crd_schema(), copy.deepcopy(document))
    expected = DesiredSpec(
        name="jobs", namespace="queues", generation=1, image="taskraft:0.1.0", version="0.1.0"
    )
    # The same spec whether the API server filled in the defaults or the operator did.
    assert resource.desired_spec_from_body(defaulted) == expected
    assert resource.desired_spec_from_body(document) == expected
    assert resource.declared_queues(document) == ()


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("one replica", {"replicas": 1}),
    ("fifteen replicas", {"replicas": 15}),
    ("an even count (warned by the operator)", {"replicas": 4}),
    ("integer quantities", {"resources": {"requests": {"cpu": 1}}, "storage": {"size": 10}}),
    ("a storage class", {"storage": {"size": "1Gi", "storageClass": "fast-ssd.example.com"}}),
    ("the defaults of the ticks", {"config": {"election_timeout_ticks": 2}}),
    ("both ticks", {"config": {"election_timeout_ticks": 20, "heartbeat_interval_ticks": 5}}),
    ("a cron alias", {"snapshots": {"schedule": "@hourly"}}),
    ("no snapshot history", {"snapshots": {"historyMax": 0}}),
    ("a backup claim", {"backup": {"claimName": "taskraft-backups"}}),
    ("supervised upgrades", {"upgradePolicy": "supervised"}),
    (
        "a widest buckets queue",
        {"queues": [{"name": "b", "kind": "buckets", "priorityRange": [-512, 511]}]},
    ),
    (
        "a heap queue with any 64-bit range",
        {"queues": [{"name": "h", "priorityRange": [-(2**63), 2**63 - 1]}]},
    ),
    (
        "the default queue as dead-letter queue",
        {"queues": [{"name": "a", "deadLetterQueue": "default"}]},
    ),
    (
        "a chain of dead-letter queues",
        {
            "queues": [
                {"name": "a", "deadLetterQueue": "b"},
                {"name": "b", "deadLetterQueue": "c"},
                {"name": "c"},
            ]
        },
    ),
    ("a lease of 0 (acknowledge on delivery)", {"queues": [{"name": "a", "leaseMsDefault": 0}]}),
]


@pytest.mark.parametrize("spec", [spec for _, spec in ACCEPTED], ids=[i for i, _ in ACCEPTED])
def test_accepted(spec: dict[str, Any]) -> None:
    document = queue_cluster(**spec)
    assert validate_object(document) == []
    desired = resource.desired_spec_from_body(document)
    resource.declared_queues(document)
    assert spec_problems(desired) == []


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("no replicas", {"replicas": 0}, "spec.replicas: 0 is less than the minimum of 1"),
    ("too many replicas", {"replicas": 16}, "spec.replicas: 16 is greater than the maximum of 15"),
    ("replicas as text", {"replicas": "3"}, "spec.replicas: '3' is not of type 'integer'"),
    ("no image", {"image": None}, "None is not of type 'string'"),
    ("an empty image", {"image": ""}, "spec.image: '' should be non-empty"),
    (
        "a version that is no label value",
        {"version": "1.0 beta"},
        "spec.version: '1.0 beta' does not match",
    ),
    (
        "an unknown pull policy",
        {"imagePullPolicy": "Sometimes"},
        "spec.imagePullPolicy: 'Sometimes' is not one of",
    ),
    (
        "a bad quantity",
        {"resources": {"limits": {"memory": "lots"}}},
        "spec.resources.limits.memory: 'lots' does not match",
    ),
    (
        "an unknown resources key",
        {"resources": {"request": {}}},
        "spec.resources: Additional properties are not allowed ('request'",
    ),
    (
        "a bad storage class",
        {"storage": {"storageClass": "Fast_SSD"}},
        "spec.storage.storageClass: 'Fast_SSD' does not match",
    ),
    (
        "an unknown retention",
        {"pvcRetention": {"whenScaled": "Keep"}},
        "spec.pvcRetention.whenScaled: 'Keep' is not one of",
    ),
    (
        "an unknown config key",
        {"config": {"snapshot_every": 5}},
        "spec.config: Additional properties are not allowed ('snapshot_every'",
    ),
    (
        "a reserved config key",
        {"config": {"node_id": "x"}},
        "spec.config: Additional properties are not allowed ('node_id'",
    ),
    (
        "a config value of the wrong type",
        {"config": {"tick_interval_ms": "100"}},
        "spec.config.tick_interval_ms: '100' is not of type 'integer'",
    ),
    (
        "a config value out of range",
        {"config": {"tick_interval_ms": 0}},
        "spec.config.tick_interval_ms: 0 is less than the minimum of 1",
    ),
    (
        "a config choice the node lacks",
        {"config": {"log_level": "trace"}},
        "spec.config.log_level: 'trace' is not one of",
    ),
    (
        "an election timeout below the heartbeat",
        {"config": {"heartbeat_interval_ticks": 10}},
        "election_timeout_ticks must exceed heartbeat_interval_ticks",
    ),
    (
        "a queue name with a space",
        {"queues": [{"name": "my queue"}]},
        "spec.queues.0.name: 'my queue' does not match",
    ),
    (
        "an empty queue name",
        {"queues": [{"name": ""}]},
        "spec.queues.0.name: '' should be non-empty",
    ),
    (
        "a queue name beyond ASCII",
        {"queues": [{"name": "café"}]},
        "spec.queues.0.name: 'café' does not match",
    ),
    ("a queue name of 256 characters", {"queues": [{"name": "q" * 256}]}, "is too long"),
    (
        "a queue without a name",
        {"queues": [{"kind": "heap"}]},
        "spec.queues.0: 'name' is a required property",
    ),
    (
        "a queue declared twice",
        {"queues": [{"name": "a"}, {"name": "a"}]},
        "spec.queues: duplicate entries for key ['name']",
    ),
    (
        "the default queue declared",
        {"queues": [{"name": "default"}]},
        "the queue `default` always exists",
    ),
    (
        "an unknown queue kind",
        {"queues": [{"name": "a", "kind": "fifo"}]},
        "spec.queues.0.kind: 'fifo' is not one of",
    ),
    (
        "a buckets queue without a range",
        {"queues": [{"name": "a", "kind": "buckets"}]},
        "a buckets queue needs a priorityRange",
    ),
    (
        "a buckets queue too wide",
        {"queues": [{"name": "a", "kind": "buckets", "priorityRange": [0, 1024]}]},
        "a buckets queue spans at most 1024 priorities",
    ),
    (
        "a buckets queue spanning 64 bits",
        {"queues": [{"name": "a", "kind": "buckets", "priorityRange": [-(2**63), 2**63 - 1]}]},
        "a buckets queue spans at most 1024 priorities",
    ),
    (
        "a reversed priority range",
        {"queues": [{"name": "a", "priorityRange": [5, 1]}]},
        "priorityRange is [low, high] with low <= high",
    ),
    (
        "a priority range of three",
        {"queues": [{"name": "a", "priorityRange": [1, 2, 3]}]},
        "is too long",
    ),
    (
        "a priority beyond 64 bits",
        {"queues": [{"name": "a", "priorityRange": [0, 2**63]}]},
        "spec.queues.0.priorityRange.1: 9223372036854775808 is not a 'int64'",
    ),
    (
        "a max size of 0",
        {"queues": [{"name": "a", "maxSize": 0}]},
        "spec.queues.0.maxSize: 0 is less than the minimum of 1",
    ),
    (
        "a lease beyond 12 hours",
        {"queues": [{"name": "a", "leaseMsDefault": LEASE_MS_MAX + 1}]},
        "is greater than the maximum of 43200000",
    ),
    (
        "no deliveries",
        {"queues": [{"name": "a", "maxDeliveries": 0}]},
        "spec.queues.0.maxDeliveries: 0 is less than the minimum of 1",
    ),
    (
        "an undeclared dead-letter queue",
        {"queues": [{"name": "a", "deadLetterQueue": "b"}]},
        "a deadLetterQueue must be the queue `default` or a declared queue",
    ),
    (
        "its own dead-letter queue",
        {"queues": [{"name": "a", "deadLetterQueue": "a"}]},
        "a queue cannot be its own deadLetterQueue",
    ),
    (
        "a schedule that is no cron expression",
        {"snapshots": {"schedule": "every night"}},
        "spec.snapshots.schedule: 'every night' does not match",
    ),
    (
        "too much snapshot history",
        {"snapshots": {"historyMax": 101}},
        "spec.snapshots.historyMax: 101 is greater than the maximum of 100",
    ),
    ("a backup without a claim", {"backup": {}}, "spec.backup: 'claimName' is a required property"),
    (
        "an unknown upgrade policy",
        {"upgradePolicy": "manual"},
        "spec.upgradePolicy: 'manual' is not one of",
    ),
    (
        "no step timeout",
        {"stepTimeoutSeconds": 0},
        "spec.stepTimeoutSeconds: 0 is less than the minimum of 1",
    ),
    (
        "an unknown spec field",
        {"replica": 3},
        "spec: Additional properties are not allowed ('replica'",
    ),
]


@pytest.mark.parametrize(
    ("spec", "error"),
    [(spec, error) for _, spec, error in REFUSED],
    ids=[i for i, _, _ in REFUSED],
)
def test_refused(spec: dict[str, Any], error: str) -> None:
    errors = validate_object(queue_cluster(**spec))
    assert any(error in found for found in errors), errors


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("q" * (NAME_LENGTH_MAX + 1), "is too long"),
        ("Jobs", "does not match"),
        ("9jobs", "does not match"),
        ("jobs.v2", "does not match"),
    ],
)
def test_names_the_operator_cannot_use_are_refused(name: str, error: str) -> None:
    document = queue_cluster()
    document["metadata"]["name"] = name
    errors = validate_object(document)
    assert any(found.startswith("metadata.name:") and error in found for found in errors), errors


def test_a_missing_spec_is_refused() -> None:
    document = queue_cluster()
    del document["spec"]
    assert validate_object(document) == ["<root>: 'spec' is a required property"]


# ---------------------------------------------------------------------------------------------
# resource.py: what the schema cannot catch, and bodies the schema never saw


def test_an_even_replica_count_is_accepted_and_warned() -> None:
    desired = resource.desired_spec_from_body(queue_cluster(replicas=4))
    assert desired.replicas == 4
    (warning,) = resource.spec_warnings(desired)
    assert "replicas 4 is even" in warning
    assert resource.spec_warnings(resource.desired_spec_from_body(queue_cluster(replicas=1))) == ()


@pytest.mark.parametrize(
    ("value", "paused"),
    [
        (None, False),
        ("true", True),
        ("True", True),
        (" TRUE ", True),
        ("false", False),
        ("", False),
    ],
)
def test_the_paused_annotation(value: str | None, paused: bool) -> None:
    document = queue_cluster()
    if value is not None:
        document["metadata"]["annotations"] = {"taskraft.io/paused": value}
    assert resource.desired_spec_from_body(document).paused is paused


def test_an_unreadable_paused_annotation_is_refused_not_read_as_false() -> None:
    document = queue_cluster()
    document["metadata"]["annotations"] = {"taskraft.io/paused": "yes please"}
    with pytest.raises(SpecError, match=r'annotation taskraft.io/paused: expected "true" or'):
        resource.desired_spec_from_body(document)


def test_the_token_annotations() -> None:
    document = queue_cluster()
    document["metadata"]["annotations"] = {
        "taskraft.io/approve-leader-restart": " 3f2a9c1d ",
        "taskraft.io/snapshot-request": "",
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
    }
    desired = resource.desired_spec_from_body(document)
    assert desired.leader_restart_approval == "3f2a9c1d"
    assert desired.snapshot_request is None
    document["metadata"]["annotations"]["taskraft.io/snapshot-request"] = "2024-05-01"
    assert resource.desired_spec_from_body(document).snapshot_request == "2024-05-01"


def test_a_body_of_the_wrong_shape_names_every_problem() -> None:
    document = queue_cluster(
        replicas=True,
        imagePullPolicy="Sometimes",
        resources={"requests": {"cpu": 0.5}},
        config={"tick_interval_ms": 1.5, "log_level": ["info"]},
        storage="big",
        upgradePolicy="manual",
        stepTimeoutSeconds="600",
    )
    with pytest.raises(SpecError) as caught:
        resource.desired_spec_from_body(document)
    assert caught.value.problems == (
        "spec.storage: expected an object, got text 'big'",
        "spec.replicas: expected an integer, got boolean True",
        "spec.imagePullPolicy: expected one of Always, IfNotPresent, Never, got text 'Sometimes'",
        "spec.resources.requests.cpu: expected a quantity (e.g. 500m, 1Gi), got number 0.5",
        "spec.config.tick_interval_ms: expected text, an integer or a boolean, got number 1.5",
        "spec.config.log_level: expected text, an integer or a boolean, got list ['info']",
        "spec.upgradePolicy: expected one of automatic, supervised, got text 'manual'",
        "spec.stepTimeoutSeconds: expected an integer, got text '600'",
    )


def test_a_body_without_metadata_or_spec() -> None:
    with pytest.raises(SpecError) as caught:
        resource.desired_spec_from_body({"metadata": {"name": "jobs"}})
    assert caught.value.problems == (
        "spec: expected an object, got nothing",
        "metadata.namespace: expected non-empty text, got nothing",
    )


def test_semantic_problems_are_left_to_the_planner() -> None:
    """What the planner reports in the status (phase Invalid) passes here, so a plan is made."""
    document = queue_cluster(replicas=40, image="", snapshots={"schedule": "61 * * * *"})
    document["spec"]["config"] = {"node_id": "x"}
    desired = resource.desired_spec_from_body(document)
    problems = spec_problems(desired)
    assert len(problems) == 4, problems


def test_kopf_bodies_are_read() -> None:
    """kopf passes its Body (a mapping view, not a dict); any read-only mapping works."""
    example = load_example()
    example["metadata"]["namespace"] = "queues"
    body = kopf.Body(example)
    assert isinstance(body, Mapping) and not isinstance(body, dict)
    desired = resource.desired_spec_from_body(body)
    assert desired.name == "jobs" and desired.config["log_level"] == "info"
    assert resource.declared_queues(body)[0].name == "emails-dead"
    frozen = MappingProxyType({**example, "spec": MappingProxyType(example["spec"])})
    assert resource.desired_spec_from_body(frozen) == desired


def test_declared_queues_come_in_creation_order() -> None:
    document = queue_cluster(
        queues=[
            {"name": "a", "deadLetterQueue": "c"},
            {"name": "b"},
            {"name": "c", "deadLetterQueue": "d"},
            {"name": "d", "deadLetterQueue": "default"},
        ]
    )
    assert [queue.name for queue in resource.declared_queues(document)] == ["d", "c", "a", "b"]


@pytest.mark.parametrize(
    ("queues", "error"),
    [
        (
            [{"name": "a", "deadLetterQueue": "b"}, {"name": "b", "deadLetterQueue": "a"}],
            "dead-letter queues form a cycle (a -> b -> a): none can be created",
        ),
        (
            [
                {"name": "a", "deadLetterQueue": "b"},
                {"name": "b", "deadLetterQueue": "c"},
                {"name": "c", "deadLetterQueue": "b"},
            ],
            "dead-letter queues form a cycle (b -> c -> b)",
        ),
        ([{"name": "a", "deadLetterQueue": "x"}], "the dead-letter queue 'x' of 'a' is neither"),
        ([{"name": "a", "deadLetterQueue": "a"}], "'a' cannot be its own dead-letter queue"),
        ([{"name": "a"}, {"name": "a"}], "'a' is declared twice"),
        ([{"name": "default"}], "the queue 'default' always exists"),
        ([{"name": "a", "kind": "buckets"}], "spec.queues[0].priorityRange: a buckets queue needs"),
        (
            [{"name": "a", "kind": "buckets", "priorityRange": [0, 1024]}],
            "spans at most 1024 priorities",
        ),
        ([{"name": "a", "priorityRange": [2, 1]}], "spec.queues[0].priorityRange: expected"),
        ([{"name": "a", "leaseMsDefault": -1}], "spec.queues[0].leaseMsDefault: expected"),
        ([{"name": "a", "maxSize": True}], "spec.queues[0].maxSize: expected"),
        (["a"], "spec.queues[0]: expected an object, got text 'a'"),
    ],
)
def test_queues_the_node_could_not_create_are_refused(queues: list[Any], error: str) -> None:
    with pytest.raises(SpecError) as caught:
        resource.declared_queues(queue_cluster(queues=queues))
    assert error in str(caught.value)


def test_a_dead_letter_cycle_passes_the_schema_but_not_the_operator() -> None:
    """The one queue rule only the operator checks."""
    document = queue_cluster(
        queues=[{"name": "a", "deadLetterQueue": "b"}, {"name": "b", "deadLetterQueue": "a"}]
    )
    assert validate_object(document) == []
    with pytest.raises(SpecError, match="cycle"):
        resource.declared_queues(document)


def test_create_requests_match_the_http_api() -> None:
    """Each declared queue becomes a POST /v1/queues body the API's OpenAPI schema accepts."""
    openapi = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    request_schema = {
        "$ref": "#/components/schemas/CreateQueueRequest",
        "components": openapi["components"],
    }
    validator = jsonschema.Draft202012Validator(request_schema)
    for queue in resource.declared_queues(load_example()):
        validator.validate(queue.create_request())
    assert resource.declared_queues(load_example())[1].create_request() == {
        "queue": "emails",
        "kind": "buckets",
        "max_size": 100000,
        "priority_range": [0, 9],
        "lease_ms_default": 60000,
        "max_deliveries": 5,
        "dead_letter_queue": "emails-dead",
    }
    assert DeclaredQueue(name="q").create_request() == {"queue": "q", "kind": "heap"}


def test_policy_differences_compare_with_a_queue_description() -> None:
    declared = resource.declared_queues(load_example())[1]
    policies = {
        "kind": "buckets",
        "max_size": 100000,
        "max_payload_bytes": None,
        "priority_range": [0, 9],
        "lease_ms_default": 60000,
        "max_deliveries": 5,
        "dead_letter_queue": "emails-dead",
    }
    assert declared.policy_differences(policies) == []
    assert declared.policy_differences({**policies, "priority_range": (0, 4)}) == [
        "priority_range is [0, 4], declared [0, 9]"
    ]
    assert (
        DeclaredQueue(name="q").policy_differences(
            {
                **policies,
                "kind": "heap",
                "max_size": None,
                "priority_range": None,
                "lease_ms_default": 30000,
                "max_deliveries": None,
                "dead_letter_queue": None,
            }
        )
        == []
    )


def test_the_backup_claim() -> None:
    assert resource.backup_claim_name(queue_cluster(backup={"claimName": "keep"})) == "keep"
    with pytest.raises(SpecError, match=r"spec\.backup\.claimName: expected text"):
        resource.backup_claim_name(queue_cluster(backup={"claimName": 7}))


# ---------------------------------------------------------------------------------------------
# The status the operator writes


def status_errors(document: Mapping[str, Any]) -> list[str]:
    return validate_object({**queue_cluster(), "status": document})


def test_the_status_schema_lists_every_field_the_operator_writes() -> None:
    """A field the schema lacks is pruned by the API server: the operator would lose it."""
    status_schema = crd_schema()["properties"]["status"]["properties"]
    written = status_to_dict(ClusterStatus(phase="Creating"))
    assert sorted(status_schema) == sorted(written)
    assert status_schema["progress"]["x-kubernetes-preserve-unknown-fields"] is True


def test_full_and_empty_statuses_are_accepted() -> None:
    moment = datetime(2024, 5, 1, 2, 30, tzinfo=UTC)
    record = SnapshotRecord(
        time=moment,
        pod="jobs-0",
        index=120,
        term=3,
        size_bytes=4096,
        trigger="schedule",
        token="2024-05-01T02:30:00Z",
    )
    full = ClusterStatus(
        phase="Upgrading",
        observed_generation=7,
        leader="jobs-0",
        replicas=3,
        ready_replicas=2,
        members=(
            MemberReport(
                id="jobs-0",
                pod="jobs-0",
                role="leader",
                voter=True,
                ready=True,
                caught_up=True,
                applied_index=120,
                version="0.1.0",
            ),
            MemberReport(id="jobs-1", pod=None, role="unknown", voter=None, ready=False),
        ),
        current_version="0.1.0",
        target_version="0.2.0",
        target_revision="abc123",
        last_snapshot=record,
        snapshots=(record,),
        conditions=(
            Condition(
                type="Available",
                status="True",
                reason="Quorum",
                message="3 of 3",
                last_transition_time=moment,
            ),
        ),
        warnings=("something",),
        progress=Progress(
            founding_members=("jobs-0", "jobs-1", "jobs-2"),
            founded=True,
            operation=Rolling(
                target_revision="abc123",
                started_at=moment,
                step=RollStep(
                    pod="jobs-1", pod_uid="u", deleted_at=moment, applied_index_to_reach=100
                ),
            ),
        ),
    )
    assert status_errors(status_to_dict(full)) == []
    assert status_errors(status_to_dict(ClusterStatus(phase="Creating"))) == []


def test_a_status_the_operator_would_not_write_is_refused() -> None:
    written = status_to_dict(ClusterStatus(phase="Creating"))
    errors = status_errors({**written, "conditions": [{"type": "Available", "status": "Yes"}]})
    assert any("'status' is a required property" in e or "'Yes' is not one of" in e for e in errors)


def test_every_status_of_a_cluster_life_is_accepted() -> None:
    """The example created from nothing, snapshotted, upgraded, scaled up and down: every
    status document written on the way passes the CRD, and every object the planner applies is
    a valid Kubernetes object."""
    example = load_example()
    example["metadata"]["namespace"] = "queues"
    desired = resource.desired_spec_from_body(example)
    operator = Operator(SimCluster(name=desired.name, namespace=desired.namespace), desired)
    seen: set[str] = set()
    documents: list[tuple[str, dict[str, Any]]] = []

    def run(change: Callable[[], None] | None = None) -> None:
        if change is not None:
            change()
        for plan in operator.run(max_steps=600):
            document = operator.sim.status_document
            assert document is not None
            documents.append((plan.status.phase, json.loads(json.dumps(document))))
            if isinstance(plan.action, EnsureObject) and plan.action.kind not in seen:
                seen.add(plan.action.kind)
                kubernetes_validate.validate(
                    dict(plan.action.manifest), KUBERNETES_VERSION, strict=True
                )

    run()
    run(lambda: operator.change(snapshot_request="now"))
    run(lambda: operator.change(version="0.2.0", image="taskraft:0.2.0"))
    run(lambda: operator.change(replicas=5))
    run(lambda: operator.change(replicas=3))
    assert seen == {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy"}
    assert {phase for phase, _ in documents} >= {"Creating", "Running", "Upgrading", "Scaling"}
    assert any(document["lastSnapshot"] for _, document in documents)
    for phase, document in documents:
        assert status_errors(document) == [], phase


# ---------------------------------------------------------------------------------------------
# Credentials and TLS


def test_authentication_is_on_by_default_and_tls_names_a_secret() -> None:
    assert validate_object(queue_cluster()) == []
    desired = resource.desired_spec_from_body(queue_cluster())
    assert desired.authentication is True and desired.tls_secret_name is None
    secured = queue_cluster(authentication={"enabled": False}, tls={"secretName": "jobs-tls"})
    assert validate_object(secured) == []
    desired = resource.desired_spec_from_body(secured)
    assert desired.authentication is False and desired.tls_secret_name == "jobs-tls"
    assert any("secretName" in error for error in validate_object(queue_cluster(tls={})))
    assert validate_object(queue_cluster(tls={"secretName": "Not_A_Name"})) != []
    with pytest.raises(resource.SpecError, match=r"spec\.authentication\.enabled"):
        resource.desired_spec_from_body(queue_cluster(authentication={"enabled": "yes"}))


def test_tls_cannot_be_added_to_or_removed_from_an_existing_cluster() -> None:
    plain = queue_cluster()
    secured = queue_cluster(tls={"secretName": "jobs-tls"})
    message = "spec.tls cannot be added to or removed from an existing cluster"
    assert any(message in error for error in validate_object(secured, old=plain))
    assert any(message in error for error in validate_object(plain, old=secured))
    # Another Secret (the same authority, say) is fine, and so is any other change.
    renamed = queue_cluster(tls={"secretName": "jobs-tls-2"})
    assert validate_object(renamed, old=secured) == []
    assert validate_object(queue_cluster(replicas=5), old=plain) == []
