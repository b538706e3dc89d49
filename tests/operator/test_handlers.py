"""The operator's shell against kmock's emulated Kubernetes API and real taskraft nodes.

`reconcile` is driven directly (one run per call, after one step of the simulated StatefulSet
controller and kubelet) for the scenarios with nodes: the order of what the operator does is
then exactly observable. One test runs the whole kopf operator (its handlers, periodic loop,
login, events and status) against the emulated API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from operator_support import (
    CLUSTER,
    NAMESPACE,
    EventLog,
    PodNodes,
    Simulation,
    emulated_api,
    emulated_api_in_thread,
    eventually,
    free_port,
    get_cluster,
    queue_cluster,
)
from prometheus_client import REGISTRY

from taskraft.certificates import CertificateAuthority
from taskraft.client import AsyncClient
from taskraft.errors import Forbidden, Unauthenticated
from taskraft.tls import TlsFiles, client_context
from taskraft_operator import metrics
from taskraft_operator.actions import ActionContext, carry_out
from taskraft_operator.credentials import (
    PREVIOUS_AUTHORITY_GRACE_S,
    CredentialsUnavailable,
    TrustCache,
    secret_text,
)
from taskraft_operator.handlers import ClusterMemory, OperatorConfig, reconcile, register
from taskraft_operator.model import (
    DesiredSpec,
    ObservedStatefulSet,
    StorageSpec,
    status_from_dict,
)
from taskraft_operator.observe import (
    CONFIG_MAPS,
    NETWORK_POLICIES,
    PDBS,
    PODS,
    PVCS,
    QUEUE_CLUSTERS,
    SECRETS,
    SERVICES,
    STATEFUL_SETS,
    ApiResource,
    Endpoints,
    KubeApi,
    NodeAccess,
    NodeHttp,
    login_to,
    observe,
)
from taskraft_operator.planner import (
    SNAPSHOT_REQUEST_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    Action,
    AddLearner,
    DeletePod,
    EnsureObject,
    Plan,
    Promote,
    ScaleStatefulSet,
    TakeSnapshot,
)

# The whole module: a few seconds with real processes on a quiet machine.
SCENARIO_TIMEOUT_S = 90.0

OWNED = (
    (CONFIG_MAPS, f"{CLUSTER}-config"),
    (SERVICES, f"{CLUSTER}-peers"),
    (SERVICES, CLUSTER),
    (STATEFUL_SETS, CLUSTER),
    (PDBS, CLUSTER),
    (NETWORK_POLICIES, CLUSTER),
)


def run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario, SCENARIO_TIMEOUT_S))


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def owned_objects(api: KubeApi) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for resource, name in OWNED:
        body = await api.get(resource, NAMESPACE, name)
        if body is not None:
            found[(resource.kind, name)] = body
    return found


def assert_owned_by(body: dict[str, Any], owner: dict[str, Any]) -> None:
    metadata = body["metadata"]
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "taskraft.io/v1alpha1",
            "kind": "QueueCluster",
            "name": CLUSTER,
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert metadata["labels"]["app.kubernetes.io/instance"] == CLUSTER
    assert metadata["labels"]["app.kubernetes.io/managed-by"] == "taskraft-operator"
    assert metadata["annotations"][SPEC_HASH_ANNOTATION]


class Driver:
    """Runs the simulated controllers and one reconcile at a time, recording each action."""

    def __init__(self, api: KubeApi, http: NodeHttp, nodes: PodNodes | None) -> None:
        self.api = api
        self.http = http
        self.nodes = nodes
        self.simulation = None if nodes is None else Simulation(api, nodes)
        self.endpoints = Endpoints() if nodes is None else nodes.endpoints()
        self.events = EventLog()
        self.memory = ClusterMemory()
        self.actions: list[Action] = []
        self.plan: Plan | None = None

    async def step(self) -> Plan | None:
        if self.simulation is not None:
            await self.simulation.step()
        body = await get_cluster(self.api)
        plan = await reconcile(
            body,
            self.api,
            self.http,
            endpoints=self.endpoints,
            events=self.events,
            memory=self.memory,
        )
        if plan is not None:
            self.actions.append(plan.action)
            self.plan = plan
        return plan

    async def until(self, condition: Any, what: str) -> Plan:
        """Step until `condition(plan)` holds for the plan of a step."""

        async def probe() -> Plan | None:
            plan = await self.step()
            return plan if plan is not None and condition(plan) else None

        return await eventually(probe, what)


def voters(plan: Plan) -> list[str]:
    return sorted(member.id for member in plan.status.members if member.voter)


def available(plan: Plan) -> bool:
    condition = plan.status.condition("Available")
    return condition is not None and condition.status == "True"


def kinds(actions: Sequence[Action]) -> list[str]:
    return [type(action).__name__ for action in actions]


# ---------------------------------------------------------------------------------------------
# Without nodes


def test_first_runs_create_the_owned_objects_with_owner_references() -> None:
    async def scenario() -> None:
        async with emulated_api() as (_, url):
            api, http = KubeApi(login_to(url)), NodeHttp()
            try:
                owner = await api.create(QUEUE_CLUSTERS, NAMESPACE, queue_cluster())
                driver = Driver(api, http, nodes=None)
                applied_before = sample(
                    "taskraft_operator_actions_total", {"action": "EnsureObject"}
                )
                # One object per run, in the planner's order; then it waits for the
                # StatefulSet controller, which does not run here.
                for _ in range(len(OWNED) + 1):
                    await driver.step()
                assert [
                    (action.kind, action.name)
                    for action in driver.actions
                    if isinstance(action, EnsureObject)
                ] == [(resource.kind, name) for resource, name in OWNED]
                assert kinds(driver.actions)[-1] == "Wait"
                objects = await owned_objects(api)
                assert len(objects) == len(OWNED)
                for body in objects.values():
                    assert_owned_by(body, owner)
                stateful_set = objects[("StatefulSet", CLUSTER)]
                assert stateful_set["spec"]["replicas"] == 3
                assert stateful_set["spec"]["updateStrategy"] == {"type": "OnDelete"}

                status = status_from_dict((await get_cluster(api))["status"])
                assert status.phase == "Creating"
                assert status.progress.founding_members == ("qc-0", "qc-1", "qc-2")
                assert driver.events.reasons().count("ObjectApplied") == len(OWNED)
                applied_after = sample(
                    "taskraft_operator_actions_total", {"action": "EnsureObject"}
                )
                assert applied_after - applied_before == len(OWNED)

                # Nothing changes, nothing is applied again.
                await driver.step()
                assert kinds(driver.actions)[-1] == "Wait"
                assert driver.events.reasons().count("ObjectApplied") == len(OWNED)
            finally:
                await api.close()
                await http.close()

    run(scenario())


def test_an_unreadable_spec_is_reported_and_nothing_is_created() -> None:
    async def scenario() -> None:
        async with emulated_api() as (_, url):
            api, http = KubeApi(login_to(url)), NodeHttp()
            try:
                await api.create(QUEUE_CLUSTERS, NAMESPACE, queue_cluster(spec={"replicas": "3"}))
                driver = Driver(api, http, nodes=None)
                assert await driver.step() is None
                assert await driver.step() is None
                assert await owned_objects(api) == {}
                status = status_from_dict((await get_cluster(api))["status"])
                assert status.phase == "Invalid"
                progressing = status.condition("Progressing")
                assert progressing is not None and progressing.reason == "InvalidSpec"
                assert "spec.replicas" in progressing.message
                # Reported once, not on every run.
                assert driver.events.reasons() == ["InvalidSpec"]
            finally:
                await api.close()
                await http.close()

    run(scenario())


def test_observe_reads_the_owned_objects_pods_claims_and_node_statuses() -> None:
    async def fake_node(node_id: str) -> TestServer:
        async def status(request: web.Request) -> web.Response:
            return web.json_response(
                {"node_id": node_id, "version": "0.1.0", "role": "leader", "term": 2,
                 "members": [{"id": node_id, "peer_address": "x:1", "voter": True}]}
            )  # fmt: skip

        application = web.Application()
        application.router.add_get("/v1/status", status)
        server = TestServer(application, host="127.0.0.1")
        await server.start_server()
        return server

    async def scenario() -> None:
        async with emulated_api() as (_, url):
            api, http = KubeApi(login_to(url)), NodeHttp()
            answering, impostor = await fake_node("qc-0"), await fake_node("qc-7")
            silent = free_port()
            addresses = {
                0: f"127.0.0.1:{answering.port}",
                1: f"127.0.0.1:{silent}",
                2: f"127.0.0.1:{impostor.port}",
            }
            endpoints = Endpoints(http=lambda cluster, namespace, ordinal: addresses[ordinal])
            labels = {"app.kubernetes.io/name": "taskraft", "app.kubernetes.io/instance": CLUSTER}
            other = {**labels, "app.kubernetes.io/instance": "other"}
            try:
                await api.create(
                    STATEFUL_SETS,
                    NAMESPACE,
                    {
                        "metadata": {
                            "name": CLUSTER,
                            "generation": 2,
                            "annotations": {SPEC_HASH_ANNOTATION: "sts-hash"},
                        },
                        "spec": {
                            "replicas": 3,
                            "volumeClaimTemplates": [
                                {
                                    "metadata": {"name": "data"},
                                    "spec": {
                                        "storageClassName": "fast",
                                        "resources": {"requests": {"storage": "2Gi"}},
                                    },
                                }
                            ],
                        },
                        "status": {"observedGeneration": 1, "updateRevision": "qc-abc"},
                    },
                )
                await api.create(
                    CONFIG_MAPS,
                    NAMESPACE,
                    {"metadata": {"name": "qc-config", "annotations": {SPEC_HASH_ANNOTATION: "c"}}},
                )
                await api.create(SERVICES, NAMESPACE, {"metadata": {"name": CLUSTER}})
                ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
                for name, pod_labels, extra, status in (
                    ("qc-0", labels, {"uid": "u0"}, ready),
                    (
                        "qc-1",
                        labels,
                        {
                            # A pod being deleted (kept by a finalizer, as a real one is kept by
                            # its grace period).
                            "deletionTimestamp": "2026-01-01T00:00:00Z",
                            "finalizers": ["tests/hold"],
                        },
                        {},
                    ),
                    ("qc-2", labels, {}, ready),
                    ("other-0", other, {}, ready),
                ):
                    revision = {"controller-revision-hash": "qc-abc"}
                    metadata = {"name": name, "labels": {**pod_labels, **revision}, **extra}
                    await api.create(PODS, NAMESPACE, {"metadata": metadata, "status": status})
                for name, claim_labels in (("data-qc-0", labels), ("data-qc-4", labels),
                                           ("data-other-0", other)):  # fmt: skip
                    metadata = {"name": name, "labels": claim_labels}
                    await api.create(PVCS, NAMESPACE, {"metadata": metadata})

                desired = DesiredSpec(
                    name=CLUSTER, namespace=NAMESPACE, image="taskraft:test", version="1"
                )
                now = datetime(2026, 1, 1, tzinfo=UTC)
                observation = await observe(desired, None, api, http, endpoints=endpoints, now=now)
                state = observation.state
                assert state.now == now
                assert state.stateful_set == ObservedStatefulSet(
                    replicas=3,
                    spec_hash="sts-hash",
                    generation=2,
                    observed_generation=1,
                    update_revision="qc-abc",
                    storage=StorageSpec(size="2Gi", storage_class="fast"),
                )
                assert state.objects == {("ConfigMap", "qc-config"): "c", ("Service", "qc"): None}
                assert sorted(state.pods) == [0, 1, 2]
                first, second, third = state.pods[0], state.pods[1], state.pods[2]
                assert first.uid == "u0" and first.ready and first.revision == "qc-abc"
                assert first.node is not None and first.node.is_leader
                assert second.deleting and not second.ready and second.node is None
                # A node that answers as another one is not taken for this pod's.
                assert third.ready and third.node is None
                assert state.pvcs == frozenset({0, 4})
                assert observation.unreachable == ("qc-1", "qc-2")
            finally:
                await api.close()
                await http.close()
                await answering.close()
                await impostor.close()

    run(scenario())


def test_a_pod_is_deleted_only_while_it_has_the_planned_uid() -> None:
    async def scenario() -> None:
        async with emulated_api() as (_, url):
            api, http = KubeApi(login_to(url)), NodeHttp()
            try:
                owner = await api.create(QUEUE_CLUSTERS, NAMESPACE, queue_cluster())
                pod = await api.create(PODS, NAMESPACE, {"metadata": {"name": "qc-1"}})
                events = EventLog()
                context = ActionContext(
                    owner=owner,
                    desired=DesiredSpec(
                        name=CLUSTER, namespace=NAMESPACE, image="taskraft:test", version="1"
                    ),
                    api=api,
                    http=http,
                    endpoints=Endpoints(),
                    events=events,
                )
                # The planned pod was replaced by another of the same name: not deleted.
                stale = DeletePod(pod="qc-1", uid="another-uid", reason="roll")
                outcome = await carry_out(stale, context)
                assert outcome.done and "already replaced" in outcome.message
                assert await api.get(PODS, NAMESPACE, "qc-1") is not None
                # The planned pod: deleted; a retry finds it gone.
                planned = DeletePod(pod="qc-1", uid=pod["metadata"]["uid"], reason="roll")
                assert (await carry_out(planned, context)).done
                assert await api.get(PODS, NAMESPACE, "qc-1") is None
                outcome = await carry_out(planned, context)
                assert outcome.done and "already gone" in outcome.message
                assert events.reasons() == ["PodDeleted"] * 3
            finally:
                await api.close()
                await http.close()

    run(scenario())


def test_the_metrics_server_serves_the_operator_metrics() -> None:
    server = metrics.serve(0, "127.0.0.1")
    try:
        metrics.RECONCILES.labels("waited").inc(0)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        assert "taskraft_operator_reconciles_total" in text
        assert "taskraft_operator_reconcile_duration_seconds_bucket" in text
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# The kopf operator


def test_the_kopf_operator_creates_the_objects_and_writes_the_status() -> None:
    async def scenario() -> None:
        async with emulated_api_in_thread() as url:
            registry = kopf.OperatorRegistry()
            register(registry, OperatorConfig(login=login_to(url), metrics_port=0, interval_s=0.2))
            settings = kopf.OperatorSettings()
            settings.scanning.disabled = True  # no namespace or CRD watching in the emulator
            stop, ready = asyncio.Event(), asyncio.Event()
            operator = asyncio.create_task(
                kopf.operator(
                    registry=registry,
                    settings=settings,
                    standalone=True,
                    namespaces=[NAMESPACE],
                    stop_flag=stop,
                    ready_flag=ready,
                )
            )
            api = KubeApi(login_to(url))
            try:
                await asyncio.wait_for(ready.wait(), 10)
                owner = await api.create(QUEUE_CLUSTERS, NAMESPACE, queue_cluster())

                async def all_objects() -> dict[tuple[str, str], dict[str, Any]] | None:
                    found = await owned_objects(api)
                    return found if len(found) == len(OWNED) else None

                objects = await eventually(all_objects, "owned objects")
                for body in objects.values():
                    assert_owned_by(body, owner)

                async def waiting_status() -> dict[str, Any] | None:
                    body = await get_cluster(api)
                    status = body.get("status") or {}
                    progressing = [
                        condition
                        for condition in status.get("conditions", ())
                        if condition["type"] == "Progressing"
                    ]
                    # The StatefulSet controller does not run: the operator waits for it.
                    if progressing and "StatefulSet controller" in progressing[0]["message"]:
                        return body
                    return None

                body = await eventually(waiting_status, "a status waiting for the controller")
                assert body["status"]["phase"] == "Creating"
                # No finalizer: no timer, daemon or deletion handler (the owner references
                # have the owned objects deleted with the QueueCluster, operator or not).
                assert not body["metadata"].get("finalizers")

                # Runs come without any event on the QueueCluster: the operator-wide loop
                # finds it by listing and puts back an owned object deleted behind its back.
                config_map = await api.get(CONFIG_MAPS, NAMESPACE, f"{CLUSTER}-config")
                assert config_map is not None
                await api.delete(CONFIG_MAPS, NAMESPACE, f"{CLUSTER}-config")

                async def config_map_again() -> dict[str, Any] | None:
                    found = await api.get(CONFIG_MAPS, NAMESPACE, f"{CLUSTER}-config")
                    if found is None or found["metadata"]["uid"] == config_map["metadata"]["uid"]:
                        return None
                    return found

                assert_owned_by(await eventually(config_map_again, "the ConfigMap again"), owner)
                assert not (await get_cluster(api))["metadata"].get("finalizers")

                async def posted_events() -> list[dict[str, Any]] | None:
                    events = ApiResource("v1", "events", "Event")
                    items = await api.list(events, NAMESPACE, {})
                    applied = [item for item in items if item.get("reason") == "ObjectApplied"]
                    return applied if len(applied) >= len(OWNED) else None

                events = await eventually(posted_events, "an event for each applied object")
                assert all(event["involvedObject"]["name"] == CLUSTER for event in events)
            finally:
                stop.set()
                await asyncio.wait_for(operator, 20)
                await api.close()

    run(scenario())


# ---------------------------------------------------------------------------------------------
# With taskraft nodes behind the pods


def test_a_cluster_forms_scales_up_through_the_nodes_api_and_snapshots(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_api() as (_, url):
            api, http = KubeApi(login_to(url)), NodeHttp()
            nodes = PodNodes(tmp_path / "nodes", cluster=CLUSTER, founders=3, capacity=4)
            try:
                await api.create(
                    QUEUE_CLUSTERS,
                    NAMESPACE,
                    queue_cluster(
                        replicas=3,
                        queues=[
                            {"name": "emails", "maxDeliveries": 3, "deadLetterQueue": "dead"},
                            {"name": "dead"},
                        ],
                    ),
                )
                driver = Driver(api, http, nodes)
                assert driver.simulation is not None

                # Formation: three pods, three voters, a leader; the declared queues exist.
                plan = await driver.until(
                    lambda plan: available(plan) and len(voters(plan)) == 3,
                    "three voters and a leader",
                )
                assert plan.status.leader in {"qc-0", "qc-1", "qc-2"}
                assert voters(plan) == ["qc-0", "qc-1", "qc-2"]
                assert sorted(driver.simulation.started) == ["qc-0", "qc-1", "qc-2"]
                await driver.until(
                    lambda plan: plan.status.phase == "Running" and plan.status.progress.founded,
                    "a founded, running cluster",
                )
                config_map = await api.get(CONFIG_MAPS, NAMESPACE, f"{CLUSTER}-config")
                assert config_map is not None
                assert "join = true" in config_map["data"]["qc-0.toml"]
                async with AsyncClient(nodes.endpoints().client(CLUSTER, NAMESPACE)) as client:
                    queues = {queue.name: queue for queue in await client.list_queues()}
                assert queues["emails"].policies.dead_letter_queue == "dead"
                assert queues["emails"].policies.max_deliveries == 3
                assert "dead" in queues
                assert driver.events.reasons().count("QueueCreated") == 2

                # Scale 3 -> 4: one more pod, added as a learner, promoted once caught up.
                await api.merge_patch(QUEUE_CLUSTERS, NAMESPACE, CLUSTER, {"spec": {"replicas": 4}})
                added_before = sample("taskraft_operator_actions_total", {"action": "AddLearner"})
                first = len(driver.actions)
                plan = await driver.until(
                    lambda plan: len(voters(plan)) == 4 and plan.status.phase == "Running",
                    "four voters",
                )
                scale_actions = [
                    action
                    for action in driver.actions[first:]
                    if isinstance(action, ScaleStatefulSet | AddLearner | Promote)
                ]
                assert scale_actions[0] == ScaleStatefulSet(replicas=4)
                assert isinstance(scale_actions[1], AddLearner)
                assert scale_actions[1].node_id == "qc-3"
                assert isinstance(scale_actions[-1], Promote)
                assert scale_actions[-1].node_id == "qc-3"
                assert kinds(scale_actions) == ["ScaleStatefulSet", "AddLearner", "Promote"]
                assert driver.simulation.started[-1] == "qc-3"
                assert sample("taskraft_operator_actions_total", {"action": "AddLearner"}) == (
                    added_before + 1
                )
                leader = plan.status.leader
                assert leader is not None
                document = await nodes.status(leader)
                assert document is not None
                member = next(item for item in document["members"] if item["id"] == "qc-3")
                assert member["voter"] is True
                assert member["peer_address"] == nodes.node(3).peer_address
                assert {"MemberAdded", "MemberPromoted"} <= set(driver.events.reasons())

                # An admin call sent to a follower reaches the leader through its 307.
                follower = next(pod for pod in ("qc-0", "qc-1", "qc-2") if pod != leader)
                answer = await http.call(
                    nodes.node(int(follower.rsplit("-", 1)[1])).http_address,
                    "POST",
                    "/v1/members",
                    {"id": "qc-3", "peer_address": nodes.node(3).peer_address},
                )
                assert answer.status == 200, answer
                assert nodes.node(int(leader.rsplit("-", 1)[1])).http_address in answer.url

                # A snapshot request: each ready member snapshots once, the leader first.
                await api.merge_patch(
                    QUEUE_CLUSTERS,
                    NAMESPACE,
                    CLUSTER,
                    {"metadata": {"annotations": {SNAPSHOT_REQUEST_ANNOTATION: "backup-1"}}},
                )
                first = len(driver.actions)
                plan = await driver.until(
                    lambda plan: (
                        plan.status.last_snapshot is not None
                        and plan.status.last_snapshot.token == "backup-1"
                        and plan.status.progress.snapshot.round is None
                    ),
                    "a finished snapshot round",
                )
                snapshots = [
                    action for action in driver.actions[first:] if isinstance(action, TakeSnapshot)
                ]
                assert snapshots[0].pod == plan.status.leader
                assert sorted(action.pod for action in snapshots) == [
                    "qc-0",
                    "qc-1",
                    "qc-2",
                    "qc-3",
                ]
                record = plan.status.last_snapshot
                assert record is not None and record.trigger == "request" and record.index > 0
                stored = status_from_dict((await get_cluster(api))["status"])
                assert stored.last_snapshot == record
                assert stored.progress.snapshot.handled_request == "backup-1"
                document = await nodes.status(record.pod)
                assert document is not None and document["snapshot_index"] >= record.index
                # The request is handled: no further round for the same value.
                await driver.step()
                assert not isinstance(driver.actions[-1], TakeSnapshot)
            except BaseException:
                print(nodes.log_tails())
                raise
            finally:
                await api.close()
                await http.close()
                await nodes.close()

    run(scenario())


# ---------------------------------------------------------------------------------------------
# Credentials and TLS


def write_secret_files(secret: dict[str, Any], directory: Path) -> dict[str, Path]:
    """The keys of a Secret as files, as the kubelet mounts a Secret volume."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for key in secret["data"]:
        text = secret_text(secret, key)
        assert text is not None, key
        path = directory / key
        path.write_text(text)
        path.chmod(0o600)
        files[key] = path
    return files


