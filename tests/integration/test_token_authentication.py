"""Client tokens on a real `taskraft serve` process: the client port and the HTTP API.

What is proven, against one single-node cluster started once for the module with
`--auth-token-file`:

- every operation of the client protocol, sent with no token, an unknown token, and tokens of the
  roles `read`, `client` and `admin`, is answered as the role table says: `unauthenticated` in an
  error frame after which the node closes the connection, `forbidden` on a connection that
  stays open, or served; the failures counter of `/metrics` rises by the refusals;
- every route of the HTTP API with the same five: 401 with `WWW-Authenticate: Bearer`, 403, or
  served, and the probes and `/metrics` open;
- rotation: the file rewritten with a new token, a new connection with it is served and one with
  the old token refused, within a deadline; a connection opened before keeps its identity; a
  file rewritten malformed keeps the tokens in force.

Other nodes, each started for its test: one without `--auth-token-file`, which logs a warning and
serves everyone as before; one with a malformed file, which refuses to start naming the line; one
with `--metrics-require-token`; one with `--requests-per-token-max 2` (counted on the client
port and the HTTP API together), where a token's third
waiting dequeue (across connections) is answered `overloaded` on a connection that stays open,
another token is served, and `/metrics` shows the rejection and the in-flight gauge by token name.

How: `LocalCluster` processes on free ports, the client protocol through `ClientConnection` over
plain sockets, HTTP through `urllib`, and every wait on a condition with a deadline.
"""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from process_cluster import (
    CLUSTERS_KEY,
    DEADLINE_S,
    OPENER_WITHOUT_REDIRECTS,
    SHUTDOWN_TIMEOUT_MS,
    TICK_INTERVAL_MS,
    http,
    wait_serving,
)

from taskraft.errors import Forbidden, Overloaded, Unauthenticated
from taskraft.local_cluster import LocalCluster, free_base_port, wait_until
from taskraft.protocol import (
    Ack,
    AckMany,
    ClientConnection,
    ClientEvent,
    Count,
    CreateQueue,
    DeleteQueue,
    DeliveredTask,
    Dequeue,
    DequeueMany,
    Enqueue,
    EnqueueItem,
    EnqueueMany,
    Extend,
    HandshakeAccepted,
    ListQueues,
    Nack,
    Operation,
    ProtocolFailure,
    Response,
    Status,
    TaskLease,
)

pytestmark = pytest.mark.timeout(180)

TOKENS = {
    "read": "read-token-" + "r" * 32,
    "client": "client-token-" + "c" * 32,
    "admin": "admin-token-" + "a" * 32,
}
WRONG_TOKEN = "wrong-token-" + "w" * 32
OLD_ROTATING_TOKEN = "rotating-old-" + "o" * 32
NEW_ROTATING_TOKEN = "rotating-new-" + "n" * 32

# Who presents what: no token, an unknown one, and one of each role.
CALLERS: dict[str, str | None] = {"none": None, "wrong": WRONG_TOKEN, **TOKENS}


def token_file_text(rotating: str) -> str:
    return (
        "# tokens of the authentication tests\n"
        f"reader read {TOKENS['read']}\n"
        f"worker client {TOKENS['client']}\n"
        "\n"
        f"operator admin {TOKENS['admin']}\n"
        f"rotating client {rotating}\n"
    )


@dataclass
class SecuredNode:
    cluster: LocalCluster
    token_file: Path

    @property
    def client_address(self) -> str:
        return self.cluster.servers[0]

    @property
    def http_address(self) -> str:
        return self.cluster.node("n1").http_address


def start_cluster(directory: Path, *extra_arguments: str, http_token: str | None) -> LocalCluster:
    cluster = LocalCluster(
        1,
        base_port=free_base_port(1),
        data_directory=directory,
        tick_interval_ms=TICK_INTERVAL_MS,
        extra_arguments=["--shutdown-timeout-ms", str(SHUTDOWN_TIMEOUT_MS), *extra_arguments],
        http_token=http_token,
    )
    cluster.start()
    return cluster


