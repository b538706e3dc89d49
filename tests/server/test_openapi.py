"""docs/openapi.yaml describes the HTTP API that `taskraft.server.http_api` serves.

The checks: the file is a valid OpenAPI document; it names exactly the routes the aiohttp
application registers (method and path); its examples fit its own schemas; its error table
matches the code's error classes and HTTP statuses; and documents the code builds (error
documents, queue results in their JSON form, `/v1/status` of a starting node, a follower and a
leader) fit the schemas with no field the schemas leave out.

Nothing here listens on a socket or starts a node: HttpApi only stores the node and the metrics
it is given and builds its route table, so stand-ins are enough.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker

from taskraft import protocol
from taskraft.errors import ERRORS_BY_CODE, NotLeader
from taskraft.raft import NodeId, Role
from taskraft.raft.types import Configuration
from taskraft.server import http_api
from taskraft.server.http_api import HttpApi

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _application_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route HttpApi registers; aiohttp's implicit HEAD routes left out."""
    api = HttpApi(SimpleNamespace(), host="127.0.0.1", port=0, metrics=SimpleNamespace())
    routes: set[tuple[str, str]] = set()
    for route in api._application.router.routes():
        path = route.resource.canonical if route.resource is not None else None
        assert path, f"route without a path: {route!r}"
        routes.add((route.method.upper(), path))
    heads = {(method, path) for method, path in routes if method == "HEAD"}
    # `web.get` adds a HEAD route beside each GET (allow_head); the spec says so in its
    # description instead of listing them. A HEAD route of its own would need documenting.
    for _, path in heads:
        assert ("GET", path) in routes, f"HEAD {path} is registered without a GET"
    return routes - heads


def _spec_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in HTTP_METHODS
        if method in item
    }


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, item[method])
        for path, item in spec["paths"].items()
        for method in HTTP_METHODS
        if method in item
    ]


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node and len(node) == 1:
        pointer = node["$ref"]
        assert pointer.startswith("#/"), pointer
        target: Any = spec
        for part in pointer[2:].split("/"):
            target = target[part]
        node = target
    return node


