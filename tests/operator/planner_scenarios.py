"""An in-memory QueueCluster for the planner tests: Kubernetes objects, pods and a Raft cluster.

`SimCluster` plays the world: the StatefulSet controller (creates pods for missing ordinals at the
update revision, deletes pods beyond `replicas`, keeps PVCs), the kubelet (a pod's process
starts a few ticks after it is created, reads its TOML file from the ConfigMap with `tomllib`
exactly as `taskraft serve --config` would, and is ready when the node is a member that knows a
leader and is not too far behind), and Raft at the level the operator sees it (one committed
configuration, a leader elected among running voters with data, a commit index that grows with
client traffic, followers that catch up at a bounded rate). Faults: a pod's process crashes for
a while, a node stops answering `/v1/status`, a version whose pods never start, a slow follower
that is ready but not caught up, a handler that dies before carrying out the action or carries it
out twice (a retry after a timeout).

`Operator` is the kopf handler's stand-in: observe, plan, write the status (through JSON, as the
API server stores it: an operator restart loses nothing else), carry out the action.

The simulator checks the operator's safety rules when it applies each action and raises
`Violation`: no action leaves fewer healthy voters than a majority (single-voter restarts
excepted), no pod is restarted while another is not ready, the leader is never deleted (it hands
over first), learners are promoted only when caught up, at most one learner exists, a member is
removed before its pod, a PVC is deleted only after its member and pod are gone, an applied
StatefulSet keeps its replica count and immutable fields, no data directory is bootstrapped twice.
"""

from __future__ import annotations

import copy
import json
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from taskraft_operator.model import (
    DesiredSpec,
    NodeMember,
    NodeStatus,
    ObservedJob,
    ObservedPod,
    ObservedState,
    ObservedStatefulSet,
    StorageSpec,
    content_hash,
    ordinal_of,
    pod_name,
    pvc_name,
    status_from_dict,
    status_to_dict,
)
from taskraft_operator.planner import (
    VERSION_ANNOTATION,
    Action,
    AddLearner,
    DeletePod,
    DeletePvc,
    EnsureObject,
    Nothing,
    Plan,
    Promote,
    RemoveMember,
    ScaleStatefulSet,
    TakeSnapshot,
    TransferLeadership,
    majority,
    plan,
    record_snapshot,
)

START = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
TICK = timedelta(seconds=5)
# Client traffic: entries committed per tick while the cluster has a quorum.
TRAFFIC_ENTRIES = 100
# How fast a node applies the log it lacks (replay or catch-up), per tick.
CATCH_UP_ENTRIES = 2500
# As on the node: `caught_up` within promotion_lag_max_entries, ready within ready_lag_max_entries.
PROMOTION_LAG_MAX = 1000
READY_LAG_MAX = 1000
START_DELAY_TICKS = 2
# A new cluster's log already holds this much by the time a later pod joins.
INITIAL_COMMIT = 5000


class Violation(AssertionError):
    """The operator did something its safety rules forbid."""


@dataclass
class SimPod:
    ordinal: int
    uid: str
    revision: str
    template: dict[str, Any]
    start_at_tick: int
    deleting_until: int | None = None
    running: bool = False
    crashed_until: int = -1
    unreachable_until: int = -1

    @property
    def version(self) -> str:
        return str(self.template["metadata"]["annotations"][VERSION_ANNOTATION])


@dataclass
class SimVolume:
    """A PVC and the node data on it."""

    has_data: bool = False
    applied: int = 0
    bootstraps: int = 0