def start_secured(directory: Path, *extra_arguments: str) -> SecuredNode:
    """A node started with a token file of TOKENS and the old rotating token, in `directory`;
    `LocalCluster` reads its status with the read token."""
    token_file = directory / "tokens"
    token_file.write_text(token_file_text(OLD_ROTATING_TOKEN))
    cluster = start_cluster(
        directory / "cluster",
        "--auth-token-file",
        str(token_file),
        *extra_arguments,
        http_token=TOKENS["read"],
    )
    return SecuredNode(cluster, token_file)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNode]:
    node = start_secured(tmp_path_factory.mktemp("secured"))
    try:
        wait_serving(node.cluster)
        yield node
    finally:
        node.cluster.stop()


@pytest.fixture
def clusters_for_report(request: pytest.FixtureRequest) -> list[LocalCluster]:
    """Clusters whose logs conftest.py adds to the report of a failed test."""
    started: list[LocalCluster] = []
    request.node.stash[CLUSTERS_KEY] = started
    return started


@pytest.fixture
def secured_node(secured: SecuredNode, clusters_for_report: list[LocalCluster]) -> SecuredNode:
    clusters_for_report.append(secured.cluster)
    return secured


# -- the client protocol over a plain socket ---------------------------------------------------


class RawConnection:
    """`ClientConnection` over a blocking socket, every read bounded by the deadline."""

    def __init__(self, address: str, token: str | None) -> None:
        host, port = address.rsplit(":", 1)
        self.socket = socket.create_connection((host, int(port)), timeout=DEADLINE_S)
        self.connection = ClientConnection(client_name="auth-test", token=token)
        self.flush()

    def flush(self) -> None:
        self.socket.sendall(self.connection.data_to_send())

    def next_event(self) -> ClientEvent:
        while (event := self.connection.next_event()) is None:
            self.connection.receive_data(self.socket.recv(65536))
        return event

    def handshake(self) -> HandshakeAccepted | ProtocolFailure:
        event = self.next_event()
        assert isinstance(event, HandshakeAccepted | ProtocolFailure), event
        return event

    def call(self, operation: Operation) -> Response:
        request_id = self.connection.send_request(operation)
        self.flush()
        event = self.next_event()
        assert isinstance(event, Response) and event.request_id == request_id, event
        return event

    def closed_by_node(self) -> bool:
        """Whether the node closed the connection: end of stream within the deadline."""
        try:
            return self.socket.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.socket.close()


def connect(address: str, token: str | None) -> RawConnection:
    """A connection past an accepted handshake."""
    connection = RawConnection(address, token)
    accepted = connection.handshake()
    assert isinstance(accepted, HandshakeAccepted), accepted
    return connection


def operations(tag: str) -> dict[str, Operation]:
    """One request of each operation; those that need a task name one that does not exist."""
    lease = TaskLease(task_id=10**12, lease=1)
    return {
        "create_queue": CreateQueue(queue=f"created-by-{tag}"),
        "delete_queue": DeleteQueue(queue=f"missing-{tag}"),
        "list_queues": ListQueues(),
        "count": Count(queue="default"),
        "enqueue": Enqueue(queue="default", payload=b"x", priority=0),
        "dequeue": Dequeue(queue="default", lease_ms=0),
        "enqueue_many": EnqueueMany(
            queue="default", tasks=(EnqueueItem(payload=b"y", priority=0, key=f"many-{tag}"),)
        ),
        "dequeue_many": DequeueMany(queue="default", max_tasks=2, lease_ms=0),
        "ack": Ack(task=lease),
        "nack": Nack(task=lease),
        "extend": Extend(task=lease, lease_ms=1000),
        "ack_many": AckMany(tasks=(lease,)),
        "status": Status(),
    }


READ_ONLY = {"list_queues", "count", "status"}


def expected_client_outcome(caller: str, operation: str) -> str:
    if caller in ("none", "wrong"):
        return "unauthenticated"
    if caller == "read" and operation not in READ_ONLY:
        return "forbidden"
    return "served"


# -- HTTP ----------------------------------------------------------------------------------------


