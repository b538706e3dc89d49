"""The user's story on a real Kubernetes cluster (docs/kubernetes.md), one test per step.

Install the operator's chart, create the example QueueCluster, use it through the client
protocol, kill the leader's pod, scale 3 -> 5 -> 3, change the version and watch the roll
restart the leader last, take a snapshot on request, delete the cluster. The steps run in file
order and build on each other (conftest.py skips the rest once one fails).

Run with `make e2e` and KUBECONFIG set (e.g. a kind cluster with the images taskraft:0.1.0 and
taskraft-operator:0.1.0 loaded); without a cluster every test skips saying how. Settings:

- TASKRAFT_E2E_NAMESPACE: the namespace of the QueueCluster (default: a fresh random one); the
  operator goes into NAMESPACE-system, installed to watch NAMESPACE only.
- TASKRAFT_E2E_KEEP=1: leave the namespaces and the Helm release behind for a look.

How the tests reach the nodes (TASKRAFT_E2E_REACH):

- `port-forward` (the default, for any cluster such as kind): a follower redirects to the
  leader's in-cluster DNS name, which does not resolve outside, so a client goes through
  `kubectl port-forward pod/LEADER` (again to the new leader after a failover), and the client
  Service is exercised from inside the cluster with the `taskraft` command of a node pod.
- `direct`: the tests run inside the cluster's network with its names (the local control plane
  of e2e/localkube does this): clients use the pods' DNS names and the client Service directly.

The example runs under TLS with tokens, as a platform team would run it: before applying it, the
story writes the TLS Secret `jobs-tls` that cert-manager would issue (an authority of its own,
the certificate naming the pods' and the Service's DNS names, and 127.0.0.1 for port-forward),
and every client uses the tokens the operator generated into `jobs-credentials` and trusts that
authority.

Every wait polls with a deadline; nothing relies on a fixed sleep.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import secrets
import selectors
import shlex
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import yaml

from taskraft.certificates import CertificateAuthority
from taskraft.client import Client
from taskraft.errors import TaskraftError, Unauthenticated
from taskraft.tls import client_context

REPOSITORY = Path(__file__).resolve().parents[1]
CHART = REPOSITORY / "charts" / "taskraft-operator"
EXAMPLE = REPOSITORY / "examples" / "queuecluster.yaml"

NAMESPACE = os.environ.get("TASKRAFT_E2E_NAMESPACE") or f"taskraft-e2e-{secrets.token_hex(3)}"
OPERATOR_NAMESPACE = f"{NAMESPACE}-system"
RELEASE = "taskraft-e2e"
OPERATOR_DEPLOYMENT = f"{RELEASE}-taskraft-operator"  # the chart's fullname
KEEP = os.environ.get("TASKRAFT_E2E_KEEP", "") not in ("", "0")

EXAMPLE_BODY: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
NAME: str = EXAMPLE_BODY["metadata"]["name"]
REPLICAS: int = EXAMPLE_BODY["spec"]["replicas"]
VERSION: str = EXAMPLE_BODY["spec"]["version"]
DECLARED_QUEUES = {queue["name"] for queue in EXAMPLE_BODY["spec"].get("queues", [])}
TLS_SECRET: str = EXAMPLE_BODY["spec"]["tls"]["secretName"]
CREDENTIALS_SECRET = f"{NAME}-credentials"
SELECTOR = f"app.kubernetes.io/name=taskraft,app.kubernetes.io/instance={NAME}"
CLIENT_PORT = 7100
HTTP_PORT = 7102
REACH = os.environ.get("TASKRAFT_E2E_REACH", "port-forward")

DURABLE_QUEUE = "e2e-durable"
DURABLE_TASKS = 20
FAILOVER_QUEUE = "e2e-failover"
FAILOVER_TASKS = 5_000
ROLL_QUEUE = "e2e-roll"
BACKUP_CLAIM = "e2e-backups"
# Run in a Job that mounts the backup claim: exits 0 when the named snapshot and its metadata
# are there and agree.
CHECK_BACKUP_SCRIPT = """\
import json, os, sys, zlib
base = os.path.join({directory!r}, {name!r})
meta = json.load(open(base + ".json"))
data = open(base + ".snapshot", "rb").read()
ok = len(data) == meta["size_bytes"] > 0 and format(zlib.crc32(data), "08x") == meta["crc32"]
sys.exit(0 if ok else "the backup does not match its metadata: " + repr(meta))
"""

# Deadlines of the waits (the cluster's pods pull nothing with kind-loaded images).
STEP_TIMEOUT_S = 600.0
ROLL_TIMEOUT_S = 900.0
POLL_INTERVAL_S = 2.0

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Commands


def run(
    args: list[str], *, timeout: float = 60.0, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; AssertionError with its stderr when it fails or outlasts `timeout`."""
    try:
        completed = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, input=input_text, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"`{shlex.join(args)}` did not finish within {timeout:g} s") from error
    if check and completed.returncode != 0:
        raise AssertionError(
            f"`{shlex.join(args)}` failed with status {completed.returncode}: "
            f"{completed.stderr.strip() or completed.stdout.strip()}"
        )
    return completed


def kubectl(*args: str, timeout: float = 60.0, check: bool = True) -> str:
    return run(["kubectl", *args], timeout=timeout, check=check).stdout


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


