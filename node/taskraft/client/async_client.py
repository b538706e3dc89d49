"""`AsyncClient`: the client protocol over one asyncio connection to the leader.

The connection is a `ClientConnection` (the sans-IO protocol) over asyncio streams. Requests are
pipelined: each one registers a future under its request id, and one reader task per connection
feeds the bytes it reads to the protocol and resolves the futures its answers name.

Which node to talk to: the last leader a `not_leader` answer named, else the configured servers
in turn. A lost connection is replaced on the next attempt.

When a request is sent again (docs/protocol.md, "Retrying safely"):

- `not_leader` and `overloaded` answers: always; the request was not executed.
- no connection could be made, so nothing was sent: always.
- the connection was lost, no answer came in time, or `unavailable` was answered: only for
  reads and for writes that cannot take effect twice (`create_queue`, `delete_queue`,
  `dequeue` and `dequeue_many`, and `enqueue` and `enqueue_many`, whose every task carries an
  idempotency key). `ack`, `ack_many`, `nack` and `extend` raise `Unavailable` instead:
  whether they took effect is unknown.

Batches (`enqueue_many`, `dequeue_many`, `ack_many`) larger than the protocol's bounds
(BATCH_TASKS_MAX tasks, BATCH_PAYLOAD_BYTES_MAX bytes of payloads) are split into several
requests, sent one after the other so that the tasks keep their order.

Attempts back off exponentially with jitter, and a call gives up with `Unavailable` once its
deadline (`request_timeout_s`, plus `wait_ms` for a dequeue) has passed.

A node that requires a token (`taskraft serve --auth-token-file`) is given `token` in every
handshake. `Unauthenticated` (no token, or one the node does not know) and `Forbidden` (the
token's role does not allow the operation) are raised at once, never retried: the same token
would get the same answer.

A node that serves TLS (`taskraft serve --tls-cert`) is reached with `tls`, an `ssl.SSLContext`
such as `taskraft.tls.client_context(CA_FILE)`: the node's certificate must come from a trusted
authority and name the host dialed. A certificate the context does not trust fails like an
unreachable node (the next server is tried), and the error says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import ssl
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from taskraft.addresses import parse_address
from taskraft.errors import (
    NotLeader,
    Overloaded,
    TaskraftError,
    Unauthenticated,
    Unavailable,
    UnknownLease,
    error_from_code,
)
from taskraft.peer.backoff import ReconnectBackoff
from taskraft.protocol import (
    BATCH_PAYLOAD_BYTES_MAX,
    BATCH_TASKS_MAX,
    Ack,
    AckedMany,
    AckMany,
    ClientConnection,
    ConnectionClosed,
    Count,
    CreateQueue,
    DeleteQueue,
    DeliveredTask,
    DeliveredTasks,
    Dequeue,
    DequeueMany,
    Enqueue,
    Enqueued,
    EnqueuedMany,
    EnqueueItem,
    EnqueueMany,
    Extend,
    HandshakeAccepted,
    ListQueues,
    Nack,
    NodeStatus,
    Operation,
    ProtocolFailure,
    QueueCounts,
    QueueDescription,
    QueuePage,
    Request,
    Response,
    Status,
    TaskLease,
)
from taskraft.protocol.limits import REQUESTS_IN_FLIGHT_MAX

logger = logging.getLogger(__name__)

_READ_SIZE = 65536

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Task:
    """A task delivered by `dequeue`; hand it back to `ack`, `nack` or `extend`.

    `lease` is the delivery's lease token, None for a task dequeued without a lease
    (`lease_ms=0`), which needs no acknowledgement. `deliveries` counts this delivery.
    """

    id: int
    priority: int
    payload: bytes
    deliveries: int
    lease: int | None
    queue: str
    lease_ms: int | None

    def _task_lease(self) -> TaskLease:
        if self.lease is None:
            raise ValueError(f"task {self.id} was delivered without a lease: nothing to settle")
        return TaskLease(task_id=self.id, lease=self.lease)

    @classmethod
    def _delivered(cls, delivered: DeliveredTask) -> Task:
        return cls(
            id=delivered.task_id,
            priority=delivered.priority,
            payload=delivered.payload,
            deliveries=delivered.deliveries,
            lease=delivered.lease,
            queue=delivered.queue,
            lease_ms=delivered.lease_ms,
        )


EnqueueItems = Iterable[bytes | tuple[bytes, int] | EnqueueItem]
"""What `enqueue_many` takes: payloads, (payload, priority) pairs or `EnqueueItem`s, mixed."""


class _NotSent(Exception):
    """The request surely did not reach a node: no connection could be made or used."""


class _Lost(Exception):
    """The connection ended while the request was in flight: its outcome is unknown."""


class _Connection:
    """One TCP connection to a node, past its handshake, with a reader task."""

    def __init__(
        self,
        address: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: ClientConnection,
        node: str,
    ) -> None:
        self.address = address
        self.node = node
        self._reader = reader
        self._writer = writer
        self._protocol = protocol
        self._pending: dict[int, asyncio.Future[object]] = {}
        self._closed = False
        self.reader_task = asyncio.create_task(self._read(), name=f"taskraft-client-{address}")

    @classmethod
    async def open(
        cls,
        address: str,
        *,
        client_name: str | None,
        token: str | None,
        tls: ssl.SSLContext | None,
        timeout: float,
    ) -> _Connection:
        """Connect and handshake; OSError, TimeoutError or the error the node refused with."""
        host, port = parse_address(address)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=None if tls is None else host
            )
            try:
                protocol = ClientConnection(client_name=client_name, token=token)
                writer.write(protocol.data_to_send())
                await writer.drain()
                while (event := protocol.next_event()) is None:
                    protocol.receive_data(await reader.read(_READ_SIZE))
            except BaseException:
                writer.close()
                raise
        if not isinstance(event, HandshakeAccepted):
            writer.close()
            if isinstance(event, ProtocolFailure):
                raise event.error
            raise ConnectionError(f"{address} closed the connection during the handshake")
        return cls(address, reader, writer, protocol, event.node)

    @property
    def usable(self) -> bool:
        return not self._closed

    def send(self, operation: Operation) -> asyncio.Future[object]:
        """Send a request; the future gets its result, its error, or `_Lost`.

        Raises `_NotSent` when the connection is already closed, and the error the server would
        answer for arguments it refuses.
        """
        if self._closed:
            raise _NotSent(f"the connection to {self.address} is closed")
        request_id = self._protocol.send_request(operation)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._writer.write(self._protocol.data_to_send())
        return future

    def close(self, reason: str = "the connection was closed") -> None:
        """Close the transport and fail the requests in flight; the reader task then ends."""
        if not self._closed:
            self._closed = True
            self._writer.close()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(_Lost(f"{self.address}: {reason}"))

    async def _read(self) -> None:
        reason = "the node closed the connection"
        try:
            while not self._closed:
                data = await self._reader.read(_READ_SIZE)
                self._protocol.receive_data(data)
                while (event := self._protocol.next_event()) is not None:
                    if isinstance(event, Response):
                        self._answer(event)
                    elif isinstance(event, ProtocolFailure):
                        reason = f"protocol failure: {event.error.name}: {event.error.message}"
                        return
                    elif isinstance(event, ConnectionClosed):
                        return
        except (OSError, TaskraftError) as error:
            reason = f"connection error: {error!r}"
        finally:
            self.close(reason)

    def _answer(self, response: Response) -> None:
        future = self._pending.pop(response.request_id, None)
        if future is None or future.done():
            return
        if response.error is not None:
            future.set_exception(response.error)
        else:
            future.set_result(response.result)


class AsyncClient:
    """A taskraft client for asyncio code; use `async with AsyncClient(servers=[...])`.

    `servers` are `host:port` client addresses of any of the cluster's nodes; `token` is the
    bearer token of a cluster that requires one; `tls` the `ssl.SSLContext` for a cluster that
    serves TLS (`taskraft.tls.client_context`). Every method raises the `taskraft.errors` class
    of the error the cluster answered, and `Unavailable` when no answer could be had within
    `request_timeout_s`.
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        client_name: str | None = "taskraft-python",
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        request_timeout_s: float = 30.0,
        attempt_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        redirects_max: int = 3,
    ) -> None:
        if isinstance(servers, str):
            servers = [servers]
        if not servers:
            raise ValueError("servers must name at least one host:port")
        for server in servers:
            parse_address(server)
        if min(request_timeout_s, attempt_timeout_s, connect_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string, or None")
        self._servers = list(servers)
        self._client_name = client_name
        self._token = token
        self._tls = tls
        self._warned_clear_token = False
        self.request_timeout_s = request_timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.redirects_max = redirects_max
        self._connection: _Connection | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._connect_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(REQUESTS_IN_FLIGHT_MAX)
        self._leader_address: str | None = None
        self._next_server = 0
        self._closed = False
        self._closed_event = asyncio.Event()
        self._random = random.Random()

    def _warn_if_token_in_the_clear(self, address: str) -> None:
        """Log once when the token is about to cross a network in the clear (no TLS, to a host
        other than this machine): whoever sees the traffic can use it."""
        if self._token is None or self._tls is not None or self._warned_clear_token:
            return
        host, _ = parse_address(address)
        if _is_loopback(host):
            return
        self._warned_clear_token = True
        logger.warning(
            "sending the token to %s without TLS: anyone who sees the traffic can use it; "
            "give tls= (taskraft.tls.client_context) for a cluster that serves TLS",
            address,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected_to(self) -> str | None:
        """The address of the node the client is connected to, if any."""
        connection = self._connection
        return connection.address if connection is not None and connection.usable else None

    # -- operations --------------------------------------------------------------------------

    async def create_queue(
        self,
        name: str,
        kind: str = "heap",
        *,
        max_size: int | None = None,
        max_payload_bytes: int | None = None,
        priority_range: tuple[int, int] | None = None,
        lease_ms_default: int | None = None,
        max_deliveries: int | None = None,
        dead_letter_queue: str | None = None,
    ) -> QueueDescription:
        """Create a queue. A retry after a lost answer may raise QueueAlreadyExists."""
        operation = CreateQueue(
            queue=name,
            kind=kind,
            max_size=max_size,
            max_payload_bytes=max_payload_bytes,
            priority_range=(
                None if priority_range is None else (priority_range[0], priority_range[1])
            ),
            lease_ms_default=lease_ms_default,
            max_deliveries=max_deliveries,
            dead_letter_queue=dead_letter_queue,
        )
        return _expect(await self._call(operation, resend_if_sent=True), QueueDescription)

    async def delete_queue(self, name: str) -> None:
        """Delete an empty queue. A retry after a lost answer may raise QueueNotFound."""
        await self._call(DeleteQueue(queue=name), resend_if_sent=True)

    async def list_queues(self) -> list[QueueDescription]:
        """Every queue, in name order (all pages)."""
        queues: list[QueueDescription] = []
        after: str | None = None
        while True:
            page = _expect(
                await self._call(ListQueues(after=after), resend_if_sent=True), QueuePage
            )
            queues.extend(page.queues)
            if not page.more or not page.queues:
                return queues
            after = page.queues[-1].name

    async def count(self, queue: str) -> QueueCounts:
        """The queue's ready, delayed and leased tasks (a linearizable read)."""
        return _expect(await self._call(Count(queue=queue), resend_if_sent=True), QueueCounts)

    async def enqueue(
        self,
        queue: str,
        payload: bytes,
        priority: int = 0,
        *,
        key: str | None = None,
        delay_ms: int = 0,
    ) -> int:
        """Add a task and return its id; lower priorities are served first.

        Without a `key` one is generated, so a retry never adds the task twice. The same `key`
        within the cluster's memory of keys (10 minutes) returns the first task's id.
        """
        if isinstance(payload, bytearray | memoryview):
            payload = bytes(payload)
        if not isinstance(payload, bytes):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        operation = Enqueue(
            queue=queue,
            payload=payload,
            priority=priority,
            key=uuid.uuid4().hex if key is None else key,
            delay_ms=delay_ms,
        )
        return _expect(await self._call(operation, resend_if_sent=True), Enqueued).task_id

    async def dequeue(
        self, queue: str, *, wait_ms: int = 0, lease_ms: int | None = None
    ) -> Task | None:
        """The next ready task, waiting up to `wait_ms` for one; None when none came.

        `lease_ms` None takes the queue's default lease; 0 takes the task without a lease (it is
        gone once delivered, even if this answer is lost).
        """
        operation = Dequeue(queue=queue, wait_ms=wait_ms, lease_ms=lease_ms)
        result = await self._call(
            operation, resend_if_sent=lease_ms != 0, extra_time_s=wait_ms / 1000
        )
        if result is None:
            return None
        return Task._delivered(_expect(result, DeliveredTask))

    async def enqueue_many(
        self, queue: str, items: EnqueueItems, *, priority: int = 0, delay_ms: int = 0
    ) -> list[int]:
        """Add tasks, in order, and return their ids in the same order.

        An item is a payload (taking `priority` and `delay_ms`), a (payload, priority) pair, or
        an `EnqueueItem` with a key and a delay of its own. Items without a key get a generated
        one, so a retried request never adds a task twice; a key that names a task enqueued
        before (or earlier in the same call) returns that task's id, as `enqueue` does.

        The tasks travel in as few requests as the protocol allows (1000 tasks and 640 KiB of
        payloads each, or one larger task), one after the other. Each request adds all of its
        tasks or none: when one fails, its error is raised, and the tasks of the requests before
        it stay enqueued (the error's note says how many). Every item is checked before the
        first request is sent.
        """
        return await self._enqueue_batches(
            enqueue_many_requests(queue, items, priority=priority, delay_ms=delay_ms)
        )

    async def _enqueue_batches(self, operations: Sequence[EnqueueMany]) -> list[int]:
        task_ids: list[int] = []
        for operation in operations:
            try:
                result = await self._call(operation, resend_if_sent=True)
            except TaskraftError as error:
                if task_ids:
                    error.add_note(
                        f"the first {len(task_ids)} tasks of this enqueue_many were enqueued "
                        f"in earlier requests: ids {task_ids[0]} to {task_ids[-1]}"
                    )
                raise
            task_ids.extend(_expect(result, EnqueuedMany).task_ids)
        return task_ids

    async def dequeue_many(
        self, queue: str, max_tasks: int, *, wait_ms: int = 0, lease_ms: int | None = None
    ) -> list[Task]:
        """Up to `max_tasks` ready tasks in the order the queue serves them, waiting up to
        `wait_ms` for one when none is ready; an empty list when none came.

        `lease_ms` as for `dequeue`. An answer stops before a task that would take its payloads
        past 640 KiB (but always holds one task), so fewer than `max_tasks` tasks may come
        even though more are ready. More than 1000 tasks are asked in several requests, the
        next one only while the previous one came back full.
        """
        tasks: list[Task] = []
        while True:
            asked = min(max_tasks - len(tasks), BATCH_TASKS_MAX)
            wait = 0 if tasks else wait_ms
            operation = DequeueMany(queue=queue, max_tasks=asked, wait_ms=wait, lease_ms=lease_ms)
            result = await self._call(
                operation, resend_if_sent=lease_ms != 0, extra_time_s=wait / 1000
            )
            delivered = _expect(result, DeliveredTasks).tasks
            tasks.extend(Task._delivered(task) for task in delivered)
            if len(delivered) < asked or len(tasks) >= max_tasks:
                return tasks

    async def ack_many(self, tasks: Iterable[Task]) -> list[tuple[Task, TaskraftError]]:
        """Acknowledge tasks, each on its own: return those not acknowledged, each with the
        error it met (UnknownLease: its lease had ended), or an empty list when all were.

        Up to 1000 tasks go in one request. As for `ack`, an answer that does not come raises
        Unavailable, since whether the acks took effect is unknown; the tasks of the requests
        before it were settled (the error's note says how many).
        """
        settled = list(tasks)
        leases = [task._task_lease() for task in settled]
        failures: list[tuple[Task, TaskraftError]] = []
        for start in range(0, len(leases), BATCH_TASKS_MAX):
            operation = AckMany(tasks=tuple(leases[start : start + BATCH_TASKS_MAX]))
            try:
                result = await self._call(operation, resend_if_sent=False)
            except TaskraftError as error:
                if start:
                    error.add_note(f"the first {start} tasks of this ack_many were settled")
                raise
            for index, code in enumerate(_expect(result, AckedMany).errors):
                if code is not None:
                    task = settled[start + index]
                    failures.append((task, _ack_error(task, code)))
        return failures

    async def ack(self, task: Task) -> None:
        """The task is done. UnknownLease: the lease had ended (it may be redelivered)."""
        await self._call(Ack(task=task._task_lease()), resend_if_sent=False)

    async def nack(self, task: Task, *, delay_ms: int = 0) -> None:
        """The task failed: it is ready again after `delay_ms` (or dead-lettered)."""
        await self._call(Nack(task=task._task_lease(), delay_ms=delay_ms), resend_if_sent=False)

    async def extend(self, task: Task, lease_ms: int) -> None:
        """The lease now ends `lease_ms` after the extension is applied."""
        await self._call(Extend(task=task._task_lease(), lease_ms=lease_ms), resend_if_sent=False)

    async def status(self) -> NodeStatus:
        """What the connected node knows of itself and of the leader."""
        return _expect(await self._call(Status(), resend_if_sent=True), NodeStatus)

    async def close(self) -> None:
        """Close the connection and end every task the client started; calls in flight fail."""
        self._closed = True
        self._closed_event.set()
        if self._connection is not None:
            self._connection.close("the client was closed")
            self._connection = None
        readers = list(self._readers)
        if readers:
            _, still_running = await asyncio.wait(readers, timeout=self.connect_timeout_s)
            for reader in still_running:
                reader.cancel()
            for reader in still_running:
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    # -- requests ----------------------------------------------------------------------------

    async def _call(
        self, operation: Operation, *, resend_if_sent: bool, extra_time_s: float = 0.0
    ) -> object:
        """Send `operation` until it is answered, retrying as the module docstring says."""
        loop = asyncio.get_running_loop()
        self._check_open()
        deadline = loop.time() + self.request_timeout_s + extra_time_s
        backoff = ReconnectBackoff(
            delay_min_ms=self.backoff_initial_s * 1000,
            delay_max_ms=self.backoff_max_s * 1000,
            random_source=self._random,
        )
        redirects = 0
        last_error: BaseException | None = None
        async with self._slots:
            while True:
                self._check_open()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Unavailable(
                        f"{operation.name}: no answer from the cluster within "
                        f"{self.request_timeout_s + extra_time_s:g} s; last error: {last_error}"
                    ) from last_error
                try:
                    connection = await self._connection_for(remaining)
                    future = connection.send(operation)
                except _NotSent as error:
                    last_error = error
                    await self._back_off(backoff, deadline)
                    continue
                try:
                    attempt_s = min(remaining, self.attempt_timeout_s + extra_time_s)
                    async with asyncio.timeout(attempt_s):
                        return await future
                except NotLeader as error:
                    last_error = error
                    self._drop(connection, "not the leader")
                    if error.leader_address is not None and redirects < self.redirects_max:
                        redirects += 1
                        self._leader_address = error.leader_address
                        continue
                    redirects = 0
                    self._leader_address = None
                    await self._back_off(backoff, deadline)
                except Overloaded as error:
                    last_error = error
                    await self._back_off(backoff, deadline)
                except (Unavailable, _Lost, TimeoutError) as error:
                    if isinstance(error, TimeoutError):
                        self._drop(connection, f"no answer to {operation.name} in time")
                    elif isinstance(error, Unavailable):
                        self._drop(connection, "the node is unavailable")
                    if not resend_if_sent:
                        raise Unavailable(
                            f"{operation.name}: the outcome is unknown ({error or 'timed out'}); "
                            "it may or may not have taken effect"
                        ) from error
                    last_error = error
                    await self._back_off(backoff, deadline)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")

    async def _back_off(self, backoff: ReconnectBackoff, deadline: float) -> None:
        """Sleep the next jittered backoff delay, never past the deadline; `close` cuts it
        short, so that a call waiting to retry fails at once."""
        remaining = deadline - asyncio.get_running_loop().time()
        delay = min(backoff.next_delay_ms() / 1000, max(remaining, 0.0))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closed_event.wait()

    def _drop(self, connection: _Connection, reason: str) -> None:
        connection.close(reason)
        if self._connection is connection:
            self._connection = None

    async def _connection_for(self, remaining: float) -> _Connection:
        """The current connection, or a new one: the last known leader first, then the
        servers in turn. `_NotSent` when none could be opened."""
        async with self._connect_lock:
            self._check_open()
            connection = self._connection
            if connection is not None and connection.usable:
                return connection
            self._connection = None
            candidates = [
                self._servers[(self._next_server + offset) % len(self._servers)]
                for offset in range(len(self._servers))
            ]
            if self._leader_address is not None:
                candidates.insert(0, self._leader_address)
            failures: list[str] = []
            for address in dict.fromkeys(candidates):
                self._warn_if_token_in_the_clear(address)
                try:
                    connection = await _Connection.open(
                        address,
                        client_name=self._client_name,
                        token=self._token,
                        tls=self._tls,
                        timeout=min(self.connect_timeout_s, remaining),
                    )
                except Unauthenticated:
                    # Every node holds the same tokens: another would answer the same.
                    raise
                except (OSError, TimeoutError, TaskraftError, ValueError) as error:
                    failures.append(f"{address}: {error!r}")
                    if address == self._leader_address:
                        self._leader_address = None
                    else:
                        self._next_server = (self._next_server + 1) % len(self._servers)
                    continue
                self._connection = connection
                self._readers.add(connection.reader_task)
                connection.reader_task.add_done_callback(self._readers.discard)
                return connection
            raise _NotSent("no server could be reached: " + "; ".join(failures))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def enqueue_many_requests(
    queue: str, items: EnqueueItems, *, priority: int = 0, delay_ms: int = 0
) -> list[EnqueueMany]:
    """The `enqueue_many` requests that carry `items` (see `AsyncClient.enqueue_many`), every
    task keyed, each request within the protocol's bounds; checked as the server will check
    them (raising the same errors), so that a bad item fails before anything is sent."""
    # One random prefix per call and the item's position: unique keys at the cost of one UUID.
    prefix = uuid.uuid4().hex
    operations: list[EnqueueMany] = []
    batch: list[EnqueueItem] = []
    batch_bytes = 0
    for index, item in enumerate(items):
        task = _enqueue_item(item, priority, delay_ms, f"{prefix}-{index}")
        size = len(task.payload)
        if batch and (
            len(batch) == BATCH_TASKS_MAX or batch_bytes + size > BATCH_PAYLOAD_BYTES_MAX
        ):
            operations.append(EnqueueMany(queue=queue, tasks=tuple(batch)))
            batch, batch_bytes = [], 0
        batch.append(task)
        batch_bytes += size
    if batch:
        operations.append(EnqueueMany(queue=queue, tasks=tuple(batch)))
    if len(operations) > 1:
        # A single request is checked as it is sent, before anything else is.
        for operation in operations:
            Request.from_wire(Request(request_id=0, operation=operation).to_wire())
    return operations


def _enqueue_item(
    item: bytes | tuple[bytes, int] | EnqueueItem, priority: int, delay_ms: int, key: str
) -> EnqueueItem:
    if isinstance(item, EnqueueItem):
        if item.key is not None:
            return item
        return EnqueueItem(
            payload=item.payload, priority=item.priority, key=key, delay_ms=item.delay_ms
        )
    if isinstance(item, tuple):
        if len(item) != 2:
            raise TypeError(f"an item tuple is (payload, priority), not {len(item)} values")
        payload, priority = item
    else:
        payload = item
    if isinstance(payload, bytearray | memoryview):
        payload = bytes(payload)
    if not isinstance(payload, bytes):
        raise TypeError(
            "an item is a payload (bytes), a (payload, priority) pair or an EnqueueItem, "
            f"not {type(payload).__name__}"
        )
    return EnqueueItem(payload=payload, priority=priority, key=key, delay_ms=delay_ms)


def _ack_error(task: Task, code: int) -> TaskraftError:
    """The error of a task's ack that an `ack_many` answered with `code`."""
    if code == UnknownLease.code:
        return UnknownLease(
            f"task {task.id} has no lease {task.lease}: it was acknowledged, or the lease "
            "expired and the task may have been delivered again"
        )
    return error_from_code(code, f"task {task.id} was not acknowledged")


def _expect(value: object, expected: type[_T]) -> _T:
    if not isinstance(value, expected):
        raise TaskraftError(f"expected {expected.__name__} from the server, got {value!r}")
    return value


__all__ = [
    "AsyncClient",
    "EnqueueItem",
    "EnqueueItems",
    "Task",
    "enqueue_many_requests",
    "parse_address",
]
