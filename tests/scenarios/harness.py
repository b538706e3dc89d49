"""An interpreter for Raft scenario files, in the style of etcd-io/raft's interaction tests.

A scenario file is a sequence of cases. Each case is a command line, optional input lines, a
line `----`, then the output the command is expected to print, ended by a blank line. Lines
starting with `#` between cases are comments:

    # Node 1 campaigns.
    campaign 1
    ----
    ok

The interpreter drives an in-memory cluster of `RaftNode`s. Nothing happens on its own: every
tick, every Ready loop and every message delivery is a command, so a transcript shows exactly
which message caused what. Each node has an in-memory "disk" that holds precisely what its
Ready batches asked to persist; `crash` rebuilds the node from that disk, so whatever was not
persisted is lost. The network keeps one FIFO queue per recipient; messages that cross a
partition are dropped when sent.

Commands (node ids are strings "1", "2", ...; lists are written `(1,2,3)`):

    add-nodes N voters=(1,2,3) [learners=(4)] [pre-vote=true] [check-quorum=true]
        [election-timeout=10] [heartbeat=1] [inflight=64] [batch-bytes=...]
        [snapshot-chunk=...] [uncommitted-bytes=...] [promotion-lag=...] [seed=0]
            Start N nodes numbered after the existing ones. With voters=() they join empty.
    campaign ID | tick ID [COUNT] | tick-all [COUNT] | tick-election ID
    tick-heartbeat ID
    process-ready ID... | deliver-msgs [ID...] [from=ID] [type=NAME] [count=N]
    drop-msgs [from=ID] [to=ID] [type=NAME] [count=N] | msgs [ID...]
    stabilize [ID...] [quiet=true]
    partition (1) (2,3) | isolate ID | heal
    propose ID DATA | propose-many ID DATA... | transfer-leadership ID TARGET
    read-index ID REQUEST_ID | add-learner ID NODE | promote ID NODE | remove ID NODE
    compact ID INDEX | crash ID
    status ID | log ID | applied ID | raft-state

`tick-election` ticks until the node's randomized election timeout must have fired (at most
twice the election timeout), stopping at its first change of role or term. `process-ready`
prints the Ready batch, then persists it to the node's disk, queues its messages, applies its
committed entries and calls advance. `stabilize` repeats process-ready and deliver-msgs on the
given nodes (all by default) until nothing moves. The state machine of every node is the list
of applied commands; `compact` snapshots it at an applied index and hands it to the core.
`count=N` of deliver-msgs and drop-msgs counts per recipient. `crash` loses what the node held
in memory only: messages already in the network stay there.

Errors the core raises to its caller print as `error: <ClassName>: <message>`; anything else
the core raises (an invariant violation, a crash) fails the scenario.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskraft.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogIndex,
    MembershipChange,
    MembershipChangeError,
    MembershipChangeKind,
    Message,
    NodeId,
    NotLeaderError,
    PersistedState,
    ProposalDroppedError,
    ProposalReceipt,
    RaftNode,
    RaftOptions,
    ReadIndexRequest,
    ReadIndexResponse,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
    SnapshotMetadata,
    TimeoutNow,
    bootstrap_state,
)
from taskraft.raft.progress import ProgressState

# The errors a caller of the core must expect; they print instead of failing the scenario.
EXPECTED_ERRORS = (NotLeaderError, ProposalDroppedError, MembershipChangeError, ValueError)

SEPARATOR = "----"


class ScenarioError(Exception):
    """The scenario file itself is wrong: unknown command, bad argument, unknown node."""


# -- the file format --------------------------------------------------------------------------


@dataclass
class Case:
    line_number: int
    command: str
    input_lines: list[str]
    expected: list[str]
    actual: list[str] | None = None


@dataclass
class ScenarioFile:
    """A parsed file: free text (comments, blank lines) interleaved with cases, kept verbatim."""

    parts: list[str | Case]

    @property
    def cases(self) -> list[Case]:
        return [part for part in self.parts if isinstance(part, Case)]

    def render(self, *, actual: bool) -> str:
        lines: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                lines.append(part)
                continue
            output = part.actual if actual and part.actual is not None else part.expected
            lines.extend([part.command, *part.input_lines, SEPARATOR, *output, ""])
        while lines and lines[-1] == "":
            lines.pop()
        return "\n".join(lines) + "\n"


def parse_scenario(text: str) -> ScenarioFile:
    lines = text.splitlines()
    parts: list[str | Case] = []
    position = 0
    while position < len(lines):
        line = lines[position]
        if not line.strip() or line.startswith("#"):
            parts.append(line)
            position += 1
            continue
        start = position
        command = line
        position += 1
        input_lines: list[str] = []
        while position < len(lines) and lines[position] != SEPARATOR:
            if not lines[position].strip():
                raise ScenarioError(f"line {position + 1}: missing {SEPARATOR} after {command!r}")
            input_lines.append(lines[position])
            position += 1
        if position == len(lines):
            raise ScenarioError(f"line {start + 1}: missing {SEPARATOR} after {command!r}")
        position += 1
        expected: list[str] = []
        while position < len(lines) and lines[position].strip():
            expected.append(lines[position])
            position += 1
        position += 1  # the blank line that ends the case
        parts.append(Case(start + 1, command, input_lines, expected))
    return ScenarioFile(parts)


def run_scenario(path: Path) -> ScenarioFile:
    """Run every case of the file in order on one fresh cluster, filling in `Case.actual`."""
    scenario = parse_scenario(path.read_text())
    cluster = Cluster()
    for case in scenario.cases:
        try:
            case.actual = cluster.run(case.command, case.input_lines)
        except ScenarioError as error:
            raise ScenarioError(f"{path.name}:{case.line_number}: {error}") from error
        except Exception as error:
            raise AssertionError(
                f"{path.name}:{case.line_number}: {case.command!r} raised {error!r}"
            ) from error
    return scenario


# -- formatting -------------------------------------------------------------------------------


def node_sort_key(node: str) -> tuple[int, str]:
    return (len(node), node)


def fmt_ids(ids: Iterable[str]) -> str:
    return "(" + ",".join(sorted(ids, key=node_sort_key)) + ")"


def fmt_data(data: bytes) -> str:
    return '"' + data.decode("utf-8", errors="backslashreplace").replace('"', '\\"') + '"'


def fmt_configuration(configuration: Configuration) -> str:
    text = f"voters={fmt_ids(configuration.voters)}"
    if configuration.learners:
        text += f" learners={fmt_ids(configuration.learners)}"
    return text


def fmt_entry(entry: Entry) -> str:
    position = f"{entry.term}/{entry.index}"
    if entry.kind is EntryKind.COMMAND:
        return f"{position} EntryCommand {fmt_data(entry.data)}"
    if entry.kind is EntryKind.NOOP:
        return f"{position} EntryNoop"
    return f"{position} EntryConfig {fmt_configuration(Configuration.decode(entry.data))}"


def fmt_entries(entries: Iterable[Entry]) -> str:
    return "[" + ", ".join(fmt_entry(entry) for entry in entries) + "]"


def fmt_snapshot_metadata(metadata: SnapshotMetadata) -> str:
    return f"{metadata.term}/{metadata.index} {fmt_configuration(metadata.configuration)}"


def fmt_message(message: Message) -> str:
    head = f"{message.sender}->{message.recipient}"
    if isinstance(message, RequestVote):
        text = (
            f"{head} {message_type(message)} term={message.term} "
            f"last={message.last_log_term}/{message.last_log_index}"
        )
        if message.leadership_transfer:
            text += " transfer"
        return text
    if isinstance(message, RequestVoteResponse):
        verdict = "granted" if message.granted else "rejected"
        return f"{head} {message_type(message)} term={message.term} {verdict}"
    if isinstance(message, AppendEntries):
        text = f"{head} {message_type(message)} term={message.term}"
        if not message.heartbeat:
            # A heartbeat carries no log position: only the commit index the follower may use.
            text += f" prev={message.previous_log_term}/{message.previous_log_index}"
        text += f" commit={message.leader_commit}"
        if message.entries:
            text += f" entries={fmt_entries(message.entries)}"
        if message.read_round:
            text += f" read-round={message.read_round}"
        return text
    if isinstance(message, AppendEntriesResponse):
        text = f"{head} {message_type(message)} term={message.term}"
        if message.heartbeat and message.success:
            pass
        elif message.success:
            text += f" match={message.match_index}"
        else:
            conflict_term = "none" if message.conflict_term is None else message.conflict_term
            text += (
                f" rejected={message.rejected_index} conflict-term={conflict_term} "
                f"conflict-index={message.conflict_index}"
            )
        if message.read_round:
            text += f" read-round={message.read_round}"
        return text
    if isinstance(message, InstallSnapshot):
        text = (
            f"{head} InstallSnapshot term={message.term} "
            f"snapshot={fmt_snapshot_metadata(message.metadata)} "
            f"offset={message.offset} bytes={len(message.data)}"
        )
        return text + (" done" if message.done else "")
    if isinstance(message, InstallSnapshotResponse):
        text = (
            f"{head} InstallSnapshotResponse term={message.term} "
            f"snapshot-index={message.snapshot_index} next-offset={message.next_offset}"
        )
        return text + (" done" if message.done else "")
    if isinstance(message, TimeoutNow):
        return f"{head} TimeoutNow term={message.term}"
    if isinstance(message, ReadIndexRequest):
        return f"{head} ReadIndexRequest term={message.term} id={message.request_id}"
    if isinstance(message, ReadIndexResponse):
        verdict = "success" if message.success else "failure"
        return (
            f"{head} ReadIndexResponse term={message.term} id={message.request_id} "
            f"index={message.index} {verdict}"
        )
    raise AssertionError(f"unknown message {message!r}")


def message_type(message: Message) -> str:
    """The name a transcript shows for the message, which `type=` filters match."""
    if isinstance(message, RequestVote) and message.pre_vote:
        return "PreVote"
    if isinstance(message, RequestVoteResponse) and message.pre_vote:
        return "PreVoteResponse"
    if isinstance(message, AppendEntries) and message.heartbeat:
        return "Heartbeat"
    if isinstance(message, AppendEntriesResponse) and message.heartbeat:
        return "HeartbeatResponse"
    return type(message).__name__


def fmt_receipt(receipt: ProposalReceipt) -> str:
    if receipt.first_index == receipt.last_index:
        return f"ok: term={receipt.term} index={receipt.first_index}"
    return f"ok: term={receipt.term} index={receipt.first_index}..{receipt.last_index}"


def fmt_error(error: Exception) -> str:
    return f"error: {type(error).__name__}: {error}"


# -- the cluster ------------------------------------------------------------------------------


@dataclass
class Disk:
    """What survives a crash: exactly what the node's Ready batches asked to persist."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def persisted_state(self) -> PersistedState:
        return PersistedState(self.hard_state, self.snapshot, tuple(self.entries))


