"""The HTTP API of a real node against its own OpenAPI document (docs/openapi.yaml).

Schemathesis generates requests for each documented operation and checks every answer: no
server error (5xx), a documented status code, a documented content type, a body and headers
that conform to the document. One single-node cluster with a token file serves the whole
module; every request carries the admin token, so that every operation is really performed,
and is sent again with an unknown token, which must be refused with a documented 401.

Two more directions: every schema-valid createQueue request is accepted (schemathesis'
`positive_data_acceptance`: 200, or the documented 404 for a missing dead-letter queue and 409
for an existing queue, never 400), and schema-invalid requests (schemathesis' negative
generation) are refused with a 4xx, never a 5xx, and leave the node healthy.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig
from schemathesis.core.control import SkipTest

# The helpers of the tests on real node processes live with the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from process_cluster import TICK_INTERVAL_MS, wait_serving

from fuzz.budget import examples
from taskraft.local_cluster import LocalCluster, free_base_port
from taskraft.queue.limits import BUCKET_COUNT_MAX

pytestmark = pytest.mark.timeout(300)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(SCHEMA_PATH)
ADMIN_TOKEN = "fuzz-admin-token-" + "a" * 32
WRONG_TOKEN_HEADERS = {"Authorization": "Bearer " + "unknown-token-" + "u" * 32}
# The probes, and the metrics without --metrics-require-token, answer without a token.
UNAUTHENTICATED = {"healthz", "readyz", "getMetrics"}
# How long a generated dequeue may wait for a task, instead of the documented 60 s maximum.
WAIT_MS_MAX = 50
DOCUMENTED_WAIT_MS_MAX = 60_000

# Operations left out, because they would break the single node for the rest of the run:
# - addMember adds a learner at a generated address, which stays a member; a later generated
#   promoteMember could make it a voter that never answers, and the node would lose its quorum;
# - removeMember could remove the only member;
# - transferLeadership has no other voter to hand leadership to: it can only fail, possibly
#   after the documented 30 s wait, and a success would leave this node a follower.
EXCLUDED = {"addMember", "removeMember", "transferLeadership"}
OPERATION_IDS = sorted(
    operation.ok().definition.raw["operationId"]
    for operation in SCHEMA.get_all_operations()
    if operation.ok().definition.raw["operationId"] not in EXCLUDED
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# The document loaded again with the answers each direction expects. A valid createQueue is
# answered 200, or 404 when its dead-letter queue does not exist and 409 when the queue does
# (generated names repeat); 400 would mean the server refuses what the document allows. An
# invalid request of any operation is answered with a 4xx. The negative requests carry no
# generated Authorization header: the admin token is always sent, so that what is invalid is in
# the path, the query or the body (an unknown token is the first test's business).
ACCEPTANCE_SCHEMA = schemathesis.openapi.from_path(
    SCHEMA_PATH,
    config=SchemathesisConfig.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": ["200", "404", "409"]}}}
    ),
)
REJECTION_SCHEMA = schemathesis.openapi.from_path(
    SCHEMA_PATH,
    config=SchemathesisConfig.from_dict(
        {
            "generation": {"with-security-parameters": False},
            "checks": {"negative_data_rejection": {"expected-statuses": ["4XX"]}},
        }
    ),
)
# Operations that take nothing a request could get wrong (no body, no query, no constrained
# path parameter): schemathesis cannot generate an invalid request for them.
NOTHING_TO_GET_WRONG = {
    "healthz",
    "readyz",
    "getStatus",
    "getMetrics",
    "takeSnapshot",
    "downloadSnapshot",
    "promoteMember",
    "removeMember",
}
NEGATIVE_OPERATION_IDS = sorted(set(OPERATION_IDS) - NOTHING_TO_GET_WRONG)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("schema")
    token_file = directory / "tokens"
    token_file.write_text(f"operator admin {ADMIN_TOKEN}\n")
    cluster = LocalCluster(
        1,
        base_port=free_base_port(1),
        data_directory=directory / "cluster",
        tick_interval_ms=TICK_INTERVAL_MS,
        extra_arguments=["--auth-token-file", str(token_file)],
        http_token=ADMIN_TOKEN,
    )
    cluster.start()
    try:
        wait_serving(cluster)
        yield f"http://{cluster.node('n1').http_address}"
    finally:
        cluster.stop()


def _short_wait(case: Any) -> Any:
    """The case with a valid `wait_ms` cut to WAIT_MS_MAX; an invalid one stays as generated."""
    if isinstance(case.body, dict):
        wait_ms = case.body.get("wait_ms")
        if type(wait_ms) is int and 0 <= wait_ms <= DOCUMENTED_WAIT_MS_MAX:
            case.body["wait_ms"] = min(wait_ms, WAIT_MS_MAX)
    return case


def _within_the_rules_json_schema_cannot_state(case: Any) -> Any:
    """A generated createQueue request made to follow the document's two cross-field rules.

    docs/openapi.yaml states them in CreateQueueRequest's description, as JSON Schema has no
    keyword for them: `priority_range` has low <= high, and a buckets queue's range spans at
    most BUCKET_COUNT_MAX priorities. The range is put in order and cut to that span.
    """
    body = case.body
    if not isinstance(body, dict):
        return case
    priority_range = body.get("priority_range")
    if isinstance(priority_range, list) and len(priority_range) == 2:
        low, high = sorted(priority_range)
        if body.get("kind") == "buckets":
            high = min(high, low + BUCKET_COUNT_MAX - 1)
        body["priority_range"] = [low, high]
    return case


def _request(base_url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """The status and the body of one request with the admin token."""
    request = urllib.request.Request(
        base_url + path,
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_every_answer_conforms_to_the_document(base_url: str, operation_id: str) -> None:
    operation = SCHEMA.find_operation_by_id(operation_id)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @settings(
        max_examples=examples(10),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy().map(_short_wait))
    def check(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=20)
        # The same request with an unknown token: refused, as documented, and changes nothing.
        refused = case.call(base_url=base_url, headers=WRONG_TOKEN_HEADERS, timeout=20)
        case.validate_response(refused, checks=CHECKS)
        if operation_id not in UNAUTHENTICATED:
            assert refused.status_code == 401, refused.text

    check()


def test_no_operation_is_forgotten() -> None:
    documented = {
        operation.ok().definition.raw["operationId"] for operation in SCHEMA.get_all_operations()
    }
    assert documented == set(OPERATION_IDS) | EXCLUDED


def test_every_valid_create_queue_request_is_accepted(base_url: str) -> None:
    operation = ACCEPTANCE_SCHEMA.find_operation_by_id("createQueue")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @settings(
        max_examples=examples(25),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy().map(_within_the_rules_json_schema_cannot_state))
    def check(case: Any) -> None:
        case.call_and_validate(
            base_url=base_url,
            headers=headers,
            checks=[*CHECKS, positive_data_acceptance],
            timeout=20,
        )

    check()


def test_integers_written_with_a_fraction_or_an_exponent_are_integers(base_url: str) -> None:
    """JSON Schema's integer includes `9.0` and `1e3`; the server reads them exactly."""
    body = (
        b'{"queue": "integral-numbers", "kind": "buckets", "priority_range": [0.0, 9e0],'
        b' "max_size": 1e3, "max_payload_bytes": 9223372036854775807.0,'
        b' "lease_ms_default": 30000.000, "max_deliveries": 3E0}'
    )
    status, answer = _request(base_url, "POST", "/v1/queues", body)
    assert status == 200, answer
    assert json.loads(answer)["policies"] == {
        "kind": "buckets",
        "max_size": 1000,
        "max_payload_bytes": 9223372036854775807,
        "priority_range": [0, 9],
        "lease_ms_default": 30000,
        "max_deliveries": 3,
        "dead_letter_queue": None,
    }
    # A number with a fraction is still no integer.
    status, answer = _request(
        base_url, "POST", "/v1/queues", b'{"queue": "fractional-size", "max_size": 1.5}'
    )
    assert status == 400, answer
    assert json.loads(answer)["error"]["name"] == "bad_request"
    # Exponents beyond what any number type holds: a client error, not a crash of the handler.
    for number in (b"1e999999999999999999999", b"-1e-999999999999999999999", b"1e400"):
        status, answer = _request(
            base_url, "POST", "/v1/queues", b'{"queue": "huge", "max_size": ' + number + b"}"
        )
        assert status == 400, (number, answer)
        assert json.loads(answer)["error"]["name"] == "bad_request"


