"""Carries Raft messages between nodes over TCP: the thin asyncio shell around the peer codec.

Each node opens one connection to each peer it sends to and accepts one from each peer that
sends to it; a connection carries messages one way, so neither side ever waits for the other to
answer on it (but for the one answer of the authentication exchange, with a secret). Sending
never waits for the network: `send` encodes the message and puts the frame on the peer's
bounded queue, and one writer task per peer connects, writes the handshake and then drains the
queue in batches. Raft tolerates lost messages and resends what still matters,
so every bound here drops rather than waits or grows: a full queue drops the new message, a
failed connection attempt drops what was queued, and each drop is counted for metrics.

A peer that is down is retried with exponential backoff and full jitter (`ReconnectBackoff`).
Incoming connections are bounded in number, must present a valid handshake within a timeout,
and are closed with a logged error at the first byte that breaks the peer protocol; every other
connection keeps being served.

With a cluster secret, every connection runs the authentication exchange of `taskraft.peer.auth`
after its handshake, within the handshake timeout: the connecting side sends a challenge, waits
for the accepting side's nonce and proof, checks it and sends its own proof; the accepting side
reads no message before it has checked that proof and, when `admit_sender` is given, that the
sender may connect (a member of its configuration). A connection that fails is closed and
counted by reason (`refusals`), and logged at most once per REFUSAL_LOG_INTERVAL_MS.

Every task this transport starts is tracked and cancelled by `close()`, which returns once they
have all finished.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass

from taskraft.addresses import parse_address
from taskraft.peer.auth import (
    ProofDirection,
    check_cluster_secret,
    handshake_proof,
    proof_is_valid,
)
from taskraft.peer.backoff import ReconnectBackoff
from taskraft.peer.codec import (
    ChallengeResponseReceiver,
    EndOfStream,
    PeerChallenge,
    PeerChallengeResponse,
    PeerHandshake,
    PeerProof,
    PeerStreamReceiver,
    check_local_identity,
    encode_challenge,
    encode_challenge_response,
    encode_handshake,
    encode_message,
    encode_proof,
)
from taskraft.peer.errors import LocalPeerError, RemotePeerError
from taskraft.peer.limits import (
    AUTH_FRAME_SIZE_MAX_BYTES,
    AUTH_NONCE_SIZE_BYTES,
    CLOSE_TIMEOUT_MS,
    CONFIGURATION_MEMBERS_MAX,
    CONNECT_TIMEOUT_MS,
    HANDSHAKE_TIMEOUT_MS,
    INCOMING_CONNECTIONS_MAX,
    READ_CHUNK_SIZE_BYTES,
    RECONNECT_DELAY_MAX_MS,
    RECONNECT_DELAY_MIN_MS,
    REFUSAL_LOG_INTERVAL_MS,
    SEND_QUEUE_FRAMES_MAX,
    SEND_QUEUE_SIZE_MAX_BYTES,
    WRITE_BATCH_SIZE_MAX_BYTES,
    WRITE_STALL_TIMEOUT_MS,
)
from taskraft.raft.messages import Message
from taskraft.raft.types import NodeId
from taskraft.tls import TlsAcceptor

logger = logging.getLogger(__name__)

# Handshakes kept (one per sender): far more than any membership, few enough that strangers
# connecting with ever new node ids cannot grow it without bound.
HANDSHAKES_REMEMBERED_MAX = 4 * CONFIGURATION_MEMBERS_MAX

PeerAddress = tuple[str, int]
"""Where a peer listens: (host, port)."""

REFUSAL_REASONS: dict[str, tuple[str, ...]] = {
    # Connections from others, refused before their first message was read:
    # malformed: not a peer handshake (random bytes, another protocol, another version);
    # cluster_id: a node of another cluster id; unauthenticated: no valid challenge and proof
    # after the handshake (a node without the cluster secret); bad_proof: a proof made with
    # another secret; unknown_sender: authenticated, but refused by admit_sender (not in this
    # node's configuration); timeout: no handshake (and proof) within the handshake timeout;
    # tls: the TLS handshake failed (no certificate, or one the cluster's authority did not
    # issue, or no TLS at all).
    "incoming": (
        "tls",
        "malformed",
        "cluster_id",
        "unauthenticated",
        "bad_proof",
        "unknown_sender",
        "timeout",
    ),
    # Connections this node made whose authentication failed: closed: the peer closed the
    # connection instead of answering (it refused this node); malformed: the answer was not
    # one; bad_proof: the peer's proof is wrong (another secret, or another node at the
    # address); timeout: no answer within the handshake timeout; tls: the TLS handshake failed
    # (the peer's certificate is not of the cluster's authority or does not name the host).
    "outgoing": ("tls", "closed", "malformed", "bad_proof", "timeout"),
}
"""Why peer connections are refused, by side: the labels of the refusal counters."""


@dataclass(slots=True)
class TransportCounters:
    """Totals since the transport started, for metrics; they only ever grow."""

    # Frames handed to a peer's socket.
    sent: int = 0
    # Messages given up: queue full, queued when a connection attempt failed, queued for a
    # peer that was removed, or sent after close.
    dropped: int = 0
    # Messages for a node that is not a configured peer.
    unroutable: int = 0
    # Messages delivered to on_message.
    received: int = 0
    # Messages received for another node, dropped.
    misdirected: int = 0
    connection_attempts: int = 0
    # Outgoing connections established (the handshake written).
    connections: int = 0
    # Established outgoing connections to a peer this transport had been connected to before.
    reconnects: int = 0
    # Incoming connections accepted, and refused because INCOMING_CONNECTIONS_MAX were open.
    incoming_accepted: int = 0
    incoming_refused: int = 0
    # Incoming connections closed because the peer broke the protocol or sent no handshake.
    incoming_errors: int = 0
    # With a cluster secret: connections whose peer proved the secret, by side.
    authenticated_incoming: int = 0
    authenticated_outgoing: int = 0


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peer as seen by this node's sender to it, for metrics and status pages."""

    address: PeerAddress
    connected: bool
    queued_frames: int
    queued_bytes: int
    sent: int
    dropped: int
    connection_attempts: int
    connections: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportLimits:
    """The bounds of one transport; the defaults and their reasons are in `limits`."""

    send_queue_frames_max: int = SEND_QUEUE_FRAMES_MAX
    send_queue_size_max_bytes: int = SEND_QUEUE_SIZE_MAX_BYTES
    write_batch_size_max_bytes: int = WRITE_BATCH_SIZE_MAX_BYTES
    incoming_connections_max: int = INCOMING_CONNECTIONS_MAX
    reconnect_delay_min_ms: int = RECONNECT_DELAY_MIN_MS
    reconnect_delay_max_ms: int = RECONNECT_DELAY_MAX_MS
    connect_timeout_ms: int = CONNECT_TIMEOUT_MS
    handshake_timeout_ms: int = HANDSHAKE_TIMEOUT_MS
    write_stall_timeout_ms: int = WRITE_STALL_TIMEOUT_MS
    close_timeout_ms: int = CLOSE_TIMEOUT_MS

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"{field.name} must be at least 1")
        if self.reconnect_delay_min_ms > self.reconnect_delay_max_ms:
            raise ValueError("reconnect_delay_min_ms must not exceed reconnect_delay_max_ms")


