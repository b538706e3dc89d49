"""A whole Raft cluster in one process, driven by one seed, attacked by faults.

In the spirit of TigerBeetle's VOPR: fault rates are drawn from the seed (swarm testing), so
different seeds stress different mixes of dropped, delayed, duplicated and reordered messages,
partitions (symmetric, one-way and asymmetric), crashes that lose whatever the Ready contract had
not persisted yet (including crashes between sending a Ready's messages and persisting it),
restarts from disk, snapshots, membership changes, leadership transfers and linearizable reads.

A run has two phases. The safety phase applies faults for `ticks` ticks while the checkers watch
every step. The liveness phase heals the network and restarts every node; a leader must then
commit a new proposal, and every member must catch up, within a bounded number of ticks.
Everything random comes from `random.Random(seed)`, so a failing seed replays exactly.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from taskraft.raft import (
    Configuration,
    Entry,
    LogIndex,
    MembershipChange,
    MembershipChangeKind,
    NodeId,
    PersistedState,
    RaftError,
    RaftNode,
    RaftOptions,
    Role,
    Snapshot,
    SnapshotMetadata,
    bootstrap_state,
)
from taskraft.sim.checkers import SafetyChecker, SafetyViolation, check_log_matching, command_id
from taskraft.sim.network import NetworkFaults, SimulatedNetwork
from taskraft.storage import MemoryStorage, RaftStorage

# Ready batches one node may produce in a row before the simulator calls it a livelock.
READY_ROUNDS_MAX = 1000


@dataclass(frozen=True, slots=True)
class SimulationSettings:
    seed: int
    nodes: int = 3
    ticks: int = 10_000
    # Ticks the healed cluster gets to elect a leader and commit; ~30 election timeouts.
    liveness_ticks_max: int = 300
    # Ticks every member then gets to apply everything the leader committed.
    catch_up_ticks_max: int = 2_000
    # Nodes the simulator may add beyond the founding ones through membership changes.
    added_nodes_max: int = 3
    # "memory" (the default), or "file": every node on the real file storage in a temporary
    # directory, which is slower and meant for a few seeds.
    storage: str = "memory"

    def replay_command(self) -> str:
        storage = f" --storage {self.storage}" if self.storage != "memory" else ""
        return (
            f"python -m taskraft.sim --seed {self.seed} --nodes {self.nodes} "
            f"--ticks {self.ticks}{storage}"
        )


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Per-tick probabilities of each fault and event, drawn from the seed (swarm testing)."""

    network: NetworkFaults
    partition_probability: float
    heal_probability: float
    crash_probability: float
    crash_mid_ready_probability: float
    restart_probability: float
    propose_probability: float
    read_probability: float
    membership_probability: float
    transfer_probability: float
    snapshot_probability: float

    @classmethod
    def draw(cls, rng: random.Random) -> FaultPlan:
        return cls(
            network=NetworkFaults(
                drop_probability=rng.choice([0.0, 0.01, 0.05, 0.2]),
                duplicate_probability=rng.choice([0.0, 0.01, 0.05]),
                delay_max_ticks=rng.choice([1, 2, 5, 10]),
            ),
            partition_probability=rng.choice([0.0, 0.002, 0.01]),
            heal_probability=rng.choice([0.01, 0.05]),
            crash_probability=rng.choice([0.0, 0.0005, 0.002]),
            crash_mid_ready_probability=rng.choice([0.0, 0.3]),
            restart_probability=rng.choice([0.01, 0.05]),
            propose_probability=rng.choice([0.05, 0.2, 0.5]),
            read_probability=rng.choice([0.0, 0.02, 0.1]),
            membership_probability=rng.choice([0.0, 0.002, 0.01]),
            transfer_probability=rng.choice([0.0, 0.002, 0.01]),
            snapshot_probability=rng.choice([0.0, 0.002, 0.01]),
        )