@pytest.mark.parametrize("operation_id", NEGATIVE_OPERATION_IDS)
def test_every_invalid_request_is_refused_with_a_client_error(
    base_url: str, operation_id: str
) -> None:
    operation = REJECTION_SCHEMA.find_operation_by_id(operation_id)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @settings(
        max_examples=examples(10),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE).map(_short_wait))
    def check(case: Any) -> None:
        response = case.call_and_validate(
            base_url=base_url,
            headers=headers,
            checks=[not_a_server_error, negative_data_rejection],
            timeout=20,
        )
        assert response.status_code < 500, response.text

    check()
    status, answer = _request(base_url, "GET", "/healthz")
    assert (status, answer) == (200, b"ok\n")


@pytest.mark.parametrize("operation_id", sorted(NOTHING_TO_GET_WRONG))
def test_operations_left_out_of_the_negative_test_take_nothing_to_get_wrong(
    operation_id: str,
) -> None:
    operation = REJECTION_SCHEMA.find_operation_by_id(operation_id)

    @settings(max_examples=1, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    def draw(case: Any) -> None:
        raise AssertionError(f"schemathesis generated an invalid {operation_id}: {case!r}")

    # Schemathesis says so at once (SkipTest), or after finding that every draw is filtered out.
    with pytest.raises((SkipTest, Unsatisfiable)):
        draw()
