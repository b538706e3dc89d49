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

From outside the cluster, a client must reach the leader itself: a follower redirects to the
leader's in-cluster DNS name, which does not resolve here, and `kubectl port-forward svc/...`
forwards to one pod. So the Python client goes through `kubectl port-forward pod/LEADER`, and the
client Service is exercised from inside the cluster with the `taskraft` command of a node pod.

Every wait polls with a deadline; nothing relies on a fixed sleep.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import selectors
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import yaml

from taskraft.client import Client

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
SELECTOR = f"app.kubernetes.io/name=taskraft,app.kubernetes.io/instance={NAME}"
CLIENT_PORT = 7100

DURABLE_QUEUE = "e2e-durable"
DURABLE_TASKS = 20

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
def leader_client() -> Iterator[Client]:
    """A client connected to the leader's pod through a port-forward."""
    leader = wait_settled(len(pods()) or REPLICAS)["status"]["leader"]
    with (
        port_forward(f"pod/{leader}", CLIENT_PORT) as local_port,
        Client([f"127.0.0.1:{local_port}"], request_timeout_s=30.0) as client,
    ):
        yield client


def taskraft_in_pod(pod: str, *args: str) -> str:
    """The `taskraft` command in a node pod, through the client Service `NAME:7100`."""
    servers = f"{NAME}:{CLIENT_PORT}"
    return kubectl("exec", "-n", NAMESPACE, pod, "--", "taskraft", *args, "--servers", servers)


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


@pytest.mark.timeout(int(STEP_TIMEOUT_S) + 300)
def test_example_cluster_comes_up(operator: str) -> None:
    kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
    body = wait_settled(REPLICAS)
    status = body["status"]
    assert status["leader"] in {f"{NAME}-{ordinal}" for ordinal in range(REPLICAS)}
    assert status["targetVersion"] == VERSION
    assert conditions(body)["Progressing"]["reason"] == "Reconciled"
    for kind, name in (
        ("service", NAME),
        ("service", f"{NAME}-peers"),
        ("configmap", f"{NAME}-config"),
        ("statefulset", NAME),
        ("poddisruptionbudget", NAME),
    ):
        kubectl("get", kind, name, "-n", NAMESPACE)
    with leader_client() as client:

        def declared() -> set[str] | Pending:
            names = {queue.name for queue in client.list_queues()}
            return names if names >= DECLARED_QUEUES else Pending(f"queues {sorted(names)}")

        wait_until("the declared queues created", declared, timeout_s=120)


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
    # leader. A pod that is not the leader, so that the redirect is exercised too.
    leader = queue_cluster()["status"]["leader"]
    follower = next(name for name in sorted(pods()) if name != leader)
    payload = f"via-service-{secrets.token_hex(4)}"
    taskraft_in_pod(follower, "enqueue", "default", payload)
    answer = json.loads(
        taskraft_in_pod(
            follower, "dequeue", "default", "--wait-ms", "5000", "--lease-ms", "0", "--json"
        )
    )
    assert base64.b64decode(answer["payload_base64"]).decode() == payload


@pytest.mark.timeout(int(STEP_TIMEOUT_S) + 120)
def test_leader_pod_killed(operator: str) -> None:
    with leader_client() as client:
        client.create_queue(DURABLE_QUEUE)
        for number in range(DURABLE_TASKS):
            client.enqueue(DURABLE_QUEUE, f"task {number}".encode())
    old_leader = queue_cluster()["status"]["leader"]
    old_uid = pods()[old_leader]["metadata"]["uid"]
    kubectl("delete", "pod", old_leader, "-n", NAMESPACE, "--grace-period=1", "--wait=false")

    def back() -> dict[str, Any] | Pending:
        pod = pods().get(old_leader)
        if pod is None or pod["metadata"]["uid"] == old_uid:
            return Pending(f"pod {old_leader} not recreated yet")
        return settled(REPLICAS)

    body = wait_until(f"recovered from the loss of {old_leader}", back)
    assert body["status"]["leader"]
    with leader_client() as client:
        assert client.count(DURABLE_QUEUE).ready == DURABLE_TASKS