# (method, path, body, permission); bodies that change nothing lasting when served.
HTTP_ROUTES: list[tuple[str, str, object, str | None]] = [
    ("GET", "/healthz", None, None),
    ("GET", "/readyz", None, None),
    ("GET", "/metrics", None, None),
    ("GET", "/v1/status", None, "read"),
    ("GET", "/v1/queues", None, "read"),
    ("GET", "/v1/queues/default/count", None, "read"),
    ("POST", "/v1/queues", {"queue": "http-created"}, "write"),
    ("DELETE", "/v1/queues/http-missing", None, "write"),
    ("POST", "/v1/queues/default/enqueue", {"payload": "http"}, "write"),
    ("POST", "/v1/queues/default/dequeue", {"lease_ms": 0}, "write"),
    ("POST", "/v1/tasks/1000000000000/ack", {"lease": 1}, "write"),
    ("POST", "/v1/tasks/1000000000000/nack", {"lease": 1}, "write"),
    ("POST", "/v1/tasks/1000000000000/extend", {"lease": 1, "lease_ms": 1000}, "write"),
    ("POST", "/v1/members", {}, "admin"),
    ("POST", "/v1/members/n9/promote", None, "admin"),
    ("DELETE", "/v1/members/n9", None, "admin"),
    ("POST", "/v1/leadership/transfer", {"target": "n1"}, "admin"),
    ("POST", "/v1/snapshot", None, "admin"),
    ("GET", "/v1/snapshot", None, "admin"),
]

GRANTS = {"read": {"read"}, "client": {"read", "write"}, "admin": {"read", "write", "admin"}}


def expected_http_outcome(caller: str, permission: str | None) -> str:
    if permission is None:
        return "served"
    if caller in ("none", "wrong"):
        return "unauthenticated"
    return "served" if permission in GRANTS[caller] else "forbidden"


def failures_counted(address: str, surface: str, token: str | None = None) -> float:
    """`taskraft_authentication_failures_total{surface=...}` of the node's /metrics."""
    answer = http("GET", address, "/metrics", token=token)
    assert answer.status == 200, answer.body
    pattern = rf'^taskraft_authentication_failures_total{{surface="{surface}"}} (\S+)$'
    match = re.search(pattern, answer.body.decode(), flags=re.MULTILINE)
    assert match is not None, f"no failures counter for {surface}"
    return float(match.group(1))


# -- the matrix ----------------------------------------------------------------------------------


def test_every_client_operation_with_every_kind_of_token(secured_node: SecuredNode) -> None:
    address = secured_node.client_address
    counted_before = failures_counted(secured_node.http_address, "client")
    refusals = 0
    outcomes: dict[tuple[str, str], str] = {}
    for caller, token in CALLERS.items():
        if token is None or token == WRONG_TOKEN:
            for name, operation in operations(caller).items():
                # The request is pipelined behind the handshake: the node must not read it.
                raw = RawConnection(address, token)
                raw.connection.send_request(operation)
                raw.flush()
                refused = raw.handshake()
                assert isinstance(refused, ProtocolFailure), (caller, name, refused)
                assert isinstance(refused.error, Unauthenticated), (caller, name)
                assert refused.error.message == "authentication required"
                assert raw.closed_by_node(), (caller, name)
                raw.close()
                refusals += 1
                outcomes[(caller, name)] = "unauthenticated"
            continue
        connection = connect(address, token)
        try:
            for name, operation in operations(caller).items():
                response = connection.call(operation)
                error = response.error
                if isinstance(error, Forbidden):
                    outcomes[(caller, name)] = "forbidden"
                else:
                    # Served: a result, or the operation's own error (unknown_lease for a
                    # made-up lease, queue_not_found for a missing queue).
                    assert not isinstance(error, Unauthenticated), (caller, name)
                    outcomes[(caller, name)] = "served"
            # A forbidden request leaves the connection open and serving.
            assert connection.call(Status()).error is None
        finally:
            connection.close()
    expected = {
        (caller, name): expected_client_outcome(caller, name)
        for caller in CALLERS
        for name in operations(caller)
    }
    assert outcomes == expected

    def counter_caught_up() -> bool:
        return failures_counted(secured_node.http_address, "client") == counted_before + refusals

    wait_until(counter_caught_up, "the client failures counter to count every refusal", DEADLINE_S)


def test_the_client_token_can_do_a_whole_task_life(secured_node: SecuredNode) -> None:
    connection = connect(secured_node.client_address, TOKENS["client"])
    try:
        assert connection.call(CreateQueue(queue="life")).error is None
        assert connection.call(Enqueue(queue="life", payload=b"job", priority=0)).error is None
        delivered = connection.call(Dequeue(queue="life", lease_ms=60_000))
        task = delivered.result
        assert isinstance(task, DeliveredTask) and task.lease is not None, delivered
        lease = TaskLease(task_id=task.task_id, lease=task.lease)
        assert connection.call(Extend(task=lease, lease_ms=60_000)).error is None
        assert connection.call(Ack(task=lease)).error is None
        assert connection.call(DeleteQueue(queue="life")).error is None
    finally:
        connection.close()