@dataclass
class Member:
    node_id: NodeId
    options: RaftOptions
    seed: str
    disk: Disk
    node: RaftNode
    incarnation: int = 0
    # The state machine: the data of every applied command, with its log index.
    applied: list[tuple[int, bytes]] = field(default_factory=list)


BOOL_VALUES = {"true": True, "false": False}

OPTION_FIELDS: dict[str, str] = {
    "election-timeout": "election_timeout_ticks",
    "heartbeat": "heartbeat_interval_ticks",
    "inflight": "inflight_messages_max",
    "batch-bytes": "batch_size_max_bytes",
    "uncommitted-bytes": "uncommitted_size_max_bytes",
    "apply-bytes": "apply_batch_size_max_bytes",
    "snapshot-chunk": "snapshot_chunk_size_max_bytes",
    "snapshot-max": "snapshot_size_max_bytes",
    "pending-reads": "pending_reads_max",
    "promotion-lag": "promotion_lag_max_entries",
    "pre-vote": "pre_vote",
    "check-quorum": "check_quorum",
}


def parse_id_list(text: str) -> list[str]:
    if not (text.startswith("(") and text.endswith(")")):
        raise ScenarioError(f"expected a list like (1,2,3), got {text!r}")
    inner = text[1:-1].strip()
    return [item.strip() for item in inner.split(",")] if inner else []


