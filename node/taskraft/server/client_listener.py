"""The client port of a node: the protocol of docs/protocol.md over TCP, served by a `Replica`.

Each connection is an asyncio protocol that feeds what it reads to a `ServerConnection` and acts
on the events that come out, as h11 intends:

- `Handshake`: the connection answered it by itself (after the token check, when the node
  requires tokens); the handshake deadline is disarmed.
- `Request`: one handler task per request, so requests pipeline (answers may go out of order);
  `ServerConnection` bounds how many one connection may have in flight.
- `RequestRejected`: already answered (`overloaded`, or an argument out of range).
- `ProtocolFailure`: write the error frame and close.
- `ConnectionClosed`: the client ended its stream; answer what is in flight, then close.

Writes go through `Replica.submit`, reads through `Replica.linearizable_barrier` and then the
state machine; only the leader serves them, other nodes answer `not_leader` with the leader's id
and client address.

A dequeue that finds nothing and may wait (`wait_ms`) waits to be woken, not polling. While any
dequeue waits, the listener subscribes to the replica the provider returns (a progress listener,
called once per Ready batch and when the replica stops); a waiter moves that one subscription
to the provider's replica each time it starts waiting, so a restarted replica is followed, and
the stop of the old one wakes everyone. On each notification the listener looks at the queues
that have waiters: it wakes no more of them than `ready_count` has tasks not already claimed by
a waiter woken earlier whose Dequeue is still in flight (one task does not wake a thousand
waiters), oldest first. A woken waiter submits the Dequeue again; if another consumer took the
task, it waits again until its deadline, where it answers nil. When this node no longer leads,
stops, or the listener closes, every waiter is woken and answers at once (`not_leader` or
`unavailable`). A Dequeue already submitted is never abandoned at the deadline, so a task it
takes is never lost to a lease nobody holds.

With a `TokenStore` (`--auth-token-file`), the handshake must carry a token the store knows; a
connection without one, or with another, gets an `unauthenticated` error frame and is closed,
with no word on which it was. The connection keeps the identity it authenticated with until it
closes, and each request is checked against that identity's role (`authentication`): one the
role does not allow is answered `forbidden`, and the connection stays open.

Everything a client can make the listener hold is bounded: connections (`connections_max`;
beyond, an `overloaded` error frame and close), time to send the handshake, requests in flight
per connection, and dequeues waiting at once (`long_polls_max`; beyond, `overloaded`). With
tokens, `requests_per_token_max` bounds the requests in flight across all connections of one
token name, counted from when a request's task starts until its answer is written (a waiting
dequeue counts while it waits); beyond, that request is answered `overloaded` and the connection
stays open, so one service cannot take every slot the global bounds leave. Each bound that bites
is counted (the metrics of taskraft.server.metrics).

Connection tasks are created synchronously as requests arrive and tracked, so `close` leaves
none behind.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from taskraft import protocol
from taskraft import queue as queue_commands
from taskraft.errors import (
    BadRequest,
    Forbidden,
    NotLeader,
    Overloaded,
    TaskraftError,
    Unauthenticated,
    Unavailable,
)
from taskraft.protocol import (
    ConnectionClosed,
    ConnectionState,
    Handshake,
    LocalProtocolError,
    ProtocolFailure,
    Request,
    RequestRejected,
    Response,
    ServerConnection,
)
from taskraft.protocol.limits import REQUESTS_IN_FLIGHT_MAX
from taskraft.queue import CommandResult
from taskraft.queue.limits import LEASE_MS_DEFAULT
from taskraft.raft import Role
from taskraft.server.authentication import Identity, TokenStore, operation_permission
from taskraft.server.replica import Replica
from taskraft.tls import TlsAcceptor

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")


class ClientListener:
    """Serves the client protocol on `host:port` for the replica `replica_provider` returns.

    The provider is called for every request, so a restarted replica is picked up. `node_id`
    names this node in handshake answers and `status`; `leader_address_of(leader_id)` gives the
    `host:port` clients should use for a leader, or None when it is not known. With `tokens`,
    every connection must authenticate in its handshake (module docstring).
    """

    def __init__(
        self,
        replica_provider: Callable[[], Replica],
        *,
        host: str,
        port: int,
        node_id: str,
        leader_address_of: Callable[[str | None], str | None],
        connections_max: int = 1000,
        handshake_timeout_s: float = 10.0,
        long_polls_max: int = 10_000,
        requests_in_flight_max: int = REQUESTS_IN_FLIGHT_MAX,
        requests_per_token_max: int = 0,
        tokens: TokenStore | None = None,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        if connections_max < 1 or long_polls_max < 0:
            raise ValueError("connections_max must be >= 1 and long_polls_max >= 0")
        if requests_per_token_max < 0:
            raise ValueError("requests_per_token_max must be >= 0 (0: no limit)")
        if handshake_timeout_s <= 0:
            raise ValueError("handshake_timeout_s must be positive")
        self._replica_provider = replica_provider
        self._host = host
        self._port = port
        self.node_id = node_id
        self._leader_address_of = leader_address_of
        # Connections served at once; beyond, a new one gets `overloaded` and is closed.
        self.connections_max = connections_max
        # A client must complete its handshake this long after connecting, or it is closed.
        self.handshake_timeout_s = handshake_timeout_s
        # Dequeues waiting for a task at once (each holds a task, a future and a connection
        # slot); beyond, `overloaded`.
        self.long_polls_max = long_polls_max
        # Requests one connection may have in flight; beyond, `overloaded` (ServerConnection).
        self.requests_in_flight_max = requests_in_flight_max
        # Requests in flight at once across all connections of one token name; beyond,
        # `overloaded`. 0: no limit; ignored without tokens.
        self.requests_per_token_max = requests_per_token_max
        # The tokens a handshake must present; None serves everyone (no authentication).
        self.tokens = tokens
        # TLS on this port (taskraft.tls): the context in force now; None: plain TCP. The
        # TLS handshake has the deadline of the protocol's handshake (each its own), and at
        # most connections_max run at once, the oldest evicted beyond; a connection counts
        # against connections_max once its TLS handshake is done.
        self.tls = tls
        self._tls_acceptor = (
            None
            if tls is None
            else TlsAcceptor(
                tls, handshake_timeout_s=handshake_timeout_s, pending_max=connections_max
            )
        )
        self._server: asyncio.Server | None = None
        self._connections: set[_ClientConnection] = set()
        # Every request task of every connection, including those of connections closing.
        self._tasks: set[asyncio.Task[None]] = set()
        self._long_polls = 0
        # The waiting dequeues, by queue; a queue is here only while one waits or tries.
        self._waiters: dict[str, _QueueWaiters] = {}
        # The replica whose progress wakes the waiters; None while nothing waits.
        self._watched: Replica | None = None
        self._closing = False
        # Counters, for logs and tests.
        self.connections_refused = 0
        self.requests_failed_unexpectedly = 0
        # Requests answered `overloaded` by the protocol layer (too many in flight on one
        # connection) before reaching `answer`.
        self.requests_rejected = 0
        # Handshakes refused `unauthenticated`, and requests refused `forbidden`.
        self.authentication_failures = 0
        self.authorization_failures = 0
        # Handshakes not sent within handshake_timeout_s, and dequeues refused at
        # long_polls_max.
        self.handshake_timeouts = 0
        self.long_polls_refused = 0
        # Connections closed for breaking the protocol (a frame beyond the size bound,
        # malformed msgpack, a bad handshake, a request id reused while in flight).
        self.protocol_failures = 0
        self.requests_in_flight = 0
        # Requests in flight by token name (a name is here only while it has some), and those
        # refused at requests_per_token_max by token name. Names come from the token file only.
        self._token_requests: dict[str, int] = {}
        self.token_limit_rejections: dict[str, int] = {}
        # Called after each answered request with its operation, duration and error (metrics).
        self.on_request_done: Callable[[str, float, TaskraftError | None], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the client listener is already started")
        loop = asyncio.get_running_loop()
        # Under TLS each accepted connection is wrapped by taskraft.tls.TlsAcceptor.
        self._server = await loop.create_server(self._new_connection, self._host, self._port)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0, the port the system picked."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the client listener is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def tls_handshake_failures(self) -> int:
        """TLS handshakes that did not complete: a client that does not trust this node, one
        whose certificate this node does not trust, one that spoke no TLS, a timeout."""
        return 0 if self._tls_acceptor is None else self._tls_acceptor.failures

    @property
    def tls_handshakes_evicted(self) -> int:
        """TLS handshakes ended to make room: connections_max were under way."""
        return 0 if self._tls_acceptor is None else self._tls_acceptor.evicted

    def _new_connection(self) -> asyncio.BaseProtocol:
        """The protocol of a connection just accepted (under TLS, its TLS handshake first)."""
        connection = _ClientConnection(self)
        acceptor = self._tls_acceptor
        if acceptor is None:
            return connection
        return acceptor.wrap(connection)

    @property
    def long_polls_waiting(self) -> int:
        """Dequeues waiting for a task right now."""
        return self._long_polls

    async def finish_requests(self, timeout_s: float) -> bool:
        """Wait, at most `timeout_s`, for the requests in flight now to be answered.

        For a graceful stop: once leadership has moved away, what is in flight either finishes
        or is answered `not_leader`, and `close` then has nothing left to cut off.
        """
        tasks = list(self._tasks)
        if not tasks:
            return True
        _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    async def close(self) -> None:
        """Stop accepting, close every connection and wait for all their tasks to end."""
        self._closing = True
        self._wake_waiters(())
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._tls_acceptor is not None:
            self._tls_acceptor.abort_pending()
        for connection in list(self._connections):
            connection.shut_down(Unavailable("this node is shutting down"))
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._unwatch()
        if server is not None:
            await server.wait_closed()

    # -- connections -------------------------------------------------------------------------

    def _admit(self, connection: _ClientConnection) -> TaskraftError | None:
        """None when the connection may be served, else the error to close it with."""
        if self._closing:
            return Unavailable("this node is shutting down")
        if len(self._connections) >= self.connections_max:
            self.connections_refused += 1
            return Overloaded("this node serves too many connections; try another or later")
        self._connections.add(connection)
        return None

    def _forget(self, connection: _ClientConnection) -> None:
        self._connections.discard(connection)

    # -- requests ----------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Identity | None:
        """The identity of a handshake's token (None when the node requires no token);
        Unauthenticated, saying no more, when the token is missing or unknown."""
        tokens = self.tokens
        if tokens is None:
            return None
        identity = tokens.identify(token)
        if identity is None:
            self.authentication_failures += 1
            logger.debug("handshake refused: %s", "no token" if token is None else "unknown token")
            raise Unauthenticated("authentication required")
        return identity

    def token_requests_in_flight(self) -> dict[str, int]:
        """Requests in flight by token name: every name of the token file in force (0 when
        idle), and the names of connections still open with a token since removed. Empty
        without tokens."""
        if self.tokens is None:
            return {}
        counts = dict.fromkeys(self.tokens.names, 0)
        counts.update(self._token_requests)
        return counts

    def take_token_slot(self, identity: Identity | None) -> Overloaded | None:
        """Count one more request in flight for `identity`'s token, or the `overloaded` error
        when its requests_per_token_max is reached (nothing is counted in flight then).

        The message names no token: the caller knows its own, and others are none of its
        business.
        """
        if identity is None or self.tokens is None:
            return None
        name = identity.name
        in_flight = self._token_requests.get(name, 0)
        limit = self.requests_per_token_max
        if limit and in_flight >= limit:
            self.token_limit_rejections[name] = self.token_limit_rejections.get(name, 0) + 1
            logger.debug("request of %s refused: %d in flight, its limit", name, in_flight)
            return Overloaded(
                f"the concurrency limit of this token is reached ({limit} requests in flight "
                "on this node); try again when some are answered"
            )
        self._token_requests[name] = in_flight + 1
        return None

    def release_token_slot(self, identity: Identity | None) -> None:
        """One request of `identity`'s token counted by `take_token_slot` is answered."""
        if identity is None or self.tokens is None:
            return
        name = identity.name
        remaining = self._token_requests.get(name, 0) - 1
        if remaining > 0:
            self._token_requests[name] = remaining
        else:
            self._token_requests.pop(name, None)

    def authorize(self, operation: protocol.Operation, identity: Identity | None) -> None:
        """Raise Forbidden unless `identity`'s role allows `operation` (always allowed without
        tokens)."""
        if self.tokens is None:
            return
        if identity is None or not identity.may(operation_permission(operation.name)):
            self.authorization_failures += 1
            role = "no role" if identity is None else f"the role {identity.role.value}"
            logger.debug(
                "%s refused to %s (%s)",
                operation.name,
                None if identity is None else identity.name,
                role,
            )
            raise Forbidden(f"{operation.name} is not allowed to {role}")

    async def answer(self, request: Request, identity: Identity | None = None) -> Response:
        """The response to one request of a client authenticated as `identity` (None when the
        node requires no token); never raises but for cancellation."""
        started = time.perf_counter()
        self.requests_in_flight += 1
        error: TaskraftError | None = None
        try:
            self.authorize(request.operation, identity)
            result = await self._execute(request.operation)
        except TaskraftError as failure:
            error = self._with_leader_address(failure)
            return Response(request.request_id, error=error)
        except Exception:
            self.requests_failed_unexpectedly += 1
            logger.exception("request %s (%s) failed", request.request_id, request.operation.name)
            error = Unavailable("the node failed to serve this request")
            return Response(request.request_id, error=error)
        finally:
            self.requests_in_flight -= 1
            if self.on_request_done is not None:
                self.on_request_done(request.operation.name, time.perf_counter() - started, error)
        return Response(request.request_id, result=result)

    async def execute(self, operation: protocol.Operation) -> protocol.Result | None:
        """Serve one operation as for a client of the protocol (the HTTP queue API uses this).

        Raises the TaskraftError a client would be answered with; a `NotLeader` names the
        leader's client address when it is known.
        """
        try:
            return await self._execute(operation)
        except TaskraftError as error:
            raise self._with_leader_address(error) from None

    def _with_leader_address(self, error: TaskraftError) -> TaskraftError:
        if isinstance(error, NotLeader) and error.leader_address is None:
            error.leader_address = (
                None if error.leader_id is None else self._leader_address_of(error.leader_id)
            )
        return error

    async def _execute(self, operation: protocol.Operation) -> protocol.Result | None:
        replica = self._replica_provider()
        if isinstance(operation, protocol.Status):
            return self._status(replica)
        _require_leader(replica)
        match operation:
            case protocol.Count():
                await replica.linearizable_barrier()
                return _counts(self._replica_provider().state_machine.count(operation.queue))
            case protocol.ListQueues():
                await replica.linearizable_barrier()
                return _page(self._replica_provider().state_machine.list_queues(), operation)
            case protocol.CreateQueue():
                result = await replica.submit(_create_queue_command(operation))
                return _description(_expect(result, queue_commands.QueueDescription))
            case protocol.DeleteQueue():
                await replica.submit(queue_commands.DeleteQueue(operation.queue))
                return None
            case protocol.Enqueue():
                command = queue_commands.Enqueue(
                    operation.queue,
                    operation.priority,
                    operation.payload,
                    key=operation.key,
                    delay_ms=operation.delay_ms,
                )
                enqueued = _expect(await replica.submit(command), queue_commands.EnqueueResult)
                return protocol.Enqueued(task_id=enqueued.task_id, duplicate=enqueued.duplicate)
            case protocol.Dequeue():
                return await self._dequeue(replica, operation)
            case protocol.Ack():
                task = operation.task
                await replica.submit(queue_commands.Ack(task.task_id, task.lease))
                return None
            case protocol.Nack():
                task = operation.task
                await replica.submit(
                    queue_commands.Nack(task.task_id, task.lease, operation.delay_ms)
                )
                return None
            case protocol.Extend():
                task = operation.task
                await replica.submit(
                    queue_commands.Extend(task.task_id, task.lease, operation.lease_ms)
                )
                return None
            case protocol.EnqueueMany():
                result = await replica.submit(_enqueue_many_command(operation))
                enqueued_many = _expect(result, queue_commands.EnqueueManyResult)
                return protocol.EnqueuedMany(
                    task_ids=enqueued_many.task_ids, duplicates=enqueued_many.duplicates
                )
            case protocol.DequeueMany():
                return await self._dequeue_many(replica, operation)
            case protocol.AckMany():
                leases = operation.tasks
                ack_many = queue_commands.AckMany(
                    tuple([lease.task_id for lease in leases]),
                    tuple([lease.lease for lease in leases]),
                )
                acked = _expect(await replica.submit(ack_many), queue_commands.AckManyResult)
                return _acked_many(acked, len(leases))
        raise BadRequest(f"operation {operation.name} is not served by this node")

    async def _dequeue(
        self, replica: Replica, operation: protocol.Dequeue
    ) -> protocol.DeliveredTask | None:
        command = queue_commands.Dequeue(operation.queue, lease_ms=operation.lease_ms)
        delivered = await self._long_poll(
            replica,
            operation.queue,
            operation.wait_ms,
            lambda serving: _submit_dequeue(serving, command),
            lambda task: task is not None,
        )
        return self._delivered(delivered, operation)

    async def _dequeue_many(
        self, replica: Replica, operation: protocol.DequeueMany
    ) -> protocol.DeliveredTasks:
        """A DequeueMany, waiting as a Dequeue does when none is ready at first.

        The answer's payloads stay within BATCH_PAYLOAD_BYTES_MAX (but for a first task larger
        than that), so that it fits in one frame. A waiter woken claims one ready task, and
        takes what its command takes.
        """
        command = queue_commands.DequeueMany(
            operation.queue,
            operation.max_tasks,
            lease_ms=operation.lease_ms,
            max_bytes=protocol.BATCH_PAYLOAD_BYTES_MAX,
        )
        dequeued = await self._long_poll(
            replica,
            operation.queue,
            operation.wait_ms,
            lambda serving: _submit_dequeue_many(serving, command),
            lambda taken: bool(taken.tasks),
        )
        return protocol.DeliveredTasks(tasks=()) if dequeued is None else _delivered_tasks(dequeued)

    # -- waiting dequeues --------------------------------------------------------------------

    async def _long_poll(
        self,
        replica: Replica,
        queue: str,
        wait_ms: int,
        submit: Callable[[Replica], Awaitable[_R]],
        got: Callable[[_R], bool],
    ) -> _R | None:
        """What `submit` answers on `replica`, waiting up to `wait_ms` for it to get something.

        When the first answer got nothing and `wait_ms` allows, waits (within `long_polls_max`)
        for tasks of `queue`, submitting again on the serving replica each time one may be
        ready; None at the deadline.
        """
        result = await submit(replica)
        if got(result) or wait_ms == 0:
            return result
        if self._long_polls >= self.long_polls_max:
            self.long_polls_refused += 1
            raise Overloaded(
                f"{self._long_polls} dequeues are already waiting on this node; try again shortly"
            )
        deadline = asyncio.get_running_loop().time() + wait_ms / 1000
        self._long_polls += 1
        try:
            return await self._wait_for_task(queue, deadline, submit, got)
        finally:
            self._long_polls -= 1
            if self._long_polls == 0:
                self._unwatch()

    async def _wait_for_task(
        self,
        queue: str,
        deadline: float,
        submit: Callable[[Replica], Awaitable[_R]],
        got: Callable[[_R], bool],
    ) -> _R | None:
        """Call `submit` each time a task of `queue` may be ready, until it `got` something;
        None at `deadline`."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                replica = self._serving_replica()
                if loop.time() >= deadline:
                    return None
                self._watch(replica)
                ready = replica.state_machine.ready_count(queue)
                waiters = self._waiters.setdefault(queue, _QueueWaiters())
                turn: asyncio.Future[None] = loop.create_future()
                if ready > len(waiters.claims):
                    waiters.claims.add(turn)
                elif not await self._wait_for_turn(queue, waiters, turn, deadline):
                    return None
                if turn not in waiters.claims:
                    continue  # woken to look at the node again, not for a task
                try:
                    result = await submit(self._serving_replica())
                finally:
                    self._release(queue, waiters, turn)
                if got(result):
                    return result
        finally:
            self._forget_if_idle(queue)

    async def _wait_for_turn(
        self, queue: str, waiters: _QueueWaiters, turn: asyncio.Future[None], deadline: float
    ) -> bool:
        """Wait until `turn` is woken (True) or until `deadline` (False)."""
        woken = False
        waiters.waiting[turn] = None
        try:
            async with asyncio.timeout_at(deadline):
                await turn
            woken = True
        except TimeoutError:
            return False
        finally:
            waiters.waiting.pop(turn, None)
            if not woken:
                # Woken for a task at the deadline, or cancelled: hand the task to another.
                self._release(queue, waiters, turn)
        return True

    def _release(self, queue: str, waiters: _QueueWaiters, turn: asyncio.Future[None]) -> None:
        """`turn` no longer tries for a task: offer what it might have taken to the others."""
        if turn in waiters.claims:
            waiters.claims.discard(turn)
            self._wake_waiters((queue,))

    def _forget_if_idle(self, queue: str) -> None:
        waiters = self._waiters.get(queue)
        if waiters is not None and not waiters.waiting and not waiters.claims:
            del self._waiters[queue]

    def _serving_replica(self) -> Replica:
        if self._closing:
            raise Unavailable("this node is shutting down")
        replica = self._replica_provider()
        _require_leader(replica)
        return replica

    def _watch(self, replica: Replica) -> None:
        if self._watched is not replica:
            self._unwatch()
            replica.add_progress_listener(self._replica_progressed)
            self._watched = replica

    def _unwatch(self) -> None:
        watched, self._watched = self._watched, None
        if watched is not None:
            watched.remove_progress_listener(self._replica_progressed)

    def _replica_progressed(self) -> None:
        self._wake_waiters(list(self._waiters))

    def _wake_waiters(self, queues: Iterable[str]) -> None:
        """Wake the waiters of `queues` that a ready task awaits; all of them if none can be served.

        Every waiter is woken, without a task, when the listener closes, when the provider's
        replica is not the one watched (it was replaced: waiters move their subscription), or
        when it stopped or does not lead; each then answers or waits again as it finds the node.
        """
        replica = None if self._closing else self._replica_provider()
        if (
            replica is None
            or replica is not self._watched
            or replica.stopped
            or replica.raft.role is not Role.LEADER
        ):
            for queue_waiters in self._waiters.values():
                queue_waiters.wake_all()
            return
        state_machine = replica.state_machine
        for queue in queues:
            waiters = self._waiters.get(queue)
            if waiters is None or not waiters.waiting:
                continue
            try:
                ready = state_machine.ready_count(queue)
            except TaskraftError:
                # The queue went away: each waiter looks again and answers why.
                waiters.wake_all()
                continue
            waiters.offer(ready - len(waiters.claims))

    def _delivered(
        self, task: queue_commands.DeliveredTask | None, operation: protocol.Dequeue
    ) -> protocol.DeliveredTask | None:
        if task is None:
            return None
        lease_ms: int | None = None
        if task.lease_token is not None:
            lease_ms = (
                operation.lease_ms
                if operation.lease_ms is not None
                else self._lease_ms_default(operation.queue, task)
            )
        return _delivered_task(task, lease_ms)

    def _lease_ms_default(self, queue: str, task: queue_commands.DeliveredTask) -> int:
        state_machine = self._replica_provider().state_machine
        try:
            return state_machine.describe_queue(queue).policies.lease_ms_default
        except TaskraftError:
            # The queue went away since: what is left of the lease is the honest answer.
            expires_ms = task.lease_expires_ms or 0
            return max(0, expires_ms - state_machine.clock_ms)

    def _status(self, replica: Replica) -> protocol.NodeStatus:
        raft = replica.raft
        leader_id = None if raft.leader_id is None else str(raft.leader_id)
        return protocol.NodeStatus(
            node=self.node_id,
            role=raft.role.value,
            term=int(raft.term),
            leader_id=leader_id,
            leader_address=None if leader_id is None else self._leader_address_of(leader_id),
            commit_index=int(raft.commit_index),
            applied_index=int(raft.applied_index),
        )


@dataclass(slots=True)
class _QueueWaiters:
    """The dequeues waiting for a task of one queue, and those woken for one."""

    # Turns of the waiting dequeues, oldest first (an ordered set); resolving a turn wakes its
    # dequeue.
    waiting: OrderedDict[asyncio.Future[None], None] = field(default_factory=OrderedDict)
    # Turns of the dequeues trying for a ready task (their Dequeue is in flight): as many ready
    # tasks are spoken for, so no other waiter is woken for them.
    claims: set[asyncio.Future[None]] = field(default_factory=set)

    def offer(self, tasks: int) -> None:
        """Wake the oldest waiters, one per task, each with a claim on it."""
        woken = 0
        while woken < tasks and self.waiting:
            turn, _ = self.waiting.popitem(last=False)
            if turn.done():
                continue  # cancelled at its deadline: that waiter is leaving by itself
            self.claims.add(turn)
            turn.set_result(None)
            woken += 1

    def wake_all(self) -> None:
        """Wake every waiter without a claim, to look at the node again."""
        for turn in self.waiting:
            if not turn.done():
                turn.set_result(None)
        self.waiting.clear()


class _ClientConnection(asyncio.Protocol):
    """One client connection: bytes in, events out, one task per request in flight."""

    def __init__(self, listener: ClientListener) -> None:
        self._listener = listener
        # Who authenticated on this connection; kept until it closes, whatever the token file
        # says later. None when the node requires no token.
        self._identity: Identity | None = None
        self._protocol = ServerConnection(
            node_id=listener.node_id,
            requests_in_flight_max=listener.requests_in_flight_max,
            check_handshake=None if listener.tokens is None else self._check_handshake,
        )
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._client_done = False  # the client ended its stream
        self._closed = False
        # Connected (under TLS: its handshake done).
        self.made = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not derive from asyncio.Transport, but behave alike).
        self._transport = cast(asyncio.Transport, transport)
        self.made = True
        refusal = self._listener._admit(self)
        if refusal is not None:
            self._fail(refusal)
            return
        timeout = self._listener.handshake_timeout_s
        self._handshake_timer = asyncio.get_running_loop().call_later(
            timeout, self._handshake_expired, timeout
        )

    def data_received(self, data: bytes) -> None:
        self._receive(data)

    def eof_received(self) -> bool:
        self._receive(b"")
        # Keep the transport half open: the answers to requests in flight still go out. TLS
        # has no half-close: the end of the client's stream ends the connection.
        return self._listener.tls is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._transport is not None and not self._closed and not self._client_done:
            self._transport.resume_reading()

    # -- events ------------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self._closed or self._client_done:
            return
        connection = self._protocol
        try:
            connection.receive_data(data)
            while not self._closed:
                event = connection.next_event()
                if event is None:
                    break
                if isinstance(event, Handshake):
                    self._cancel_handshake_timer()
                elif isinstance(event, Request):
                    self._spawn(event)
                elif isinstance(event, RequestRejected):
                    self._listener.requests_rejected += 1
                    logger.debug("request %s rejected: %s", event.request_id, event.error)
                elif isinstance(event, ProtocolFailure):
                    self._listener.protocol_failures += 1
                    logger.debug("client connection failed: %s", event.error)
                    self._close_after_flush()
                    return
                elif isinstance(event, ConnectionClosed):
                    self._client_done = True
                    if self._transport is not None:
                        self._transport.pause_reading()
                    self._close_when_idle()
                    break
            self._flush()
        except Exception:
            logger.exception("client connection broke; closing it")
            self._abort()

    def _check_handshake(self, handshake: Handshake) -> TaskraftError | None:
        try:
            self._identity = self._listener.authenticate(handshake.token)
        except Unauthenticated as error:
            return error
        return None

    def _spawn(self, request: Request) -> None:
        task = asyncio.get_running_loop().create_task(
            self._serve(request), name=f"taskraft-client-request-{request.request_id}"
        )
        self._tasks.add(task)
        self._listener._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._listener._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("client request task failed", exc_info=task.exception())
        self._close_when_idle()

    async def _serve(self, request: Request) -> None:
        """Answer `request` and write the answer; the request counts against its token's
        requests_per_token_max from the start until the answer is written (or the task ends)."""
        listener = self._listener
        identity = self._identity
        refusal = listener.take_token_slot(identity)
        if refusal is not None:
            await self._send(Response(request.request_id, error=refusal))
            return
        try:
            response = await listener.answer(request, identity)
            await self._send(response)
        finally:
            listener.release_token_slot(identity)

    async def _send(self, response: Response) -> None:
        """Write `response` once the transport takes more, unless the connection is gone."""
        await self._writable.wait()
        if self._closed or self._protocol.state is ConnectionState.FAILED:
            return
        try:
            self._protocol.send_response(response)
        except LocalProtocolError:
            logger.exception("cannot encode the answer to request %s", response.request_id)
            self._protocol.send_response(
                Response(response.request_id, error=Unavailable("the node could not answer"))
            )
        self._flush()

    # -- closing -----------------------------------------------------------------------------

    def shut_down(self, error: TaskraftError) -> None:
        """Tell the client why, close, and cancel the requests in flight."""
        if not self._closed:
            self._fail(error)
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > 0:
            # A client that does not read must not hold the shutdown up.
            transport.abort()

    def _handshake_expired(self, timeout: float) -> None:
        self._handshake_timer = None
        if self._protocol.state is ConnectionState.AWAITING_HANDSHAKE and not self._closed:
            self._listener.handshake_timeouts += 1
            self._fail(BadRequest(f"no handshake within {timeout:g} s"))

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _fail(self, error: TaskraftError) -> None:
        """End the connection with an error frame."""
        if self._protocol.state is not ConnectionState.FAILED:
            try:
                self._protocol.send_connection_error(error)
            except LocalProtocolError:
                logger.exception("cannot send a connection error")
        self._close_after_flush()

    def _close_when_idle(self) -> None:
        if self._client_done and not self._tasks and not self._closed:
            self._close_after_flush()

    def _close_after_flush(self) -> None:
        self._flush()
        self._end()
        if self._transport is not None:
            self._transport.close()

    def _abort(self) -> None:
        self._end()
        if self._transport is not None:
            self._transport.abort()

    def _end(self) -> None:
        """Serve nothing more: cancel the requests in flight and leave the listener."""
        self._closed = True
        self._cancel_handshake_timer()
        for task in self._tasks:
            task.cancel()
        self._listener._forget(self)

    def _flush(self) -> None:
        data = self._protocol.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def _require_leader(replica: Replica) -> None:
    """Raise unless `replica` runs and leads: a stopped leader serves nothing more."""
    if replica.stopped:
        raise Unavailable("this node is stopping")
    raft = replica.raft
    if raft.role is not Role.LEADER:
        raise NotLeader("this node does not lead", leader_id=raft.leader_id)


def _expect(result: CommandResult, expected: type[_T]) -> _T:
    if not isinstance(result, expected):
        raise Unavailable(
            f"the state machine answered {type(result).__name__}, not {expected.__name__}"
        )
    return result


def _create_queue_command(operation: protocol.CreateQueue) -> queue_commands.CreateQueue:
    return queue_commands.CreateQueue(
        operation.queue,
        kind="heap" if operation.kind is None else operation.kind,
        max_size=operation.max_size,
        max_payload_bytes=operation.max_payload_bytes,
        priority_range=operation.priority_range,
        lease_ms_default=(
            LEASE_MS_DEFAULT if operation.lease_ms_default is None else operation.lease_ms_default
        ),
        max_deliveries=operation.max_deliveries,
        dead_letter_queue=operation.dead_letter_queue,
    )


def _counts(counts: queue_commands.QueueCounts) -> protocol.QueueCounts:
    return protocol.QueueCounts(ready=counts.ready, delayed=counts.delayed, leased=counts.leased)


def _description(description: queue_commands.QueueDescription) -> protocol.QueueDescription:
    policies = description.policies
    return protocol.QueueDescription(
        name=description.name,
        policies=protocol.QueuePolicies(
            kind=str(policies.kind.value),
            max_size=policies.max_size,
            max_payload_bytes=policies.max_payload_bytes,
            priority_range=policies.priority_range,
            lease_ms_default=policies.lease_ms_default,
            max_deliveries=policies.max_deliveries,
            dead_letter_queue=policies.dead_letter_queue,
        ),
        counts=_counts(description.counts),
    )


def _page(
    queues: tuple[queue_commands.QueueDescription, ...], operation: protocol.ListQueues
) -> protocol.QueuePage:
    after = operation.after
    following = [queue for queue in queues if after is None or queue.name > after]
    page = following[: operation.limit]
    return protocol.QueuePage(
        queues=tuple(_description(queue) for queue in page),
        more=len(following) > len(page),
    )


# -- batches -------------------------------------------------------------------------------------


def _enqueue_many_command(operation: protocol.EnqueueMany) -> queue_commands.EnqueueMany:
    tasks = operation.tasks
    return queue_commands.EnqueueMany(
        operation.queue,
        tuple([task.priority for task in tasks]),
        tuple([task.payload for task in tasks]),
        tuple([task.key for task in tasks]),
        tuple([task.delay_ms for task in tasks]),
    )


def _acked_many(acked: queue_commands.AckManyResult, count: int) -> protocol.AckedMany:
    errors: list[int | None] = [None] * count
    for index, code in acked.failures:
        errors[index] = code
    return protocol.AckedMany(errors=tuple(errors))


async def _submit_dequeue(
    replica: Replica, command: queue_commands.Dequeue
) -> queue_commands.DeliveredTask | None:
    result = await replica.submit(command)
    return None if result is None else _expect(result, queue_commands.DeliveredTask)


async def _submit_dequeue_many(
    replica: Replica, command: queue_commands.DequeueMany
) -> queue_commands.DequeuedTasks:
    return _expect(await replica.submit(command), queue_commands.DequeuedTasks)


def _delivered_tasks(dequeued: queue_commands.DequeuedTasks) -> protocol.DeliveredTasks:
    lease_ms = dequeued.lease_ms
    return protocol.DeliveredTasks(
        tasks=tuple(
            [
                _delivered_task(task, None if task.lease_token is None else lease_ms)
                for task in dequeued.tasks
            ]
        )
    )


def _delivered_task(
    task: queue_commands.DeliveredTask, lease_ms: int | None
) -> protocol.DeliveredTask:
    return protocol.DeliveredTask(
        task_id=task.task_id,
        lease=task.lease_token,
        queue=task.queue,
        priority=task.priority,
        payload=task.payload,
        deliveries=task.deliveries,
        lease_ms=lease_ms,
    )


__all__ = ["ClientListener"]
