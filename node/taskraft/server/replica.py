"""The Raft driver of a node: the one task that feeds the core and carries out its Ready batches.

The Raft core must see nothing between handing out a Ready and hearing `advance`, but a Ready
takes an fsync to carry out, and the node must keep receiving meanwhile. So every input (peer
messages, ticks, proposals, reads, snapshots to adopt) lands in a bounded inbox, and a single loop
task drains the inbox into the core, then carries out the Ready batches that result:

1. send `messages` (the leader's replication) at once,
2. persist through the storage writer thread (one fsync for the whole batch),
3. send `messages_after_persist` (votes and acknowledgements) only then,
4. apply committed entries to the queue state machine and answer the clients waiting for them,
5. `advance`.

Whatever arrives during step 2 waits in the inbox and goes into the next batch: that is the group
commit. A client hears "ok" only in step 4, after a majority (counting this node only once its
own fsync returned) has the entry on disk.

Others learn that something may have changed through progress listeners: each is called on the
loop once per Ready batch (entries applied, role or leader changed) and once when the replica
stops, so that a client waiting for a task is woken by the batch that made one ready instead of
polling.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from taskraft.errors import InvalidArgument, NotLeader, Overloaded, TaskraftError, Unavailable
from taskraft.queue import (
    Command,
    CommandResult,
    QueueStateMachine,
    StateSnapshot,
    Tick,
    decode_entry,
    encode_entry,
)
from taskraft.raft import (
    Entry,
    EntryKind,
    LogIndex,
    MembershipChange,
    MembershipChangeError,
    Message,
    NodeId,
    NotLeaderError,
    ProposalDroppedError,
    RaftNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    Term,
)
from taskraft.storage import StorageWriter

logger = logging.getLogger(__name__)


class PeerSender(Protocol):
    """Where the replica sends Raft messages; delivery is best effort (Raft tolerates loss)."""

    def send(self, message: Message) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaSettings:
    # The core's logical clock: with election_timeout_ticks=10, followers wait 1-2 s.
    tick_interval_ms: int = 100
    # Client commands waiting for their entry to commit; beyond, clients get "overloaded"
    # instead of the node growing a queue it cannot drain.
    pending_proposals_max: int = 10_000
    # Commands proposed to the core in one batch (one log append, one fsync for all of them).
    proposal_batch_max: int = 1_000
    # Peer messages waiting for the loop; beyond, messages are dropped (Raft retries them).
    inbox_messages_max: int = 10_000
    # Linearizable reads waiting for their read index; beyond, "overloaded".
    pending_reads_max: int = 4_096
    # Take a snapshot once this many entries were applied since the last one: bounds the log a
    # restart replays and the memory the core holds.
    snapshot_interval_entries: int = 100_000
    # Bytes per snapshot chunk handed to the storage.
    snapshot_chunk_size_max_bytes: int = 1024 * 1024


# Membership changes are one at a time in the core; a few may wait for the loop.
MEMBERSHIP_CHANGES_WAITING_MAX = 16


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _PendingProposal:
    command: Command
    future: asyncio.Future[CommandResult]


class Replica:
    def __init__(
        self,
        *,
        raft: RaftNode,
        storage: StorageWriter,
        state_machine: QueueStateMachine,
        peers: PeerSender,
        settings: ReplicaSettings | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.raft = raft
        self.storage = storage
        self.state_machine = state_machine
        self.peers = peers
        self.settings = settings or ReplicaSettings()
        self._clock_ms = clock_ms
        self._wake = asyncio.Event()
        self._stopping = False
        self._pending_ticks = 0
        self._inbox: deque[Message] = deque()
        self._proposals: deque[_PendingProposal] = deque()
        # Futures of proposals in the log, by index, with the term they were proposed in.
        self._waiting: dict[int, tuple[Term, asyncio.Future[CommandResult]]] = {}
        # Read ids must never repeat across restarts (see RaftNode.read_index): a random start,
        # below 2**62 so that peers (which refuse 2**63 and above) accept every id.
        self._read_ids = itertools.count(secrets.randbits(46) << 16)
        self._reads_to_start: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._reads_started: dict[int, asyncio.Future[None]] = {}
        self._reads_confirmed: list[tuple[int, asyncio.Future[None]]] = []
        self._membership_changes: deque[tuple[MembershipChange, asyncio.Future[CommandResult]]] = (
            deque()
        )
        self._snapshots_to_adopt: deque[Snapshot] = deque()
        # Calls into the core made on behalf of callers, run by the loop between Ready batches.
        self._core_actions: deque[Callable[[], None]] = deque()
        self._snapshot_wanted = False
        self._snapshot_in_progress = False
        self._tick_in_flight = False
        self._background: set[asyncio.Task[None]] = set()
        self._progress_listeners: list[Callable[[], None]] = []
        self.messages_dropped = 0
        self.failure: BaseException | None = None
        # Metrics hooks: a batch persisted (seconds, its entries), a snapshot written (seconds,
        # bytes). Called on the loop; they must be quick.
        self.on_persisted: Callable[[float, Sequence[Entry]], None] | None = None
        self.on_snapshot_written: Callable[[float, int], None] | None = None

    # -- inputs ------------------------------------------------------------------------------

    def receive(self, message: Message) -> None:
        """A message from a peer (called by the transport on the event loop)."""
        if len(self._inbox) >= self.settings.inbox_messages_max:
            self.messages_dropped += 1
            return
        self._inbox.append(message)
        self._wake.set()

    async def submit(self, command: Command) -> CommandResult:
        """Replicate `command` and return its result once it is committed and applied."""
        self._check_running()
        if self.raft.role is not Role.LEADER:
            raise NotLeader(leader_id=self.raft.leader_id)
        pending = len(self._proposals) + len(self._waiting)
        if pending >= self.settings.pending_proposals_max:
            raise Overloaded(f"{pending} commands are waiting to commit; try again shortly")
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._proposals.append(_PendingProposal(command, future))
        self._wake.set()
        return await future

    async def change_membership(self, change: MembershipChange) -> None:
        """Propose a single-server membership change; return once its entry is committed.

        Raises NotLeader, InvalidArgument for a change that does not apply to the membership
        (adding a member twice, promoting a voter), Overloaded while another change is in flight
        or the leader has not committed in its term yet, and Unavailable when the entry was
        replaced by a new leader's log.
        """
        self._check_running()
        if self.raft.role is not Role.LEADER:
            raise NotLeader(leader_id=self.raft.leader_id)
        if len(self._membership_changes) >= MEMBERSHIP_CHANGES_WAITING_MAX:
            raise Overloaded("membership changes are waiting already; try again shortly")
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._membership_changes.append((change, future))
        self._wake.set()
        await future

    async def linearizable_barrier(self) -> None:
        """Return once this node has applied everything committed before the call (ReadIndex)."""
        self._check_running()
        waiting = len(self._reads_to_start) + len(self._reads_started)
        if waiting >= self.settings.pending_reads_max:
            raise Overloaded(f"{waiting} reads are waiting; try again shortly")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reads_to_start.append((next(self._read_ids), future))
        self._wake.set()
        await future

    async def transfer_leadership(
        self, target: NodeId | None = None, *, timeout_s: float = 10.0
    ) -> NodeId:
        """Hand leadership to `target` (default: the most caught-up other voter); the new leader.

        Raises NotLeader, InvalidArgument when the target cannot lead (not a voter, or no other
        voter exists), and Unavailable when leadership has not moved within `timeout_s` (the
        core then gives up the transfer by itself after an election timeout).
        """
        self._check_running()
        raft = self.raft
        if raft.role is not Role.LEADER:
            raise NotLeader(leader_id=raft.leader_id)
        chosen = target if target is not None else self._most_caught_up_voter()
        if chosen is None:
            raise InvalidArgument("no other voter to hand leadership to")
        if chosen == raft.id:
            return chosen
        if chosen not in raft.configuration.voters:
            raise InvalidArgument(f"{chosen} is not a voter and cannot lead")
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def start() -> None:
            try:
                self.raft.transfer_leadership(chosen)
            except NotLeaderError as error:
                _settle(outcome, NotLeader(leader_id=error.leader_id))
            except MembershipChangeError as error:
                _settle(outcome, InvalidArgument(str(error)))
            else:
                _settle(outcome, None)

        self._core_actions.append(start)
        self._wake.set()
        await outcome

        def moved() -> bool:
            return self.raft.role is not Role.LEADER and self.raft.leader_id is not None

        def abandoned() -> bool:
            # The core gives a transfer up after an election timeout without a new leader.
            return self.raft.role is Role.LEADER and self.raft.leadership_transferee is None

        await self.wait_for(lambda: moved() or abandoned(), timeout_s)
        if not moved():
            raise Unavailable(f"leadership did not move to {chosen} (within {timeout_s:g} s)")
        leader = self.raft.leader_id
        assert leader is not None
        return leader

    def _most_caught_up_voter(self) -> NodeId | None:
        raft = self.raft
        others = [voter for voter in raft.configuration.voters if voter != raft.id]
        if not others:
            return None
        return max(others, key=lambda voter: (raft.progress[voter].match_index, voter))

    async def take_snapshot(self, *, timeout_s: float = 60.0) -> SnapshotMetadata:
        """Snapshot everything applied so far now (or return the snapshot that already covers it).

        Returns the metadata of a snapshot at or past the applied index at the call; raises
        Unavailable when none is written within `timeout_s`.
        """
        self._check_running()
        wanted = self.raft.applied_index
        if self.raft.log.snapshot.metadata.index < wanted:
            self._snapshot_wanted = True
            self._wake.set()
            taken = await self.wait_for(
                lambda: self.raft.log.snapshot.metadata.index >= wanted, timeout_s
            )
            if not taken:
                raise Unavailable(f"no snapshot was written within {timeout_s:g} s")
        return self.raft.log.snapshot.metadata

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `condition()` holds after some Ready batch; False at the timeout."""
        if condition():
            return True
        satisfied = asyncio.Event()

        def check() -> None:
            if condition() or self.stopped:
                satisfied.set()

        self.add_progress_listener(check)
        try:
            async with asyncio.timeout(timeout_s):
                await satisfied.wait()
        except TimeoutError:
            return False
        finally:
            self.remove_progress_listener(check)
        return condition()

    # -- progress listeners ------------------------------------------------------------------

    def add_progress_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` on the loop after each Ready batch and when the replica stops.

        A batch may have applied entries (the state machine changed, or was replaced by a
        snapshot: read it through the replica) or changed the role or leader. The call must be
        quick and must not block: it runs inside the loop that drives the core.
        """
        self._progress_listeners.append(listener)

    def remove_progress_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._progress_listeners:
            self._progress_listeners.remove(listener)

    @property
    def stopped(self) -> bool:
        """True once `stop` was called or the loop failed: the replica serves nothing more."""
        return self._stopping or self.failure is not None

    def _notify_progress(self) -> None:
        for listener in tuple(self._progress_listeners):
            try:
                listener()
            except Exception:
                # A listener's bug must not stop the node.
                logger.exception("a progress listener of the replica failed")

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the core until `stop`; a storage failure ends it (the node must stop)."""
        ticker = asyncio.create_task(self._tick_forever(), name="taskraft-ticker")
        try:
            await self._handle_readies()
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                self._feed_core()
                await self._handle_readies()
                self._maybe_start_snapshot()
        except BaseException as error:
            self.failure = error
            raise
        finally:
            ticker.cancel()
            self._notify_progress()
            await asyncio.gather(ticker, *self._background, return_exceptions=True)
            self._fail_everything(Unavailable("this node is stopping"))

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _tick_forever(self) -> None:
        interval = self.settings.tick_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._pending_ticks += 1
            self._wake.set()

    def _feed_core(self) -> None:
        raft = self.raft
        # Messages before ticks: after a slow fsync a follower has both queued, and the leader's
        # heartbeat that arrived meanwhile must count before the time that passed, or the
        # follower would call an election against a live leader.
        while self._inbox:
            raft.step(self._inbox.popleft())
        for _ in range(self._pending_ticks):
            raft.tick()
        self._pending_ticks = 0
        while self._snapshots_to_adopt:
            self._adopt_snapshot(self._snapshots_to_adopt.popleft())
        while self._core_actions:
            self._core_actions.popleft()()
        self._propose_batch()
        self._propose_membership_changes()
        self._start_reads()
        self._maybe_propose_tick()

    def _propose_batch(self) -> None:
        while self._proposals:
            batch = [
                self._proposals.popleft()
                for _ in range(min(len(self._proposals), self.settings.proposal_batch_max))
            ]
            now_ms = max(self._clock_ms(), self.state_machine.clock_ms)
            try:
                data = [encode_entry(pending.command, now_ms=now_ms) for pending in batch]
                receipt = self.raft.propose(data)
            except NotLeaderError as error:
                self._fail(batch, NotLeader(leader_id=error.leader_id))
                continue
            except ProposalDroppedError as error:
                self._fail(batch, Overloaded(str(error)))
                continue
            except TaskraftError as error:
                self._fail(batch, error)
                continue
            for offset, pending in enumerate(batch):
                self._waiting[receipt.first_index + offset] = (receipt.term, pending.future)

    def _propose_membership_changes(self) -> None:
        while self._membership_changes:
            change, future = self._membership_changes.popleft()
            try:
                receipt = self.raft.change_membership(change)
            except NotLeaderError as error:
                _settle(future, NotLeader(leader_id=error.leader_id))
            except MembershipChangeError as error:
                _settle(future, InvalidArgument(str(error)))
            except ProposalDroppedError as error:
                _settle(future, Overloaded(str(error)))
            else:
                self._waiting[receipt.first_index] = (receipt.term, future)

    def _maybe_propose_tick(self) -> None:
        """Leases and delays expire on log time: a leader proposes a Tick when one is due."""
        if self.raft.role is not Role.LEADER or self._tick_in_flight:
            return
        deadline = self.state_machine.next_deadline_ms()
        now_ms = max(self._clock_ms(), self.state_machine.clock_ms)
        if deadline is None or deadline > now_ms:
            return
        try:
            receipt = self.raft.propose([encode_entry(Tick(), now_ms=now_ms)])
        except (NotLeaderError, ProposalDroppedError):
            return
        self._tick_in_flight = True
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        future.add_done_callback(self._tick_done)
        self._waiting[receipt.first_index] = (receipt.term, future)

    def _tick_done(self, future: asyncio.Future[CommandResult]) -> None:
        self._tick_in_flight = False
        if not future.cancelled():
            future.exception()  # a Tick that lost its entry is simply proposed again

    def _start_reads(self) -> None:
        while self._reads_to_start:
            request_id, future = self._reads_to_start.popleft()
            try:
                self.raft.read_index(request_id)
            except NotLeaderError as error:
                _settle(future, NotLeader(leader_id=error.leader_id))
                continue
            except ProposalDroppedError as error:
                _settle(future, Overloaded(str(error)))
                continue
            self._reads_started[request_id] = future

    async def _handle_readies(self) -> None:
        while self.raft.has_ready():
            ready = self.raft.ready()
            for message in ready.messages:
                self.peers.send(message)
            if ready.needs_persist():
                started = time.perf_counter()
                await self.storage.persist(
                    snapshot=ready.snapshot, entries=ready.entries, hard_state=ready.hard_state
                )
                if self.on_persisted is not None:
                    self.on_persisted(time.perf_counter() - started, ready.entries)
            for message in ready.messages_after_persist:
                self.peers.send(message)
            self._apply(ready)
            self.raft.advance(ready)
            self._release_reads()
            self._notify_progress()

    def _apply(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.state_machine = QueueStateMachine.restore([ready.snapshot.data])
        for read_state in ready.read_states:
            future = self._reads_started.pop(read_state.request_id, None)
            if future is not None:
                self._reads_confirmed.append((read_state.index, future))
        for entry in ready.committed_entries:
            waiting = self._waiting.pop(entry.index, None)
            if entry.kind is EntryKind.CONFIGURATION and waiting is not None:
                if waiting[0] == entry.term:
                    _settle(waiting[1], None)
                else:
                    _settle(waiting[1], Unavailable("a new leader replaced this change; retry it"))
                continue
            if entry.kind is not EntryKind.COMMAND:
                if waiting is not None:
                    _settle(waiting[1], Unavailable("a new leader replaced this command"))
                continue
            outcome: CommandResult | TaskraftError
            try:
                stamped = decode_entry(entry.data)
                outcome = self.state_machine.apply(
                    stamped.command, now_ms=stamped.now_ms, index=entry.index
                )
            except TaskraftError as error:
                outcome = error
            if waiting is None:
                continue
            proposed_term, proposal = waiting
            if proposed_term != entry.term:
                _settle(proposal, Unavailable("a new leader replaced this command; retry it"))
            else:
                _settle(proposal, outcome)

    def _release_reads(self) -> None:
        applied = self.raft.applied_index
        still_waiting = []
        for index, future in self._reads_confirmed:
            if index <= applied:
                _settle(future, None)
            else:
                still_waiting.append((index, future))
        self._reads_confirmed = still_waiting

    # -- snapshots ---------------------------------------------------------------------------

    def _maybe_start_snapshot(self) -> None:
        raft = self.raft
        applied = raft.applied_index
        since = applied - raft.log.snapshot.metadata.index
        if self._snapshot_in_progress or since == 0:
            return
        if since < self.settings.snapshot_interval_entries and not self._snapshot_wanted:
            return
        self._snapshot_wanted = False
        term = raft.log.term_at(applied)
        assert term is not None
        metadata = SnapshotMetadata(
            LogIndex(applied), term, raft.log.configuration_at(LogIndex(applied))
        )
        # A consistent copy, cheap to take on the loop; encoding happens on the snapshot thread.
        copy = self.state_machine.snapshot_copy()
        self._snapshot_in_progress = True
        task = asyncio.create_task(self._write_snapshot(metadata, copy))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_snapshot(self, metadata: SnapshotMetadata, copy: StateSnapshot) -> None:
        chunk_size = self.settings.snapshot_chunk_size_max_bytes
        chunks: list[bytes] = []

        def encoded() -> list[bytes]:
            # The core keeps the snapshot's bytes to send to followers (docs/raft.md).
            chunks.extend(copy.chunks(chunk_size))
            return chunks

        started = time.perf_counter()
        try:
            await self.storage.write_snapshot(metadata, _LazyChunks(encoded))
            data = b"".join(chunks)
            if self.on_snapshot_written is not None:
                self.on_snapshot_written(time.perf_counter() - started, len(data))
            self._snapshots_to_adopt.append(Snapshot(metadata, data))
            self._wake.set()
        finally:
            self._snapshot_in_progress = False

    def _adopt_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.metadata.index > self.raft.log.snapshot.metadata.index:
            self.raft.snapshot_taken(snapshot)
            self._notify_progress()

    # -- plumbing ----------------------------------------------------------------------------

    def _fail(self, batch: list[_PendingProposal], error: TaskraftError) -> None:
        for pending in batch:
            _settle(pending.future, error)

    def _fail_everything(self, error: TaskraftError) -> None:
        self._fail(list(self._proposals), error)
        self._proposals.clear()
        for _term, future in self._waiting.values():
            _settle(future, error)
        self._waiting.clear()
        for _change, change_future in self._membership_changes:
            _settle(change_future, error)
        self._membership_changes.clear()
        reads = [*self._reads_to_start, *self._reads_started.items(), *self._reads_confirmed]
        for _position, read in reads:
            _settle(read, error)
        self._reads_to_start.clear()
        self._reads_started.clear()
        self._reads_confirmed.clear()

    def _check_running(self) -> None:
        if self._stopping or self.failure is not None:
            raise Unavailable("this node is stopping")


class _LazyChunks:
    """Chunks produced on first iteration, i.e. on the storage's snapshot thread."""

    def __init__(self, produce: Callable[[], list[bytes]]) -> None:
        self._produce = produce

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._produce())


def _settle(future: asyncio.Future[Any], outcome: object) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