@dataclass
class SimCluster:
    name: str = "qc"
    namespace: str = "queues"
    seed: int = 0
    now: datetime = START
    tick_count: int = 0
    manifests: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    generation: int = 0
    observed_generation: int = 0
    update_revision: str | None = None
    pods: dict[int, SimPod] = field(default_factory=dict)
    volumes: dict[int, SimVolume] = field(default_factory=dict)
    # Raft: the configuration in force (node id -> voter), None before the first bootstrap.
    configuration: dict[str, bool] | None = None
    leader: str | None = None
    term: int = 0
    commit: int = 0
    broken_versions: set[str] = field(default_factory=set)
    # The taskraft build every node reports; None: each reports its pod's spec.version.
    build_version: str | None = None
    slow_nodes: set[str] = field(default_factory=set)
    status_document: dict[str, Any] | None = None
    uid_counter: int = 0
    history: list[str] = field(default_factory=list)
    leaders_seen: list[str] = field(default_factory=list)
    # Backup Jobs: name -> ticks left to run; finished ones -> True (succeeded) / False.
    jobs_running: dict[str, int] = field(default_factory=dict)
    jobs_finished: dict[str, bool] = field(default_factory=dict)
    backup_ticks: int = 3
    fail_backups: bool = False

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    # -----------------------------------------------------------------------------------------
    # Names and small facts

    def node(self, ordinal: int) -> str:
        return pod_name(self.name, ordinal)

    def ordinal(self, node: str) -> int:
        ordinal = ordinal_of(self.name, node)
        assert ordinal is not None, node
        return ordinal

    @property
    def statefulset(self) -> dict[str, Any] | None:
        return self.manifests.get(("StatefulSet", self.name))

    @property
    def replicas(self) -> int:
        statefulset = self.statefulset
        return 0 if statefulset is None else int(statefulset["spec"]["replicas"])

    def voters(self) -> set[str]:
        return {node for node, voter in (self.configuration or {}).items() if voter}

    def is_member(self, node: str) -> bool:
        return self.configuration is not None and node in self.configuration

    def pod_of(self, node: str) -> SimPod | None:
        return self.pods.get(self.ordinal(node))

    def lag(self, node: str) -> int:
        return self.commit - self.volumes[self.ordinal(node)].applied

    def running(self, node: str) -> bool:
        pod = self.pod_of(node)
        return pod is not None and pod.running

    def ready(self, pod: SimPod) -> bool:
        node = self.node(pod.ordinal)
        if not pod.running or pod.deleting_until is not None or self.leader is None:
            return False
        lag_max = 10 * READY_LAG_MAX if node in self.slow_nodes else READY_LAG_MAX
        return self.is_member(node) and self.lag(node) <= lag_max

    def caught_up(self, node: str) -> bool:
        return self.running(node) and self.lag(node) <= PROMOTION_LAG_MAX

    def healthy_voters(self) -> set[str]:
        """As the planner defines it, from the ground truth."""
        healthy = set()
        for node in self.voters():
            pod = self.pod_of(node)
            if pod is None or pod.deleting_until is not None or not self.ready(pod):
                continue
            if node == self.leader or self.caught_up(node):
                healthy.add(node)
        return healthy

    def learners(self) -> set[str]:
        return {node for node, voter in (self.configuration or {}).items() if not voter}

    def not_ready_pods(self) -> list[int]:
        return [
            ordinal
            for ordinal in range(self.replicas)
            if (pod := self.pods.get(ordinal)) is None
            or pod.deleting_until is not None
            or not self.ready(pod)
        ]

    # -----------------------------------------------------------------------------------------
    # Observation

    def observe(self) -> ObservedState:
        statefulset = self.statefulset
        observed_statefulset = None
        if statefulset is not None:
            claim = statefulset["spec"]["volumeClaimTemplates"][0]["spec"]
            observed_statefulset = ObservedStatefulSet(
                replicas=self.replicas,
                spec_hash=statefulset["metadata"]["annotations"]["taskraft.io/spec-hash"],
                generation=self.generation,
                observed_generation=self.observed_generation,
                update_revision=self.update_revision,
                storage=StorageSpec(
                    size=claim["resources"]["requests"]["storage"],
                    storage_class=claim.get("storageClassName"),
                ),
            )
        objects = {
            key: manifest["metadata"]["annotations"].get("taskraft.io/spec-hash")
            for key, manifest in self.manifests.items()
            if key[0] not in ("StatefulSet", "Job")
        }
        jobs = {name: ObservedJob(name=name) for name in self.jobs_running}
        jobs.update(
            (name, ObservedJob(name=name, succeeded=ok, failed=not ok))
            for name, ok in self.jobs_finished.items()
        )
        status = None
        if self.status_document is not None:
            status = status_from_dict(json.loads(json.dumps(self.status_document)))
        return ObservedState(
            now=self.now,
            stateful_set=observed_statefulset,
            objects=objects,
            pods={ordinal: self.observe_pod(pod) for ordinal, pod in self.pods.items()},
            pvcs=frozenset(self.volumes),
            status=status,
            jobs=jobs,
        )

    def observe_pod(self, pod: SimPod) -> ObservedPod:
        return ObservedPod(
            ordinal=pod.ordinal,
            uid=pod.uid,
            phase="Running" if pod.running else "Pending",
            ready=self.ready(pod),
            revision=pod.revision,
            version=pod.version,
            deleting=pod.deleting_until is not None,
            node=self.node_status(pod),
        )

    def node_status(self, pod: SimPod) -> NodeStatus | None:
        if not pod.running or pod.unreachable_until > self.tick_count:
            return None
        node = self.node(pod.ordinal)
        volume = self.volumes[pod.ordinal]
        member = self.is_member(node)
        is_leader = node == self.leader
        members: tuple[NodeMember, ...] = ()
        if member and self.configuration is not None:
            members = tuple(
                NodeMember(
                    id=other,
                    peer_address=f"{other}.{self.name}-peers.{self.namespace}.svc:7101",
                    voter=voter,
                    match_index=self.volumes[self.ordinal(other)].applied if is_leader else None,
                    caught_up=self.caught_up(other) if is_leader else None,
                )
                for other, voter in self.configuration.items()
            )
        return NodeStatus(
            node_id=node,
            version=self.build_version or pod.version,
            ready=self.ready(pod),
            role="leader" if is_leader else "follower",
            term=self.term,
            leader_id=self.leader if member else None,
            commit_index=self.commit if member else 0,
            applied_index=volume.applied,
            last_log_index=self.commit if member else 0,
            members=members,
        )

    # -----------------------------------------------------------------------------------------
    # Time passing

    def tick(self) -> None:
        self.tick_count += 1
        self.now += TICK
        self.run_statefulset_controller()
        self.run_kubelet()
        self.run_raft()
        self.run_job_controller()

    def run_job_controller(self) -> None:
        for name, left in list(self.jobs_running.items()):
            if left > 1:
                self.jobs_running[name] = left - 1
            else:
                del self.jobs_running[name]
                self.jobs_finished[name] = not self.fail_backups

    def run_statefulset_controller(self) -> None:
        statefulset = self.statefulset
        if statefulset is None:
            return
        if self.observed_generation < self.generation:
            self.observed_generation = self.generation
            self.update_revision = self.revision_of(statefulset["spec"]["template"])
        for ordinal, pod in list(self.pods.items()):
            if pod.deleting_until is not None and pod.deleting_until <= self.tick_count:
                del self.pods[ordinal]
        for ordinal, pod in self.pods.items():
            if ordinal >= self.replicas and pod.deleting_until is None:
                self.stop_pod(pod)
        for ordinal in range(self.replicas):
            if ordinal not in self.pods:
                self.create_pod(ordinal, statefulset)

    def revision_of(self, template: Mapping[str, Any]) -> str:
        return f"{self.name}-{content_hash(template)[:10]}"

    def create_pod(self, ordinal: int, statefulset: Mapping[str, Any]) -> None:
        assert self.update_revision is not None
        self.uid_counter += 1
        self.pods[ordinal] = SimPod(
            ordinal=ordinal,
            uid=f"uid-{self.uid_counter}",
            revision=self.update_revision,
            template=copy.deepcopy(statefulset["spec"]["template"]),
            start_at_tick=self.tick_count + START_DELAY_TICKS,
        )
        self.volumes.setdefault(ordinal, SimVolume())

    def stop_pod(self, pod: SimPod) -> None:
        """Graceful deletion: the node stops (a leader hands over), the pod goes next tick."""
        pod.deleting_until = self.tick_count + 1
        pod.running = False
        if self.node(pod.ordinal) == self.leader:
            self.leader = None

    def run_kubelet(self) -> None:
        for pod in self.pods.values():
            if pod.crashed_until > self.tick_count or pod.deleting_until is not None:
                if pod.running and self.node(pod.ordinal) == self.leader:
                    self.leader = None
                pod.running = False
                continue
            if pod.running or self.tick_count < pod.start_at_tick:
                continue
            if pod.version in self.broken_versions:
                continue  # crash-looping
            self.start_node(pod)

    def start_node(self, pod: SimPod) -> None:
        """`taskraft serve` with TASKRAFT_CONFIG=/etc/taskraft/$(TASKRAFT_NODE_ID).toml."""
        node = self.node(pod.ordinal)
        configmap = self.manifests.get(("ConfigMap", f"{self.name}-config"))
        text = None if configmap is None else configmap["data"].get(f"{node}.toml")
        if text is None:
            raise Violation(f"pod {node} started but the ConfigMap has no {node}.toml")
        options = tomllib.loads(text)
        joins = options.get("join", False)
        founders = options.get("initial_members")
        if joins == (founders is not None):
            raise Violation(f"{node}.toml must give either join or initial_members: {options}")
        volume = self.volumes[pod.ordinal]
        if founders is not None and not volume.has_data:
            if node not in founders:
                raise Violation(f"{node} is not among its initial members {founders}")
            volume.bootstraps += 1
            if volume.bootstraps > 1:
                raise Violation(f"{node} bootstrapped a new cluster a second time")
            volume.has_data = True
            if self.configuration is None:
                self.configuration = dict.fromkeys(founders, True)
                self.commit = 0
        pod.running = True

    def run_raft(self) -> None:
        if self.configuration is None:
            return
        voters = self.voters()
        if self.leader is not None and (not self.running(self.leader) or self.leader not in voters):
            self.leader = None
        up = [node for node in voters if self.running(node) and self.has_data(node)]
        if len(up) < majority(len(voters)):
            self.leader = None
            return
        if self.leader is None:
            best = max(self.volumes[self.ordinal(node)].applied for node in up)
            candidates = sorted(
                node for node in up if self.volumes[self.ordinal(node)].applied == best
            )
            self.leader = self.random.choice(candidates)
            self.term += 1
            self.leaders_seen.append(self.leader)
            if self.commit < INITIAL_COMMIT:
                self.commit = INITIAL_COMMIT
        self.commit += TRAFFIC_ENTRIES
        for node in self.configuration:
            if not self.running(node):
                continue
            volume = self.volumes[self.ordinal(node)]
            volume.has_data = True
            # A slow follower applies only as fast as the log grows: its lag stays.
            rate = TRAFFIC_ENTRIES if node in self.slow_nodes else CATCH_UP_ENTRIES
            volume.applied = min(self.commit, volume.applied + rate)
        self.volumes[self.ordinal(self.leader)].applied = self.commit

    def has_data(self, node: str) -> bool:
        return self.volumes[self.ordinal(node)].has_data

    # -----------------------------------------------------------------------------------------
    # Faults

    def crash(self, ordinal: int, ticks: int) -> None:
        pod = self.pods.get(ordinal)
        if pod is not None:
            pod.crashed_until = self.tick_count + ticks
            pod.start_at_tick = self.tick_count + ticks

    def make_unreachable(self, ordinal: int, ticks: int) -> None:
        pod = self.pods.get(ordinal)
        if pod is not None:
            pod.unreachable_until = self.tick_count + ticks

    def heal(self) -> None:
        for pod in self.pods.values():
            pod.crashed_until = -1
            pod.unreachable_until = -1
            pod.start_at_tick = min(pod.start_at_tick, self.tick_count)
        self.slow_nodes.clear()

    # -----------------------------------------------------------------------------------------
    # Carrying out actions, with the safety rules checked

    def apply(self, action: Action, desired: DesiredSpec) -> dict[str, int] | None:
        """Carry out the action; a snapshot's answer, or None."""
        self.history.append(_describe(action))
        match action:
            case EnsureObject():
                self.ensure_object(action)
            case AddLearner():
                self.add_learner(action)
            case Promote():
                self.promote(action)
            case RemoveMember():
                self.remove_member(action)
            case TransferLeadership():
                self.transfer(action)
            case DeletePod():
                self.delete_pod(action)
            case ScaleStatefulSet():
                self.scale(action)
            case DeletePvc():
                self.delete_pvc(action, desired)
            case TakeSnapshot():
                return self.snapshot(action)
        return None

    def ensure_object(self, action: EnsureObject) -> None:
        manifest = copy.deepcopy(dict(action.manifest))
        key = (action.kind, action.name)
        if action.kind == "Job":
            if key in self.manifests:
                return  # applying the same Job again changes nothing
            others = set(self.jobs_running) - {action.name}
            if others:
                raise Violation(f"backup Job {action.name} while {sorted(others)} still run")
            self.jobs_running[action.name] = self.backup_ticks
        before = self.manifests.get(key)
        if action.kind == "StatefulSet" and before is not None:
            for immutable in ("selector", "serviceName", "volumeClaimTemplates", "replicas"):
                if manifest["spec"][immutable] != before["spec"][immutable]:
                    raise Violation(f"EnsureObject changes the StatefulSet's {immutable}")
            if manifest["spec"]["updateStrategy"] != {"type": "OnDelete"}:
                raise Violation("the StatefulSet must use the OnDelete strategy")
        self.manifests[key] = manifest
        if action.kind == "StatefulSet" and (
            before is None or before["spec"]["template"] != manifest["spec"]["template"]
        ):
            self.generation += 1

    def require_leader(self, via: str) -> str:
        if self.leader is None or not self.running(via):
            raise Violation(f"an admin call through {via} while no leader can answer")
        return self.leader

    def add_learner(self, action: AddLearner) -> None:
        self.require_leader(action.via_pod)
        assert self.configuration is not None
        if action.node_id in self.configuration:
            return
        if self.learners():
            raise Violation(f"adding {action.node_id} while {self.learners()} are learners")
        self.configuration[action.node_id] = False

    def promote(self, action: Promote) -> None:
        self.require_leader(action.via_pod)
        assert self.configuration is not None
        node = action.node_id
        if node not in self.configuration:
            raise Violation(f"promoting {node}, which is not a member")
        if not self.caught_up(node):
            raise Violation(f"promoting {node}, which is not caught up")
        healthy = len(self.healthy_voters()) + 1
        if healthy < majority(len(self.voters()) + 1):
            raise Violation(f"promoting {node} leaves too few healthy voters")
        self.configuration[node] = True

    def remove_member(self, action: RemoveMember) -> None:
        leader = self.require_leader(action.via_pod)
        assert self.configuration is not None
        node = action.node_id
        if node == leader:
            raise Violation(f"removing the leader {node}: it should hand over first")
        if node not in self.configuration:
            return
        voters = self.voters()
        if node in voters:
            if len(voters) == 1:
                raise Violation("removing the last voter")
            remaining = len(self.healthy_voters() - {node})
            if remaining < majority(len(voters) - 1):
                raise Violation(f"removing {node} leaves {remaining} healthy of {len(voters) - 1}")
        del self.configuration[node]

    def transfer(self, action: TransferLeadership) -> None:
        self.require_leader(action.via_pod)
        target = action.target
        if target not in self.voters() or target not in self.healthy_voters():
            raise Violation(f"transferring leadership to {target}, not a healthy voter")
        self.leader = target
        self.term += 1
        self.leaders_seen.append(target)

    def delete_pod(self, action: DeletePod) -> None:
        ordinal = self.ordinal(action.pod)
        pod = self.pods.get(ordinal)
        if pod is None or pod.deleting_until is not None or pod.uid != action.uid:
            return  # the API server refuses: the uid precondition does not hold
        node = action.pod
        voters = self.voters()
        if not pod.running:
            # No process (crash loop, an image that does not start): nothing is lost.
            self.stop_pod(pod)
            return
        others_not_ready = [other for other in self.not_ready_pods() if other != ordinal]
        if others_not_ready:
            raise Violation(f"restarting {node} while {others_not_ready} are not ready")
        if node == self.leader and len(voters) > 1:
            raise Violation(f"restarting the leader {node} without handing over first")
        healthy_before = self.healthy_voters()
        healthy_after = healthy_before - {node}
        if (
            node in voters
            and len(voters) > 1
            and len(healthy_before) >= majority(len(voters))
            and len(healthy_after) < majority(len(voters))
        ):
            raise Violation(f"restarting {node} leaves {len(healthy_after)} healthy voters")
        self.stop_pod(pod)

    def scale(self, action: ScaleStatefulSet) -> None:
        statefulset = self.statefulset
        assert statefulset is not None
        if action.replicas == self.replicas:
            return
        for ordinal in range(action.replicas, self.replicas):
            if self.is_member(self.node(ordinal)):
                raise Violation(f"shrinking past {self.node(ordinal)}, still a member")
        if abs(action.replicas - self.replicas) != 1:
            raise Violation(f"scaling {self.replicas} -> {action.replicas}: one pod at a time")
        statefulset["spec"]["replicas"] = action.replicas

    def delete_pvc(self, action: DeletePvc, desired: DesiredSpec) -> None:
        ordinal = next(
            (ordinal for ordinal in self.volumes if pvc_name(self.name, ordinal) == action.name),
            None,
        )
        if ordinal is None:
            return
        node = self.node(ordinal)
        if ordinal in self.pods or self.is_member(node):
            raise Violation(f"deleting the PVC of {node}, whose pod or membership remains")
        if ordinal < max(self.replicas, desired.replicas):
            raise Violation(f"deleting the PVC of {node}, an ordinal still wanted")
        del self.volumes[ordinal]

    def snapshot(self, action: TakeSnapshot) -> dict[str, int] | None:
        pod = self.pod_of(action.pod)
        if pod is None or not self.ready(pod):
            return None
        applied = self.volumes[pod.ordinal].applied
        return {"index": applied, "term": self.term, "size_bytes": 1000 + applied}