def test_every_http_route_with_every_kind_of_token(secured_node: SecuredNode) -> None:
    address = secured_node.http_address
    counted_before = failures_counted(address, "http")
    refusals = 0
    outcomes: dict[tuple[str, str, str], str] = {}
    for caller, token in CALLERS.items():
        for method, path, body, _permission in HTTP_ROUTES:
            answer = http(method, address, path, body, token=token)
            where = (caller, method, path)
            if answer.status == 401:
                assert answer.headers.get("WWW-Authenticate") == "Bearer", where
                assert answer.json() == {
                    "error": {
                        "code": 20,
                        "name": "unauthenticated",
                        "message": "authentication required",
                    }
                }, where
                refusals += 1
                outcomes[where] = "unauthenticated"
            elif answer.status == 403:
                error = answer.json()["error"]
                assert (error["code"], error["name"]) == (21, "forbidden"), where
                assert "WWW-Authenticate" not in answer.headers
                outcomes[where] = "forbidden"
            else:
                assert answer.status < 500, (where, answer.status, answer.body)
                outcomes[where] = "served"
    expected = {
        (caller, method, path): expected_http_outcome(caller, permission)
        for caller in CALLERS
        for method, path, _body, permission in HTTP_ROUTES
    }
    assert outcomes == expected
    # The failures of this test, and the one just now to read the counter, which is open.
    assert failures_counted(address, "http") == counted_before + refusals


def test_a_malformed_authorization_header_is_unauthenticated(secured_node: SecuredNode) -> None:
    address = secured_node.http_address
    for header in (
        f"Basic {TOKENS['admin']}",
        "Bearer",
        "Bearer ",
        TOKENS["admin"],
        f"Bearer {TOKENS['admin']}x",
    ):
        request = urllib.request.Request(f"http://{address}/v1/status")
        request.add_header("Authorization", header)
        with pytest.raises(urllib.error.HTTPError) as raised:
            OPENER_WITHOUT_REDIRECTS.open(request, timeout=DEADLINE_S)
        assert raised.value.code == 401, header
        raised.value.close()
    assert http("GET", address, "/v1/status", token=TOKENS["read"]).status == 200
    # The scheme is case-insensitive.
    request = urllib.request.Request(f"http://{address}/v1/status")
    request.add_header("Authorization", f"bearer {TOKENS['read']}")
    with OPENER_WITHOUT_REDIRECTS.open(request, timeout=DEADLINE_S) as response:
        assert response.status == 200


# -- rotation ------------------------------------------------------------------------------------


def handshake_outcome(address: str, token: str) -> str:
    raw = RawConnection(address, token)
    try:
        event = raw.handshake()
        if isinstance(event, HandshakeAccepted):
            return "accepted"
        assert isinstance(event.error, Unauthenticated), event
        return "refused"
    finally:
        raw.close()


def test_a_rewritten_token_file_takes_effect_without_a_restart(secured_node: SecuredNode) -> None:
    address = secured_node.client_address
    token_file = secured_node.token_file
    assert handshake_outcome(address, OLD_ROTATING_TOKEN) == "accepted"
    assert handshake_outcome(address, NEW_ROTATING_TOKEN) == "refused"
    # Opened before the rotation: it keeps its identity until it closes.
    before = connect(address, OLD_ROTATING_TOKEN)
    try:
        token_file.write_text(token_file_text(NEW_ROTATING_TOKEN))
        wait_until(
            lambda: handshake_outcome(address, NEW_ROTATING_TOKEN) == "accepted",
            "the new token to be accepted",
            DEADLINE_S,
        )
        assert handshake_outcome(address, OLD_ROTATING_TOKEN) == "refused"
        new = http("GET", secured_node.http_address, "/v1/status", token=NEW_ROTATING_TOKEN)
        assert new.status == 200
        old = http("GET", secured_node.http_address, "/v1/status", token=OLD_ROTATING_TOKEN)
        assert old.status == 401
        assert before.call(Count(queue="default")).error is None
        assert before.call(Enqueue(queue="default", payload=b"r", priority=0)).error is None
    finally:
        before.close()

    # A file rewritten malformed (replaced whole, by a rename) keeps the tokens in force, and
    # the node says so in its log.
    replacement = token_file.with_name("tokens.next")
    replacement.write_text(token_file_text(OLD_ROTATING_TOKEN) + "broken line\n")
    replacement.replace(token_file)

    def malformed_file_seen() -> bool:
        handshake_outcome(address, NEW_ROTATING_TOKEN)  # makes the node look at the file
        return "line 7: expected NAME ROLE TOKEN" in secured_node.cluster.log_tail("n1", 200)

    wait_until(malformed_file_seen, "the node to log the malformed token file", DEADLINE_S)
    log = secured_node.cluster.log_tail("n1", 200)
    assert "keeping the 4 tokens read before" in log
    assert OLD_ROTATING_TOKEN not in log and NEW_ROTATING_TOKEN not in log
    assert handshake_outcome(address, NEW_ROTATING_TOKEN) == "accepted"
    assert handshake_outcome(address, OLD_ROTATING_TOKEN) == "refused"

    # Fixed again: the old token is back.
    token_file.write_text(token_file_text(OLD_ROTATING_TOKEN))
    wait_until(
        lambda: handshake_outcome(address, OLD_ROTATING_TOKEN) == "accepted",
        "the restored token to be accepted",
        DEADLINE_S,
    )
    assert handshake_outcome(address, NEW_ROTATING_TOKEN) == "refused"


