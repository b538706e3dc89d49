"""The operator's planner, exhaustively and without Kubernetes.

Scenarios run the planner against the in-memory cluster of `planner_scenarios` (which checks the
safety rules on every action it carries out) until the plan is Nothing: creation, scaling,
rolling upgrades, a pod that never becomes ready, refusals that would lose quorum, an operator
restart in the middle of a roll or a scale, the pause annotation, snapshots. Then the pure parts
alone: manifests (checked against the node's own configuration code), cron schedules, the
status's JSON form, and random fault sequences with hypothesis.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_scenarios import (
    START,
    Operator,
    SimCluster,
    Violation,
    actions_of,
    desired_spec,
    running_cluster,
    upgrade_to,
)

from taskraft.cli.serve import settings_from_configuration
from taskraft.server.configuration import resolve
from taskraft_operator.model import (
    ClusterStatus,
    DesiredSpec,
    NodeStatus,
    ObservedState,
    PvcRetention,
    PvcRetentionPolicy,
    SnapshotPolicy,
    UpgradePolicy,
    node_status_from_json,
    status_from_dict,
    status_to_dict,
)
from taskraft_operator.planner import (
    REPLICAS_MAX,
    RESERVED_CONFIG_KEYS,
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
    configmap_manifest,
    next_fire_time,
    node_config_toml,
    parse_cron,
    plan,
    previous_fire_time,
    record_snapshot,
    record_snapshot_failure,
    statefulset_manifest,
)


def condition(status: ClusterStatus, condition_type: str) -> tuple[str, str]:
    found = status.condition(condition_type)
    assert found is not None
    return found.status, found.reason


def deleted_pods(operator: Operator, since: int = 0) -> list[str]:
    return [
        entry.split("pod='")[1].split("'")[0]
        for entry in operator.sim.history[since:]
        if entry.startswith("DeletePod(")
    ]


# ---------------------------------------------------------------------------------------------
# Creation


def test_create_from_nothing_builds_the_objects_in_order_then_switches_founders_to_join() -> None:
    operator = Operator(SimCluster(), desired_spec())
    plans = operator.run()

    ensured = [(action.kind, action.name) for action in actions_of(plans, EnsureObject)]
    assert ensured[:6] == [
        ("ConfigMap", "qc-config"),
        ("Service", "qc-peers"),
        ("Service", "qc"),
        ("StatefulSet", "qc"),
        ("PodDisruptionBudget", "qc"),
        ("NetworkPolicy", "qc"),
    ]
    # Once every founder has started, the founders' files switch to `join` (no pod restarts).
    assert ensured[6:] == [("ConfigMap", "qc-config")]
    assert not actions_of(plans, DeletePod)
    # Until then it only waits for the founders (how often depends on how fast pods start).
    waits = [action.reason for action in actions_of(plans, Wait)]
    assert all("founding members" in reason for reason in waits)

    status = operator.status
    assert status.phase == "Running"
    assert status.progress.founding_members == ("qc-0", "qc-1", "qc-2")
    assert status.progress.founded
    assert status.leader == operator.sim.leader
    assert [(member.id, member.voter, member.ready) for member in status.members] == [
        ("qc-0", True, True),
        ("qc-1", True, True),
        ("qc-2", True, True),
    ]
    assert status.ready_replicas == 3
    assert status.current_version == status.target_version == "0.1.0"
    assert status.observed_generation == 1
    assert condition(status, "Available") == ("True", "QuorumHealthy")
    assert condition(status, "Progressing") == ("False", "Reconciled")
    assert condition(status, "Degraded") == ("False", "Healthy")
    assert condition(status, "QuorumAtRisk") == ("False", "FaultTolerant")
    assert condition(status, "Upgrading") == ("False", "UpToDate")
    assert condition(status, "Scaling") == ("False", "Steady")
    configmap = operator.sim.manifests[("ConfigMap", "qc-config")]
    assert all("join = true" in text for text in configmap["data"].values())


def test_the_first_plan_records_the_founders_and_reports_creating() -> None:
    result = plan(desired_spec(replicas=5), ObservedState(now=START))
    assert isinstance(result.action, EnsureObject) and result.action.kind == "ConfigMap"
    assert result.status.phase == "Creating"
    assert result.status.progress.founding_members == tuple(f"qc-{i}" for i in range(5))
    founders_file = tomllib.loads(result.action.manifest["data"]["qc-4.toml"])
    assert set(founders_file["initial_members"]) == {f"qc-{i}" for i in range(5)}
    assert tomllib.loads(result.action.manifest["data"]["qc-5.toml"]) == {"join": True}
    assert not [event for event in result.events if event.type == "Warning"]


def test_a_single_node_cluster_is_created_and_has_no_redundancy() -> None:
    operator = running_cluster(replicas=1)
    assert operator.status.phase == "Running"
    assert condition(operator.status, "QuorumAtRisk") == ("False", "NoRedundancy")


# ---------------------------------------------------------------------------------------------
# Scaling


@pytest.mark.parametrize("retention", [PvcRetention.RETAIN, PvcRetention.DELETE])
def test_scale_3_to_5_to_3(retention: PvcRetention) -> None:
    operator = running_cluster(pvc_retention=PvcRetentionPolicy(when_scaled=retention))

    operator.change(replicas=5)
    plans = operator.run()
    membership = [
        action
        for action in (result.action for result in plans)
        if isinstance(action, AddLearner | Promote | ScaleStatefulSet)
    ]
    leader = operator.sim.leader
    assert leader is not None
    assert membership == [
        ScaleStatefulSet(replicas=4),
        AddLearner(node_id="qc-3", peer_address="qc-3.qc-peers.queues.svc:7101", via_pod=leader),
        Promote(node_id="qc-3", via_pod=leader),
        ScaleStatefulSet(replicas=5),
        AddLearner(node_id="qc-4", peer_address="qc-4.qc-peers.queues.svc:7101", via_pod=leader),
        Promote(node_id="qc-4", via_pod=leader),
    ]
    assert sorted(operator.sim.voters()) == [f"qc-{i}" for i in range(5)]
    assert operator.status.phase == "Running"
    scaling = [condition(result.status, "Scaling") for result in plans[:-1]]
    assert all(state == ("True", "ScalingUp") for state in scaling)

    operator.change(replicas=3)
    plans = operator.run()
    steps = [
        action
        for action in (result.action for result in plans)
        if isinstance(action, RemoveMember | ScaleStatefulSet | DeletePvc)
    ]
    expected: list[Any] = [
        RemoveMember(node_id="qc-4", via_pod=leader),
        ScaleStatefulSet(replicas=4),
    ]
    expected += [DeletePvc(name="data-qc-4")] if retention is PvcRetention.DELETE else []
    expected += [RemoveMember(node_id="qc-3", via_pod=leader), ScaleStatefulSet(replicas=3)]
    expected += [DeletePvc(name="data-qc-3")] if retention is PvcRetention.DELETE else []
    assert steps == expected
    assert sorted(operator.sim.voters()) == ["qc-0", "qc-1", "qc-2"]
    assert sorted(operator.sim.pods) == [0, 1, 2]
    kept = [0, 1, 2] if retention is PvcRetention.DELETE else [0, 1, 2, 3, 4]
    assert sorted(operator.sim.volumes) == kept
    assert operator.status.phase == "Running"
    assert condition(operator.status, "Scaling") == ("False", "Steady")


def test_scale_to_1_hands_leadership_over_before_removing_the_leader() -> None:
    operator = running_cluster()
    operator.sim.leader = "qc-2"
    operator.sim.term += 1

    operator.change(replicas=1)
    plans = operator.run()

    first = plans[0].action
    assert isinstance(first, TransferLeadership)
    assert first.via_pod == "qc-2" and first.target in ("qc-0", "qc-1")
    removed = [action.node_id for action in actions_of(plans, RemoveMember)]
    assert removed == ["qc-2", "qc-1"]
    assert operator.sim.voters() == {"qc-0"}
    assert operator.sim.leader == "qc-0"
    assert sorted(operator.sim.pods) == [0]
    status = operator.status
    assert status.phase == "Running"
    assert [member.id for member in status.members] == ["qc-0"]
    assert condition(status, "QuorumAtRisk") == ("False", "NoRedundancy")


def test_scale_up_from_1_and_upgrade_a_single_voter() -> None:
    operator = running_cluster(replicas=1)
    upgrade_to(operator, "0.2.0")
    plans = operator.run()
    # A single voter has no one to hand over to: its restart is the upgrade.
    assert deleted_pods(operator) == ["qc-0"]
    assert not actions_of(plans, TransferLeadership)
    operator.change(replicas=3)
    operator.run()
    assert sorted(operator.sim.voters()) == ["qc-0", "qc-1", "qc-2"]
    assert operator.status.current_version == "0.2.0"


def test_current_version_is_the_spec_version_the_voters_pods_run_not_the_build() -> None:
    # A new spec.version on the same image: the nodes keep reporting the build they run.
    operator = running_cluster(replicas=3)
    operator.sim.build_version = "0.1.0"
    upgrade_to(operator, "0.2.0")
    operator.step()
    assert operator.status.current_version == "0.1.0"
    operator.run()
    assert sorted(deleted_pods(operator)) == ["qc-0", "qc-1", "qc-2"]
    assert operator.status.current_version == operator.status.target_version == "0.2.0"
    assert {member.version for member in operator.status.members} == {"0.1.0"}


def test_a_scale_down_interrupted_by_a_scale_up_re_adds_the_member() -> None:
    operator = running_cluster(replicas=5)
    operator.change(replicas=3)
    while not actions_of(operator.plans[-1:], RemoveMember):
        operator.step()
    assert "qc-4" not in operator.sim.voters()
    operator.change(replicas=5)
    operator.run()
    assert sorted(operator.sim.voters()) == [f"qc-{i}" for i in range(5)]


# ---------------------------------------------------------------------------------------------
# Rolling restarts


def test_upgrade_restarts_followers_least_caught_up_first_and_the_leader_last() -> None:
    operator = running_cluster(seed=3, replicas=5)
    leader = operator.sim.leader
    assert leader is not None
    followers = sorted(operator.sim.voters() - {leader})
    # A follower that stays 600 entries behind (caught up, but the least).
    lagging = followers[1]
    operator.sim.slow_nodes.add(lagging)
    operator.sim.volumes[operator.sim.ordinal(lagging)].applied -= 600
    start = len(operator.sim.history)

    upgrade_to(operator, "0.2.0")
    plans = operator.run()

    restarted = deleted_pods(operator, start)
    assert sorted(restarted) == [f"qc-{i}" for i in range(5)]
    assert restarted[0] == lagging
    assert restarted[-1] == leader
    transfer_index = next(
        i for i, entry in enumerate(operator.sim.history[start:]) if entry.startswith("Transfer")
    )
    delete_indexes = [
        i for i, entry in enumerate(operator.sim.history[start:]) if entry.startswith("DeletePod")
    ]
    assert delete_indexes[-2] < transfer_index < delete_indexes[-1]
    # Each restarted pod was ready and caught up before the next went (the simulator checks the
    # rest), so no two pods were ever down at once.
    for result in plans:
        if isinstance(result.action, DeletePod):
            assert result.status.progress.operation.kind == "rolling"
    upgrading = [condition(result.status, "Upgrading") for result in plans[1:-1]]
    assert all(state == ("True", "RollingRestart") for state in upgrading)
    status = operator.status
    assert status.current_version == status.target_version == "0.2.0"
    assert {member.version for member in status.members} == {"0.2.0"}
    assert condition(status, "Upgrading") == ("False", "UpToDate")
    assert status.progress.operation.kind == "idle"


def test_a_config_change_rolls_the_pods_and_new_pods_get_the_overrides() -> None:
    operator = running_cluster()
    start = len(operator.sim.history)
    operator.change(config={"snapshot_interval_entries": 50_000})
    operator.run()
    assert sorted(deleted_pods(operator, start)) == ["qc-0", "qc-1", "qc-2"]
    configmap = operator.sim.manifests[("ConfigMap", "qc-config")]
    for text in configmap["data"].values():
        assert tomllib.loads(text) == {"join": True, "snapshot_interval_entries": 50_000}


def test_supervised_upgrade_waits_for_approval_before_the_leader() -> None:
    operator = running_cluster(upgrade_policy=UpgradePolicy.SUPERVISED)
    leader = operator.sim.leader
    upgrade_to(operator, "0.2.0")
    plans = operator.run_steps(40)

    assert sorted(deleted_pods(operator)) == sorted({"qc-0", "qc-1", "qc-2"} - {leader})
    assert not actions_of(plans, TransferLeadership)
    last = plans[-1]
    assert isinstance(last.action, Wait)
    target = last.status.target_revision
    assert target is not None and f"taskraft.io/approve-leader-restart={target}" in (
        last.action.reason
    )
    assert condition(last.status, "Upgrading") == ("True", "AwaitingApproval")
    assert condition(last.status, "Progressing") == ("False", "AwaitingApproval")

    operator.change(leader_restart_approval="not-the-revision")
    assert isinstance(operator.step().action, Wait)
    operator.change(leader_restart_approval=target)
    plans = operator.run()
    assert isinstance(plans[0].action, TransferLeadership)
    assert deleted_pods(operator)[-1] == leader
    assert operator.status.current_version == "0.2.0"


def test_a_pod_that_never_becomes_ready_pauses_the_roll_until_the_spec_is_fixed() -> None:
    operator = running_cluster(step_timeout_s=60)
    operator.sim.broken_versions.add("0.2.0-bad")
    upgrade_to(operator, "0.2.0-bad")
    plans = operator.run_steps(60)

    restarted = deleted_pods(operator)
    assert len(restarted) == 1, "a second pod was restarted while the first is not ready"
    broken = restarted[0]
    assert broken != operator.sim.leader
    last = plans[-1].status
    assert condition(last, "Progressing") == ("False", "StepStalled")
    assert condition(last, "Upgrading") == ("True", "RollStalled")
    assert condition(last, "Degraded") == ("True", "StepStalled")
    assert condition(last, "Available") == ("True", "QuorumHealthy")
    warnings = [
        event for result in plans for event in result.events if event.reason == "StepStalled"
    ]
    assert warnings and warnings[0].type == "Warning"

    # Fixing the spec replaces the failing pod (it serves nothing, so no quorum is lost) and the
    # roll goes on.
    upgrade_to(operator, "0.2.1")
    operator.run()
    assert deleted_pods(operator)[1] == broken
    assert operator.status.current_version == "0.2.1"
    assert condition(operator.status, "Degraded") == ("False", "Healthy")


def test_a_new_pod_that_never_starts_stalls_the_scale_up_until_the_spec_is_fixed() -> None:
    operator = running_cluster(step_timeout_s=60)
    operator.sim.broken_versions.add("0.2.0-bad")
    upgrade_to(operator, "0.2.0-bad")
    operator.change(replicas=4)
    operator.sim.history.clear()
    # The StatefulSet is applied first, then the scale-up comes before the roll.
    plans = operator.run_steps(40)
    assert "ScaleStatefulSet(replicas=4)" in operator.sim.history
    assert not deleted_pods(operator)
    assert condition(plans[-1].status, "Progressing") == ("False", "StepStalled")
    assert condition(plans[-1].status, "Scaling") == ("True", "ScalingUp")
    upgrade_to(operator, "0.2.1")
    operator.run()
    assert sorted(operator.sim.voters()) == [f"qc-{i}" for i in range(4)]
    assert operator.status.current_version == "0.2.1"


def test_a_pod_that_crashes_during_a_roll_waits_then_is_replaced() -> None:
    operator = running_cluster()
    leader = operator.sim.leader
    upgrade_to(operator, "0.2.0")
    while not deleted_pods(operator):
        operator.step()
    first = deleted_pods(operator)[0]
    other = next(node for node in ("qc-0", "qc-1", "qc-2") if node not in (first, leader))
    operator.sim.crash(operator.sim.ordinal(other), ticks=1000)
    # Nothing more is restarted until the first pod is back and caught up...
    while isinstance(operator.step().action, Wait):
        assert deleted_pods(operator) == [first]
    # ...then the crashed pod, down anyway, is replaced onto the new revision (no quorum is
    # lost: the two others are healthy).
    assert deleted_pods(operator) == [first, other]
    operator.sim.heal()
    operator.run()
    assert deleted_pods(operator)[-1] == leader
    assert operator.status.current_version == "0.2.0"


# ---------------------------------------------------------------------------------------------
# Quorum


def test_a_restart_that_would_lose_quorum_is_refused() -> None:
    operator = running_cluster()
    # Grow to 4 and upgrade: the new pod starts on the new revision, then the roll begins.
    upgrade_to(operator, "0.2.0")
    operator.change(replicas=4)
    while len(operator.sim.voters()) < 4:
        operator.step()
    # The new voter falls behind (a slow disk): it stays ready but is not caught up. With 4
    # voters a quorum is 3, so restarting any follower would leave 2 healthy voters.
    operator.sim.slow_nodes.add("qc-3")
    operator.sim.volumes[3].applied -= 3000
    plans = operator.run_steps(10)

    assert deleted_pods(operator) == []
    refused = [result for result in plans if isinstance(result.action, Refuse)]
    assert len(refused) == len(plans)
    action = refused[-1].action
    assert isinstance(action, Refuse) and action.reason == "QuorumAtRisk"
    assert "would leave 2 healthy voters of 4; a quorum needs 3" in action.message
    assert condition(refused[-1].status, "QuorumAtRisk") == ("True", "StepRefused")
    assert condition(refused[-1].status, "Upgrading") == ("True", "RollRefused")
    events = [event for result in plans for event in result.events]
    assert [event.type for event in events if event.reason == "StepRefused"] == ["Warning"]

    operator.sim.heal()
    operator.run()
    assert operator.status.current_version == "0.2.0"
    assert condition(operator.status, "QuorumAtRisk") == ("False", "FaultTolerant")


def test_a_scale_down_that_would_lose_quorum_is_refused() -> None:
    operator = running_cluster()
    leader = operator.sim.leader
    assert leader is not None
    # Make qc-2 healthy and not the leader, and crash one of the two others.
    if leader == "qc-2":
        operator.sim.leader, operator.sim.term = "qc-0", operator.sim.term + 1
    crashed = 1 if operator.sim.leader == "qc-0" else 0
    operator.sim.crash(crashed, ticks=1000)
    operator.run_steps(3)

    operator.change(replicas=2)
    plans = operator.run_steps(5)
    assert all(isinstance(result.action, Refuse | TakeSnapshot) for result in plans)
    refused = plans[-1]
    assert isinstance(refused.action, Refuse) and "qc-2" in refused.action.message
    assert condition(refused.status, "QuorumAtRisk") == ("True", "StepRefused")
    assert condition(refused.status, "Degraded") == ("True", "MembersUnhealthy")
    assert not actions_of(operator.plans, RemoveMember)

    operator.sim.heal()
    operator.run()
    assert len(operator.sim.voters()) == 2


def test_a_two_voter_cluster_refuses_to_restart_a_voter() -> None:
    operator = running_cluster(replicas=2)
    assert condition(operator.status, "QuorumAtRisk") == ("False", "NoRedundancy")
    upgrade_to(operator, "0.2.0")
    plans = operator.run_steps(6)
    assert isinstance(plans[-1].action, Refuse)
    assert not deleted_pods(operator)


def test_no_step_is_taken_without_a_leader() -> None:
    operator = running_cluster()
    operator.sim.crash(0, ticks=1000)
    operator.sim.crash(1, ticks=1000)
    operator.change(replicas=5, version="0.2.0", image="taskraft:0.2.0")
    plans = operator.run_steps(10)
    acted = [
        result.action
        for result in plans
        if not isinstance(result.action, Wait | EnsureObject | DeletePod)
    ]
    assert acted == []
    assert plans[-1].status.phase == "Unavailable"
    assert condition(plans[-1].status, "Available") == ("False", "NoLeader")
    operator.sim.heal()
    operator.run()
    assert len(operator.sim.voters()) == 5
    assert operator.status.current_version == "0.2.0"


def test_an_unreachable_leader_status_means_no_step() -> None:
    operator = running_cluster()
    leader = operator.sim.leader
    assert leader is not None
    operator.sim.make_unreachable(operator.sim.ordinal(leader), ticks=10)
    operator.change(replicas=5)
    plans = operator.run_steps(5)
    assert all(isinstance(result.action, Wait) for result in plans)
    operator.run()
    assert len(operator.sim.voters()) == 5


# ---------------------------------------------------------------------------------------------
# Operator restarts: the status is all the memory there is


def _restart_operator(operator: Operator) -> Operator:
    """A new operator process: only the resource's status (as JSON) carries over."""
    stored = json.loads(json.dumps(operator.sim.status_document))
    operator.sim.status_document = stored
    return Operator(operator.sim, operator.desired)