@dataclass(frozen=True, slots=True)
class Pending:
    """What a probe of `wait_until` saw while the awaited state is not there yet."""

    detail: str


def wait_until(
    description: str,
    probe: Callable[[], T | Pending],
    *,
    timeout_s: float = STEP_TIMEOUT_S,
    interval_s: float = POLL_INTERVAL_S,
) -> T:
    """Poll `probe` until it returns something other than Pending; AssertionError at the
    deadline with the last thing it saw. A failing kubectl call counts as Pending."""
    deadline = time.monotonic() + timeout_s
    last = "nothing yet"
    while True:
        try:
            result = probe()
        except AssertionError as error:
            result = Pending(f"error: {error}")
        if not isinstance(result, Pending):
            return result
        last = result.detail
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"not {description} after {timeout_s:g} s; last seen: {last}")
        time.sleep(min(interval_s, remaining))


# ---------------------------------------------------------------------------------------------
# The cluster as Kubernetes shows it


def queue_cluster() -> dict[str, Any]:
    body: dict[str, Any] = kubectl_json("get", "queuecluster", NAME, "-n", NAMESPACE)
    return body


def conditions(body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    status = body.get("status") or {}
    return {condition["type"]: condition for condition in status.get("conditions") or []}


def pods() -> dict[str, dict[str, Any]]:
    items = kubectl_json("get", "pods", "-n", NAMESPACE, "-l", SELECTOR)["items"]
    return {pod["metadata"]["name"]: pod for pod in items}


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return bool(condition["status"] == "True")
    return False


def pvc_names() -> set[str]:
    items = kubectl_json("get", "pvc", "-n", NAMESPACE, "-l", SELECTOR)["items"]
    return {pvc["metadata"]["name"] for pvc in items}


def event_reasons() -> set[str]:
    selector = f"involvedObject.kind=QueueCluster,involvedObject.name={NAME}"
    items = kubectl_json("get", "events", "-n", NAMESPACE, "--field-selector", selector)["items"]
    return {event.get("reason", "") for event in items}


def settled(replicas: int) -> dict[str, Any] | Pending:
    """The QueueCluster once it runs `replicas` ready voters with a leader and nothing under
    way; else what is missing."""
    body = queue_cluster()
    status = body.get("status") or {}
    found = conditions(body)
    members = status.get("members") or []
    voters = [member for member in members if member.get("voter")]
    current_pods = pods()
    problems = []
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        problems.append("the operator has not seen the latest generation")
    if not status.get("leader"):
        problems.append("no leader")
    if status.get("readyReplicas") != replicas or len(voters) != replicas:
        problems.append(f"ready {status.get('readyReplicas')}, voters {len(voters)}")
    if len(members) != replicas or not all(member.get("ready") for member in members):
        problems.append(f"members {[(m['id'], m['role'], m['ready']) for m in members]}")
    if len(current_pods) != replicas or not all(map(pod_ready, current_pods.values())):
        problems.append(f"pods {sorted(current_pods)}")
    for condition_type, wanted in (
        ("Available", "True"),
        ("Progressing", "False"),
        ("Scaling", "False"),
        ("Upgrading", "False"),
        ("Degraded", "False"),
    ):
        condition = found.get(condition_type) or {}
        if condition.get("status") != wanted:
            problems.append(f"{condition_type} {condition.get('status')} {condition.get('reason')}")
    if status.get("phase") != "Running":
        problems.append(f"phase {status.get('phase')}")
    return Pending("; ".join(problems)) if problems else body


def wait_settled(replicas: int, *, timeout_s: float = STEP_TIMEOUT_S) -> dict[str, Any]:
    return wait_until(
        f"running with {replicas} ready voters", lambda: settled(replicas), timeout_s=timeout_s
    )


# ---------------------------------------------------------------------------------------------
# Clients


def _drain(stream: IO[str]) -> None:
    for _line in stream:
        pass  # kubectl prints a line per connection; an unread pipe would block it


@contextlib.contextmanager
def port_forward(target: str, remote_port: int, *, timeout_s: float = 30.0) -> Iterator[int]:
    """`kubectl port-forward TARGET :REMOTE_PORT` for the block; yields the local port."""
    args = ["kubectl", "port-forward", "-n", NAMESPACE, target, f":{remote_port}"]
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        local_port = None
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while local_port is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or process.poll() is not None:
                    raise AssertionError(
                        f"`{shlex.join(args)}` did not start forwarding: "
                        f"{process.stderr.read() if process.poll() is not None else 'timed out'}"
                    )
                if not selector.select(timeout=remaining):
                    continue
                line = process.stdout.readline()
                match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
                if match is not None:
                    local_port = int(match.group(1))
        for stream in (process.stdout, process.stderr):
            threading.Thread(target=_drain, args=(stream,), daemon=True).start()
        yield local_port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def pod_endpoint(pod: str, port: int) -> Iterator[str]:
    """An address at which this process reaches `port` of `pod` for the block."""
    if REACH == "direct":
        yield f"{pod}.{NAME}-peers.{NAMESPACE}.svc:{port}"
        return
    with port_forward(f"pod/{pod}", port) as local_port:
        yield f"127.0.0.1:{local_port}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client of the example cluster needs: the authority its certificates come from
    (a file here), and the tokens the operator generated."""

    authority: Path
    client_token: str
    read_token: str

    def tls(self) -> ssl.SSLContext:
        return client_context(self.authority)


_credentials: list[Credentials] = []
_AUTHORITY_DIRECTORY = Path(os.environ.get("TMPDIR", "/tmp")) / f"taskraft-e2e-pki-{NAMESPACE}"


def create_tls_secret() -> Path:
    """The Secret of spec.tls, as cert-manager would write it; the authority's file."""
    authority = CertificateAuthority.create(_AUTHORITY_DIRECTORY, "ca", f"{NAMESPACE}-ca")
    domains = (f"{NAMESPACE}.svc", f"{NAMESPACE}.svc.cluster.local")
    node = authority.issue_node(
        _AUTHORITY_DIRECTORY,
        common_name=NAME,
        dns_names=(
            *(f"*.{NAME}-peers.{domain}" for domain in domains),
            *(f"{NAME}.{domain}" for domain in domains),
            "localhost",
        ),
        ip_addresses=(ipaddress.IPv4Address("127.0.0.1"),),
    )
    kubectl(
        "create",
        "secret",
        "generic",
        TLS_SECRET,
        "-n",
        NAMESPACE,
        "--type=kubernetes.io/tls",
        f"--from-file=tls.crt={node.certificate}",
        f"--from-file=tls.key={node.private_key}",
        f"--from-file=ca.crt={authority.files.certificate}",
    )
    return authority.files.certificate


def credentials() -> Credentials:
    """The example cluster's credentials (read once the operator made them)."""
    if not _credentials:
        data = kubectl_json("get", "secret", CREDENTIALS_SECRET, "-n", NAMESPACE)["data"]
        _credentials.append(
            Credentials(
                authority=_AUTHORITY_DIRECTORY / "ca.crt",
                client_token=base64.b64decode(data["client-token"]).decode(),
                read_token=base64.b64decode(data["read-token"]).decode(),
            )
        )
    return _credentials[0]


def cluster_client(address: str, *, request_timeout_s: float) -> Client:
    """A client of the node at `address`, with the client token, trusting the authority."""
    found = credentials()
    return Client(
        [address],
        token=found.client_token,
        tls=found.tls(),
        request_timeout_s=request_timeout_s,
    )


def node_status(pod: str) -> dict[str, Any]:
    """`GET /v1/status` of the node in `pod` (HTTPS, with the read token)."""
    found = credentials()
    with pod_endpoint(pod, HTTP_PORT) as address:
        request = urllib.request.Request(f"https://{address}/v1/status")
        request.add_header("Authorization", f"Bearer {found.read_token}")
        with urllib.request.urlopen(request, timeout=10, context=found.tls()) as response:
            document: dict[str, Any] = json.load(response)
    return document


def configuration(pod: str) -> dict[str, bool]:
    """The Raft configuration `pod`'s node holds: member id -> voter."""
    return {member["id"]: member["voter"] for member in node_status(pod)["members"]}


@contextlib.contextmanager
def leader_client() -> Iterator[Client]:
    """A client connected to the leader's pod."""
    leader = wait_settled(len(pods()) or REPLICAS)["status"]["leader"]
    with (
        pod_endpoint(leader, CLIENT_PORT) as address,
        cluster_client(address, request_timeout_s=30.0) as client,
    ):
        yield client


def taskraft_via_service(pod: str, *args: str) -> str:
    """The `taskraft` command inside the cluster, through the client Service: run in the node
    pod `pod` (port-forward reach), or here (direct reach: this process is inside)."""
    servers = f"{NAME}.{NAMESPACE}.svc.cluster.local:{CLIENT_PORT}"
    found = credentials()
    # The token as an argument: `kubectl exec` cannot set the pod's environment. Inside a node
    # pod the command trusts the authority through the pod's own TASKRAFT_TLS_CA.
    options = ["--servers", servers, "--token", found.client_token]
    if REACH == "direct":
        command = [str(Path(sys.executable).parent / "taskraft"), *args, *options]
        command += ["--tls-ca", str(found.authority)]
        return run(command, timeout=60).stdout
    return kubectl("exec", "-n", NAMESPACE, pod, "--", "taskraft", *args, *options)


@contextlib.contextmanager
def current_leader_client() -> Iterator[Client]:
    """A client connected to the pod the QueueCluster's status names as leader now, without
    waiting for the cluster to settle (a roll or a failover may be under way)."""
    leader: str | None = (queue_cluster().get("status") or {}).get("leader")
    pod = pods().get(leader) if leader else None
    if leader is None or pod is None or not pod_ready(pod):
        raise AssertionError(f"no ready leader pod (status names {leader})")
    with (
        pod_endpoint(leader, CLIENT_PORT) as address,
        cluster_client(address, request_timeout_s=10.0) as client,
    ):
        yield client


class Producer(threading.Thread):
    """Enqueues `payload i` for i = 0, 1, ... into `queue` until `total` (or until `stop`),
    each with the idempotency key `prefix-i`, through the leader of the moment: a failed call
    is sent again with the same key, on a new connection to whichever pod leads then, so a
    retry never adds a task twice. `confirmed` holds every i the cluster acknowledged."""

    def __init__(self, queue: str, *, total: int | None = None, deadline_s: float = 600.0):
        super().__init__(name=f"producer-{queue}", daemon=True)
        self.queue = queue
        self.total = total
        self.prefix = secrets.token_hex(4)
        self.confirmed: list[int] = []
        self.retries = 0
        self.failure: BaseException | None = None
        self.stop_requested = threading.Event()
        self._deadline = time.monotonic() + deadline_s

    def run(self) -> None:
        number = 0
        with contextlib.ExitStack() as connection:
            client: Client | None = None
            try:
                while not self.stop_requested.is_set() and (
                    self.total is None or number < self.total
                ):
                    try:
                        if client is None:
                            client = connection.enter_context(current_leader_client())
                        payload = f"payload {number}".encode()
                        client.enqueue(self.queue, payload, key=f"{self.prefix}-{number}")
                    except (TaskraftError, OSError, AssertionError) as error:
                        connection.close()
                        client = None
                        if time.monotonic() > self._deadline:
                            raise AssertionError(f"task {number} not confirmed: {error}") from error
                        self.retries += 1
                        time.sleep(0.5)
                        continue
                    self.confirmed.append(number)
                    number += 1
            except BaseException as error:  # reported by `finish`
                self.failure = error

    def finish(self, timeout_s: float = 600.0) -> list[int]:
        """Stop (when endless) and wait; the numbers confirmed, or AssertionError."""
        if self.total is None:
            self.stop_requested.set()
        self.join(timeout_s)
        assert not self.is_alive(), f"producer of {self.queue} still running after {timeout_s} s"
        if self.failure is not None:
            raise AssertionError(f"producer of {self.queue} failed: {self.failure}")
        return list(self.confirmed)


def drain(queue: str) -> list[int]:
    """Take every task out of `queue` (no lease: delivered is gone); the numbers they carry."""
    numbers: list[int] = []
    with leader_client() as client:
        while batch := client.dequeue_many(queue, 1000, lease_ms=0):
            numbers.extend(int(task.payload.decode().split()[1]) for task in batch)
        assert client.count(queue).ready == 0
    return numbers


def assert_exactly_once(queue: str, confirmed: list[int]) -> None:
    """Every confirmed task of `queue` is in it once; the queue holds nothing else."""
    delivered = drain(queue)
    repeated = len(delivered) - len(set(delivered))
    missing = set(confirmed) - set(delivered)
    assert not missing and not repeated, (
        f"{queue}: {len(confirmed)} confirmed, {len(delivered)} delivered, "
        f"{len(missing)} missing (e.g. {sorted(missing)[:5]}), {repeated} delivered twice"
    )
    # A task whose confirmation was lost with a connection may be there although unconfirmed;
    # it is then the one the producer was sending at the end and nothing more.
    assert set(delivered) <= set(confirmed) | {max(confirmed, default=-1) + 1}


# ---------------------------------------------------------------------------------------------
# Installation and cleanup


def _ensure_namespace(namespace: str) -> None:
    if run(["kubectl", "get", "namespace", namespace], check=False).returncode != 0:
        kubectl("create", "namespace", namespace)


@pytest.fixture(scope="module")
def operator(helm: str) -> Iterator[str]:
    """The chart installed into NAMESPACE-system, watching NAMESPACE; the release name."""
    _ensure_namespace(NAMESPACE)
    try:
        run(
            [
                helm,
                "upgrade",
                "--install",
                RELEASE,
                str(CHART),
                "--namespace",
                OPERATOR_NAMESPACE,
                "--create-namespace",
                "--set",
                f"watchNamespaces={{{NAMESPACE}}}",
                "--set",
                "logFormat=plain",
                "--wait",
                "--timeout",
                "5m",
            ],
            timeout=360,
        )
        yield RELEASE
    finally:
        if not KEEP:
            # The namespace first, while the operator runs: kopf's finalizer on the
            # QueueCluster is only removed by a running operator.
            run(
                ["kubectl", "delete", "namespace", NAMESPACE, "--timeout=300s"],
                timeout=330,
                check=False,
            )
            run(
                [helm, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait"],
                timeout=180,
                check=False,
            )
            run(
                ["kubectl", "delete", "namespace", OPERATOR_NAMESPACE, "--timeout=180s"],
                timeout=210,
                check=False,
            )


# ---------------------------------------------------------------------------------------------
# The story


@pytest.mark.timeout(600)
def test_operator_is_installed(operator: str) -> None:
    kubectl(
        "wait",
        "--for=condition=established",
        "crd/queueclusters.taskraft.io",
        "--timeout=60s",
        timeout=90,
    )
    kubectl(
        "rollout",
        "status",
        f"deployment/{OPERATOR_DEPLOYMENT}",
        "-n",
        OPERATOR_NAMESPACE,
        "--timeout=300s",
        timeout=330,
    )
    # It runs under the chart's ServiceAccount: the chart's RBAC is all it gets.
    (pod,) = operator_pods().values()
    assert pod["spec"]["serviceAccountName"] == OPERATOR_DEPLOYMENT


INVALID_SPECS = {
    "replicas 0": ({"replicas": 0}, "spec.replicas"),
    "an unknown field": ({"replicaCount": 3}, 'unknown field "spec.replicaCount"'),
    "a bad version string": ({"version": "1.0 beta!"}, "spec.version"),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_the_api_server_refuses_an_invalid_queue_cluster(operator: str, case: str) -> None:
    change, message = INVALID_SPECS[case]
    body = json.loads(json.dumps(EXAMPLE_BODY))
    body["metadata"]["name"] = "invalid"
    body["spec"].update(change)
    refused = run(
        ["kubectl", "apply", "-n", NAMESPACE, "-f", "-"],
        input_text=json.dumps(body),
        check=False,
    )
    assert refused.returncode != 0, f"{case} was accepted"
    assert message in refused.stderr, refused.stderr
    assert run(["kubectl", "get", "qc/invalid", "-n", NAMESPACE], check=False).returncode != 0


@pytest.mark.timeout(int(STEP_TIMEOUT_S) + 300)
def test_example_cluster_comes_up(operator: str) -> None:
    create_tls_secret()
    kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
    body = wait_settled(REPLICAS)
    status = body["status"]
    assert status["leader"] in {f"{NAME}-{ordinal}" for ordinal in range(REPLICAS)}
    assert status["targetVersion"] == status["currentVersion"] == VERSION
    assert conditions(body)["Progressing"]["reason"] == "Reconciled"
    for kind, name in (
        ("service", NAME),
        ("service", f"{NAME}-peers"),
        ("configmap", f"{NAME}-config"),
        ("statefulset", NAME),
        ("poddisruptionbudget", NAME),
        ("networkpolicy", NAME),
        ("secret", CREDENTIALS_SECRET),
    ):
        kubectl("get", kind, name, "-n", NAMESPACE)
    # The printer columns of `kubectl get qc`, filled from the status.
    header, row = kubectl("get", "qc", NAME, "-n", NAMESPACE).splitlines()
    columns = dict(zip(header.split(), row.split(), strict=True))
    assert columns == {
        "NAME": NAME,
        "REPLICAS": str(REPLICAS),
        "READY": str(REPLICAS),
        "LEADER": status["leader"],
        "PHASE": "Running",
        "VERSION": VERSION,
        "AGE": columns["AGE"],
    }
    with leader_client() as client:

        def declared() -> set[str] | Pending:
            names = {queue.name for queue in client.list_queues()}
            return names if names >= DECLARED_QUEUES else Pending(f"queues {sorted(names)}")

        wait_until("the declared queues created", declared, timeout_s=120)
    # Under TLS with tokens: a client without the token is refused, and a plain one gets
    # nowhere.
    leader = status["leader"]
    with pod_endpoint(leader, CLIENT_PORT) as address:
        with (
            Client([address], tls=credentials().tls(), request_timeout_s=10.0) as stranger,
            pytest.raises(Unauthenticated),
        ):
            stranger.list_queues()
        with (
            Client([address], token=credentials().client_token, request_timeout_s=5.0) as plain,
            pytest.raises(TaskraftError),
        ):
            plain.list_queues()


@pytest.mark.timeout(300)
def test_enqueue_and_dequeue(operator: str) -> None:
    with leader_client() as client:
        client.enqueue("emails", b"later", priority=5)
        client.enqueue("emails", b"first", priority=1)
        for expected in (b"first", b"later"):
            task = client.dequeue("emails", wait_ms=5000, lease_ms=60_000)
            assert task is not None and task.payload == expected
            client.ack(task)
        assert client.dequeue("emails") is None

    # Through the client Service from inside the cluster: any ready pod, redirected to the
    # leader. From a pod that is not the leader, so that the redirect is exercised too.
    leader = queue_cluster()["status"]["leader"]
    follower = next(name for name in sorted(pods()) if name != leader)
    payload = f"via-service-{secrets.token_hex(4)}"
    taskraft_via_service(follower, "enqueue", "default", payload)
    answer = json.loads(
        taskraft_via_service(
            follower, "dequeue", "default", "--wait-ms", "5000", "--lease-ms", "0", "--json"
        )
    )
    assert base64.b64decode(answer["payload_base64"]).decode() == payload


@pytest.mark.timeout(int(STEP_TIMEOUT_S) + 600)
def test_leader_pod_killed_while_enqueueing(operator: str) -> None:
    with leader_client() as client:
        client.create_queue(DURABLE_QUEUE)
        for number in range(DURABLE_TASKS):
            client.enqueue(DURABLE_QUEUE, f"task {number}".encode())
        client.create_queue(FAILOVER_QUEUE)
    old_leader = queue_cluster()["status"]["leader"]
    old_uid = pods()[old_leader]["metadata"]["uid"]
    producer = Producer(FAILOVER_QUEUE, total=FAILOVER_TASKS)
    producer.start()
    wait_until(
        f"{FAILOVER_TASKS // 5} tasks enqueued",
        lambda: (
            True
            if len(producer.confirmed) >= FAILOVER_TASKS // 5 or not producer.is_alive()
            else Pending(f"{len(producer.confirmed)} confirmed")
        ),
        timeout_s=300,
        interval_s=0.2,
    )
    # Killed: no grace period, the processes get SIGKILL.
    kubectl(
        "delete", "pod", old_leader, "-n", NAMESPACE, "--grace-period=0", "--force", "--wait=false"
    )
    killed_at = len(producer.confirmed)
    confirmed = producer.finish()
    assert len(confirmed) == FAILOVER_TASKS
    assert killed_at < FAILOVER_TASKS, "the producer finished before the leader was killed"

    def back() -> dict[str, Any] | Pending:
        pod = pods().get(old_leader)
        if pod is None or pod["metadata"]["uid"] == old_uid:
            return Pending(f"pod {old_leader} not recreated yet")
        return settled(REPLICAS)

    body = wait_until(f"recovered from the loss of {old_leader}", back)
    assert body["status"]["leader"]
    assert_exactly_once(FAILOVER_QUEUE, confirmed)
    with leader_client() as client:
        assert client.count(DURABLE_QUEUE).ready == DURABLE_TASKS


def assert_every_node_holds(members: set[str]) -> None:
    """Every pod's node holds the configuration of `members`, all voters."""
    for pod in sorted(pods()):
        held = wait_until(
            f"{pod} holding the configuration {sorted(members)}",
            lambda pod=pod: (  # type: ignore[misc]
                found
                if set(found := configuration(pod)) == members
                else Pending(f"{pod} holds {found}")
            ),
            timeout_s=60,
        )
        assert all(held.values()), f"{pod} holds non-voters: {held}"


@pytest.mark.timeout(int(2 * STEP_TIMEOUT_S) + 120)
def test_scale_up_and_down(operator: str) -> None:
    kubectl("scale", f"qc/{NAME}", "-n", NAMESPACE, "--replicas=5")
    body = wait_settled(5)
    assert sorted(pods()) == [f"{NAME}-{ordinal}" for ordinal in range(5)]
    assert all(member["voter"] for member in body["status"]["members"])
    # Learner first, then promoted (docs/kubernetes.md, "Scale").
    assert {"StatefulSetScaled", "MemberAdded", "MemberPromoted"} <= event_reasons()
    assert_every_node_holds({f"{NAME}-{ordinal}" for ordinal in range(5)})

    kubectl("scale", f"qc/{NAME}", "-n", NAMESPACE, "--replicas=3")
    removed = [f"{NAME}-{ordinal}" for ordinal in (4, 3)]
    # When a removed member's pod is first seen going, the leader's configuration of that
    # moment must already be without it.
    held_when_going: dict[str, dict[str, bool]] = {}

    def scaled_down() -> dict[str, Any] | Pending:
        current = pods()
        for name in removed:
            pod = current.get(name)
            going = pod is None or bool(pod["metadata"].get("deletionTimestamp"))
            if going and name not in held_when_going:
                leader = queue_cluster()["status"]["leader"]
                held_when_going[name] = configuration(leader)
        return settled(REPLICAS)

    wait_until("scaled down to 3", scaled_down, interval_s=0.5)
    for name in removed:
        assert name not in held_when_going[name], f"{name} went while a member"
    assert sorted(pods()) == [f"{NAME}-{ordinal}" for ordinal in range(REPLICAS)]
    assert "MemberRemoved" in event_reasons()
    assert_every_node_holds({f"{NAME}-{ordinal}" for ordinal in range(REPLICAS)})
    # pvcRetention.whenScaled is Delete in the example.
    removed_claims = {f"data-{name}" for name in removed}
    wait_until(
        "the removed members' PVCs deleted",
        lambda: (
            True if not removed_claims & pvc_names() else Pending(f"PVCs {sorted(pvc_names())}")
        ),
        timeout_s=120,
    )
    with leader_client() as client:
        assert client.count(DURABLE_QUEUE).ready == DURABLE_TASKS


@dataclass
class Roll:
    """What watching a roll saw: the pods in the order they were restarted, and the leader
    (per the status) when each went."""

    restarted: list[str]
    leader_when_restarted: dict[str, str | None]


def change_version(version: str) -> tuple[str, dict[str, str]]:
    """Set spec.version once the cluster is settled; the leader and pod uids of before."""
    body = wait_settled(REPLICAS)
    uids = {name: pod["metadata"]["uid"] for name, pod in pods().items()}
    patch = json.dumps({"spec": {"version": version}})
    kubectl("patch", "queuecluster", NAME, "-n", NAMESPACE, "--type", "merge", "-p", patch)
    return body["status"]["leader"], uids


def watch_roll(
    version: str, uids: Mapping[str, str], *, on_first_restart: Callable[[], None] | None = None
) -> tuple[Roll, dict[str, Any]]:
    """Wait until every pod runs `version` and the cluster settled; what the roll did."""
    roll = Roll(restarted=[], leader_when_restarted={})

    def rolled() -> dict[str, Any] | Pending:
        current = pods()
        # Read after the pods: the operator writes its status (the leader after a transfer)
        # before it deletes a pod, so this status is at least as new as that write.
        leader = (queue_cluster().get("status") or {}).get("leader")
        for name, pod in sorted(current.items()):
            replaced = pod["metadata"]["uid"] != uids.get(name)
            if (
                replaced or pod["metadata"].get("deletionTimestamp")
            ) and name not in roll.restarted:
                roll.restarted.append(name)
                roll.leader_when_restarted[name] = leader
                if len(roll.restarted) == 1 and on_first_restart is not None:
                    on_first_restart()
        labels = {
            name: pod["metadata"]["labels"].get("app.kubernetes.io/version")
            for name, pod in current.items()
        }
        if set(labels.values()) != {version}:
            return Pending(f"pod versions {labels}; restarted so far {roll.restarted}")
        return settled(REPLICAS)

    body = wait_until(f"rolled onto {version}", rolled, timeout_s=ROLL_TIMEOUT_S, interval_s=1.0)
    return roll, body


def assert_leader_last(roll: Roll, uids: Mapping[str, str], leader_before: str) -> None:
    assert sorted(roll.restarted) == sorted(uids), f"restarted {roll.restarted}"
    assert roll.restarted[-1] == leader_before, (
        f"restart order {roll.restarted}, leader {leader_before}"
    )
    for name in roll.restarted:
        assert roll.leader_when_restarted[name] != name, f"{name} restarted while leading"


@pytest.mark.timeout(int(ROLL_TIMEOUT_S) + 300)
def test_version_change_rolls_the_leader_last_while_a_client_enqueues(operator: str) -> None:
    with leader_client() as client:
        client.create_queue(ROLL_QUEUE)
    new_version = f"{VERSION}-e2e"
    producer = Producer(ROLL_QUEUE)
    producer.start()
    leader_before, uids = change_version(new_version)
    roll, body = watch_roll(new_version, uids)
    confirmed = producer.finish()
    print(f"roll order {roll.restarted}; {len(confirmed)} tasks, {producer.retries} retries")
    assert_leader_last(roll, uids, leader_before)
    assert body["status"]["targetVersion"] == body["status"]["currentVersion"] == new_version
    assert {"PodDeleted", "LeadershipTransferred"} <= event_reasons()
    assert confirmed, "nothing was enqueued during the roll"
    assert_exactly_once(ROLL_QUEUE, confirmed)
    with leader_client() as client:
        assert client.count(DURABLE_QUEUE).ready == DURABLE_TASKS


def operator_pods() -> dict[str, dict[str, Any]]:
    selector = "app.kubernetes.io/name=taskraft-operator"
    items = kubectl_json("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", selector)["items"]
    return {pod["metadata"]["name"]: pod for pod in items}


@pytest.mark.timeout(int(ROLL_TIMEOUT_S) + 300)
def test_a_new_operator_pod_finishes_a_roll_the_killed_one_started(operator: str) -> None:
    (killed,) = operator_pods()
    new_version = f"{VERSION}-e2e-2"
    leader_before, uids = change_version(new_version)

    def kill_the_operator() -> None:
        kubectl(
            "delete",
            "pod",
            killed,
            "-n",
            OPERATOR_NAMESPACE,
            "--grace-period=0",
            "--force",
            "--wait=false",
        )

    roll, body = watch_roll(new_version, uids, on_first_restart=kill_the_operator)
    assert_leader_last(roll, uids, leader_before)
    assert body["status"]["currentVersion"] == new_version
    running = operator_pods()
    assert killed not in running and len(running) == 1


@pytest.mark.timeout(300)
def test_snapshot_on_request(operator: str) -> None:
    token = f"e2e-{secrets.token_hex(4)}"
    kubectl(
        "annotate",
        f"qc/{NAME}",
        "-n",
        NAMESPACE,
        "--overwrite",
        f"taskraft.io/snapshot-request={token}",
    )

    def snapshotted() -> dict[str, Any] | Pending:
        status = queue_cluster().get("status") or {}
        last = status.get("lastSnapshot") or {}
        round_ = ((status.get("progress") or {}).get("snapshot") or {}).get("round")
        if last.get("token") != token or round_ is not None:
            return Pending(f"lastSnapshot {last}, round {round_}")
        return status

    status = wait_until("snapshotted on request", snapshotted, timeout_s=240)
    last = status["lastSnapshot"]
    assert last["trigger"] == "request"
    assert last["index"] > 0 and last["sizeBytes"] > 0
    assert last["pod"] in pods()
    assert any(record["token"] == token for record in status["snapshots"])
    assert "SnapshotTaken" in event_reasons()


def merge_patch_spec(spec: Mapping[str, Any]) -> None:
    patch = json.dumps({"spec": spec})
    kubectl("patch", "queuecluster", NAME, "-n", NAMESPACE, "--type", "merge", "-p", patch)


@pytest.mark.timeout(600)
def test_snapshot_on_schedule_then_a_backup_lands_in_the_claim(operator: str) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": BACKUP_CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    run(["kubectl", "apply", "-n", NAMESPACE, "-f", "-"], input_text=json.dumps(claim))
    # Every minute, and a backup of each round into the claim.
    merge_patch_spec(
        {"snapshots": {"schedule": "* * * * *"}, "backup": {"claimName": BACKUP_CLAIM}}
    )

    def backed_up() -> dict[str, Any] | Pending:
        status = queue_cluster().get("status") or {}
        last = status.get("lastSnapshot") or {}
        backup = status.get("lastBackup") or {}
        if last.get("trigger") != "schedule":
            return Pending(f"lastSnapshot {last}")
        if backup.get("state") != "Succeeded":
            return Pending(f"lastBackup {backup}")
        return status

    status = wait_until("a scheduled snapshot backed up", backed_up, timeout_s=420)
    merge_patch_spec({"snapshots": {"schedule": EXAMPLE_BODY["spec"]["snapshots"]["schedule"]}})
    backup = status["lastBackup"]
    assert "SnapshotTaken" in event_reasons()
    # What the Job wrote, read back from the claim by a Job of its own.
    expected = f"{NAME}-{backup['index']}-{backup['term']}"
    check = CHECK_BACKUP_SCRIPT.format(directory="/backup", name=expected)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "e2e-check-backup"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "check",
                            "image": EXAMPLE_BODY["spec"]["image"],
                            "command": ["python", "-c", check],
                            "volumeMounts": [{"name": "backup", "mountPath": "/backup"}],
                        }
                    ],
                    "volumes": [
                        {"name": "backup", "persistentVolumeClaim": {"claimName": BACKUP_CLAIM}}
                    ],
                }
            },
        },
    }
    run(["kubectl", "apply", "-n", NAMESPACE, "-f", "-"], input_text=json.dumps(job))

    def job_finished() -> str | Pending:
        job_status = kubectl_json("get", "job", "e2e-check-backup", "-n", NAMESPACE)["status"]
        if job_status.get("succeeded"):
            return "Succeeded"
        if job_status.get("failed"):
            return "Failed"
        return Pending(f"job {job_status}")

    assert wait_until("the backup checked", job_finished, timeout_s=180) == "Succeeded"
    kubectl("delete", "job", "e2e-check-backup", "-n", NAMESPACE, "--cascade=foreground")