def test_no_token_is_ever_logged(secured_node: SecuredNode) -> None:
    log = secured_node.cluster.log_tail("n1", 100_000)
    for token in (*TOKENS.values(), WRONG_TOKEN, OLD_ROTATING_TOKEN, NEW_ROTATING_TOKEN):
        assert token not in log
    assert "clients authenticate with the 4 tokens of" in log


# -- other nodes ---------------------------------------------------------------------------------


def test_without_a_token_file_the_node_warns_and_serves_everyone(
    tmp_path: Path, clusters_for_report: list[LocalCluster]
) -> None:
    cluster = start_cluster(tmp_path / "open", http_token=None)
    clusters_for_report.append(cluster)
    try:
        wait_serving(cluster)
        assert "no --auth-token-file" in cluster.log_tail("n1", 1000)
        address = cluster.servers[0]
        for token in (None, "any-token-at-all"):
            connection = connect(address, token)
            try:
                for name, operation in operations(f"open-{token is None}").items():
                    error = connection.call(operation).error
                    assert not isinstance(error, Forbidden | Unauthenticated), name
            finally:
                connection.close()
        http_address = cluster.node("n1").http_address
        for method, path, body, _permission in HTTP_ROUTES:
            answer = http(method, http_address, path, body)
            assert answer.status not in (401, 403), (method, path)
            assert answer.status < 500, (method, path, answer.body)
    finally:
        assert cluster.stop() == {"n1": 0}


def test_a_malformed_token_file_stops_the_start_naming_the_line(
    tmp_path: Path, clusters_for_report: list[LocalCluster]
) -> None:
    token_file = tmp_path / "tokens"
    secret = "secret-" + "s" * 32
    token_file.write_text(f"# comment\nworker client {secret}\nreader reader {secret}x\n")
    cluster = start_cluster(
        tmp_path / "malformed", "--auth-token-file", str(token_file), http_token=None
    )
    clusters_for_report.append(cluster)
    try:
        wait_until(lambda: not cluster.is_running("n1"), "the node to exit", DEADLINE_S)
        assert cluster.processes["n1"].returncode == 2
        log = cluster.log_tail("n1", 100)
        assert f"the token file {token_file}, line 3: unknown role 'reader'" in log
        assert secret not in log
    finally:
        cluster.stop()


def test_metrics_require_token_closes_metrics_to_callers_without_one(
    tmp_path: Path, clusters_for_report: list[LocalCluster]
) -> None:
    cluster = start_secured(tmp_path, "--metrics-require-token").cluster
    clusters_for_report.append(cluster)
    try:
        wait_serving(cluster)
        address = cluster.node("n1").http_address
        refused = http("GET", address, "/metrics")
        assert refused.status == 401
        assert refused.headers.get("WWW-Authenticate") == "Bearer"
        assert http("GET", address, "/metrics", token=WRONG_TOKEN).status == 401
        for token in TOKENS.values():
            assert http("GET", address, "/metrics", token=token).status == 200
        assert failures_counted(address, "http", token=TOKENS["read"]) == 2
        assert http("GET", address, "/healthz").status == 200
        assert http("GET", address, "/readyz").status == 200
    finally:
        assert cluster.stop() == {"n1": 0}