def test_operator_restart_mid_roll_resumes_without_restarting_a_second_pod() -> None:
    operator = running_cluster(replicas=5)
    leader = operator.sim.leader
    upgrade_to(operator, "0.2.0")
    while not deleted_pods(operator):
        operator.step()
    first = deleted_pods(operator)[0]
    step = operator.status.progress.operation
    assert step.kind == "rolling" and step.step is not None and step.step.pod == first

    operator = _restart_operator(operator)
    # The restarted operator first waits for the pod deleted before the restart.
    resumed = operator.step()
    assert isinstance(resumed.action, Wait) and first in resumed.action.reason
    operator.run()
    restarted = deleted_pods(operator)
    assert sorted(restarted) == [f"qc-{i}" for i in range(5)]
    assert restarted[-1] == leader


def test_operator_dying_between_writing_the_status_and_deleting_the_pod() -> None:
    operator = running_cluster()
    upgrade_to(operator, "0.2.0")
    while True:
        observed = operator.sim.observe()
        if isinstance(plan(operator.desired, observed).action, DeletePod):
            break
        operator.step()
    operator.lose_next_action = True
    operator.step()
    assert deleted_pods(operator) == []
    operator = _restart_operator(operator)
    operator.run()
    assert sorted(deleted_pods(operator)) == ["qc-0", "qc-1", "qc-2"]
    assert operator.status.current_version == "0.2.0"


