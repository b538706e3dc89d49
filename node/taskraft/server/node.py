"""One taskraft node: storage, the Raft driver, the peer transport and the client and HTTP ports.

`taskraft serve` is this class behind a command line. It owns the order in which a node comes
up and goes down:

- up: lock and recover the data directory; bootstrap it with the founding configuration
  (`initial_members`) if it is empty, or start it empty to wait for a leader to add it (`join`);
  restore the state machine from the newest snapshot; start the peer transport, the Raft driver,
  the client listener and the HTTP API.
- down (`stop`): a leader first hands leadership to the most caught-up voter, so that clients
  are redirected instead of waiting out an election; requests in flight are answered (within
  `shutdown_timeout_s`); then the client and HTTP ports close, the Raft driver finishes the batch
  it is carrying out, and the transport and the storage (which releases the data directory)
  close.

Where peers are: the configuration in the log carries each member's peer address (docs/raft.md),
so a restarted node, or one that joined later, finds its peers there; `_ConfiguredPeers` keeps
the transport's address book equal to the configuration in force. Where a leader serves
clients: its own advertised address on the leader, else the address the leader gave in its peer
handshake (the leader contacts every member, so every member has it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from taskraft.addresses import format_address, parse_address
from taskraft.errors import TaskraftError, Unavailable
from taskraft.peer import PeerTransport
from taskraft.peer.auth import cluster_secret_from_file_bytes
from taskraft.peer.codec import check_raft_options
from taskraft.queue import QueueStateMachine
from taskraft.raft import (
    Configuration,
    Message,
    NodeId,
    PersistedState,
    RaftNode,
    RaftOptions,
    Role,
    bootstrap_state,
)
from taskraft.server.authentication import TokenFileError, TokenStore
from taskraft.server.client_listener import ClientListener
from taskraft.server.http_api import HttpApi
from taskraft.server.metrics import NodeMetrics
from taskraft.server.replica import Replica, ReplicaSettings
from taskraft.storage import FileStorage, StorageWriter
from taskraft.tls import NodeTls, TlsConfigurationError, TlsFiles

logger = logging.getLogger(__name__)

# How often the TLS files are looked at for a change (a renewed certificate).
TLS_RELOAD_CHECK_INTERVAL_S = 1.0


class NodeConfigurationError(ValueError):
    """The node's settings contradict each other or its data directory; it cannot start."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    """Everything `taskraft serve` is told; addresses are `host:port`."""

    node_id: NodeId
    data_directory: Path
    client_address: str
    peer_address: str
    http_address: str
    # Founding members and their peer addresses, used only when the data directory is empty.
    initial_members: Mapping[NodeId, str] | None = None
    # Start with an empty data directory and wait to be added by the leader.
    join: bool = False
    # Addresses others use to reach this node; default: the listen address. In Kubernetes a node
    # listens on 0.0.0.0 and is reached by its stable DNS name.
    advertise_client_address: str | None = None
    advertise_peer_address: str | None = None
    advertise_http_address: str | None = None
    # Nodes of different clusters refuse each other's connections.
    cluster_id: str | None = None
    # The cluster's shared secret, which every peer connection must prove (both ways); None:
    # the peer port serves anyone who can reach it.
    cluster_secret_file: Path | None = None
    raft: RaftOptions = field(default_factory=RaftOptions)
    replica: ReplicaSettings = field(default_factory=ReplicaSettings)
    # A node whose applied index trails its commit index by more is not ready (/readyz).
    ready_lag_max_entries: int = 1000
    connections_max: int = 1000
    # A client must send its handshake this soon after connecting, or it is closed.
    client_handshake_timeout_s: float = 10.0
    long_polls_max: int = 10_000
    # Client requests in flight at once across all connections of one token name; 0: no
    # limit. Only with auth_token_file (without tokens there is no name to count by).
    requests_per_token_max: int = 0
    # A graceful stop waits this long for leadership to move and requests to finish.
    shutdown_timeout_s: float = 10.0
    # A one-line status at info level this often; 0 turns it off.
    status_log_interval_s: float = 60.0
    # Client tokens (`NAME ROLE TOKEN` lines, taskraft.server.authentication); None: no
    # authentication on the client port and the HTTP API.
    auth_token_file: Path | None = None
    # /metrics needs a token too (only with auth_token_file).
    metrics_require_token: bool = False
    # The certificate, key and trusted authorities of TLS on all three ports (taskraft.tls);
    # None: plain TCP.
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        if self.join == (self.initial_members is not None):
            raise NodeConfigurationError(
                "give either the founding members (--initial-members) or --join, not both or none"
            )
        if self.initial_members is not None and self.node_id not in self.initial_members:
            raise NodeConfigurationError(
                f"this node ({self.node_id}) is not among the initial members "
                f"{sorted(self.initial_members)}"
            )
        listening = (self.client_address, self.peer_address, self.http_address)
        for address in listening:
            parse_address(address, allow_port_zero=True)
        advertised: list[str | None] = [
            self.advertise_client_address,
            self.advertise_peer_address,
            self.advertise_http_address,
            *(self.initial_members or {}).values(),
        ]
        for advertised_address in advertised:
            if advertised_address is not None:
                parse_address(advertised_address)
        check_raft_options(self.raft)