def _validator(spec: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references resolve in `spec`."""
    root = {**spec, **schema}
    return Draft202012Validator(root, format_checker=FormatChecker())


def _closed(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every object schema that lists properties closed to other properties.

    The published schemas stay open (servers may add fields), but a document the code builds
    must not carry a field the spec forgot.
    """
    closed = copy.deepcopy(spec)

    def close(node: object) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(closed["components"]["schemas"])
    return closed


def _check(spec: dict[str, Any], schema_name: str, instance: object) -> None:
    validator = _validator(spec, {"$ref": f"#/components/schemas/{schema_name}"})
    errors = sorted(validator.iter_errors(instance), key=lambda error: list(error.path))
    assert not errors, f"{schema_name}: " + "; ".join(
        f"{list(error.path)}: {error.message}" for error in errors
    )


# -- the document ----------------------------------------------------------------------------


def test_the_spec_is_a_valid_openapi_document(spec: dict[str, Any]) -> None:
    # Imported here: it takes half a second, which the rest of the suite need not pay.
    from openapi_spec_validator import validate as validate_openapi

    assert str(spec["openapi"]).startswith("3.")
    assert spec["info"]["title"] and spec["info"]["version"]
    validate_openapi(spec)


def test_the_spec_names_exactly_the_routes_the_application_registers(
    spec: dict[str, Any],
) -> None:
    application = _application_routes()
    documented = _spec_routes(spec)
    assert application, "the application registers no route"
    assert sorted(application - documented) == [], "routes missing from docs/openapi.yaml"
    assert sorted(documented - application) == [], "documented routes the application lacks"


def test_path_parameters_are_declared_once_for_each_placeholder(spec: dict[str, Any]) -> None:
    for method, path, operation in _operations(spec):
        placeholders = set(re.findall(r"{([^{}/]+)}", path))
        declared = [
            parameter["name"]
            for parameter in (
                _resolve(spec, raw)
                for raw in [
                    *spec["paths"][path].get("parameters", []),
                    *operation.get("parameters", []),
                ]
            )
            if parameter["in"] == "path"
        ]
        assert sorted(declared) == sorted(placeholders), f"{method.upper()} {path}"


def test_every_operation_answers_the_in_flight_bound_and_has_an_id(spec: dict[str, Any]) -> None:
    # The request bound is a middleware in front of every route: any of them may answer 429.
    operation_ids = []
    for method, path, operation in _operations(spec):
        assert "429" in operation["responses"], f"{method.upper()} {path}: no 429"
        operation_ids.append(operation["operationId"])
    assert len(operation_ids) == len(set(operation_ids))


def test_the_examples_fit_their_schemas(spec: dict[str, Any]) -> None:
    checked = 0

    def check_media(where: str, media: dict[str, Any]) -> None:
        nonlocal checked
        schema = media.get("schema")
        if schema is None:
            return
        examples = [media["example"]] if "example" in media else []
        examples += [
            _resolve(spec, example)["value"] for example in media.get("examples", {}).values()
        ]
        validator = _validator(spec, schema)
        for example in examples:
            errors = [error.message for error in validator.iter_errors(example)]
            assert not errors, f"{where}: {errors}"
            checked += 1

    for method, path, operation in _operations(spec):
        where = f"{method.upper()} {path}"
        body = operation.get("requestBody")
        if body is not None:
            for media in _resolve(spec, body)["content"].values():
                check_media(f"{where} request", media)
        for status, raw in operation["responses"].items():
            for media in _resolve(spec, raw).get("content", {}).values():
                check_media(f"{where} {status}", media)
    assert checked > 30


def test_the_error_table_matches_the_codes_and_http_statuses(spec: dict[str, Any]) -> None:
    rows = re.findall(
        r"^\s*\|\s*(\d+)\s*\|\s*`([a-z_]+)`\s*\|\s*(\d{3})\s*\|\s*$",
        spec["info"]["description"],
        flags=re.MULTILINE,
    )
    documented = {int(code): (name, int(status)) for code, name, status in rows}
    expected = {
        code: (error.name, http_api._HTTP_STATUS_OF_ERROR[code])
        for code, error in ERRORS_BY_CODE.items()
    }
    assert documented == expected


# -- documents the code builds fit the schemas -----------------------------------------------


def test_error_documents_fit_the_error_schema(spec: dict[str, Any]) -> None:
    closed = _closed(spec)
    for error_class in ERRORS_BY_CODE.values():
        _check(closed, "Error", http_api._error_document(error_class("a message")))
    known = NotLeader("this node does not lead", leader_id="n2", leader_address="h:7110")
    _check(closed, "Error", http_api._error_document(known, leader_http="h:7112"))
    _check(closed, "Error", http_api._error_document(NotLeader("no leader")))


def _json(result: protocol.Result) -> object:
    return http_api._json_safe(result.to_wire())


def test_queue_results_fit_their_schemas(spec: dict[str, Any]) -> None:
    closed = _closed(spec)
    counts = protocol.QueueCounts(ready=3, delayed=1, leased=2)
    unlimited = protocol.QueuePolicies(
        kind="heap",
        max_size=None,
        max_payload_bytes=None,
        priority_range=None,
        lease_ms_default=30_000,
        max_deliveries=None,
        dead_letter_queue=None,
    )
    bounded = protocol.QueuePolicies(
        kind="buckets",
        max_size=100,
        max_payload_bytes=4096,
        priority_range=(-5, 5),
        lease_ms_default=0,
        max_deliveries=3,
        dead_letter_queue="dead",
    )
    queues = (
        protocol.QueueDescription(name="default", policies=unlimited, counts=counts),
        protocol.QueueDescription(name="a/b?c", policies=bounded, counts=counts),
    )
    _check(closed, "QueueCounts", _json(counts))
    _check(closed, "QueueDescription", _json(queues[1]))
    _check(closed, "QueuePage", _json(protocol.QueuePage(queues=queues, more=True)))
    _check(closed, "QueuePage", _json(protocol.QueuePage(queues=(), more=False)))
    _check(closed, "Enqueued", _json(protocol.Enqueued(task_id=2**64 - 1, duplicate=True)))
    for payload, lease in ((b"hello", 7), (b"\xff\xfe binary", None), (b"", 0)):
        task = protocol.DeliveredTask(
            task_id=42,
            lease=lease,
            queue="default",
            priority=-(2**63),
            payload=payload,
            deliveries=1,
            lease_ms=None if lease is None else 30_000,
        )
        wire = _json(task)
        _check(closed, "DeliveredTask", wire)
        assert isinstance(wire, dict)
        assert (wire["payload"] is None) == (payload == b"\xff\xfe binary")


class _Log:
    def __init__(self, last_index: int, term: int, snapshot_index: int) -> None:
        self._last_index = last_index
        self._term = term
        self.snapshot = SimpleNamespace(metadata=SimpleNamespace(index=snapshot_index))

    def last_index(self) -> int:
        return self._last_index

    def term_at(self, index: int) -> int | None:
        return self._term if index <= self._last_index else None


def _stand_in_node(tmp_path: Path, role: Role | None) -> SimpleNamespace:
    """What `HttpApi.status` reads of a node: `role` None is a node still starting."""
    (tmp_path / "wal").mkdir()
    (tmp_path / "wal" / "segment").write_bytes(b"x" * 100)
    addresses = {"n1": "10.0.0.1", "n2": "10.0.0.2"}
    node = SimpleNamespace(
        settings=SimpleNamespace(node_id="n1", data_directory=tmp_path, ready_lag_max_entries=1000),
        configuration_hash="0123456789abcdef",
        started_monotonic=0.0,
        advertised_client_address="10.0.0.1:7100",
        advertised_peer_address="10.0.0.1:7101",
        advertised_http_address="10.0.0.1:7102",
        last_contact={},
        client_address_of=lambda node_id: None if node_id is None else f"{addresses[node_id]}:7100",
        http_address_of=lambda node_id: None if node_id is None else f"{addresses[node_id]}:7102",
        replica=None,
    )
    if role is None:
        return node
    configuration = Configuration(
        voters=frozenset({NodeId("n1"), NodeId("n2")}),
        learners=frozenset({NodeId("n3")}),
        addresses=((NodeId("n1"), "10.0.0.1:7101"), (NodeId("n2"), "10.0.0.2:7101")),
    )
    leader = {Role.LEADER: "n1", Role.FOLLOWER: "n2"}.get(role)
    raft = SimpleNamespace(
        id="n1",
        role=role,
        term=4,
        leader_id=leader,
        configuration=configuration,
        commit_index=1040,
        applied_index=1039,
        log=_Log(last_index=1042, term=4, snapshot_index=1000),
        options=SimpleNamespace(promotion_lag_max_entries=1000),
        progress={},
    )
    if role is Role.LEADER:
        raft.progress = {
            "n2": SimpleNamespace(match_index=1042, next_index=1043),
            "n3": SimpleNamespace(match_index=10, next_index=11),
        }
        node.last_contact = {"n2": 0.0}
    node.replica = SimpleNamespace(stopped=False, raft=raft)
    return node


@pytest.mark.parametrize(
    "role", [None, Role.LEADER, Role.FOLLOWER, Role.CANDIDATE, Role.PRE_CANDIDATE]
)
def test_the_status_document_fits_its_schema(
    spec: dict[str, Any], tmp_path: Path, role: Role | None
) -> None:
    node = _stand_in_node(tmp_path, role)
    api = HttpApi(node, host="127.0.0.1", port=0, metrics=SimpleNamespace())
    document = api.status()
    _check(_closed(spec), "Status", document)
    if role is None:
        assert "role" not in document
        return
    members = {member["id"]: member for member in document["members"]}
    assert set(members) == {"n1", "n2", "n3"}
    leader_only = {"match_index", "next_index", "last_contact_ms", "caught_up"}
    for member in members.values():
        if role is Role.LEADER:
            assert leader_only <= member.keys()
        else:
            assert not leader_only & member.keys()
    if role is Role.LEADER:
        assert members["n3"]["last_contact_ms"] is None
        assert members["n3"]["caught_up"] is False