def test_operator_restart_mid_scale_down_and_mid_scale_up() -> None:
    operator = running_cluster(replicas=5)
    operator.change(replicas=3)
    while "RemoveMember" not in "".join(operator.sim.history[-1:]):
        operator.step()
    assert operator.status.progress.operation.kind == "scaling-down"
    operator = _restart_operator(operator)
    operator.run()
    assert sorted(operator.sim.voters()) == ["qc-0", "qc-1", "qc-2"]

    operator.change(replicas=4)
    while "AddLearner" not in "".join(operator.sim.history[-1:]):
        operator.step()
    operator = _restart_operator(operator)
    plans = operator.run()
    assert not actions_of(plans, AddLearner)
    assert [action.node_id for action in actions_of(plans, Promote)] == ["qc-3"]


# ---------------------------------------------------------------------------------------------
# Pause, invalid specs


def test_paused_the_operator_only_reports_status() -> None:
    operator = running_cluster()
    operator.change(paused=True, replicas=5, version="0.2.0", image="taskraft:0.2.0")
    plans = operator.run_steps(5)
    assert all(isinstance(result.action, Nothing) for result in plans)
    assert operator.sim.history[-5:] == [operator.sim.history[-1]] * 5
    status = plans[-1].status
    assert status.phase == "Paused"
    assert condition(status, "Progressing") == ("False", "Paused")
    assert len(status.members) == 3 and status.leader == operator.sim.leader

    # Pausing a new resource creates nothing.
    fresh = plan(desired_spec(paused=True), ObservedState(now=START))
    assert isinstance(fresh.action, Nothing)

    operator.change(paused=False)
    operator.run()
    assert len(operator.sim.voters()) == 5
    assert operator.status.current_version == "0.2.0"