@dataclass(slots=True)
class SimulationResult:
    settings: SimulationSettings
    leaders_elected: int = 0
    highest_applied_index: int = 0
    proposals_acknowledged: int = 0
    crashes: int = 0
    membership_changes: int = 0
    leadership_transfers: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
    reads_served: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0


class SimulationFailure(AssertionError):
    """A run broke a safety or liveness property; carries the command that replays it."""

    def __init__(self, settings: SimulationSettings, tick: int, cause: BaseException) -> None:
        super().__init__(
            f"seed {settings.seed} ({settings.nodes} nodes) failed at tick {tick}: "
            f"{type(cause).__name__}: {cause}\n  replay: {settings.replay_command()}"
        )
        self.settings = settings
        self.tick = tick


class StorageProvider(Protocol):
    """Where simulated nodes keep what they persist, and how a restart reads it back."""

    def create(self, node_id: NodeId, initial: PersistedState) -> RaftStorage: ...

    def reopen(self, node_id: NodeId, storage: RaftStorage) -> RaftStorage: ...


class MemoryStorageProvider:
    """In-memory storage: whatever `persist` returned from is what a crash leaves."""

    def create(self, node_id: NodeId, initial: PersistedState) -> RaftStorage:
        return MemoryStorage(initial)

    def reopen(self, node_id: NodeId, storage: RaftStorage) -> RaftStorage:
        return storage


@dataclass(slots=True)
class SimulatedNode:
    node_id: NodeId
    # What the node fsynced: all that survives its crash.
    storage: RaftStorage
    raft: RaftNode | None = None
    applied_commands: list[str] = field(default_factory=list)
    applied_command_set: set[str] = field(default_factory=set)
    crash_at_next_ready: bool = False
    observed_leader_term: int = -1

    @property
    def running(self) -> bool:
        return self.raft is not None


def member_address(node_id: NodeId) -> str:
    """The address each simulated member is added with; every configuration must carry it."""
    return f"node-{node_id}.simulated:7101"


def encode_state(commands: list[str]) -> bytes:
    return json.dumps(commands, separators=(",", ":")).encode()


def decode_state(data: bytes) -> list[str]:
    if not data:
        return []
    commands: list[str] = json.loads(data)
    return commands