class Arguments:
    """Positional and key=value arguments of one command line."""

    def __init__(self, tokens: list[str]) -> None:
        self.positional: list[str] = []
        self.named: dict[str, str] = {}
        for token in tokens:
            match = re.fullmatch(r"([a-z-]+)=(.*)", token)
            if match:
                self.named[match.group(1)] = match.group(2)
            else:
                self.positional.append(token)
        self._used: set[str] = set()

    def take(self, key: str, default: str | None = None) -> str | None:
        self._used.add(key)
        return self.named.get(key, default)

    def check_all_used(self) -> None:
        unknown = set(self.named) - self._used
        if unknown:
            raise ScenarioError(f"unknown arguments: {sorted(unknown)}")


class Cluster:
    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.queues: dict[str, list[Message]] = {}
        self.cut_links: set[frozenset[str]] = set()
        self._commands: dict[str, Callable[[Arguments], list[str]]] = {
            "add-nodes": self._add_nodes,
            "campaign": self._campaign,
            "tick": self._tick,
            "tick-all": self._tick_all,
            "tick-election": self._tick_election,
            "tick-heartbeat": self._tick_heartbeat,
            "process-ready": self._process_ready,
            "deliver-msgs": self._deliver_msgs,
            "drop-msgs": self._drop_msgs,
            "msgs": self._msgs,
            "stabilize": self._stabilize,
            "partition": self._partition,
            "isolate": self._isolate,
            "heal": self._heal,
            "propose": self._propose,
            "propose-many": self._propose_many,
            "transfer-leadership": self._transfer_leadership,
            "read-index": self._read_index,
            "add-learner": self._membership(MembershipChangeKind.ADD_LEARNER),
            "promote": self._membership(MembershipChangeKind.PROMOTE_LEARNER),
            "remove": self._membership(MembershipChangeKind.REMOVE_MEMBER),
            "compact": self._compact,
            "crash": self._crash,
            "status": self._status,
            "log": self._log,
            "applied": self._applied,
            "raft-state": self._raft_state,
        }

    # -- dispatch ----------------------------------------------------------------------------

    def run(self, command_line: str, input_lines: list[str]) -> list[str]:
        """Run one command; lines between the command and `----` are more of its arguments."""
        tokens = [token for line in [command_line, *input_lines] for token in shlex.split(line)]
        name, arguments = tokens[0], Arguments(tokens[1:])
        handler = self._commands.get(name)
        if handler is None:
            raise ScenarioError(f"unknown command {name!r}")
        output = handler(arguments)
        arguments.check_all_used()
        # A blank line would end the case: never print one, and never print nothing.
        output = [line for line in output if line.strip()]
        return output or ["ok"]

    def _member(self, node: str) -> Member:
        member = self.members.get(node)
        if member is None:
            raise ScenarioError(f"no node {node!r}")
        return member

    def _ids(self, arguments: Arguments) -> list[str]:
        ids = arguments.positional or sorted(self.members, key=node_sort_key)
        for node in ids:
            self._member(node)
        return ids

    def _one_id(self, arguments: Arguments, count: int = 1) -> list[str]:
        if len(arguments.positional) != count:
            raise ScenarioError(f"expected {count} positional arguments")
        return arguments.positional

    @staticmethod
    def _call(action: Callable[[], object]) -> list[str]:
        try:
            result = action()
        except EXPECTED_ERRORS as error:
            return [fmt_error(error)]
        if isinstance(result, ProposalReceipt):
            return [fmt_receipt(result)]
        return ["ok"]

    # -- nodes -------------------------------------------------------------------------------

    def _add_nodes(self, arguments: Arguments) -> list[str]:
        (count_text,) = self._one_id(arguments)
        voters = parse_id_list(arguments.take("voters", "()") or "()")
        learners = parse_id_list(arguments.take("learners", "()") or "()")
        seed = arguments.take("seed", "0")
        option_values: dict[str, Any] = {}
        for key, field_name in OPTION_FIELDS.items():
            value = arguments.take(key)
            if value is None:
                continue
            option_values[field_name] = BOOL_VALUES[value] if value in BOOL_VALUES else int(value)
        options = dataclasses.replace(RaftOptions(), **option_values)
        output = []
        for _ in range(int(count_text)):
            node_id = NodeId(str(len(self.members) + 1))
            if voters or learners:
                configuration = Configuration(
                    voters=frozenset(NodeId(v) for v in voters),
                    learners=frozenset(NodeId(v) for v in learners),
                )
                persisted = bootstrap_state(configuration)
            else:
                persisted = PersistedState()
            disk = Disk(persisted.hard_state, persisted.snapshot, list(persisted.entries))
            member_seed = f"{seed}/{node_id}"
            node = self._new_node(node_id, disk, options, member_seed, incarnation=0)
            self.members[node_id] = Member(node_id, options, member_seed, disk, node)
            self.queues.setdefault(node_id, [])
            output.append(f"{node_id}: {self._describe(self.members[node_id])}")
        return output

    @staticmethod
    def _new_node(
        node_id: NodeId, disk: Disk, options: RaftOptions, seed: str, *, incarnation: int
    ) -> RaftNode:
        return RaftNode(
            node_id=node_id,
            persisted=disk.persisted_state(),
            options=options,
            random_source=random.Random(f"{seed}/{incarnation}"),
            check_invariants=True,
        )

    def _crash(self, arguments: Arguments) -> list[str]:
        (node,) = self._one_id(arguments)
        member = self._member(node)
        member.incarnation += 1
        member.node = self._new_node(
            member.node_id,
            member.disk,
            member.options,
            member.seed,
            incarnation=member.incarnation,
        )
        snapshot = member.disk.snapshot
        member.applied = self._decode_state_machine(snapshot)
        hard_state = member.disk.hard_state
        entries = member.disk.entries
        span = f"{entries[0].index}..{entries[-1].index}" if entries else "none"
        return [
            f"{node} restarted from disk: term={hard_state.term} "
            f"vote={hard_state.vote or 'none'} commit={hard_state.commit} entries={span}",
            f"{node}: {self._describe(member)}",
        ]

    # -- time --------------------------------------------------------------------------------

    def _tick(self, arguments: Arguments) -> list[str]:
        if len(arguments.positional) not in (1, 2):
            raise ScenarioError("usage: tick ID [COUNT]")
        member = self._member(arguments.positional[0])
        count = int(arguments.positional[1]) if len(arguments.positional) == 2 else 1
        for _ in range(count):
            member.node.tick()
        return ["ok"]

    def _tick_all(self, arguments: Arguments) -> list[str]:
        count = int(arguments.positional[0]) if arguments.positional else 1
        for _ in range(count):
            for node in sorted(self.members, key=node_sort_key):
                self.members[node].node.tick()
        return ["ok"]

    def _tick_heartbeat(self, arguments: Arguments) -> list[str]:
        (node,) = self._one_id(arguments)
        member = self._member(node)
        for _ in range(member.options.heartbeat_interval_ticks):
            member.node.tick()
        return ["ok"]

    def _tick_election(self, arguments: Arguments) -> list[str]:
        """Tick until the node's randomized election timeout must have fired (2 * timeout).

        Stops as soon as the node changes role or term, so that a timeout that fires early
        does not fire a second time within the same command.
        """
        (node,) = self._one_id(arguments)
        member = self._member(node)
        raft = member.node
        for _ in range(2 * member.options.election_timeout_ticks):
            before = (raft.role, raft.term)
            raft.tick()
            if (raft.role, raft.term) != before:
                break
        return ["ok"]

    def _campaign(self, arguments: Arguments) -> list[str]:
        (node,) = self._one_id(arguments)
        return self._call(self._member(node).node.campaign)

    # -- the Ready loop ----------------------------------------------------------------------

    def _process_ready(self, arguments: Arguments) -> list[str]:
        if not arguments.positional:
            raise ScenarioError("usage: process-ready ID...")
        output: list[str] = []
        for node in self._ids(arguments):
            output.extend(self._handle_ready(self._member(node)))
        return output

    def _handle_ready(self, member: Member) -> list[str]:
        node = member.node
        output = [f"> {member.node_id} handling Ready"]
        if not node.has_ready():
            return [*output, "  <no Ready>"]
        ready = node.ready()
        output.extend(self._fmt_ready(ready, self._fmt_outgoing))
        self._persist(member, ready)
        for message in (*ready.messages, *ready.messages_after_persist):
            self._send(message)
        self._apply(member, ready)
        node.advance(ready)
        return output

    def _fmt_outgoing(self, message: Message) -> str:
        text = fmt_message(message)
        if self._link_cut(message.sender, message.recipient):
            text += " [dropped: partitioned]"
        return text

    @staticmethod
    def _fmt_ready(ready: Ready, fmt_outgoing: Callable[[Message], str]) -> list[str]:
        lines: list[str] = []
        if ready.soft_state is not None:
            soft = ready.soft_state
            lines.append(f"  State: role={soft.role.value} leader={soft.leader_id or 'none'}")
        if ready.hard_state is not None:
            hard = ready.hard_state
            lines.append(
                f"  HardState: term={hard.term} vote={hard.vote or 'none'} commit={hard.commit}"
            )
        if ready.snapshot is not None:
            snapshot = ready.snapshot
            lines.append(
                f"  Snapshot: {fmt_snapshot_metadata(snapshot.metadata)} "
                f"data={snapshot.data.decode(errors='backslashreplace')}"
            )
        sections: list[tuple[str, Iterable[str]]] = [
            ("Entries", (fmt_entry(e) for e in ready.entries)),
            ("Messages", (fmt_outgoing(m) for m in ready.messages)),
            ("Messages after persist", (fmt_outgoing(m) for m in ready.messages_after_persist)),
            ("Committed entries", (fmt_entry(e) for e in ready.committed_entries)),
            ("Read states", (f"id={r.request_id} index={r.index}" for r in ready.read_states)),
        ]
        for title, items in sections:
            rendered = list(items)
            if rendered:
                lines.append(f"  {title}:")
                lines.extend(f"    {item}" for item in rendered)
        if not lines:
            lines.append("  <empty Ready>")
        return lines

    @staticmethod
    def _persist(member: Member, ready: Ready) -> None:
        disk = member.disk
        if ready.snapshot is not None:
            # A snapshot from the leader replaces the whole log (the core's log does the same).
            disk.snapshot = ready.snapshot
            disk.entries = []
        if ready.entries:
            first = ready.entries[0].index
            disk.entries = [e for e in disk.entries if e.index < first] + list(ready.entries)
        if ready.hard_state is not None:
            disk.hard_state = ready.hard_state

    def _apply(self, member: Member, ready: Ready) -> None:
        if ready.snapshot is not None:
            member.applied = self._decode_state_machine(ready.snapshot)
        for entry in ready.committed_entries:
            if entry.kind is EntryKind.COMMAND:
                member.applied.append((entry.index, entry.data))

    @staticmethod
    def _encode_state_machine(applied: list[tuple[int, bytes]]) -> bytes:
        document = [[index, data.decode()] for index, data in applied]
        return json.dumps(document, separators=(",", ":")).encode()

    @staticmethod
    def _decode_state_machine(snapshot: Snapshot | None) -> list[tuple[int, bytes]]:
        if snapshot is None or not snapshot.data:
            return []
        return [(index, data.encode()) for index, data in json.loads(snapshot.data)]

    # -- the network -------------------------------------------------------------------------

    def _link_cut(self, sender: str, recipient: str) -> bool:
        return frozenset((sender, recipient)) in self.cut_links

    def _send(self, message: Message) -> bool:
        """Queue a message for its recipient; returns True when a partition dropped it."""
        if self._link_cut(message.sender, message.recipient):
            return True
        self.queues.setdefault(message.recipient, []).append(message)
        return False

    @staticmethod
    def _filter(arguments: Arguments) -> tuple[Callable[[Message], bool], int | None]:
        sender = arguments.take("from")
        recipient = arguments.take("to")
        kind = arguments.take("type")
        count_text = arguments.take("count")

        def matches(message: Message) -> bool:
            return (
                (sender is None or message.sender == sender)
                and (recipient is None or message.recipient == recipient)
                and (kind is None or message_type(message) == kind)
            )

        return matches, int(count_text) if count_text is not None else None

    def _take_messages(
        self, node: str, matches: Callable[[Message], bool], count: int | None
    ) -> list[Message]:
        queue = self.queues.get(node, [])
        taken: list[Message] = []
        kept: list[Message] = []
        for message in queue:
            if matches(message) and (count is None or len(taken) < count):
                taken.append(message)
            else:
                kept.append(message)
        self.queues[node] = kept
        return taken

    def _deliver_msgs(self, arguments: Arguments) -> list[str]:
        matches, count = self._filter(arguments)
        output: list[str] = []
        for node in self._ids(arguments):
            output.extend(self._deliver_to(node, matches, count))
        return output or ["no messages"]

    def _deliver_to(
        self,
        node: str,
        matches: Callable[[Message], bool] = lambda _: True,
        count: int | None = None,
    ) -> list[str]:
        messages = self._take_messages(node, matches, count)
        if not messages:
            return []
        member = self._member(node)
        output = [f"> {node} receiving messages"]
        for message in messages:
            output.append(f"  {fmt_message(message)}")
            if self._link_cut(message.sender, message.recipient):
                output[-1] += " [dropped: partitioned]"
                continue
            member.node.step(message)
        return output

    def _drop_msgs(self, arguments: Arguments) -> list[str]:
        matches, count = self._filter(arguments)
        output: list[str] = []
        for node in sorted(self.queues, key=node_sort_key):
            for message in self._take_messages(node, matches, count):
                output.append(f"dropped: {fmt_message(message)}")
        return output or ["no messages"]

    def _msgs(self, arguments: Arguments) -> list[str]:
        nodes = arguments.positional or sorted(self.queues, key=node_sort_key)
        output: list[str] = []
        for node in nodes:
            output.extend(fmt_message(message) for message in self.queues.get(node, []))
        return output or ["no messages"]

    def _stabilize(self, arguments: Arguments) -> list[str]:
        """Ready loops and deliveries until nothing moves; quiet=true prints only "ok"."""
        quiet = BOOL_VALUES[arguments.take("quiet", "false") or "false"]
        ids = self._ids(arguments)
        output: list[str] = []
        for _round in range(1000):
            progressed = False
            for node in ids:
                if self.members[node].node.has_ready():
                    output.extend(self._handle_ready(self.members[node]))
                    progressed = True
            for node in ids:
                delivered = self._deliver_to(node)
                if delivered:
                    output.extend(delivered)
                    progressed = True
            if not progressed:
                return ["ok"] if quiet else output
        raise AssertionError("stabilize did not converge in 1000 rounds")

    def _partition(self, arguments: Arguments) -> list[str]:
        groups = [parse_id_list(group) for group in arguments.positional]
        if len(groups) < 2:
            raise ScenarioError("usage: partition (1) (2,3)")
        for position, group in enumerate(groups):
            for other in groups[position + 1 :]:
                for left in group:
                    for right in other:
                        self.cut_links.add(frozenset((left, right)))
        return self._drop_queued_across_cuts()

    def _isolate(self, arguments: Arguments) -> list[str]:
        (node,) = self._one_id(arguments)
        for other in self.members:
            if other != node:
                self.cut_links.add(frozenset((node, other)))
        return self._drop_queued_across_cuts()

    def _heal(self, arguments: Arguments) -> list[str]:
        self.cut_links.clear()
        return ["ok"]

    def _drop_queued_across_cuts(self) -> list[str]:
        output: list[str] = []
        for node in sorted(self.queues, key=node_sort_key):
            kept: list[Message] = []
            for message in self.queues[node]:
                if self._link_cut(message.sender, message.recipient):
                    output.append(f"dropped (partitioned): {fmt_message(message)}")
                else:
                    kept.append(message)
            self.queues[node] = kept
        return output

    # -- client requests ---------------------------------------------------------------------

    def _propose(self, arguments: Arguments) -> list[str]:
        node, data = self._one_id(arguments, 2)
        raft = self._member(node).node
        return self._call(lambda: raft.propose([data.encode()]))

    def _propose_many(self, arguments: Arguments) -> list[str]:
        if len(arguments.positional) < 2:
            raise ScenarioError("usage: propose-many ID DATA...")
        node, *data = arguments.positional
        raft = self._member(node).node
        return self._call(lambda: raft.propose([item.encode() for item in data]))

    def _transfer_leadership(self, arguments: Arguments) -> list[str]:
        node, target = self._one_id(arguments, 2)
        raft = self._member(node).node
        return self._call(lambda: raft.transfer_leadership(NodeId(target)))

    def _read_index(self, arguments: Arguments) -> list[str]:
        node, request_id = self._one_id(arguments, 2)
        raft = self._member(node).node
        return self._call(lambda: raft.read_index(int(request_id)))

    def _membership(self, kind: MembershipChangeKind) -> Callable[[Arguments], list[str]]:
        def change(arguments: Arguments) -> list[str]:
            node, target = self._one_id(arguments, 2)
            raft = self._member(node).node
            return self._call(
                lambda: raft.change_membership(MembershipChange(kind, NodeId(target)))
            )

        return change

    def _compact(self, arguments: Arguments) -> list[str]:
        node, index_text = self._one_id(arguments, 2)
        member = self._member(node)
        raft = member.node
        index = LogIndex(int(index_text))
        compacted = raft.log.snapshot.metadata.index
        if index <= compacted:
            # The core ignores a snapshot that is not newer than its own; so does the disk.
            return [f"ignored: the log is already compacted through {compacted}"]
        term = raft.log.term_at(index)
        if term is None:
            raise ScenarioError(f"index {index} is not in the log of {node}")
        metadata = SnapshotMetadata(index, term, raft.log.configuration_at(index))
        data = self._encode_state_machine([item for item in member.applied if item[0] <= index])
        snapshot = Snapshot(metadata, data)
        try:
            raft.snapshot_taken(snapshot)
        except EXPECTED_ERRORS as error:
            return [fmt_error(error)]
        # The application stores its snapshot, then drops the log entries it covers.
        member.disk.snapshot = snapshot
        member.disk.entries = [e for e in member.disk.entries if e.index > index]
        return [f"snapshot {fmt_snapshot_metadata(metadata)} data={data.decode()}"]

    # -- observation -------------------------------------------------------------------------

    @staticmethod
    def _describe(member: Member) -> str:
        raft = member.node
        return (
            f"{raft.role.value} term={raft.term} leader={raft.leader_id or 'none'} "
            f"commit={raft.commit_index} applied={raft.applied_index} "
            f"last={raft.log.last_index()} {fmt_configuration(raft.configuration)}"
        )

    def _status(self, arguments: Arguments) -> list[str]:
        (node,) = self._one_id(arguments)
        member = self._member(node)
        raft = member.node
        output = [f"{node}: {self._describe(member)}"]
        if raft.role is Role.LEADER:
            if raft.leadership_transferee is not None:
                output.append(f"  transferring leadership to {raft.leadership_transferee}")
            for peer in sorted(raft.progress, key=node_sort_key):
                progress = raft.progress[peer]
                line = (
                    f"  {peer}: {progress.state.value} match={progress.match_index} "
                    f"next={progress.next_index} inflight={len(progress.inflight)}"
                )
                if progress.state is ProgressState.PROBE and progress.probe_sent:
                    line += " probe-sent"
                if progress.state is ProgressState.SNAPSHOT:
                    line += (
                        f" snapshot-index={progress.snapshot_index} "
                        f"snapshot-offset={progress.snapshot_offset}"
                    )
                output.append(line)
        return output

    def _log(self, arguments: Arguments) -> list[str]:
        (node,) = self._one_id(arguments)
        raft = self._member(node).node
        output: list[str] = []
        metadata = raft.log.snapshot.metadata
        if metadata.index > 0:
            output.append(f"snapshot {fmt_snapshot_metadata(metadata)}")
        for index in range(raft.log.first_index(), raft.log.last_index() + 1):
            output.append(fmt_entry(raft.log.entry_at(index)))
        return output or ["empty log"]

    def _applied(self, arguments: Arguments) -> list[str]:
        (node,) = self._one_id(arguments)
        member = self._member(node)
        items = ", ".join(f"{index}:{fmt_data(data)}" for index, data in member.applied)
        return [f"{node} applied: [{items}]"]

    def _raft_state(self, arguments: Arguments) -> list[str]:
        return [
            f"{node}: {self._describe(self.members[node])}"
            for node in sorted(self.members, key=node_sort_key)
        ]