def test_an_invalid_spec_is_refused_with_the_reasons() -> None:
    desired = desired_spec(
        replicas=0,
        config={"node_id": "x", "join": True},
        snapshots=SnapshotPolicy(schedule="61 * * * *"),
    )
    result = plan(desired, ObservedState(now=START))
    assert isinstance(result.action, Refuse) and result.action.reason == "InvalidSpec"
    for words in ("replicas must be from 1", "config may not set join, node_id", "61"):
        assert words in result.action.message
    assert result.status.phase == "Invalid"
    assert condition(result.status, "Progressing") == ("False", "InvalidSpec")


def test_a_storage_change_is_reported_not_applied() -> None:
    operator = running_cluster()
    operator.change(storage=replace(operator.desired.storage, size="50Gi"))
    plans = operator.run()
    assert not actions_of(plans, EnsureObject)
    assert any("50Gi" in warning for warning in operator.status.warnings)
    assert any(event.reason == "SpecWarning" for result in plans for event in result.events)


# ---------------------------------------------------------------------------------------------
# Snapshots


def test_snapshot_schedule_asks_every_member_once_per_slot_leader_first() -> None:
    operator = running_cluster(snapshots=SnapshotPolicy(schedule="*/10 * * * *"))
    assert operator.status.progress.snapshot.schedule_anchor is not None
    # 25 minutes of steps (5 s each): the 10-minute slots are served once each.
    plans = operator.run_steps(300)
    snapshots = actions_of(plans, TakeSnapshot)
    slots = {record.token for record in operator.status.snapshots}
    assert len(slots) in (2, 3)
    assert len(snapshots) == 3 * len(slots)
    for first in range(0, len(snapshots), 3):
        rounds = [action.pod for action in snapshots[first : first + 3]]
        assert rounds[0] == operator.sim.leader
        assert sorted(rounds) == ["qc-0", "qc-1", "qc-2"]
    last = operator.status.last_snapshot
    assert last is not None and last.trigger == "schedule" and last.index > 0
    assert last.time <= operator.sim.now
    # Between rounds the planner asks to be woken for the next slot.
    idle = [result.action for result in plans if isinstance(result.action, Nothing)]
    assert idle and all(
        action.recheck_after_s is not None and action.recheck_after_s <= 600 for action in idle
    )