class Simulation:
    def __init__(
        self,
        settings: SimulationSettings,
        options: RaftOptions | None = None,
        storage_provider: StorageProvider | None = None,
    ) -> None:
        self.settings = settings
        self.storage_provider = storage_provider or MemoryStorageProvider()
        self.random = random.Random(settings.seed)
        self.plan = FaultPlan.draw(self.random)
        self.options = options or RaftOptions(
            election_timeout_ticks=10,
            heartbeat_interval_ticks=1,
            inflight_messages_max=self.random.choice([1, 4, 64]),
            batch_size_max_bytes=self.random.choice([64, 1024, 1 << 20]),
            snapshot_chunk_size_max_bytes=self.random.choice([256, 4096, 1 << 20]),
            promotion_lag_max_entries=self.random.choice([0, 100, 10_000]),
        )
        self.network = SimulatedNetwork(random.Random(self.random.getrandbits(64)))
        self.network.faults = self.plan.network
        self.checker = SafetyChecker()
        self.result = SimulationResult(settings)
        self.now = 0
        self.nodes: dict[NodeId, SimulatedNode] = {}
        self._next_command = 0
        self._next_read = 0
        self._next_node = settings.nodes + 1
        # Proposals the client is still waiting for: command -> (proposer, term, index).
        self._pending: dict[str, tuple[NodeId, int, int]] = {}
        self.acknowledged: set[str] = set()
        self._acknowledged_index_max = 0
        # Linearizable reads in flight: request id -> (node, smallest index the read may return).
        self._reads: dict[int, tuple[NodeId, int]] = {}
        founding_ids = [NodeId(str(n)) for n in range(1, settings.nodes + 1)]
        founders = Configuration(
            voters=frozenset(founding_ids),
            addresses=tuple((node_id, member_address(node_id)) for node_id in founding_ids),
        )
        for node_id in sorted(founders.voters):
            self.add_node(node_id, bootstrap_state(founders))

    # -- running -----------------------------------------------------------------------------

    def run(self) -> SimulationResult:
        try:
            for _ in range(self.settings.ticks):
                self._inject_events()
                self.step_tick()
                if self.now % 500 == 0:
                    self.check_logs()
            self._run_liveness_phase()
            self.check_logs()
            self._check_exactly_once()
        except Exception as cause:
            if isinstance(cause, SimulationFailure):
                raise
            raise SimulationFailure(self.settings, self.now, cause) from cause
        self.result.messages_sent = self.network.sent
        self.result.messages_dropped = self.network.dropped
        self.result.highest_applied_index = self.checker.highest_applied
        self.result.proposals_acknowledged = len(self.acknowledged)
        return self.result

    def step_tick(self) -> None:
        self.now += 1
        for message in self.network.due(self.now):
            node = self.nodes.get(message.recipient)
            if node is not None and node.raft is not None:
                node.raft.step(message)
                self._observe(node)
        for node in self.nodes.values():
            if node.raft is not None:
                node.raft.tick()
                self._observe(node)
        for node in self.nodes.values():
            self._process_ready(node)

    def _observe(self, node: SimulatedNode) -> None:
        raft = node.raft
        assert raft is not None
        if raft.role is Role.LEADER and node.observed_leader_term != raft.term:
            node.observed_leader_term = raft.term
            self.result.leaders_elected += 1
            self.checker.saw_leader(raft)

    def _process_ready(self, node: SimulatedNode) -> None:
        rounds = 0
        while node.raft is not None and node.raft.has_ready():
            rounds += 1
            if rounds > READY_ROUNDS_MAX:
                raise SafetyViolation(f"{node.node_id} keeps producing Ready batches (livelock)")
            raft = node.raft
            ready = raft.ready()
            for message in ready.messages:
                self.network.send(message, self.now)
            if node.crash_at_next_ready:
                # The crash lands after the messages left but before the fsync completed.
                self.crash(node)
                return
            node.storage.persist(
                snapshot=ready.snapshot, entries=ready.entries, hard_state=ready.hard_state
            )
            for message in ready.messages_after_persist:
                self.network.send(message, self.now)
            if ready.snapshot is not None:
                self._install_snapshot(node, ready.snapshot)
            for entry in ready.committed_entries:
                self._apply(node, entry)
            for read_state in ready.read_states:
                self._serve_read(node, read_state.request_id, read_state.index)
            raft.advance(ready)
            self._observe(node)

    def _apply(self, node: SimulatedNode, entry: Entry) -> None:
        self.checker.saw_applied(node.node_id, entry)
        command = command_id(entry)
        if command is None:
            return
        if command in node.applied_command_set:
            raise SafetyViolation(f"{node.node_id} applied {command} twice")
        node.applied_commands.append(command)
        node.applied_command_set.add(command)
        pending = self._pending.get(command)
        if pending is not None and pending == (node.node_id, entry.term, entry.index):
            del self._pending[command]
            self.acknowledged.add(command)
            self._acknowledged_index_max = max(self._acknowledged_index_max, entry.index)

    def _install_snapshot(self, node: SimulatedNode, snapshot: Snapshot) -> None:
        metadata = snapshot.metadata
        self.checker.saw_snapshot(node.node_id, metadata.index, metadata.term)
        node.applied_commands = decode_state(snapshot.data)
        node.applied_command_set = set(node.applied_commands)
        self.result.snapshots_installed += 1

    def _serve_read(self, node: SimulatedNode, request_id: int, index: LogIndex) -> None:
        requested = self._reads.pop(request_id, None)
        if requested is None:
            return
        requester, floor = requested
        if requester != node.node_id:
            raise SafetyViolation(f"read {request_id} of {requester} answered on {node.node_id}")
        if index < floor:
            raise SafetyViolation(
                f"linearizability: read {request_id} on {node.node_id} got index {index}, but a "
                f"write at {floor} was acknowledged before it started"
            )
        self.result.reads_served += 1

    # -- nodes -------------------------------------------------------------------------------

    def add_node(self, node_id: NodeId, persisted: PersistedState) -> SimulatedNode:
        node = SimulatedNode(node_id, self.storage_provider.create(node_id, persisted))
        self.nodes[node_id] = node
        self.start(node)
        return node

    def start(self, node: SimulatedNode) -> None:
        node.storage = self.storage_provider.reopen(node.node_id, node.storage)
        persisted = node.storage.load()
        node.raft = RaftNode(
            node_id=node.node_id,
            persisted=persisted,
            options=self.options,
            random_source=random.Random(self.random.getrandbits(64)),
            check_invariants=True,
        )
        snapshot = persisted.snapshot
        node.applied_commands = decode_state(snapshot.data) if snapshot else []
        node.applied_command_set = set(node.applied_commands)
        node.crash_at_next_ready = False
        node.observed_leader_term = -1
        self._observe(node)

    def crash(self, node: SimulatedNode) -> None:
        node.raft = None
        node.crash_at_next_ready = False
        self.result.crashes += 1

    def leaders(self) -> list[SimulatedNode]:
        return [
            node
            for node in self.nodes.values()
            if node.raft is not None and node.raft.role is Role.LEADER
        ]

    # -- fault and workload injection --------------------------------------------------------

    def _inject_events(self) -> None:
        plan = self.plan
        rng = self.random
        if rng.random() < plan.partition_probability:
            self._partition()
        if self.network.blocked_links and rng.random() < plan.heal_probability:
            self.network.heal()
        for node in self.nodes.values():
            if node.raft is not None and rng.random() < plan.crash_probability:
                if rng.random() < plan.crash_mid_ready_probability:
                    node.crash_at_next_ready = True
                else:
                    self.crash(node)
            elif node.raft is None and rng.random() < plan.restart_probability:
                self.start(node)
        if rng.random() < plan.propose_probability:
            self.propose(rng.randint(1, 3))
        if rng.random() < plan.read_probability:
            self._read()
        if rng.random() < plan.membership_probability:
            self._change_membership()
        if rng.random() < plan.transfer_probability:
            self._transfer_leadership()
        if rng.random() < plan.snapshot_probability:
            self._take_snapshot(rng.choice(list(self.nodes.values())))

    def _partition(self) -> None:
        rng = self.random
        ids = sorted(self.nodes)
        kind = rng.choice(["split", "isolate", "one_way", "asymmetric"])
        if kind == "asymmetric":
            self.network.heal()
            for sender in ids:
                for recipient in ids:
                    if sender != recipient and rng.random() < 0.3:
                        self.network.blocked_links.add((sender, recipient))
            return
        rng.shuffle(ids)
        cut = 1 if kind == "isolate" else rng.randint(1, max(1, len(ids) - 1))
        groups = [set(ids[:cut]), set(ids[cut:])]
        self.network.partition(groups, one_way=kind == "one_way")

    def propose(self, count: int) -> None:
        leaders = self.leaders()
        if not leaders:
            return
        leader = self.random.choice(leaders)
        assert leader.raft is not None
        commands = []
        for _ in range(count):
            self._next_command += 1
            commands.append(f"c{self._next_command}")
        try:
            receipt = leader.raft.propose([command.encode() for command in commands])
        except RaftError:
            return
        for offset, command in enumerate(commands):
            index = receipt.first_index + offset
            self._pending[command] = (leader.node_id, receipt.term, index)

    def _read(self) -> None:
        running = [node for node in self.nodes.values() if node.raft is not None]
        if not running:
            return
        node = self.random.choice(running)
        assert node.raft is not None
        self._next_read += 1
        try:
            node.raft.read_index(self._next_read)
        except RaftError:
            return
        self._reads[self._next_read] = (node.node_id, self._acknowledged_index_max)

    def _change_membership(self) -> None:
        leaders = self.leaders()
        if not leaders:
            return
        leader = self.random.choice(leaders)
        raft = leader.raft
        assert raft is not None
        configuration = raft.configuration
        options: list[MembershipChange] = []
        if self._next_node <= self.settings.nodes + self.settings.added_nodes_max:
            new_id = NodeId(str(self._next_node))
            options.append(
                MembershipChange(
                    MembershipChangeKind.ADD_LEARNER, new_id, address=member_address(new_id)
                )
            )
        for learner in sorted(configuration.learners):
            options.append(MembershipChange(MembershipChangeKind.PROMOTE_LEARNER, learner))
        if len(configuration.members) > 1:
            for member in sorted(configuration.members):
                options.append(MembershipChange(MembershipChangeKind.REMOVE_MEMBER, member))
        if not options:
            return
        change = self.random.choice(options)
        try:
            raft.change_membership(change)
        except RaftError:
            return
        self.result.membership_changes += 1
        if change.kind is MembershipChangeKind.ADD_LEARNER:
            self._next_node += 1
            self.add_node(change.node_id, PersistedState())

    def _transfer_leadership(self) -> None:
        leaders = self.leaders()
        if not leaders:
            return
        leader = self.random.choice(leaders)
        assert leader.raft is not None
        voters = sorted(leader.raft.configuration.voters - {leader.node_id})
        if not voters:
            return
        try:
            leader.raft.transfer_leadership(self.random.choice(voters))
        except RaftError:
            return
        self.result.leadership_transfers += 1

    def _take_snapshot(self, node: SimulatedNode) -> None:
        raft = node.raft
        if raft is None or node.crash_at_next_ready:
            return
        index = raft.applied_index
        if index <= raft.log.snapshot.metadata.index:
            return
        term = raft.log.term_at(index)
        assert term is not None
        metadata = SnapshotMetadata(index, term, raft.log.configuration_at(index))
        snapshot = Snapshot(metadata, encode_state(node.applied_commands))
        # The application writes its snapshot durably before telling the core to compact.
        node.storage.save_snapshot(snapshot)
        raft.snapshot_taken(snapshot)
        self.result.snapshots_taken += 1

    # -- liveness and final checks -----------------------------------------------------------

    def _run_liveness_phase(self) -> None:
        self.network.heal()
        self.network.faults = NetworkFaults()
        for node in self.nodes.values():
            node.crash_at_next_ready = False
            if node.raft is None:
                self.start(node)
        # The faults may have left a long uncommitted suffix that the new leader must replicate
        # first. With the smallest batch and window the simulator draws, the leader still moves
        # at least one entry per round trip (two ticks on the healed network).
        backlog = max(
            node.raft.log.last_index() - node.raft.commit_index
            for node in self.nodes.values()
            if node.raft is not None
        )
        liveness_ticks = self.settings.liveness_ticks_max + 2 * backlog
        deadline = self.now + liveness_ticks
        marker: str | None = None
        while marker is None or marker not in self.acknowledged:
            if self.now >= deadline:
                raise SafetyViolation(
                    f"liveness: no leader committed a proposal within {liveness_ticks} ticks of "
                    f"healing (backlog of {backlog} uncommitted entries)"
                )
            if marker is None or self._proposal_lost(marker):
                marker = self._propose_marker()
            self.step_tick()
        self._wait_for_catch_up()

    def _proposal_lost(self, command: str) -> bool:
        """Whether a proposal may never be acknowledged, so the client should propose anew.

        Either a new leader overwrote its entry, or its proposer no longer leads the term it
        proposed in: the entry may still commit, but nothing guarantees that anyone will extend
        the log up to it. (A client retries the same way; the commands differ, so exactly-once
        still holds.)
        """
        pending = self._pending.get(command)
        if pending is None:
            return command not in self.acknowledged
        proposer, term, index = pending
        applied = self.checker.applied_entries.get(LogIndex(index))
        if applied is not None:
            return applied.term != term
        raft = self.nodes[proposer].raft
        return raft is None or raft.role is not Role.LEADER or raft.term != term

    def _propose_marker(self) -> str | None:
        for leader in self.leaders():
            assert leader.raft is not None
            self._next_command += 1
            command = f"c{self._next_command}"
            try:
                receipt = leader.raft.propose([command.encode()])
            except RaftError:
                continue
            self._pending[command] = (leader.node_id, receipt.term, receipt.first_index)
            return command
        return None

    def _wait_for_catch_up(self) -> None:
        # As in the liveness phase, allow a round trip per entry a node is behind.
        behind = max(
            self.checker.highest_applied - node.raft.applied_index
            for node in self.nodes.values()
            if node.raft is not None
        )
        catch_up_ticks = self.settings.catch_up_ticks_max + 2 * behind
        deadline = self.now + catch_up_ticks
        while True:
            leaders = self.leaders()
            if len(leaders) == 1 and self._members_caught_up(leaders[0]):
                return
            if self.now >= deadline:
                raise SafetyViolation(
                    f"liveness: members did not catch up within {catch_up_ticks} ticks"
                )
            self.step_tick()

    def _members_caught_up(self, leader: SimulatedNode) -> bool:
        assert leader.raft is not None
        commit = leader.raft.commit_index
        for member in leader.raft.configuration.members:
            raft = self.nodes[member].raft
            if raft is None or raft.applied_index < commit:
                return False
        return True

    def check_logs(self) -> None:
        running = [node.raft for node in self.nodes.values() if node.raft is not None]
        check_log_matching(running)
        for raft in running:
            configuration = raft.configuration
            expected = tuple((member, member_address(member)) for member in configuration.members)
            if configuration.addresses != tuple(sorted(expected)):
                raise SafetyViolation(
                    f"node {raft.id} holds member addresses {configuration.addresses} for the "
                    f"members {sorted(configuration.members)}"
                )

    def _check_exactly_once(self) -> None:
        leaders = self.leaders()
        assert len(leaders) == 1 and leaders[0].raft is not None
        for member in sorted(leaders[0].raft.configuration.members):
            node = self.nodes[member]
            missing = self.acknowledged - node.applied_command_set
            if missing:
                raise SafetyViolation(
                    f"{member} never applied acknowledged proposals {sorted(missing)[:5]}"
                )
            if len(node.applied_commands) != len(node.applied_command_set):
                raise SafetyViolation(f"{member} applied a proposal more than once")


def run_simulation(settings: SimulationSettings) -> SimulationResult:
    """Run one seed; raises SimulationFailure (with the replay command) if a property breaks."""
    if settings.storage == "memory":
        return Simulation(settings).run()
    if settings.storage != "file":
        raise ValueError(f"unknown storage {settings.storage!r}: use 'memory' or 'file'")
    # Imported here: the file storage brings the whole I/O layer, which memory runs never need.
    from taskraft.sim.file_storage import FileStorageProvider

    with tempfile.TemporaryDirectory(prefix="taskraft-sim-") as directory:
        simulation = Simulation(settings, storage_provider=FileStorageProvider(Path(directory)))
        try:
            return simulation.run()
        finally:
            for node in simulation.nodes.values():
                node.storage.close()


__all__ = [
    "FaultPlan",
    "Simulation",
    "SimulationFailure",
    "SimulationResult",
    "SimulationSettings",
    "run_simulation",
]