@pytest.mark.timeout(600)
def test_delete_the_cluster(operator: str) -> None:
    (operator_pod,) = operator_pods().values()
    kubectl("delete", f"qc/{NAME}", "-n", NAMESPACE, "--timeout=300s", timeout=330)
    kinds = (
        "statefulsets,services,configmaps,poddisruptionbudgets,networkpolicies,pods,jobs,secrets"
    )

    def gone() -> bool | Pending:
        left = kubectl_json("get", kinds, "-n", NAMESPACE, "-l", SELECTOR)["items"]
        names = [f"{item['kind']}/{item['metadata']['name']}" for item in left]
        return True if not names else Pending(f"still there: {names}")

    wait_until("every owned object deleted", gone, timeout_s=300)
    # The generated credentials went with it; the TLS Secret is the user's and stays.
    assert (
        run(
            ["kubectl", "get", "secret", CREDENTIALS_SECRET, "-n", NAMESPACE], check=False
        ).returncode
        != 0
    )
    kubectl("get", "secret", TLS_SECRET, "-n", NAMESPACE)
    # pvcRetention.whenDeleted is Retain in the example: the volumes stay.
    assert {f"data-{NAME}-{ordinal}" for ordinal in range(REPLICAS)} <= pvc_names()
    kubectl("delete", "pvc", "-n", NAMESPACE, "-l", SELECTOR, "--timeout=120s", timeout=150)
    # The operator runs on, in the same pod, with no restart.
    (still,) = operator_pods().values()
    assert still["metadata"]["uid"] == operator_pod["metadata"]["uid"]
    assert pod_ready(still)
    statuses = still["status"]["containerStatuses"]
    assert [status["restartCount"] for status in statuses] == [
        status["restartCount"] for status in operator_pod["status"]["containerStatuses"]
    ]