# -- the per-token concurrency limit -----------------------------------------------------------

# Far longer than the test: these dequeues end when a task comes.
LONG_WAIT_MS = 60_000


def token_metric(address: str, name: str, token_name: str) -> float | None:
    """The sample of `name{token="token_name"}` in the node's /metrics, or None without one."""
    answer = http("GET", address, "/metrics")
    assert answer.status == 200, answer.body
    pattern = rf'^{name}{{token="{re.escape(token_name)}"}} (\S+)$'
    match = re.search(pattern, answer.body.decode(), flags=re.MULTILINE)
    return None if match is None else float(match.group(1))


def test_requests_per_token_max_refuses_a_third_waiting_dequeue_of_one_token(
    tmp_path: Path, clusters_for_report: list[LocalCluster]
) -> None:
    cluster = start_secured(tmp_path, "--requests-per-token-max", "2").cluster
    clusters_for_report.append(cluster)
    connections: list[RawConnection] = []
    try:
        wait_serving(cluster)
        address = cluster.servers[0]
        http_address = cluster.node("n1").http_address
        # `operator` (the admin token) is another name, with its own count.
        other = connect(address, TOKENS["admin"])
        connections.append(other)
        assert other.call(CreateQueue(queue="limited")).error is None
        # `worker` (the client token): two waiting dequeues on two connections reach the limit.
        waiting: list[tuple[RawConnection, int]] = []
        for _ in range(2):
            worker = connect(address, TOKENS["client"])
            connections.append(worker)
            request_id = worker.connection.send_request(
                Dequeue(queue="limited", wait_ms=LONG_WAIT_MS)
            )
            worker.flush()
            waiting.append((worker, request_id))

        def worker_in_flight() -> float | None:
            return token_metric(http_address, "taskraft_token_requests_in_flight", "worker")

        wait_until(lambda: worker_in_flight() == 2, "two requests of worker in flight", DEADLINE_S)
        # A third, on a third connection, is refused at once, naming no token.
        third = connect(address, TOKENS["client"])
        connections.append(third)
        refused = third.call(Dequeue(queue="limited", wait_ms=LONG_WAIT_MS)).error
        assert isinstance(refused, Overloaded), refused
        assert "concurrency limit of this token" in refused.message
        for name in ("worker", "operator", "reader", "rotating"):
            assert name not in refused.message
        rejections = "taskraft_token_limit_rejections_total"
        assert token_metric(http_address, rejections, "worker") == 1
        # The same count on the HTTP API: the token's third request there is refused too.
        answer = http("GET", http_address, "/v1/queues/limited/count", token=TOKENS["client"])
        assert answer.status == 429, answer
        assert token_metric(http_address, rejections, "worker") == 2
        # The other token is served meanwhile; its two tasks end the two waits.
        for payload in (b"one", b"two"):
            enqueued = other.call(Enqueue(queue="limited", payload=payload, priority=0))
            assert enqueued.error is None, enqueued
        for worker, request_id in waiting:
            event = worker.next_event()
            assert isinstance(event, Response) and event.request_id == request_id, event
            assert isinstance(event.result, DeliveredTask), event
        wait_until(lambda: worker_in_flight() == 0, "no request of worker in flight", DEADLINE_S)
        assert token_metric(http_address, "taskraft_token_requests_in_flight", "operator") == 0
        assert token_metric(http_address, rejections, "worker") == 2
        # With its slots back, the token is served on the HTTP API again.
        answer = http("GET", http_address, "/v1/queues/limited/count", token=TOKENS["client"])
        assert answer.status == 200, answer
        assert token_metric(http_address, rejections, "operator") in (None, 0)
        # The refused connection stayed open and is served.
        assert third.call(Count(queue="limited")).error is None
        # The other bounds of the client port that bite have their counters too.
        exposition = http("GET", http_address, "/metrics").body.decode()
        for counter in (
            "taskraft_client_connections_refused_total 0.0",
            "taskraft_client_requests_rejected_total 0.0",
            "taskraft_client_handshake_timeouts_total 0.0",
            "taskraft_long_polls_refused_total 0.0",
        ):
            assert f"\n{counter}\n" in exposition, counter
    finally:
        for connection in connections:
            connection.close()
        assert cluster.stop() == {"n1": 0}