def test_snapshot_on_demand_once_per_annotation_value() -> None:
    operator = running_cluster()
    operator.change(snapshot_request="2024-03-01-a")
    plans = operator.run()
    assert len(actions_of(plans, TakeSnapshot)) == 3
    assert operator.status.last_snapshot is not None
    assert operator.status.last_snapshot.token == "2024-03-01-a"
    assert not actions_of(operator.run_steps(5), TakeSnapshot)
    operator.change(snapshot_request="2024-03-01-b")
    assert len(actions_of(operator.run(), TakeSnapshot)) == 3
    assert [record.token for record in operator.status.snapshots] == [
        "2024-03-01-a",
        "2024-03-01-b",
    ]


def test_a_snapshot_round_waits_for_a_step_and_skips_pods_that_are_not_ready() -> None:
    operator = running_cluster()
    upgrade_to(operator, "0.2.0")
    operator.change(snapshot_request="during-the-roll")
    plans = operator.run()
    kinds = [type(result.action).__name__ for result in plans]
    assert kinds.index("EnsureObject") < kinds.index("TakeSnapshot")
    pods = [action.pod for action in actions_of(plans, TakeSnapshot)]
    assert 1 <= len(pods) <= 3 and len(set(pods)) == len(pods)


def test_recording_snapshot_answers_and_failures() -> None:
    operator = running_cluster()
    operator.change(snapshot_request="r1")
    result = operator.sim.observe()
    first = plan(operator.desired, result)
    assert isinstance(first.action, TakeSnapshot)
    round_ = first.status.progress.snapshot.round
    assert round_ is not None and len(round_.pods) == 3
    after_failure = record_snapshot_failure(first.status, pod=first.action.pod)
    remaining = after_failure.progress.snapshot.round
    assert remaining is not None and first.action.pod not in remaining.pods
    recorded = record_snapshot(
        after_failure,
        pod=remaining.pods[0],
        index=10,
        term=2,
        size_bytes=99,
        now=START,
        history_max=1,
    )
    assert recorded.last_snapshot is not None
    assert (recorded.last_snapshot.index, recorded.last_snapshot.token) == (10, "r1")
    again = record_snapshot(
        recorded, pod="qc-9", index=5, term=2, size_bytes=9, now=START, history_max=1
    )
    assert again.last_snapshot == recorded.last_snapshot