class PeerTransport:
    """Sends Raft messages to peers and delivers the ones addressed to this node.

    `on_message` is called on the event loop, once per message whose recipient is this node, in
    the order each peer sent them; it must not block. Exceptions it raises are logged and the
    message counted as received.

    `cluster_secret` (at least CLUSTER_SECRET_SIZE_MIN_BYTES) makes every connection, both
    ways, prove the secret before any message; `admit_sender`, called with the node id of each
    peer that proved it, refuses the connection when it returns False. Without a secret a
    connection is served once its handshake is in, as before.

    `tls_server` and `tls_client` give the contexts in force (taskraft.tls.NodeTls) that put
    every connection under mutual TLS: accepted ones with the first, dialed ones with the
    second, which also checks that the peer's certificate names the host dialed. The TLS
    handshake comes before everything above, with a handshake timeout of its own; at most
    incoming_connections_max accepted ones run at once (the oldest evicted beyond:
    taskraft.tls.TlsAcceptor). A failed TLS handshake is refused with the reason `tls` (on the
    dialing side, TLS 1.3 reports a refused client certificate only as the peer closing).
    """

    def __init__(
        self,
        node_id: NodeId,
        listen_host: str,
        listen_port: int,
        peers: Mapping[NodeId, PeerAddress],
        on_message: Callable[[Message], None],
        *,
        cluster_id: str | None = None,
        advertised_peer_address: str | None = None,
        client_address: str | None = None,
        http_address: str | None = None,
        limits: TransportLimits | None = None,
        random_source: random.Random | None = None,
        cluster_secret: bytes | None = None,
        admit_sender: Callable[[NodeId], bool] | None = None,
        tls_server: Callable[[], ssl.SSLContext] | None = None,
        tls_client: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        if (tls_server is None) != (tls_client is None):
            raise ValueError("TLS needs both a server and a client context, or neither")
        if cluster_secret is not None:
            check_cluster_secret(cluster_secret)
        check_local_identity(
            node_id,
            cluster_id,
            peer_address=advertised_peer_address,
            client_address=client_address,
            http_address=http_address,
        )
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._secret = cluster_secret
        self._admit_sender = admit_sender
        self._tls_client = tls_client
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._on_message = on_message
        self._limits = limits or TransportLimits()
        self._tls_acceptor = (
            None
            if tls_server is None
            else TlsAcceptor(
                tls_server,
                handshake_timeout_s=self._limits.handshake_timeout_ms / 1000,
                pending_max=self._limits.incoming_connections_max,
            )
        )
        self._random = random_source or random.Random()
        self._handshake_frame = encode_handshake(
            PeerHandshake(
                sender=node_id,
                cluster_id=cluster_id,
                peer_address=advertised_peer_address,
                client_address=client_address,
                http_address=http_address,
            )
        )
        # The latest handshake each peer sent: where it serves clients and HTTP.
        self._handshakes: dict[NodeId, PeerHandshake] = {}
        self._counters = TransportCounters()
        self._refusals = {
            (side, reason): 0 for side, reasons in REFUSAL_REASONS.items() for reason in reasons
        }
        self._incoming_refusal_log = _LogThrottle(REFUSAL_LOG_INTERVAL_MS)
        self._outgoing_refusal_log = _LogThrottle(REFUSAL_LOG_INTERVAL_MS)
        self._protocol_error_log = _LogThrottle(REFUSAL_LOG_INTERVAL_MS)
        self._addresses: dict[NodeId, PeerAddress] = {}
        self._links: dict[NodeId, _PeerLink] = {}
        # Peers this node has been connected to, so a later connection counts as a reconnect
        # even when the peer's link was replaced by a change of address.
        self._connected_before: set[NodeId] = set()
        # Every task started here: link writers (including retiring ones) and incoming readers.
        self._tasks: set[asyncio.Task[None]] = set()
        self._incoming: set[asyncio.Task[None]] = set()
        self._incoming_by_sender: dict[NodeId, asyncio.Task[None]] = {}
        self._server: asyncio.Server | None = None
        self._closed = False
        self.set_peers(peers)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for peers. Sending works without it; receiving needs it."""
        if self._closed:
            raise LocalPeerError("start() after close()")
        if self._server is not None:
            raise LocalPeerError("start() called twice")
        if self._tls_acceptor is None:
            self._server = await asyncio.start_server(
                self._accept, self._listen_host, self._listen_port, limit=READ_CHUNK_SIZE_BYTES
            )
        else:
            # Each accepted connection wrapped by taskraft.tls.TlsAcceptor.
            self._server = await asyncio.get_running_loop().create_server(
                self._new_tls_connection, self._listen_host, self._listen_port
            )
        logger.info("peer transport of %s listening on %s", self._node_id, self.listen_address)

    @property
    def listen_address(self) -> PeerAddress:
        """The address the listener is bound to; with port 0, the port the system chose."""
        if self._server is None or not self._server.sockets:
            raise LocalPeerError("the transport is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return (str(host), int(port))

    async def close(self) -> None:
        """Stop listening, close every connection and wait for every task to finish."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        if self._tls_acceptor is not None:
            self._tls_acceptor.abort_pending()
        for link in self._links.values():
            self._counters.dropped += link.discard_queue()
        self._links.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            await self._server.wait_closed()
        logger.info("peer transport of %s closed", self._node_id)

    # -- sending -------------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Queue `message` for its recipient without waiting; drop it when the queue is full.

        Raises LocalPeerError for a message this node cannot send (another node's message, a
        message the codec cannot carry): a bug in the caller.
        """
        if message.sender != self._node_id:
            raise LocalPeerError(
                f"cannot send a message from {message.sender!r} as node {self._node_id!r}"
            )
        if self._closed:
            self._counters.dropped += 1
            return
        link = self._link_to(message.recipient)
        if link is None:
            self._counters.unroutable += 1
            logger.debug(
                "no address for %s; dropping %s", message.recipient, type(message).__name__
            )
            return
        if link.is_full(0):
            link.dropped += 1
            self._counters.dropped += 1
            return
        frame = encode_message(message)
        if link.is_full(len(frame)):
            link.dropped += 1
            self._counters.dropped += 1
            return
        link.enqueue(frame)

    def set_peers(self, peers: Mapping[NodeId, PeerAddress]) -> None:
        """Replace the peer addresses. This node's own entry, if present, is ignored.

        A removed peer's connection is closed and its queue dropped; a peer whose address
        changed is reconnected at the new one. Connections are made when a message is sent.
        """
        addresses: dict[NodeId, PeerAddress] = {}
        for peer_id, (host, port) in peers.items():
            check_local_identity(peer_id, None)
            if not host or not 1 <= port <= 65535:
                raise ValueError(f"peer {peer_id!r} has an invalid address {host!r}:{port}")
            if peer_id != self._node_id:
                addresses[peer_id] = (host, port)
        for peer_id in list(self._links):
            if addresses.get(peer_id) != self._addresses.get(peer_id):
                self._retire_link(peer_id)
        self._addresses = addresses

    def _link_to(self, peer_id: NodeId) -> _PeerLink | None:
        link = self._links.get(peer_id)
        if link is None:
            address = self._addresses.get(peer_id) or self._advertised_peer_address(peer_id)
            if address is None:
                return None
            link = _PeerLink(peer_id, address, self._limits)
            self._links[peer_id] = link
            link.task = self._start_task(self._run_link(link), f"peer link to {peer_id}")
        return link

    def _advertised_peer_address(self, peer_id: NodeId) -> PeerAddress | None:
        """Where a peer without a configured address said it listens, in its handshake.

        A node that has just joined knows no configuration yet; this lets it answer the leader
        that contacted it, and so receive the log and the configuration.
        """
        handshake = self._handshakes.get(peer_id)
        if handshake is None or handshake.peer_address is None:
            return None
        try:
            return parse_address(handshake.peer_address)
        except ValueError:
            return None

    def _retire_link(self, peer_id: NodeId) -> None:
        link = self._links.pop(peer_id)
        self._counters.dropped += link.discard_queue()
        if link.task is not None:
            # Tracked in self._tasks until it finishes, so close() still waits for it.
            link.task.cancel()

    def _start_task(
        self, coroutine: Coroutine[object, object, None], name: str
    ) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._incoming.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "peer transport task %s failed", task.get_name(), exc_info=task.exception()
            )

    # -- one peer's writer ---------------------------------------------------------------------

    async def _run_link(self, link: _PeerLink) -> None:
        """Connect when there is something to send, drain the queue, back off when it fails.

        The backoff starts again from its floor only after a connection has lasted
        reconnect_delay_max_ms: a peer that accepts and at once closes (it refuses our
        handshake, say) is retried as slowly as one that refuses connections.
        """
        limits = self._limits
        backoff = ReconnectBackoff(
            delay_min_ms=limits.reconnect_delay_min_ms,
            delay_max_ms=limits.reconnect_delay_max_ms,
            random_source=self._random,
        )
        loop = asyncio.get_running_loop()
        while True:
            await link.frames_queued()
            streams = await self._connect(link, first_failure=backoff.failures == 0)
            if streams is None:
                # Messages that waited for a peer that is down are stale by the time it is back.
                self._counters.dropped += link.discard_queue()
            else:
                connected_at = loop.time()
                reader, writer = streams
                try:
                    await self._pump(link, reader, writer)
                finally:
                    link.connected = False
                    await _close_writer(writer, limits.close_timeout_ms)
                if (loop.time() - connected_at) * 1000 >= limits.reconnect_delay_max_ms:
                    backoff.reset()
            await asyncio.sleep(backoff.next_delay_ms() / 1000)

    async def _connect(
        self, link: _PeerLink, *, first_failure: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        host, port = link.address
        link.connection_attempts += 1
        self._counters.connection_attempts += 1
        try:
            async with asyncio.timeout(self._limits.connect_timeout_ms / 1000):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=None if self._tls_client is None else self._tls_client(),
                    server_hostname=None if self._tls_client is None else host,
                )
        except ssl.SSLError as error:
            # Reached, but not the cluster's node: not a network failure.
            self._refuse_outgoing(link, "tls", f"TLS handshake failed: {error}")
            return None
        except (OSError, TimeoutError) as error:
            # The first failure of a series is worth a warning; the retries are not.
            level = logging.WARNING if first_failure else logging.DEBUG
            logger.log(
                level, "cannot connect to peer %s at %s:%s: %r", link.peer_id, host, port, error
            )
            return None
        _set_no_delay(writer)
        if self._secret is None:
            writer.write(self._handshake_frame)
        elif not await self._authenticate(link, reader, writer, self._secret):
            await _close_writer(writer, self._limits.close_timeout_ms)
            return None
        link.connected = True
        link.connections += 1
        self._counters.connections += 1
        if link.peer_id in self._connected_before:
            self._counters.reconnects += 1
        self._connected_before.add(link.peer_id)
        logger.info("connected to peer %s at %s:%s", link.peer_id, host, port)
        return reader, writer

    async def _authenticate(
        self,
        link: _PeerLink,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        secret: bytes,
    ) -> bool:
        """Run the connecting side of the authentication exchange; whether it succeeded.

        Handshake and challenge, then the peer's nonce and proof (checked against the node this
        link means to reach), then this node's proof. Every step is bounded by the handshake
        timeout; any failure is counted and logged (throttled) here.
        """
        nonce = secrets.token_bytes(AUTH_NONCE_SIZE_BYTES)
        writer.write(self._handshake_frame + encode_challenge(PeerChallenge(nonce)))
        answers = ChallengeResponseReceiver()
        host, port = link.address
        try:
            async with asyncio.timeout(self._limits.handshake_timeout_ms / 1000):
                await writer.drain()
                response = answers.next_event()
                while response is None:
                    answers.receive_data(await reader.read(AUTH_FRAME_SIZE_MAX_BYTES))
                    response = answers.next_event()
        except RemotePeerError as error:
            self._refuse_outgoing(link, "malformed", f"its answer to the challenge: {error}")
            return False
        except TimeoutError:
            self._refuse_outgoing(
                link,
                "timeout",
                f"no answer to the challenge within {self._limits.handshake_timeout_ms} ms",
            )
            return False
        except OSError as error:
            logger.warning(
                "connection to peer %s at %s:%s failed during authentication: %r",
                link.peer_id,
                host,
                port,
                error,
            )
            return False
        if isinstance(response, EndOfStream):
            self._refuse_outgoing(
                link,
                "closed",
                "it closed the connection instead of answering the challenge (another cluster "
                "secret or cluster id, or this node is not in its configuration)",
            )
            return False
        if not proof_is_valid(
            secret,
            response.proof,
            direction=ProofDirection.ACCEPTOR,
            cluster_id=self._cluster_id,
            initiator=self._node_id,
            acceptor=link.peer_id,
            initiator_nonce=nonce,
            acceptor_nonce=response.nonce,
        ):
            self._refuse_outgoing(
                link,
                "bad_proof",
                f"it did not prove that it is node {link.peer_id} of this cluster (another "
                "cluster secret, or another node at that address)",
            )
            return False
        proof = handshake_proof(
            secret,
            direction=ProofDirection.INITIATOR,
            cluster_id=self._cluster_id,
            initiator=self._node_id,
            acceptor=link.peer_id,
            initiator_nonce=nonce,
            acceptor_nonce=response.nonce,
        )
        writer.write(encode_proof(PeerProof(proof)))
        self._counters.authenticated_outgoing += 1
        return True

    def _refuse_outgoing(self, link: _PeerLink, reason: str, detail: str) -> None:
        self._refusals["outgoing", reason] += 1
        host, port = link.address
        self._outgoing_refusal_log.log(
            logging.ERROR,
            "peer %s at %s:%s failed authentication: %s",
            link.peer_id,
            host,
            port,
            detail,
        )

    async def _pump(
        self, link: _PeerLink, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Write queued frames in batches until the connection fails or the peer closes it.

        The peer never writes on this connection, so a read that completes means it closed
        the connection (or broke the protocol): time to reconnect.
        """
        closed_by_peer = asyncio.ensure_future(reader.read(1))
        try:
            while not closed_by_peer.done():
                if not link.has_frames():
                    await asyncio.wait(
                        (link.wake_up_future(), closed_by_peer),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    continue
                batch = link.take_batch()
                writer.writelines(batch)
                link.sent += len(batch)
                self._counters.sent += len(batch)
                async with asyncio.timeout(self._limits.write_stall_timeout_ms / 1000):
                    await writer.drain()
            logger.info("peer %s closed the connection", link.peer_id)
        except TimeoutError:
            logger.warning(
                "peer %s accepted nothing for %d ms; connecting again",
                link.peer_id,
                self._limits.write_stall_timeout_ms,
            )
        except OSError as error:
            logger.warning("connection to peer %s failed: %r", link.peer_id, error)
        finally:
            closed_by_peer.cancel()
            await asyncio.wait((closed_by_peer,))
            if not closed_by_peer.cancelled():
                # Retrieved so that a reset connection is not reported as an unhandled error.
                closed_by_peer.exception()

    # -- incoming connections ------------------------------------------------------------------

    def _new_tls_connection(self) -> asyncio.BaseProtocol:
        """The protocol of a connection just accepted under TLS: its handshake first, then
        `_accept` as for a plain connection."""
        acceptor = self._tls_acceptor
        assert acceptor is not None
        reader = asyncio.StreamReader(limit=READ_CHUNK_SIZE_BYTES)
        return acceptor.wrap(
            asyncio.StreamReaderProtocol(reader, self._accept), on_failure=self._tls_refused
        )

    def _tls_refused(self, error: BaseException | None) -> None:
        if self._closed:
            return  # ended by the shutdown, not refused
        self._counters.incoming_errors += 1
        self._refuse_incoming(
            "tls",
            logging.WARNING,
            "refusing a peer connection: its TLS handshake failed: %r",
            error,
        )

    @property
    def tls_handshakes_evicted(self) -> int:
        """Accepted TLS handshakes ended to make room (incoming_connections_max under way)."""
        return 0 if self._tls_acceptor is None else self._tls_acceptor.evicted

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called by the server for each accepted connection (under TLS, once its handshake is
        done); serves it in a tracked task."""
        peer_address = writer.get_extra_info("peername")
        if self._closed:
            writer.transport.abort()
            return
        if len(self._incoming) >= self._limits.incoming_connections_max:
            self._counters.incoming_refused += 1
            logger.warning(
                "refusing a peer connection from %s: %d connections are open already",
                peer_address,
                len(self._incoming),
            )
            writer.transport.abort()
            return
        self._counters.incoming_accepted += 1
        _set_no_delay(writer)
        task = self._start_task(
            self._serve_incoming(reader, writer, peer_address),
            f"peer connection from {peer_address}",
        )
        self._incoming.add(task)

    async def _serve_incoming(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_address: object
    ) -> None:
        receiver = PeerStreamReceiver(
            local_node_id=self._node_id,
            cluster_id=self._cluster_id,
            require_proof=self._secret is not None,
        )
        try:
            async with asyncio.timeout(self._limits.handshake_timeout_ms / 1000) as deadline:
                await self._receive(reader, writer, receiver, deadline)
        except _Refused as refusal:
            self._counters.incoming_errors += 1
            self._refuse_incoming(
                refusal.reason,
                refusal.level,
                "refusing the peer connection from %s (%s): %s",
                peer_address,
                _sender_name(receiver),
                refusal.detail,
            )
        except RemotePeerError as error:
            self._counters.incoming_errors += 1
            message = "closing the peer connection from %s (%s): it broke the peer protocol: %s"
            arguments = (peer_address, _sender_name(receiver), error)
            if receiver.authenticated:
                # A peer that was admitted: a bug or a version skew, not a refusal.
                self._protocol_error_log.log(logging.ERROR, message, *arguments)
            elif receiver.handshake is not None:
                self._refuse_incoming(
                    _refusal_reason(receiver, error),
                    logging.ERROR,
                    "refusing the peer connection from %s (%s): it did not prove the cluster "
                    "secret: %s",
                    *arguments,
                )
            else:
                self._refuse_incoming(
                    _refusal_reason(receiver, error), logging.ERROR, message, *arguments
                )
        except TimeoutError:
            self._counters.incoming_errors += 1
            self._refuse_incoming(
                "timeout",
                logging.ERROR,
                "closing the peer connection from %s: no %s within %d ms",
                peer_address,
                "handshake" if receiver.handshake is None else "proof of the cluster secret",
                self._limits.handshake_timeout_ms,
            )
        except OSError as error:
            logger.info(
                "peer connection from %s (%s) failed: %r",
                peer_address,
                _sender_name(receiver),
                error,
            )
        finally:
            handshake = receiver.handshake
            current = asyncio.current_task()
            if handshake is not None and self._incoming_by_sender.get(handshake.sender) is current:
                del self._incoming_by_sender[handshake.sender]
            writer.transport.abort()

    def _refuse_incoming(self, reason: str, level: int, message: str, *arguments: object) -> None:
        self._refusals["incoming", reason] += 1
        self._incoming_refusal_log.log(level, message, *arguments)

    async def _receive(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        receiver: PeerStreamReceiver,
        deadline: asyncio.Timeout,
    ) -> None:
        """Feed the receiver until the stream ends; raises RemotePeerError at the first fault.

        With a cluster secret: answers the challenge, then checks the proof and admits the
        sender before the receiver may decode a message (`_Refused` when it must not).
        """
        misdirected_logged = False
        exchange: tuple[bytes, bytes] | None = None
        while True:
            event = receiver.next_event()
            if event is None:
                receiver.receive_data(await reader.read(READ_CHUNK_SIZE_BYTES))
            elif isinstance(event, EndOfStream):
                return
            elif isinstance(event, PeerHandshake):
                if self._secret is None:
                    self._admit(event, deadline)
            elif isinstance(event, PeerChallenge):
                exchange = await self._answer_challenge(writer, receiver, event)
            elif isinstance(event, PeerProof):
                assert exchange is not None, "the receiver returns the challenge first"
                self._check_proof(receiver, event, *exchange)
                self._counters.authenticated_incoming += 1
                assert receiver.handshake is not None
                self._admit(receiver.handshake, deadline)
            elif event.recipient != self._node_id:
                self._counters.misdirected += 1
                if not misdirected_logged:
                    misdirected_logged = True
                    logger.warning(
                        "peer %s sends messages for %s to this node %s; dropping them",
                        event.sender,
                        event.recipient,
                        self._node_id,
                    )
            else:
                self._deliver(event)

    async def _answer_challenge(
        self,
        writer: asyncio.StreamWriter,
        receiver: PeerStreamReceiver,
        challenge: PeerChallenge,
    ) -> tuple[bytes, bytes]:
        """Send this node's nonce and proof; the two nonces (initiator's, acceptor's)."""
        handshake = receiver.handshake
        assert handshake is not None and self._secret is not None
        nonce = secrets.token_bytes(AUTH_NONCE_SIZE_BYTES)
        proof = handshake_proof(
            self._secret,
            direction=ProofDirection.ACCEPTOR,
            cluster_id=self._cluster_id,
            initiator=handshake.sender,
            acceptor=self._node_id,
            initiator_nonce=challenge.nonce,
            acceptor_nonce=nonce,
        )
        writer.write(encode_challenge_response(PeerChallengeResponse(nonce=nonce, proof=proof)))
        await writer.drain()
        return challenge.nonce, nonce

    def _check_proof(
        self,
        receiver: PeerStreamReceiver,
        proof: PeerProof,
        initiator_nonce: bytes,
        acceptor_nonce: bytes,
    ) -> None:
        """Refuse (`_Refused`) a wrong proof, then a sender `admit_sender` does not admit."""
        handshake = receiver.handshake
        assert handshake is not None and self._secret is not None
        valid = proof_is_valid(
            self._secret,
            proof.proof,
            direction=ProofDirection.INITIATOR,
            cluster_id=self._cluster_id,
            initiator=handshake.sender,
            acceptor=self._node_id,
            initiator_nonce=initiator_nonce,
            acceptor_nonce=acceptor_nonce,
        )
        if not valid:
            raise _Refused(
                "bad_proof", logging.ERROR, "its proof is wrong: it does not know the secret"
            )
        if self._admit_sender is not None and not self._admit_sender(handshake.sender):
            raise _Refused(
                "unknown_sender",
                logging.WARNING,
                f"node {handshake.sender} is not a member of this node's configuration",
            )
        receiver.proof_verified()

    def _admit(self, handshake: PeerHandshake, deadline: asyncio.Timeout) -> None:
        """The peer may send messages now: no more deadline, and it is known by its handshake."""
        deadline.reschedule(None)
        self._register_sender(handshake.sender)
        self._remember_handshake(handshake)

    def _register_sender(self, sender: NodeId) -> None:
        """Keep one connection per sender: a newer one means the older is dead or dying."""
        current = asyncio.current_task()
        assert current is not None
        older = self._incoming_by_sender.get(sender)
        if older is not None and older is not current:
            logger.info("peer %s connected again; closing its older connection", sender)
            older.cancel()
        self._incoming_by_sender[sender] = current

    def _remember_handshake(self, handshake: PeerHandshake) -> None:
        previous = self._handshakes.pop(handshake.sender, None)
        self._handshakes[handshake.sender] = handshake
        if len(self._handshakes) > HANDSHAKES_REMEMBERED_MAX:
            # Senders that stopped connecting long ago are forgotten first.
            del self._handshakes[next(iter(self._handshakes))]
        moved = previous is not None and previous.peer_address != handshake.peer_address
        if moved and handshake.sender not in self._addresses and handshake.sender in self._links:
            # The link follows the address the peer advertised; reconnect at the new one.
            self._retire_link(handshake.sender)

    def _deliver(self, message: Message) -> None:
        self._counters.received += 1
        try:
            self._on_message(message)
        except Exception:
            logger.exception(
                "on_message failed for %s from %s", type(message).__name__, message.sender
            )

    # -- observation ---------------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    def handshake_of(self, peer_id: NodeId) -> PeerHandshake | None:
        """The last handshake `peer_id` sent this node: its advertised client and HTTP addresses."""
        return self._handshakes.get(peer_id)

    @property
    def counters(self) -> TransportCounters:
        """A copy of the totals since the transport started."""
        return dataclasses.replace(self._counters)

    def refusals(self) -> dict[tuple[str, str], int]:
        """Connections refused since the transport started, by (side, reason): see
        REFUSAL_REASONS. Every pair is present, at zero when nothing was refused for it."""
        return dict(self._refusals)

    @property
    def authenticates(self) -> bool:
        """Whether peers must prove the cluster secret."""
        return self._secret is not None

    @property
    def open_incoming_connections(self) -> int:
        """Incoming connections served now: a gauge, where the counters are totals."""
        return len(self._incoming)

    def peer_statuses(self) -> dict[NodeId, PeerStatus]:
        """The state of the sender to every configured peer."""
        statuses: dict[NodeId, PeerStatus] = {}
        for peer_id, address in self._addresses.items():
            link = self._links.get(peer_id)
            if link is None:
                statuses[peer_id] = PeerStatus(address, False, 0, 0, 0, 0, 0, 0)
            else:
                statuses[peer_id] = link.status()
        return statuses


class _PeerLink:
    """The bounded queue of frames for one peer and the state of its writer task."""

    __slots__ = (
        "_frames",
        "_limits",
        "_wake_up",
        "address",
        "connected",
        "connection_attempts",
        "connections",
        "dropped",
        "peer_id",
        "queued_bytes",
        "sent",
        "task",
    )

    def __init__(self, peer_id: NodeId, address: PeerAddress, limits: TransportLimits) -> None:
        self.peer_id = peer_id
        self.address = address
        self._limits = limits
        self._frames: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self._wake_up: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.sent = 0
        self.dropped = 0
        self.connection_attempts = 0
        self.connections = 0

    def is_full(self, frame_size_bytes: int) -> bool:
        limits = self._limits
        return (
            len(self._frames) >= limits.send_queue_frames_max
            or self.queued_bytes + frame_size_bytes > limits.send_queue_size_max_bytes
        )

    def enqueue(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.queued_bytes += len(frame)
        if self._wake_up is not None and not self._wake_up.done():
            self._wake_up.set_result(None)

    def has_frames(self) -> bool:
        return bool(self._frames)

    def wake_up_future(self) -> asyncio.Future[None]:
        """A future that completes when a frame is queued (at once if one is)."""
        if self._wake_up is None or self._wake_up.done():
            self._wake_up = asyncio.get_running_loop().create_future()
        if self._frames:
            self._wake_up.set_result(None)
        return self._wake_up

    async def frames_queued(self) -> None:
        while not self._frames:
            await self.wake_up_future()

    def take_batch(self) -> list[bytes]:
        """Frames to write at once: at least one, at most write_batch_size_max_bytes beyond it."""
        batch = [self._frames.popleft()]
        size = len(batch[0])
        while (
            self._frames and size + len(self._frames[0]) <= self._limits.write_batch_size_max_bytes
        ):
            frame = self._frames.popleft()
            batch.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return batch

    def discard_queue(self) -> int:
        """Drop every queued frame; the number dropped."""
        count = len(self._frames)
        self._frames.clear()
        self.queued_bytes = 0
        self.dropped += count
        return count

    def status(self) -> PeerStatus:
        return PeerStatus(
            address=self.address,
            connected=self.connected,
            queued_frames=len(self._frames),
            queued_bytes=self.queued_bytes,
            sent=self.sent,
            dropped=self.dropped,
            connection_attempts=self.connection_attempts,
            connections=self.connections,
        )


def _set_no_delay(writer: asyncio.StreamWriter) -> None:
    """Send small frames at once: a heartbeat held back by Nagle's algorithm delays commits."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _close_writer(writer: asyncio.StreamWriter, close_timeout_ms: int) -> None:
    """Close a connection, letting buffered bytes out for a while, then abort it."""
    writer.close()
    try:
        async with asyncio.timeout(close_timeout_ms / 1000):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()


class _Refused(Exception):
    """An incoming connection must close before any message is read: why, for metrics and logs."""

    def __init__(self, reason: str, level: int, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.level = level
        self.detail = detail


def _refusal_reason(receiver: PeerStreamReceiver, error: RemotePeerError) -> str:
    """The refusal reason of a protocol error before the peer was admitted."""
    if receiver.handshake is None:
        return "cluster_id" if error.field == "handshake.cluster_id" else "malformed"
    return "unauthenticated"


class _LogThrottle:
    """Logs at most one line per interval; the next line says how many were left out."""

    __slots__ = ("_interval_s", "_next_at", "_suppressed")

    def __init__(self, interval_ms: int) -> None:
        self._interval_s = interval_ms / 1000
        self._next_at = float("-inf")
        self._suppressed = 0

    def log(self, level: int, message: str, *arguments: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return
        self._next_at = now + self._interval_s
        if self._suppressed:
            message += " (and %d more like it in the last %g s, not logged)"
            arguments = (*arguments, self._suppressed, self._interval_s)
            self._suppressed = 0
        logger.log(level, message, *arguments)


def _sender_name(receiver: PeerStreamReceiver) -> str:
    handshake = receiver.handshake
    return "before its handshake" if handshake is None else f"node {handshake.sender}"


__all__ = [
    "REFUSAL_REASONS",
    "PeerAddress",
    "PeerStatus",
    "PeerTransport",
    "TransportCounters",
    "TransportLimits",
]