def tls_secret(directory: Path) -> dict[str, Any]:
    """What cert-manager would write for the nodes: tls.crt, tls.key and ca.crt."""
    authority = CertificateAuthority.create(directory, "ca", "qc-test-ca")
    node = authority.issue_node(directory)
    contents = {
        "tls.crt": node.certificate.read_bytes(),
        "tls.key": node.private_key.read_bytes(),
        "ca.crt": authority.files.certificate.read_bytes(),
    }
    return {
        "metadata": {"name": "qc-tls"},
        "type": "kubernetes.io/tls",
        "data": {key: base64.b64encode(value).decode() for key, value in contents.items()},
    }


def test_a_secured_cluster_gets_credentials_and_is_reached_with_them(tmp_path: Path) -> None:
    """Authentication (the default) and spec.tls: the operator makes the credentials Secret
    once, waits for the TLS Secret, then forms the cluster and creates its queues over TLS
    with its admin token; applications use the client token, nobody gets in without one."""

    async def scenario() -> None:
        async with emulated_api() as (_, url):
            api, http = KubeApi(login_to(url)), NodeHttp()
            nodes = PodNodes(tmp_path / "nodes", cluster=CLUSTER, founders=3, capacity=3)
            try:
                owner = await api.create(
                    QUEUE_CLUSTERS,
                    NAMESPACE,
                    queue_cluster(
                        queues=[{"name": "jobs"}], spec={"tls": {"secretName": "qc-tls"}}
                    ),
                )
                driver = Driver(api, http, nodes)
                # No TLS Secret yet: reported, nothing else is created.
                assert await driver.step() is None
                assert await driver.step() is None
                assert await owned_objects(api) == {}
                status = status_from_dict((await get_cluster(api))["status"])
                progressing = status.condition("Progressing")
                assert progressing is not None
                assert progressing.reason == "CredentialsUnavailable"
                assert "qc-tls" in progressing.message
                assert driver.events.reasons() == ["CredentialsCreated", "CredentialsUnavailable"]
                # The credentials were made once, owned by the cluster.
                credentials = await api.get(SECRETS, NAMESPACE, f"{CLUSTER}-credentials")
                assert credentials is not None
                assert_owned_by_without_hash(credentials, owner)
                assert set(credentials["data"]) == {
                    "admin-token",
                    "client-token",
                    "read-token",
                    "tokens",
                    "cluster-secret",
                }
                tokens_file = secret_text(credentials, "tokens")
                admin_token = secret_text(credentials, "admin-token")
                client_token = secret_text(credentials, "client-token")
                assert tokens_file is not None and admin_token and client_token
                assert f"operator admin {admin_token}" in tokens_file
                assert f"applications client {client_token}" in tokens_file

                await api.create(SECRETS, NAMESPACE, tls_secret(tmp_path / "pki"))
                mounted = write_secret_files(credentials, tmp_path / "credentials")
                tls_files = write_secret_files(
                    await api.get(SECRETS, NAMESPACE, "qc-tls") or {}, tmp_path / "tls"
                )
                tls = TlsFiles(tls_files["tls.crt"], tls_files["tls.key"], tls_files["ca.crt"])
                nodes.secure(
                    tls=tls,
                    token_file=mounted["tokens"],
                    cluster_secret_file=mounted["cluster-secret"],
                    admin_token=admin_token,
                )
                plan = await driver.until(
                    lambda plan: available(plan) and len(voters(plan)) == 3,
                    "three voters and a leader, under TLS and tokens",
                )
                assert plan.status.leader is not None
                assert all(member.ready for member in plan.status.members)
                await driver.until(
                    lambda _: "QueueCreated" in driver.events.reasons(), "the declared queue"
                )
                assert driver.events.reasons().count("CredentialsCreated") == 1
                # Nothing was generated again.
                again = await api.get(SECRETS, NAMESPACE, f"{CLUSTER}-credentials")
                assert again is not None and again["data"] == credentials["data"]

                servers = nodes.endpoints().client(CLUSTER, NAMESPACE)
                trusted = client_context(tls.authority)
                async with AsyncClient(servers, token=client_token, tls=trusted) as client:
                    await client.enqueue("jobs", b"with the client token")
                    assert (await client.count("jobs")).ready == 1
                async with AsyncClient(servers, tls=trusted, request_timeout_s=5) as client:
                    with pytest.raises(Unauthenticated):
                        await client.count("jobs")
                read_token = secret_text(credentials, "read-token")
                async with AsyncClient(servers, token=read_token, tls=trusted) as client:
                    assert (await client.count("jobs")).ready == 1
                    with pytest.raises(Forbidden):
                        await client.enqueue("jobs", b"not with a read token")
                # The HTTP API: HTTPS only, and a token needed.
                leader = plan.status.leader
                follower = next(pod for pod in ("qc-0", "qc-1", "qc-2") if pod != leader)
                follower_http = nodes.node(int(follower.rsplit("-", 1)[1])).http_address
                assert await http.status(follower_http) is None  # plain HTTP: no answer
                assert await http.status(follower_http, NodeAccess(tls=trusted)) is None  # 401
                admin = NodeAccess(token=admin_token, tls=trusted)
                assert await http.status(follower_http, admin) is not None
                # An admin call sent to a follower reaches the leader through its 307, over
                # HTTPS with the token (adding a member that is one answers 200).
                leader_node = nodes.node(int(leader.rsplit("-", 1)[1]))
                answer = await http.call(
                    follower_http,
                    "POST",
                    "/v1/members",
                    {"id": leader, "peer_address": leader_node.peer_address},
                    admin,
                )
                assert answer.status == 200, answer
                assert answer.url.startswith(f"https://{leader_node.http_address}/")
                # No token in what the operator wrote or posted.
                written = json.dumps([await get_cluster(api), driver.events.events])
                for token in (admin_token, client_token, read_token):
                    assert token is not None and token not in written
                # The pod template points the node at both Secrets.
                stateful_set = await api.get(STATEFUL_SETS, NAMESPACE, CLUSTER)
                assert stateful_set is not None
                pod = stateful_set["spec"]["template"]["spec"]
                secrets_mounted = {
                    volume["secret"]["secretName"]
                    for volume in pod["volumes"]
                    if "secret" in volume
                }
                assert secrets_mounted == {f"{CLUSTER}-credentials", "qc-tls"}
            finally:
                await api.close()
                await http.close()
                await nodes.close()

    run(scenario())