def _describe(action: Action) -> str:
    fields = ", ".join(
        f"{name}={value!r}"
        for name, value in vars_of(action).items()
        if name not in ("manifest", "recheck_after_s")
    )
    return f"{type(action).__name__}({fields})"


def vars_of(action: Action) -> dict[str, Any]:
    return {name: getattr(action, name) for name in action.__dataclass_fields__}


@dataclass
class Operator:
    """The handler loop: observe, plan, write the status, carry out the action, time passes."""

    sim: SimCluster
    desired: DesiredSpec
    plans: list[Plan] = field(default_factory=list)
    lose_next_action: bool = False
    # The handler retries the next action after a timeout although the first call went through.
    repeat_next_action: bool = False

    def step(self) -> Plan:
        observed = self.sim.observe()
        result = plan(self.desired, observed)
        document = status_to_dict(result.status)
        if status_from_dict(json.loads(json.dumps(document))) != result.status:
            raise AssertionError("the status does not survive a round trip through JSON")
        self.sim.status_document = document
        self.plans.append(result)
        if self.lose_next_action:
            self.lose_next_action = False
            self.sim.history.append(f"(lost) {_describe(result.action)}")
        else:
            answer = self.sim.apply(result.action, self.desired)
            if self.repeat_next_action:
                self.repeat_next_action = False
                answer = self.sim.apply(result.action, self.desired) or answer
            if isinstance(result.action, TakeSnapshot) and answer is not None:
                recorded = record_snapshot(
                    result.status,
                    pod=result.action.pod,
                    now=self.sim.now,
                    history_max=self.desired.snapshots.history_max,
                    **answer,
                )
                self.sim.status_document = status_to_dict(recorded)
        self.sim.tick()
        return result

    def run(self, max_steps: int = 400) -> list[Plan]:
        """Steps until the plan is Nothing; the plans of this run."""
        plans = []
        for _ in range(max_steps):
            result = self.step()
            plans.append(result)
            if isinstance(result.action, Nothing):
                return plans
        tail = "\n".join(self.sim.history[-25:])
        raise AssertionError(f"no convergence in {max_steps} steps; last actions:\n{tail}")

    def run_steps(self, count: int) -> list[Plan]:
        return [self.step() for _ in range(count)]

    def change(self, **changes: Any) -> None:
        self.desired = replace(self.desired, generation=self.desired.generation + 1, **changes)

    @property
    def status(self) -> Any:
        assert self.sim.status_document is not None
        return status_from_dict(self.sim.status_document)


def desired_spec(**overrides: Any) -> DesiredSpec:
    values: dict[str, Any] = {
        "name": "qc",
        "namespace": "queues",
        "generation": 1,
        "replicas": 3,
        "image": "taskraft:0.1.0",
        "version": "0.1.0",
    }
    values.update(overrides)
    return DesiredSpec(**values)


def running_cluster(seed: int = 0, **overrides: Any) -> Operator:
    """A cluster created from nothing and settled."""
    operator = Operator(SimCluster(seed=seed), desired_spec(**overrides))
    operator.run()
    return operator


def upgrade_to(operator: Operator, version: str) -> None:
    operator.change(version=version, image=f"taskraft:{version}")


def actions_of(plans: list[Plan], kind: type) -> list[Any]:
    return [result.action for result in plans if isinstance(result.action, kind)]