# ---------------------------------------------------------------------------------------------
# Manifests


def test_statefulset_manifest() -> None:
    desired = desired_spec(
        pvc_retention=PvcRetentionPolicy(when_deleted=PvcRetention.DELETE),
        config={"shutdown_timeout_ms": 30_000},
    )
    manifest = statefulset_manifest(desired, replicas=3, storage=desired.storage)
    spec = manifest["spec"]
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "qc-peers"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Delete",
        "whenScaled": "Retain",
    }
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 50
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "http",
        "scheme": "HTTP",
    }
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "http",
        "scheme": "HTTP",
    }
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "7102"
    claim = spec["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    # The replica count is not part of the hash: scaling never looks like drift.
    other = statefulset_manifest(desired, replicas=7, storage=desired.storage)
    hash_key = "taskraft.io/spec-hash"
    assert (
        other["metadata"]["annotations"][hash_key] == manifest["metadata"]["annotations"][hash_key]
    )


def test_pods_mount_the_credentials_and_point_the_node_at_them() -> None:
    desired = desired_spec()
    pod = statefulset_manifest(desired, replicas=3, storage=desired.storage)["spec"]["template"]
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["credentials"]["secret"] == {
        "secretName": "qc-credentials",
        "defaultMode": 0o440,
        # Only what the node reads: the tokens alone stay out of the pod.
        "items": [
            {"key": "cluster-secret", "path": "cluster-secret"},
            {"key": "tokens", "path": "tokens"},
        ],
    }
    assert "tls" not in volumes
    environment = _pod_environment(pod_template_manifest(desired), "qc-0")
    assert environment["TASKRAFT_CLUSTER_SECRET_FILE"] == "/etc/taskraft-credentials/cluster-secret"
    assert environment["TASKRAFT_AUTH_TOKEN_FILE"] == "/etc/taskraft-credentials/tokens"
    assert not any(name.startswith("TASKRAFT_TLS_") for name in environment)
    # Without authentication the cluster secret stays, the token file goes.
    open_cluster = replace(desired, authentication=False)
    environment = _pod_environment(pod_template_manifest(open_cluster), "qc-0")
    assert "TASKRAFT_AUTH_TOKEN_FILE" not in environment
    assert "TASKRAFT_CLUSTER_SECRET_FILE" in environment


def test_pods_of_a_tls_cluster_mount_its_secret_and_probe_over_https() -> None:
    desired = desired_spec(tls_secret_name="qc-tls")
    manifest = pod_template_manifest(desired)
    pod = manifest["spec"]["template"]
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "qc-tls"
    assert [item["key"] for item in volumes["tls"]["secret"]["items"]] == [
        "tls.crt",
        "tls.key",
        "ca.crt",
    ]
    (container,) = pod["spec"]["containers"]
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/taskraft-tls", "readOnly": True}
    environment = _pod_environment(manifest, "qc-0")
    assert environment["TASKRAFT_TLS_CERT"] == "/etc/taskraft-tls/tls.crt"
    assert environment["TASKRAFT_TLS_KEY"] == "/etc/taskraft-tls/tls.key"
    assert environment["TASKRAFT_TLS_CA"] == "/etc/taskraft-tls/ca.crt"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"


def pod_template_manifest(desired: DesiredSpec) -> dict[str, Any]:
    return statefulset_manifest(desired, replicas=3, storage=desired.storage)


def _pod_environment(manifest: dict[str, Any], pod: str) -> dict[str, str]:
    """The container's environment as the kubelet makes it: downward API and $(VAR) expanded."""
    environment: dict[str, str] = {}
    for variable in manifest["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" in variable:
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
            value = pod
        else:
            value = variable["value"]
            for name, known in environment.items():
                value = value.replace(f"$({name})", known)
        environment[variable["name"]] = value
    return environment


@pytest.mark.parametrize("founded", [False, True])
def test_every_pod_gets_a_configuration_the_node_accepts(tmp_path: Path, founded: bool) -> None:
    """The manifest's environment and ConfigMap file, fed to the node's own option code."""
    desired = desired_spec(config={"snapshot_interval_entries": 1234, "log_level": "debug"})
    progress = plan(desired, ObservedState(now=START)).status.progress
    progress = replace(progress, founded=founded)
    statefulset = statefulset_manifest(desired, replicas=3, storage=desired.storage)
    files = configmap_manifest(desired, progress)["data"]
    assert len(files) == REPLICAS_MAX
    for ordinal in (0, 2, 3, REPLICAS_MAX - 1):
        pod = f"qc-{ordinal}"
        environment = _pod_environment(statefulset, pod)
        config_path = Path(environment["TASKRAFT_CONFIG"])
        assert config_path == Path("/etc/taskraft") / f"{pod}.toml"
        local = tmp_path / f"{pod}.toml"
        local.write_text(files[f"{pod}.toml"])
        environment["TASKRAFT_CONFIG"] = str(local)
        settings = settings_from_configuration(resolve({}, environment))
        assert settings.node_id == pod
        assert settings.advertise_peer_address == f"{pod}.qc-peers.queues.svc:7101"
        assert settings.peer_address == "0.0.0.0:7101"
        assert settings.replica.snapshot_interval_entries == 1234
        assert settings.cluster_id == "queues.qc"
        if ordinal < 3 and not founded:
            assert settings.initial_members == {
                f"qc-{i}": f"qc-{i}.qc-peers.queues.svc:7101" for i in range(3)
            }
            assert not settings.join
        else:
            assert settings.join and settings.initial_members is None


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), st.booleans()),
        max_size=5,
    )
)
def test_config_overrides_are_written_as_valid_toml(config: dict[str, Any]) -> None:
    config = {key: value for key, value in config.items() if key not in RESERVED_CONFIG_KEYS}
    text = node_config_toml(config, "qc-3", {})
    assert tomllib.loads(text) == {"join": True, **config}
    founder = node_config_toml(config, "qc-3", {"qc-3": "a:1", 'odd "id"\n': "b:2"})
    assert tomllib.loads(founder) == {
        "initial_members": {"qc-3": "a:1", 'odd "id"\n': "b:2"},
        **config,
    }