@pytest.mark.timeout(int(2 * STEP_TIMEOUT_S) + 120)
def test_scale_up_and_down(operator: str) -> None:
    kubectl("scale", f"qc/{NAME}", "-n", NAMESPACE, "--replicas=5")
    body = wait_settled(5)
    assert sorted(pods()) == [f"{NAME}-{ordinal}" for ordinal in range(5)]
    assert all(member["voter"] for member in body["status"]["members"])
    # Learner first, then promoted (docs/kubernetes.md, "Scale").
    assert {"StatefulSetScaled", "MemberAdded", "MemberPromoted"} <= event_reasons()

    kubectl("scale", f"qc/{NAME}", "-n", NAMESPACE, "--replicas=3")
    wait_settled(REPLICAS)
    assert sorted(pods()) == [f"{NAME}-{ordinal}" for ordinal in range(REPLICAS)]
    assert "MemberRemoved" in event_reasons()
    # pvcRetention.whenScaled is Delete in the example.
    removed = {f"data-{NAME}-{ordinal}" for ordinal in range(REPLICAS, 5)}
    wait_until(
        "the removed members' PVCs deleted",
        lambda: True if not removed & pvc_names() else Pending(f"PVCs {sorted(pvc_names())}"),
        timeout_s=120,
    )
    with leader_client() as client:
        assert client.count(DURABLE_QUEUE).ready == DURABLE_TASKS


@pytest.mark.timeout(int(ROLL_TIMEOUT_S) + 120)
def test_version_change_rolls_the_leader_last(operator: str) -> None:
    body = wait_settled(REPLICAS)
    leader_before = body["status"]["leader"]
    uids = {name: pod["metadata"]["uid"] for name, pod in pods().items()}
    new_version = f"{VERSION}-e2e"
    patch = json.dumps({"spec": {"version": new_version}})
    kubectl("patch", "queuecluster", NAME, "-n", NAMESPACE, "--type", "merge", "-p", patch)

    restarted: list[str] = []
    leader_when_restarted: dict[str, str | None] = {}

    def rolled() -> dict[str, Any] | Pending:
        current = pods()
        # Read after the pods: the operator writes its status (the leader after a transfer)
        # before it deletes a pod, so this status is at least as new as that write.
        leader = (queue_cluster().get("status") or {}).get("leader")
        for name, pod in sorted(current.items()):
            replaced = pod["metadata"]["uid"] != uids.get(name)
            if (replaced or pod["metadata"].get("deletionTimestamp")) and name not in restarted:
                restarted.append(name)
                leader_when_restarted[name] = leader
        labels = {
            name: pod["metadata"]["labels"].get("app.kubernetes.io/version")
            for name, pod in current.items()
        }
        if set(labels.values()) != {new_version}:
            return Pending(f"pod versions {labels}; restarted so far {restarted}")
        return settled(REPLICAS)

    body = wait_until("rolled onto the new version", rolled, timeout_s=ROLL_TIMEOUT_S)
    assert sorted(restarted) == sorted(uids), f"restarted {restarted}"
    assert restarted[-1] == leader_before, f"restart order {restarted}, leader {leader_before}"
    for name in restarted:
        assert leader_when_restarted[name] != name, f"{name} restarted while leading"
    assert body["status"]["targetVersion"] == new_version
    assert {"PodDeleted", "LeadershipTransferred"} <= event_reasons()
    with leader_client() as client:
        assert client.count(DURABLE_QUEUE).ready == DURABLE_TASKS


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


@pytest.mark.timeout(600)
def test_delete_the_cluster(operator: str) -> None:
    kubectl("delete", f"qc/{NAME}", "-n", NAMESPACE, "--timeout=300s", timeout=330)
    kinds = "statefulsets,services,configmaps,poddisruptionbudgets,pods"

    def gone() -> bool | Pending:
        left = kubectl_json("get", kinds, "-n", NAMESPACE, "-l", SELECTOR)["items"]
        names = [f"{item['kind']}/{item['metadata']['name']}" for item in left]
        return True if not names else Pending(f"still there: {names}")

    wait_until("every owned object deleted", gone, timeout_s=300)
    # pvcRetention.whenDeleted is Retain in the example: the volumes stay.
    assert {f"data-{NAME}-{ordinal}" for ordinal in range(REPLICAS)} <= pvc_names()
    kubectl("delete", "pvc", "-n", NAMESPACE, "-l", SELECTOR, "--timeout=120s", timeout=150)
