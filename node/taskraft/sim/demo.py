"""`make demo`: narrate a simulated three-node cluster electing, committing and recovering.

The node server is not built yet, so the demo runs the real Raft core inside the simulator over a
perfect network and tells what happens: the first election, replicated commits, the leader
crashing and a new one taking over, the old leader catching up, a leadership transfer and a
learner joining and being promoted.
"""

from __future__ import annotations

from collections.abc import Callable

from taskraft.raft import (
    MembershipChange,
    MembershipChangeKind,
    NodeId,
    PersistedState,
    RaftOptions,
    Role,
)
from taskraft.sim.network import NetworkFaults
from taskraft.sim.simulation import FaultPlan, Simulation, SimulationSettings

QUIET = FaultPlan(
    network=NetworkFaults(),
    partition_probability=0.0,
    heal_probability=0.0,
    crash_probability=0.0,
    crash_mid_ready_probability=0.0,
    restart_probability=0.0,
    propose_probability=0.0,
    read_probability=0.0,
    membership_probability=0.0,
    transfer_probability=0.0,
    snapshot_probability=0.0,
)
# Generous bound for any one step of the story: a hundred election timeouts.
STEP_TICKS_MAX = 1000


class Narrator:
    def __init__(self, simulation: Simulation) -> None:
        self.simulation = simulation
        self.roles: dict[NodeId, tuple[Role, int] | None] = {}

    def say(self, text: str) -> None:
        print(f"[tick {self.simulation.now:>4}] {text}", flush=True)

    def run_until(self, condition: Callable[[], bool], what: str) -> None:
        for _ in range(STEP_TICKS_MAX):
            if condition():
                return
            self.simulation.step_tick()
            self.report_changes()
        raise SystemExit(f"demo failed: {what} did not happen within {STEP_TICKS_MAX} ticks")

    def report_changes(self) -> None:
        for node_id, node in sorted(self.simulation.nodes.items()):
            state = (node.raft.role, node.raft.term) if node.raft else None
            if self.roles.get(node_id) == state:
                continue
            self.roles[node_id] = state
            if state is None:
                self.say(f"node {node_id} is down")
            elif state[0] is Role.LEADER:
                self.say(f"node {node_id} won the election of term {state[1]} and leads")
            elif state[0] is Role.CANDIDATE:
                self.say(f"node {node_id} campaigns in term {state[1]}")

    def leader(self) -> NodeId | None:
        leaders = self.simulation.leaders()
        return leaders[0].node_id if len(leaders) == 1 else None


def main() -> None:
    simulation = Simulation(SimulationSettings(seed=7, nodes=3), options=RaftOptions())
    simulation.plan = QUIET
    simulation.network.faults = QUIET.network
    narrator = Narrator(simulation)
    print("A three-node taskraft Raft cluster, simulated over a perfect network (1 tick = 100 ms)")
    narrator.run_until(lambda: narrator.leader() is not None, "the first election")

    before = len(simulation.acknowledged)
    for _ in range(5):
        simulation.propose(2)
    narrator.run_until(lambda: len(simulation.acknowledged) >= before + 10, "committing 10 tasks")
    narrator.say(f"10 tasks committed on a majority and applied; commit index {commit(simulation)}")

    leader = narrator.leader()
    assert leader is not None
    narrator.say(f"crashing leader {leader}")
    simulation.crash(simulation.nodes[leader])
    narrator.report_changes()
    narrator.run_until(
        lambda: narrator.leader() not in (None, leader), "electing a new leader after the crash"
    )
    before = len(simulation.acknowledged)
    simulation.propose(3)
    narrator.run_until(lambda: len(simulation.acknowledged) >= before + 3, "committing 3 tasks")
    narrator.say(f"3 more tasks committed by two of three nodes; commit index {commit(simulation)}")

    narrator.say(f"restarting node {leader} from its disk")
    simulation.start(simulation.nodes[leader])
    restarted = simulation.nodes[leader]
    narrator.run_until(
        lambda: restarted.raft is not None and restarted.raft.applied_index >= commit(simulation),
        "the restarted node catching up",
    )
    narrator.say(f"node {leader} caught up: it applied {len(restarted.applied_commands)} tasks")

    current = narrator.leader()
    assert current is not None and simulation.nodes[current].raft is not None
    narrator.say(f"transferring leadership from {current} to {leader}")
    simulation.nodes[current].raft.transfer_leadership(leader)  # type: ignore[union-attr]
    narrator.run_until(lambda: narrator.leader() == leader, "the leadership transfer")

    newcomer = NodeId("4")
    narrator.say(f"adding node {newcomer} as a learner, then promoting it to voter")
    change_membership(narrator, MembershipChange(MembershipChangeKind.ADD_LEARNER, newcomer))
    simulation.add_node(newcomer, PersistedState())
    learner = simulation.nodes[newcomer]
    narrator.run_until(
        lambda: learner.raft is not None and learner.raft.applied_index >= commit(simulation),
        "the learner catching up",
    )
    change_membership(narrator, MembershipChange(MembershipChangeKind.PROMOTE_LEARNER, newcomer))
    narrator.run_until(
        lambda: newcomer in current_voters(simulation) and commit_settled(simulation),
        "the promotion",
    )
    narrator.say(f"voters are now {sorted(current_voters(simulation))}")
    simulation.check_logs()
    print(
        f"Done: {len(simulation.acknowledged)} tasks acknowledged, every node applied the same "
        f"log, {simulation.result.leaders_elected} leaderships, all safety checks passed."
    )


def commit(simulation: Simulation) -> int:
    leaders = simulation.leaders()
    return leaders[0].raft.commit_index if leaders and leaders[0].raft else 0


def current_voters(simulation: Simulation) -> frozenset[NodeId]:
    leaders = simulation.leaders()
    if not leaders or leaders[0].raft is None:
        return frozenset()
    return leaders[0].raft.configuration.voters


def commit_settled(simulation: Simulation) -> bool:
    leaders = simulation.leaders()
    raft = leaders[0].raft if leaders else None
    return (
        raft is not None
        and raft.log.configuration_index() <= raft.commit_index
        and raft.log.term_at(raft.commit_index) == raft.term
    )


def change_membership(narrator: Narrator, change: MembershipChange) -> None:
    simulation = narrator.simulation
    narrator.run_until(lambda: commit_settled(simulation), "settling the previous change")
    leader = narrator.leader()
    assert leader is not None
    raft = simulation.nodes[leader].raft
    assert raft is not None
    raft.change_membership(change)


if __name__ == "__main__":
    main()