class Node:
    """A running taskraft node; `await start()`, then `await stop()` (or `wait_stopped()`)."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.started_monotonic = time.monotonic()
        self.storage: FileStorage | None = None
        self.replica: Replica | None = None
        self.transport: PeerTransport | None = None
        self.listener: ClientListener | None = None
        self.http: HttpApi | None = None
        # The client tokens of `auth_token_file`; None when the node requires none.
        self.tokens: TokenStore | None = None
        # The live TLS contexts; None for plain TCP.
        self.tls: NodeTls | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._replica_task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self.metrics = NodeMetrics(self)
        # When a message from each peer last arrived (monotonic seconds): status and metrics.
        self.last_contact: dict[NodeId, float] = {}
        # Identifies the settings this node runs with, so that a change shows in /v1/status.
        self.configuration_hash = hashlib.sha256(repr(settings).encode()).hexdigest()[:16]
        self._last_leader: NodeId | None = None
        self._last_term = 0
        # What a recovery from disk found, for the log and for /v1/status.
        self.recovered_entries = 0

    # -- advertised addresses ----------------------------------------------------------------

    @property
    def advertised_client_address(self) -> str:
        return self.settings.advertise_client_address or self._bound_address(self.listener)

    @property
    def advertised_http_address(self) -> str:
        return self.settings.advertise_http_address or self._bound_address(self.http)

    @property
    def advertised_peer_address(self) -> str:
        if self.settings.advertise_peer_address is not None:
            return self.settings.advertise_peer_address
        if self.transport is None:
            return self.settings.peer_address
        return format_address(*self.transport.listen_address)

    @staticmethod
    def _bound_address(server: ClientListener | HttpApi | None) -> str:
        if server is None:
            return "(not listening yet)"
        return format_address(*server.address)

    def client_address_of(self, node_id: str | None) -> str | None:
        """The client address of `node_id` as this node knows it, or None."""
        if node_id is None:
            return None
        if node_id == self.settings.node_id:
            return self.advertised_client_address
        handshake = None if self.transport is None else self.transport.handshake_of(NodeId(node_id))
        return None if handshake is None else handshake.client_address

    def http_address_of(self, node_id: str | None) -> str | None:
        if node_id is None:
            return None
        if node_id == self.settings.node_id:
            return self.advertised_http_address
        handshake = None if self.transport is None else self.transport.handshake_of(NodeId(node_id))
        return None if handshake is None else handshake.http_address

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        # Listen first, so that the advertised addresses (which may use port 0 in tests) are
        # known before the transport's handshake is built.
        client_host, client_port = parse_address(settings.client_address, allow_port_zero=True)
        http_host, http_port = parse_address(settings.http_address, allow_port_zero=True)
        peer_host, peer_port = parse_address(settings.peer_address, allow_port_zero=True)
        self.tokens = _load_tokens(settings)
        cluster_secret = _load_cluster_secret(settings)
        self.tls = _load_tls(settings)
        tls = self.tls
        try:
            persisted = await asyncio.to_thread(self._open_storage)
            raft = RaftNode(
                node_id=settings.node_id,
                persisted=persisted,
                options=settings.raft,
                random_source=random.Random(),
            )
            state_machine = _restore_state_machine(persisted)
            self.listener = ClientListener(
                self._current_replica,
                host=client_host,
                port=client_port,
                node_id=settings.node_id,
                leader_address_of=self.client_address_of,
                connections_max=settings.connections_max,
                handshake_timeout_s=settings.client_handshake_timeout_s,
                long_polls_max=settings.long_polls_max,
                requests_per_token_max=settings.requests_per_token_max,
                tokens=self.tokens,
                tls=None if tls is None else lambda: tls.client_port,
            )
            await self.listener.start()
            self.listener.on_request_done = self.metrics.request_done
            self.http = HttpApi(
                self,
                host=http_host,
                port=http_port,
                metrics=self.metrics,
                tls=None if tls is None else lambda: tls.client_port,
            )
            await self.http.start()
            peers = _ConfiguredPeers(raft, self.metrics)
            self.transport = PeerTransport(
                settings.node_id,
                peer_host,
                peer_port,
                {},
                self._deliver,
                cluster_id=settings.cluster_id,
                cluster_secret=cluster_secret,
                admit_sender=None if cluster_secret is None else peers.admits,
                advertised_peer_address=settings.advertise_peer_address
                or (None if peer_port == 0 else settings.peer_address),
                client_address=self.advertised_client_address,
                http_address=self.advertised_http_address,
                tls_server=None if tls is None else lambda: tls.peer_server,
                tls_client=None if tls is None else lambda: tls.peer_client,
            )
            peers.transport = self.transport
            peers.refresh()
            await self.transport.start()
            assert self.storage is not None
            self.replica = Replica(
                raft=raft,
                storage=StorageWriter(self.storage),
                state_machine=state_machine,
                peers=peers,
                settings=settings.replica,
            )
            self.replica.on_persisted = self.metrics.persisted
            self.replica.on_snapshot_written = self.metrics.snapshot_written
            self.replica.add_progress_listener(self._observe_progress)
            self._replica_task = asyncio.create_task(self.replica.run(), name="taskraft-replica")
            self._replica_task.add_done_callback(self._replica_ended)
            if tls is not None:
                self._tls_task = asyncio.create_task(
                    self._reload_tls_forever(tls), name="taskraft-tls-reload"
                )
            if settings.status_log_interval_s > 0:
                self._status_task = asyncio.create_task(
                    self._log_status_forever(), name="taskraft-status-log"
                )
        except BaseException:
            await self.stop()
            raise
        for name, listen, advertised in (
            ("client", settings.client_address, settings.advertise_client_address),
            ("peer", settings.peer_address, settings.advertise_peer_address),
            ("http", settings.http_address, settings.advertise_http_address),
        ):
            if advertised is None and parse_address(listen, allow_port_zero=True)[0] in {
                "0.0.0.0",
                "::",
            }:
                logger.warning(
                    "listening for %s on %s without --advertise-%s-address: other nodes and "
                    "clients will be told an address that does not reach this node",
                    name,
                    listen,
                    name,
                )
        loop_kind = (
            "uvloop"
            if type(asyncio.get_running_loop()).__module__.startswith("uvloop")
            else "asyncio"
        )
        logger.info("running on the %s event loop", loop_kind)
        logger.info(
            "node %s serving clients on %s, peers on %s, HTTP on %s (%s)",
            settings.node_id,
            self.advertised_client_address,
            format_address(*self.transport.listen_address),
            self.advertised_http_address,
            "joining" if settings.join and persisted.snapshot is None else "member",
        )

    def _open_storage(self) -> PersistedState:
        settings = self.settings
        self.storage = FileStorage.open(settings.data_directory)
        persisted = self.storage.load()
        fresh = persisted.snapshot is None and not persisted.entries
        if fresh and settings.initial_members is not None:
            founders = Configuration(
                voters=frozenset(settings.initial_members),
                addresses=tuple(settings.initial_members.items()),
            )
            bootstrap = bootstrap_state(founders)
            self.storage.persist(snapshot=bootstrap.snapshot, entries=(), hard_state=None)
            persisted = self.storage.load()
            logger.info("bootstrapped a new cluster with members %s", sorted(founders.voters))
        elif not fresh and settings.initial_members is not None:
            logger.info("the data directory holds a cluster already; --initial-members is ignored")
        self.recovered_entries = len(persisted.entries)
        return persisted

    def _current_replica(self) -> Replica:
        if self.replica is None:
            raise Unavailable("this node is starting")
        return self.replica

    def _deliver(self, message: Message) -> None:
        self.last_contact[message.sender] = time.monotonic()
        self.metrics.message_received(message)
        if self.replica is not None:
            self.replica.receive(message)

    def _observe_progress(self) -> None:
        """After each Ready batch: count leader changes and the elections this node started."""
        replica = self.replica
        if replica is None:
            return
        raft = replica.raft
        if raft.leader_id != self._last_leader:
            if raft.leader_id is not None:
                self.metrics.leader_changes.inc()
                logger.info("leader is now %s (term %d)", raft.leader_id, raft.term)
            self._last_leader = raft.leader_id
        if raft.term > self._last_term:
            if raft.vote == raft.id and raft.role in (Role.CANDIDATE, Role.LEADER):
                self.metrics.elections.inc()
            self._last_term = int(raft.term)

    def _replica_ended(self, task: asyncio.Task[None]) -> None:
        if not self._stopping:
            error = None if task.cancelled() else task.exception()
            logger.critical("the Raft driver stopped: %r; the node stops", error)
        self._stopped.set()

    @property
    def failure(self) -> BaseException | None:
        """Why the Raft driver ended on its own (a storage failure), if it did."""
        return None if self.replica is None else self.replica.failure

    async def wait_stopped(self) -> None:
        """Return when the Raft driver ended: `stop()` was called, or the node failed."""
        await self._stopped.wait()

    def log_context(self) -> dict[str, object]:
        """Node id, term and role, for every log line (see taskraft.server.logs)."""
        context: dict[str, object] = {"node": self.settings.node_id}
        if self.replica is not None:
            context["term"] = int(self.replica.raft.term)
            context["role"] = self.replica.raft.role.value
        return context

    def status_line(self) -> str:
        replica = self.replica
        if replica is None:
            return "starting"
        raft = replica.raft
        configuration = raft.configuration
        return (
            f"status: {raft.role.value} in term {raft.term}, leader {raft.leader_id}, "
            f"commit {raft.commit_index}, applied {raft.applied_index}, "
            f"last log {raft.log.last_index()}, snapshot {raft.log.snapshot.metadata.index}, "
            f"voters {sorted(configuration.voters)}, learners {sorted(configuration.learners)}, "
            f"client connections {0 if self.listener is None else self.listener.connection_count}"
        )

    async def _reload_tls_forever(self, tls: NodeTls) -> None:
        while True:
            await asyncio.sleep(TLS_RELOAD_CHECK_INTERVAL_S)
            try:
                # On the loop's thread: the contexts it changes are in use here, and OpenSSL's
                # contexts are not to be changed while another thread uses them. A look at
                # unchanged files takes tens of microseconds, a reload a few milliseconds, once
                # per renewal (bench/tls_reload.py).
                tls.reload_if_changed()
            except Exception:
                # Never the end of reloading: a certificate that can no longer be renewed
                # would stop the node when it expires.
                tls.reload_failures += 1
                logger.exception("checking the TLS files failed; trying again")

    async def _log_status_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_log_interval_s)
            logger.info("%s", self.status_line())

    async def stop(self, *, graceful: bool = False) -> None:
        """Stop serving and close everything, in the reverse order of `start`.

        `graceful`: a leader first hands leadership over and requests in flight are answered,
        within `shutdown_timeout_s` in all.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        if graceful:
            await self._hand_over()
        self._stopping = True
        for task in (self._status_task, self._tls_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.listener is not None:
            await self.listener.close()
        if self.http is not None:
            await self.http.close()
        if self.replica is not None and self._replica_task is not None:
            self.replica.stop()
            await asyncio.gather(self._replica_task, return_exceptions=True)
        if self.transport is not None:
            await self.transport.close()
        if self.replica is not None:
            await self.replica.storage.close()
        elif self.storage is not None:
            self.storage.close()
        self._stopped.set()

    async def _hand_over(self) -> None:
        replica = self.replica
        if replica is None or replica.stopped:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout_s
        if replica.raft.role is Role.LEADER and len(replica.raft.configuration.voters) > 1:
            try:
                new_leader = await replica.transfer_leadership(
                    timeout_s=max(0.0, deadline - loop.time())
                )
                logger.info("handed leadership to %s before stopping", new_leader)
            except TaskraftError as error:
                logger.warning("could not hand leadership over before stopping: %s", error)
        if self.listener is not None:
            finished = await self.listener.finish_requests(max(0.0, deadline - loop.time()))
            if not finished:
                logger.warning("stopping with client requests still in flight")


class _ConfiguredPeers:
    """The replica's way out to its peers, keeping the transport's addresses on the configuration.

    Before each message it compares the configuration in force with the one it last gave the
    transport (the core returns the same object until it changes, so this costs one identity
    check); on a change it hands the transport every member's address from the configuration.
    """

    def __init__(self, raft: RaftNode, metrics: NodeMetrics) -> None:
        self._raft = raft
        self._metrics = metrics
        self.transport: PeerTransport | None = None
        self._configuration: Configuration | None = None

    def refresh(self) -> None:
        configuration = self._raft.configuration
        if configuration is self._configuration or self.transport is None:
            return
        self._configuration = configuration
        addresses = {}
        for member, address in configuration.addresses:
            try:
                addresses[member] = parse_address(address)
            except ValueError:
                logger.error("member %s has an address that is not host:port: %r", member, address)
        self.transport.set_peers(addresses)

    def admits(self, sender: NodeId) -> bool:
        """Whether a peer that proved the cluster secret may connect: a member of the
        configuration in force, or anyone while this node cannot judge.

        A node with no configuration yet (a learner being added) accepts any authenticated peer:
        its leader is in no configuration it knows. So does a follower that has heard no leader
        for an election timeout: it may lag behind a change that added the node now leading
        (or campaigning), and refusing it would keep this node from ever catching up.
        """
        raft = self._raft
        configuration = raft.configuration
        if not configuration.members or sender in configuration.members:
            return True
        if raft.role is Role.LEADER:
            return False
        return (
            raft.leader_id is None or raft.election_elapsed >= raft.options.election_timeout_ticks
        )

    def send(self, message: Message) -> None:
        self.refresh()
        assert self.transport is not None
        self._metrics.message_sent(message)
        self.transport.send(message)


def _load_tokens(settings: NodeSettings) -> TokenStore | None:
    """The client tokens the node requires, or None (with a warning) when it requires none."""
    if settings.auth_token_file is None:
        logger.warning(
            "no --auth-token-file: the client port and the HTTP API serve anyone who can reach "
            "them; give one outside a trusted network"
        )
        if settings.requests_per_token_max:
            logger.warning(
                "ignoring --requests-per-token-max %d: without --auth-token-file there is no "
                "token to count requests by",
                settings.requests_per_token_max,
            )
        return None
    try:
        tokens = TokenStore.load(settings.auth_token_file)
    except TokenFileError as error:
        raise NodeConfigurationError(str(error)) from None
    logger.info("clients authenticate with the %d tokens of %s", tokens.token_count, tokens.path)
    return tokens


def _load_cluster_secret(settings: NodeSettings) -> bytes | None:
    """The cluster secret peers must prove, or None (with a warning) when there is none."""
    path = settings.cluster_secret_file
    if path is None:
        logger.warning(
            "no --cluster-secret-file: the peer port accepts Raft messages from anyone who can "
            "reach it; give one outside a trusted network"
        )
        return None
    try:
        secret = cluster_secret_from_file_bytes(path.read_bytes())
    except OSError as error:
        raise NodeConfigurationError(
            f"cannot read the cluster secret file {path}: {error.strerror}"
        ) from None
    except ValueError as error:
        raise NodeConfigurationError(f"the cluster secret file {path}: {error}") from None
    logger.info("peers authenticate with the cluster secret of %s", path)
    return secret


def _load_tls(settings: NodeSettings) -> NodeTls | None:
    """The node's TLS contexts, or None (with a warning) when it serves plain TCP."""
    if settings.tls is None:
        logger.warning(
            "no --tls-cert: the client, peer and HTTP ports are plain TCP, readable by anyone "
            "on the network path; give a certificate outside a trusted network"
        )
        return None
    try:
        tls = NodeTls(settings.tls)
    except TlsConfigurationError as error:
        raise NodeConfigurationError(str(error)) from None
    logger.info("TLS on every port with the certificate of %s", settings.tls.certificate)
    return tls


def _restore_state_machine(persisted: PersistedState) -> QueueStateMachine:
    snapshot = persisted.snapshot
    if snapshot is None or not snapshot.data:
        return QueueStateMachine()
    return QueueStateMachine.restore([snapshot.data])


__all__ = ["Node", "NodeConfigurationError", "NodeSettings"]