def test_services_and_pdb() -> None:
    result = running_cluster().sim.manifests
    peers = result[("Service", "qc-peers")]["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    client = result[("Service", "qc")]["spec"]
    assert [port["port"] for port in client["ports"]] == [7100, 7102]
    pdb = result[("PodDisruptionBudget", "qc")]["spec"]
    assert pdb["maxUnavailable"] == 1


def test_node_pods_run_locked_down() -> None:
    template = running_cluster().sim.manifests[("StatefulSet", "qc")]["spec"]["template"]
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    writable = {
        mount["mountPath"] for mount in container["volumeMounts"] if not mount.get("readOnly")
    }
    assert writable == {"/var/lib/taskraft/data", "/tmp"}


def test_network_policy_lets_only_the_clusters_pods_reach_the_peer_port() -> None:
    result = running_cluster().sim.manifests
    policy = result[("NetworkPolicy", "qc")]["spec"]
    selector = result[("StatefulSet", "qc")]["spec"]["selector"]["matchLabels"]
    own_pods = {"podSelector": {"matchLabels": selector}}
    assert policy["podSelector"] == own_pods["podSelector"]
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["ingress"]}
    assert by_port == {7101: [own_pods], 7100: None, 7102: None}


# ---------------------------------------------------------------------------------------------
# Cron


@pytest.mark.parametrize(
    ("expression", "at", "previous", "following"),
    [
        ("*/15 * * * *", "2024-03-01T12:07:30", "2024-03-01T12:00", "2024-03-01T12:15"),
        ("@hourly", "2024-03-01T12:00:00", "2024-03-01T12:00", "2024-03-01T13:00"),
        ("@daily", "2024-03-01T12:00:00", "2024-03-01T00:00", "2024-03-02T00:00"),
        ("30 2 * * sun", "2024-03-01T12:00:00", "2024-02-25T02:30", "2024-03-03T02:30"),
        ("0 0 29 2 *", "2024-03-01T00:00:00", "2024-02-29T00:00", "2028-02-29T00:00"),
        ("0 9-17/4 * * 1-5", "2024-03-02T10:00:00", "2024-03-01T17:00", "2024-03-04T09:00"),
        # Both day fields restricted: either one matches (1st of the month or a Monday).
        ("0 0 1 * mon", "2024-03-02T00:00:00", "2024-03-01T00:00", "2024-03-04T00:00"),
        ("0 12 * jan,jul *", "2024-03-01T00:00:00", "2024-01-31T12:00", "2024-07-01T12:00"),
    ],
)
def test_cron_fire_times(expression: str, at: str, previous: str, following: str) -> None:
    schedule = parse_cron(expression)
    moment = datetime.fromisoformat(at).replace(tzinfo=UTC)
    assert previous_fire_time(schedule, moment) == datetime.fromisoformat(previous).replace(
        tzinfo=UTC
    )
    assert next_fire_time(schedule, moment) == datetime.fromisoformat(following).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "expression",
    ["", "* * * *", "60 * * * *", "* 24 * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"],
)
def test_invalid_cron_expressions(expression: str) -> None:
    with pytest.raises(ValueError):
        parse_cron(expression)


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(["*/7 * * * *", "13 */5 * * *", "0 0 * * 3", "5 4 10-12 * *", "0 0 31 * *"]),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
)
def test_cron_previous_and_next_bracket_the_moment(expression: str, naive: datetime) -> None:
    schedule = parse_cron(expression)
    moment = naive.replace(tzinfo=UTC)
    before = previous_fire_time(schedule, moment)
    after = next_fire_time(schedule, moment)
    assert before is not None and after is not None
    assert before <= moment < after
    assert next_fire_time(schedule, before) == after or before == moment - timedelta(
        seconds=moment.second, microseconds=moment.microsecond
    )


# ---------------------------------------------------------------------------------------------
# The status as stored, and a node's status document


def test_status_round_trips_through_json_and_garbage_is_refused() -> None:
    operator = running_cluster(snapshots=SnapshotPolicy(schedule="@hourly"))
    upgrade_to(operator, "0.2.0")
    for result in operator.run():
        assert status_from_dict(json.loads(json.dumps(status_to_dict(result.status)))) == (
            result.status
        )
    with pytest.raises(ValueError):
        status_from_dict({"progress": {"operation": {"kind": "exploding"}}})