def assert_owned_by_without_hash(body: dict[str, Any], owner: dict[str, Any]) -> None:
    assert body["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert body["metadata"]["ownerReferences"][0]["controller"] is True
    assert body["metadata"]["labels"]["app.kubernetes.io/instance"] == CLUSTER


def test_a_redirect_to_another_scheme_is_not_followed_with_the_token() -> None:
    """An admin call follows a 307 only within its own scheme: a token meant for HTTPS never
    goes out in the clear (nor the other way round)."""
    seen: list[str | None] = []

    async def redirecting(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        raise web.HTTPTemporaryRedirect(location=f"https://127.0.0.1:1{request.path}")

    async def scenario() -> None:
        application = web.Application()
        application.router.add_post("/v1/members", redirecting)
        server = TestServer(application, host="127.0.0.1")
        await server.start_server()
        http = NodeHttp()
        try:
            answer = await http.call(
                f"127.0.0.1:{server.port}",
                "POST",
                "/v1/members",
                {"id": "qc-3"},
                NodeAccess(token="admin-token-" + "a" * 20),
            )
        finally:
            await http.close()
            await server.close()
        assert answer.status == 502
        assert "refused a redirect from http to https" in answer.error_message()
        # Sent once, to the node asked; not to the redirect's target.
        assert seen == ["Bearer admin-token-" + "a" * 20]

    run(scenario())


def test_the_trusted_authorities_keep_the_previous_one_for_a_while(tmp_path: Path) -> None:
    first = CertificateAuthority.create(tmp_path / "first", "ca", "first")
    second = CertificateAuthority.create(tmp_path / "second", "ca", "second")
    third = CertificateAuthority.create(tmp_path / "third", "ca", "third")
    now = [0.0]

    def subjects(context: ssl.SSLContext) -> set[str]:
        return {
            dict(item[0] for item in authority["subject"])["commonName"]
            for authority in context.get_ca_certs()
        }

    def pem(authority: CertificateAuthority) -> str:
        # A bundle as distributions write them: comments, some not ASCII.
        return "# Főtanúsítvány\n" + authority.files.certificate.read_text()

    trust = TrustCache(clock=lambda: now[0])
    context = trust.context_for(pem(first))
    assert subjects(context) == {"first"}
    assert trust.context_for(pem(first)) is context  # unchanged: kept
    # Rotated: the previous authority is trusted too, while the pods take up the new files...
    assert subjects(trust.context_for(pem(second))) == {"first", "second"}
    now[0] += PREVIOUS_AUTHORITY_GRACE_S / 2
    assert subjects(trust.context_for(pem(second))) == {"first", "second"}
    # ...and no longer once that is over.
    now[0] += PREVIOUS_AUTHORITY_GRACE_S
    assert subjects(trust.context_for(pem(second))) == {"second"}
    assert subjects(trust.context_for(pem(third))) == {"second", "third"}
    with pytest.raises(CredentialsUnavailable, match="not PEM"):
        TrustCache().context_for("not a certificate")


def test_a_credentials_secret_the_cluster_did_not_make_is_not_used(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_api() as (_, url):
            api, http = KubeApi(login_to(url)), NodeHttp()
            try:
                await api.create(
                    SECRETS,
                    NAMESPACE,
                    {
                        "metadata": {"name": f"{CLUSTER}-credentials"},
                        "data": {"cluster-secret": base64.b64encode(b"x" * 48).decode()},
                    },
                )
                await api.create(QUEUE_CLUSTERS, NAMESPACE, queue_cluster())
                driver = Driver(api, http, nodes=None)
                assert await driver.step() is None
                assert await owned_objects(api) == {}
                status = status_from_dict((await get_cluster(api))["status"])
                progressing = status.condition("Progressing")
                assert progressing is not None
                assert progressing.reason == "CredentialsUnavailable"
                assert "did not make it" in progressing.message
                planted = await api.get(SECRETS, NAMESPACE, f"{CLUSTER}-credentials")
                assert planted is not None and set(planted["data"]) == {"cluster-secret"}
            finally:
                await api.close()
                await http.close()

    run(scenario())


def test_without_authentication_the_admin_token_goes_only_to_a_node_that_asks() -> None:
    """Plain HTTP to a cluster whose authentication is off: the token is kept back, and sent
    only to a node that answers 401 (one not yet restarted since it was turned off)."""
    seen: dict[str, list[str | None]] = {"open": [], "requiring": []}
    token = "admin-token-" + "b" * 20

    def node(kind: str) -> web.Application:
        async def status(request: web.Request) -> web.Response:
            authorization = request.headers.get("Authorization")
            seen[kind].append(authorization)
            if kind == "requiring" and authorization != f"Bearer {token}":
                return web.json_response({"error": {"message": "unauthenticated"}}, status=401)
            return web.json_response({"node_id": "qc-0"})

        application = web.Application()
        application.router.add_get("/v1/status", status)
        return application

    async def scenario() -> None:
        servers = {kind: TestServer(node(kind), host="127.0.0.1") for kind in seen}
        for server in servers.values():
            await server.start_server()
        http = NodeHttp()
        access = NodeAccess(token=token, token_required=False)
        try:
            for kind, server in servers.items():
                document = await http.status(f"127.0.0.1:{server.port}", access)
                assert document == {"node_id": "qc-0"}, kind
        finally:
            await http.close()
            for server in servers.values():
                await server.close()
        assert seen == {"open": [None], "requiring": [None, f"Bearer {token}"]}
        assert NodeAccess(token=token).sends_token  # required: always sent

    run(scenario())