# Authorized for a request that the audit log records under another verb, or checked by
# admission rather than asked for: never in the log, though the operator needs them.
GRANTED_BUT_NOT_AUDITED = {
    # A server-side apply is recorded as `patch`; when it creates the object, the API server
    # authorizes `create` too.
    *(
        (group, resource, "create")
        for group, resource in (
            ("apps", "statefulsets"),
            ("", "services"),
            ("", "configmaps"),
            ("policy", "poddisruptionbudgets"),
            ("networking.k8s.io", "networkpolicies"),
            ("batch", "jobs"),
        )
    ),
    # Checked by the OwnerReferencesPermissionEnforcement admission plugin (where it is on)
    # when an owned object names its QueueCluster with blockOwnerDeletion.
    ("taskraft.io", "queueclusters/finalizers", "update"),
}


def granted_permissions() -> set[tuple[str, str, str]]:
    """What the chart's Role (in NAMESPACE) and its cluster-wide ClusterRole grant."""
    role = kubectl_json("get", "role", OPERATOR_DEPLOYMENT, "-n", NAMESPACE)
    discovery = kubectl_json("get", "clusterrole", f"{OPERATOR_DEPLOYMENT}-discovery")
    return {
        (group, resource, verb)
        for rule in [*role["rules"], *discovery["rules"]]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.timeout(120)
def test_the_operator_used_exactly_what_the_chart_grants(operator: str) -> None:
    """Every request the operator's ServiceAccount made during the story, from the API
    server's audit log, against the chart's RBAC: nothing refused, nothing granted unused."""
    audit_log = os.environ.get("TASKRAFT_E2E_AUDIT_LOG")
    if not audit_log:
        pytest.skip("needs the API server's audit log (TASKRAFT_E2E_AUDIT_LOG, `make e2e` here)")
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_DEPLOYMENT}"
    used: set[tuple[str, str, str]] = set()
    refused: list[str] = []
    with open(audit_log) as lines:
        for line in lines:
            event = json.loads(line)
            if event.get("user", {}).get("username") != user:
                continue
            reference = event.get("objectRef")
            if reference is None:
                continue  # discovery (/api, /apis, /version): open to every authenticated user
            resource = reference["resource"]
            if reference.get("subresource"):
                resource += f"/{reference['subresource']}"
            used.add((reference.get("apiGroup", ""), resource, event["verb"]))
            if event.get("responseStatus", {}).get("code") == 403:
                refused.append(f"{event['verb']} {event['requestURI']}")
    granted = granted_permissions()
    assert used, f"no request of {user} in {audit_log}"
    assert not refused, f"refused: {sorted(set(refused))}"
    assert used <= granted, f"used without a grant: {sorted(used - granted)}"
    unused = granted - used - GRANTED_BUT_NOT_AUDITED
    assert not unused, f"granted but never used: {sorted(unused)}"