def test_node_status_from_the_documented_json() -> None:
    document = {
        "node_id": "n1",
        "version": "0.1.0",
        "configuration_hash": "fecb5361f64b6850",
        "ready": True,
        "role": "leader",
        "term": 3,
        "leader": {"id": "n1", "client_address": "x:1", "http_address": "x:2"},
        "commit_index": 1042,
        "applied_index": 1042,
        "last_log_index": 1042,
        "last_log_term": 3,
        "snapshot_index": 1000,
        "members": [
            {
                "id": "n1",
                "peer_address": "a:1",
                "voter": True,
                "match_index": 1042,
                "next_index": 1043,
                "last_contact_ms": 0,
                "caught_up": True,
            },
            {
                "id": "n4",
                "peer_address": "b:1",
                "voter": False,
                "match_index": 400,
                "next_index": 401,
                "last_contact_ms": 20,
                "caught_up": False,
            },
        ],
        "some_future_field": 1,
    }
    status = node_status_from_json(document)
    assert isinstance(status, NodeStatus)
    assert status.is_leader and status.leader_id == "n1" and status.commit_index == 1042
    learner = status.member("n4")
    assert learner is not None and not learner.voter and learner.caught_up is False
    follower = node_status_from_json({**document, "role": "follower", "leader": {"id": None}})
    assert follower.leader_id is None and not follower.is_leader
    with pytest.raises(ValueError):
        node_status_from_json({"node_id": 5})


# ---------------------------------------------------------------------------------------------
# Random fault sequences

# 100 fixed examples keep the suite fast and reproducible; PLANNER_EXAMPLES=2000 searches more
# widely with fresh random examples (about a minute).
RANDOM_EXAMPLES = int(os.environ.get("PLANNER_EXAMPLES", "100"))
RANDOM_DERANDOMIZED = "PLANNER_EXAMPLES" not in os.environ

events = st.one_of(
    st.tuples(st.just("steps"), st.integers(1, 8)),
    st.tuples(st.just("crash"), st.integers(0, 4), st.integers(1, 12)),
    st.tuples(st.just("unreachable"), st.integers(0, 4), st.integers(1, 6)),
    st.tuples(st.just("replicas"), st.integers(1, 5)),
    st.tuples(st.just("version"), st.sampled_from(["0.2.0", "0.3.0", "bad"])),
    st.tuples(st.just("config"), st.integers(1, 3)),
    st.tuples(st.just("operator-restart")),
    st.tuples(st.just("lose-action")),
    st.tuples(st.just("repeat-action")),
    st.tuples(st.just("snapshot"), st.integers(1, 3)),
    st.tuples(st.just("slow"), st.integers(0, 4)),
)


@settings(
    max_examples=RANDOM_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=RANDOM_DERANDOMIZED,
)
@given(
    seed=st.integers(0, 2**16),
    retention=st.sampled_from(PvcRetention),
    script=st.lists(events, min_size=1, max_size=12),
)
def test_random_faults_never_break_the_rules_and_the_healed_cluster_converges(
    seed: int, retention: PvcRetention, script: list[tuple[Any, ...]]
) -> None:
    desired = desired_spec(
        step_timeout_s=30,
        pvc_retention=PvcRetentionPolicy(when_scaled=retention),
        snapshots=SnapshotPolicy(schedule="*/2 * * * *"),
    )
    operator = Operator(SimCluster(seed=seed), desired)
    operator.sim.broken_versions.add("bad")
    operator.run()
    try:
        for event in script:
            operator = _play(operator, event)
        # Liveness: faults healed and a good spec, the cluster must reach it.
        operator.sim.heal()
        if operator.desired.version == "bad":
            upgrade_to(operator, "0.4.0")
        if operator.desired.replicas == 2:
            # Two voters cannot restart one without losing quorum (refused by design).
            operator.change(replicas=3)
        _settle(operator)
    except Violation:
        print("\n".join(operator.sim.history[-30:]))
        raise
    desired = operator.desired
    status = operator.status
    assert sorted(operator.sim.voters()) == [f"qc-{i}" for i in range(desired.replicas)]
    assert not operator.sim.learners()
    assert status.current_version == desired.version
    assert {pod.version for pod in operator.sim.pods.values()} == {desired.version}
    assert status.phase == "Running", status.conditions
    assert status.progress.operation.kind == "idle"
    if retention is PvcRetention.DELETE:
        assert sorted(operator.sim.volumes) == list(range(desired.replicas))


def _settle(operator: Operator) -> None:
    """Until Nothing is left to do and every pod is back (faults heal a few ticks late)."""
    for _ in range(10):
        operator.run(max_steps=400)
        if operator.status.phase == "Running":
            return
        operator.run_steps(3)


def _play(operator: Operator, event: tuple[Any, ...]) -> Operator:
    kind = event[0]
    if kind == "steps":
        operator.run_steps(event[1])
    elif kind == "crash":
        operator.sim.crash(event[1], event[2])
    elif kind == "unreachable":
        operator.sim.make_unreachable(event[1], event[2])
    elif kind == "replicas":
        operator.change(replicas=event[1])
    elif kind == "version":
        upgrade_to(operator, event[1])
    elif kind == "config":
        operator.change(config={"snapshot_interval_entries": 1000 * event[1]})
    elif kind == "operator-restart":
        operator = _restart_operator(operator)
    elif kind == "lose-action":
        operator.lose_next_action = True
    elif kind == "repeat-action":
        operator.repeat_next_action = True
    elif kind == "slow":
        node = f"qc-{event[1]}"
        if event[1] in operator.sim.volumes:
            # Ready but not caught up: behind by more than the promotion lag.
            operator.sim.slow_nodes.add(node)
            volume = operator.sim.volumes[event[1]]
            volume.applied = max(0, volume.applied - 3000)
    elif kind == "snapshot":
        operator.change(snapshot_request=f"request-{event[1]}")
    operator.run_steps(2)
    return operator
