"""The HTTP port of a node: probes, status, admin operations, metrics and a JSON queue API.

Kubernetes probes `/healthz` and `/readyz`; the operator and people read `/v1/status` and change
the cluster through the admin endpoints (members, leadership, snapshots); Prometheus scrapes
`/metrics`; `curl` users enqueue and consume through `/v1/queues/...`. docs/http-api.md is the
reference.

Probes and status are computed from the node's memory without a Raft round, so they never queue
behind client traffic. Admin operations go through the Raft driver and answer once the change is
committed; they are idempotent (asking for what already holds answers 200). On a node that does
not lead, admin operations answer 307 to the leader's HTTP address (421 when the leader is not
known), and queue operations answer 421 with the leader's addresses in the error document.

Bounds: a request body is at most `REQUEST_BODY_MAX_BYTES`, and at most `REQUESTS_IN_FLIGHT_MAX`
requests are served at once; beyond, 429 (`overloaded`) at once.

Authentication: on a node with a token file (`Node.tokens`), every route but the probes needs
`Authorization: Bearer TOKEN`, and the token's role must grant the route's permission
(`route_permissions` says which: status and queue reads need `read`, the other queue operations
`write`, membership, leadership and snapshots `admin`). `/metrics` is open unless
`metrics_require_token` is set, when it needs any token. A missing or unknown token is answered
401 `unauthenticated` with `WWW-Authenticate: Bearer`, whichever it was; a role that does not
allow the route, 403 `forbidden`. Unknown paths and methods are answered 404 and 405 as without
tokens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import decimal
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

import taskraft
from taskraft import protocol
from taskraft.addresses import parse_address
from taskraft.errors import (
    BadRequest,
    Forbidden,
    InvalidArgument,
    NotLeader,
    Overloaded,
    TaskraftError,
    Unauthenticated,
    Unavailable,
)
from taskraft.protocol.fields import FieldReader
from taskraft.protocol.schema import error_to_wire
from taskraft.raft import LogIndex, MembershipChange, MembershipChangeKind, NodeId, Role
from taskraft.server.authentication import Permission
from taskraft.server.metrics import NodeMetrics
from taskraft.tls import TlsAcceptor

if TYPE_CHECKING:
    from taskraft.server.node import Node
    from taskraft.server.replica import Replica

# A 1 MiB payload in base64 plus its fields fits.
REQUEST_BODY_MAX_BYTES = 2 * 1024 * 1024
# Requests served at once: probes, status polls, admin calls and curl users need few.
REQUESTS_IN_FLIGHT_MAX = 256
# How long an admin operation waits for its change to commit.
ADMIN_TIMEOUT_S = 30.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# HTTP statuses of the protocol's error codes (docs/protocol.md).
_HTTP_STATUS_OF_ERROR: dict[int, int] = {
    1: 400,
    2: 404,
    3: 409,
    4: 400,
    5: 400,
    6: 400,
    7: 400,
    8: 400,
    9: 413,
    10: 429,
    11: 400,
    12: 409,
    13: 421,
    14: 429,
    15: 400,
    16: 400,
    17: 400,
    18: 409,
    19: 503,
    20: 401,
    21: 403,
}

# The route that may require a token or not, as `metrics_require_token` says.
_METRICS_PATH = "/metrics"
# The routes whose requests count against requests_per_token_max: the queue API.
_TOKEN_LIMITED_PREFIXES = ("/v1/queues", "/v1/tasks")
# Under TLS: a connection's TLS handshake must end this soon, and at most this many run at once
# (beyond, the oldest is ended).
TLS_HANDSHAKE_TIMEOUT_S = 10.0
TLS_HANDSHAKES_MAX = REQUESTS_IN_FLIGHT_MAX


class HttpApi:
    def __init__(
        self,
        node: Node,
        *,
        host: str,
        port: int,
        metrics: NodeMetrics,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self._node = node
        # HTTPS with the context in force (taskraft.tls), the handshakes under way bounded in
        # time and in number; None: plain HTTP.
        self._tls_acceptor = (
            None
            if tls is None
            else TlsAcceptor(
                tls,
                handshake_timeout_s=TLS_HANDSHAKE_TIMEOUT_S,
                pending_max=TLS_HANDSHAKES_MAX,
            )
        )
        self._tls_server: asyncio.Server | None = None
        self._host = host
        self._port = port
        self.metrics = metrics
        self._runner: web.AppRunner | None = None
        self._in_flight = 0
        # Requests refused 401 `unauthenticated` and 403 `forbidden` (metrics).
        self.authentication_failures = 0
        self.authorization_failures = 0
        application = web.Application(
            client_max_size=REQUEST_BODY_MAX_BYTES,
            middlewares=[self._bound_requests, self._authenticate],
        )
        read, write, admin = Permission.READ, Permission.WRITE, Permission.ADMIN
        # Every route and the permission it needs when the node requires tokens (None: open).
        routes: list[tuple[web.RouteDef, Permission | None]] = [
            (web.get("/healthz", self._healthz), None),
            (web.get("/readyz", self._readyz), None),
            (web.get("/v1/status", self._status), read),
            (web.get(_METRICS_PATH, self._metrics), read),
            (web.post("/v1/members", self._add_member), admin),
            (web.post("/v1/members/{node_id}/promote", self._promote_member), admin),
            (web.delete("/v1/members/{node_id}", self._remove_member), admin),
            (web.post("/v1/leadership/transfer", self._transfer_leadership), admin),
            (web.post("/v1/snapshot", self._take_snapshot), admin),
            (web.get("/v1/snapshot", self._download_snapshot), admin),
            (web.get("/v1/queues", self._list_queues), read),
            (web.post("/v1/queues", self._create_queue), write),
            (web.delete("/v1/queues/{queue}", self._delete_queue), write),
            (web.get("/v1/queues/{queue}/count", self._count), read),
            (web.post("/v1/queues/{queue}/enqueue", self._enqueue), write),
            (web.post("/v1/queues/{queue}/dequeue", self._dequeue), write),
            (web.post("/v1/tasks/{task_id}/ack", self._ack), write),
            (web.post("/v1/tasks/{task_id}/nack", self._nack), write),
            (web.post("/v1/tasks/{task_id}/extend", self._extend), write),
        ]
        application.add_routes([route for route, _ in routes])
        self.route_permissions: dict[tuple[str, str], Permission | None] = {
            (route.method, route.path): permission for route, permission in routes
        }
        self._application = application

    async def start(self) -> None:
        self._runner = web.AppRunner(self._application, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self._tls_acceptor is None:
            site = web.TCPSite(
                self._runner, self._host, self._port, backlog=REQUESTS_IN_FLIGHT_MAX
            )
            await site.start()
            return
        # aiohttp's sites leave the handshakes under way unbounded: its request handlers are
        # served through a TlsAcceptor instead.
        self._tls_server = await asyncio.get_running_loop().create_server(
            self._new_tls_connection, self._host, self._port, backlog=REQUESTS_IN_FLIGHT_MAX
        )

    def _new_tls_connection(self) -> asyncio.BaseProtocol:
        assert self._runner is not None and self._tls_acceptor is not None
        server = self._runner.server
        assert server is not None
        return self._tls_acceptor.wrap(server())

    @property
    def tls_handshake_failures(self) -> int:
        return 0 if self._tls_acceptor is None else self._tls_acceptor.failures

    @property
    def tls_handshakes_evicted(self) -> int:
        """TLS handshakes ended to make room: TLS_HANDSHAKES_MAX were under way."""
        return 0 if self._tls_acceptor is None else self._tls_acceptor.evicted

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0, the port the system picked."""
        if self._tls_server is not None and self._tls_server.sockets:
            host, port = self._tls_server.sockets[0].getsockname()[:2]
            return str(host), int(port)
        addresses = [] if self._runner is None else self._runner.addresses
        if not addresses:
            raise RuntimeError("the HTTP API is not listening")
        host, port = addresses[0][:2]
        return str(host), int(port)

    async def close(self) -> None:
        tls_server, self._tls_server = self._tls_server, None
        if tls_server is not None:
            tls_server.close()
        if self._tls_acceptor is not None:
            self._tls_acceptor.abort_pending()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _bound_requests(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if self._in_flight >= REQUESTS_IN_FLIGHT_MAX:
            self.metrics.http_rejected.inc()
            return _error_response(
                Overloaded(f"{self._in_flight} HTTP requests are in flight; try again shortly")
            )
        self._in_flight += 1
        try:
            return await handler(request)
        except web.HTTPException as exception:
            if exception.content_type == "application/json":
                raise
            # aiohttp's own answers (no such route, wrong method, body too large) in the same
            # JSON error document as every other error.
            message = f"{exception.status} {exception.reason}: {request.method} {request.path}"
            return _error_response(BadRequest(message), status=exception.status)
        finally:
            self._in_flight -= 1

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        tokens = self._node.tokens
        if tokens is None:
            return await handler(request)
        match_info = request.match_info
        resource = match_info.route.resource
        if resource is None or match_info.http_exception is not None:
            return await handler(request)  # 404 or 405, as without tokens
        method = "GET" if request.method == "HEAD" else request.method
        path = resource.canonical
        permission = self.route_permissions.get((method, path))
        if permission is None or (
            path == _METRICS_PATH and not self._node.settings.metrics_require_token
        ):
            return await handler(request)
        identity = tokens.identify(_bearer_token(request))
        if identity is None:
            self.authentication_failures += 1
            response = _error_response(Unauthenticated("authentication required"))
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if not identity.may(permission):
            self.authorization_failures += 1
            return _error_response(
                Forbidden(
                    f"{request.method} {path} needs the {permission.value} permission, which "
                    f"the role {identity.role.value} does not have"
                )
            )
        # The token's queue requests in flight count on this port as on the client port
        # (requests_per_token_max); status, metrics and the admin endpoints do not, so that
        # a busy token never blinds its operator or its scraper.
        listener = self._node.listener
        if listener is None or not path.startswith(_TOKEN_LIMITED_PREFIXES):
            return await handler(request)
        refusal = listener.take_token_slot(identity)
        if refusal is not None:
            return _error_response(refusal)
        try:
            return await handler(request)
        finally:
            listener.release_token_slot(identity)

    # -- probes and status -------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        """Alive: this answer proves the event loop runs; the Raft driver must still be running."""
        failure = self._node.failure
        if failure is not None:
            return _text(503, f"the Raft driver failed: {failure!r}")
        replica = self._node.replica
        if replica is None:
            return _text(503, "starting")
        if replica.stopped:
            return _text(503, "stopping")
        return _text(200, "ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = self.not_ready_reason()
        if reason is not None:
            return _text(503, reason)
        return _text(200, "ready")

    def not_ready_reason(self) -> str | None:
        """Why this node should not get client traffic yet, or None when it should."""
        replica = self._node.replica
        if replica is None or replica.stopped:
            return "the node is starting, stopping or has failed"
        raft = replica.raft
        if raft.id not in raft.configuration.members:
            return "not a member of the cluster (yet)"
        if raft.leader_id is None:
            return "no known leader"
        lag = raft.commit_index - raft.applied_index
        limit = self._node.settings.ready_lag_max_entries
        if lag > limit:
            return f"applied index is {lag} entries behind the commit index (limit {limit})"
        return None

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    def status(self) -> dict[str, Any]:
        node = self._node
        replica = node.replica
        document: dict[str, Any] = {
            "node_id": node.settings.node_id,
            "version": taskraft.__version__,
            "configuration_hash": node.configuration_hash,
            "uptime_s": round(time.monotonic() - node.started_monotonic, 3),
            "addresses": {
                "client": node.advertised_client_address,
                "peer": node.advertised_peer_address,
                "http": node.advertised_http_address,
            },
            "data_dir": {
                "path": str(node.settings.data_directory),
                "used_bytes": _directory_size(node.settings.data_directory),
            },
            "ready": self.not_ready_reason() is None,
        }
        if replica is None:
            return document
        raft = replica.raft
        log = raft.log
        last_index = log.last_index()
        leader_id = None if raft.leader_id is None else str(raft.leader_id)
        configuration = raft.configuration
        leading = raft.role is Role.LEADER
        now = time.monotonic()
        members = []
        for member in sorted(configuration.members):
            entry: dict[str, Any] = {
                "id": member,
                "peer_address": configuration.address_of(member),
                "voter": member in configuration.voters,
            }
            if leading and member != raft.id and member in raft.progress:
                progress = raft.progress[member]
                contact = node.last_contact.get(member)
                entry["match_index"] = int(progress.match_index)
                entry["next_index"] = int(progress.next_index)
                entry["last_contact_ms"] = None if contact is None else int((now - contact) * 1000)
                entry["caught_up"] = (
                    last_index - progress.match_index <= raft.options.promotion_lag_max_entries
                )
            elif leading and member == raft.id:
                entry.update(
                    match_index=int(last_index),
                    next_index=int(last_index) + 1,
                    last_contact_ms=0,
                    caught_up=True,
                )
            members.append(entry)
        document.update(
            {
                "role": raft.role.value,
                "term": int(raft.term),
                "leader": {
                    "id": leader_id,
                    "client_address": node.client_address_of(leader_id),
                    "http_address": node.http_address_of(leader_id),
                },
                "commit_index": int(raft.commit_index),
                "applied_index": int(raft.applied_index),
                "last_log_index": int(last_index),
                "last_log_term": int(log.term_at(LogIndex(last_index)) or 0),
                "snapshot_index": int(log.snapshot.metadata.index),
                "members": members,
            }
        )
        return document

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition(request.headers.get("Accept"))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    # -- admin -------------------------------------------------------------------------------

    def _leader_or_redirect(self, request: web.Request) -> web.Response | None:
        """None on the leader; otherwise the answer that sends the caller to the leader."""
        replica = self._node.replica
        if replica is None or replica.stopped:
            return _error_response(Unavailable("this node is starting or stopping"))
        raft = replica.raft
        if raft.role is Role.LEADER:
            return None
        leader_id = None if raft.leader_id is None else str(raft.leader_id)
        http_address = self._node.http_address_of(leader_id)
        if http_address is None:
            return _error_response(self._not_leader(leader_id))
        # Every node of a cluster serves TLS or none does: the leader speaks this scheme too.
        scheme = "http" if self._tls_acceptor is None else "https"
        location = f"{scheme}://{http_address}{request.path_qs}"
        response = _error_response(
            self._not_leader(leader_id), status=307, leader_http=http_address
        )
        response.headers["Location"] = location
        return response

    def _not_leader(self, leader_id: str | None) -> NotLeader:
        error = NotLeader("this node does not lead", leader_id=leader_id)
        error.leader_address = self._node.client_address_of(leader_id)
        return error

    async def _add_member(self, request: web.Request) -> web.Response:
        redirect = self._leader_or_redirect(request)
        if redirect is not None:
            return redirect
        body = await _json_body(request)
        _only_fields(body, "id", "peer_address")
        node_id = _text_field(body, "id")
        peer_address = _address_field(body, "peer_address")
        replica = self._replica()
        configuration = replica.raft.configuration
        if NodeId(node_id) in configuration.members:
            known = configuration.address_of(NodeId(node_id))
            if known not in (None, peer_address):
                return _error_response(
                    InvalidArgument(f"{node_id} is a member already, at {known}"), status=409
                )
            return web.json_response(self._member_document(node_id, "already a member"))
        change = MembershipChange(
            MembershipChangeKind.ADD_LEARNER, NodeId(node_id), address=peer_address
        )
        await self._admin(replica.change_membership(change))
        return web.json_response(self._member_document(node_id, "added as a learner"), status=201)

    async def _promote_member(self, request: web.Request) -> web.Response:
        redirect = self._leader_or_redirect(request)
        if redirect is not None:
            return redirect
        node_id = NodeId(request.match_info["node_id"])
        replica = self._replica()
        configuration = replica.raft.configuration
        if node_id in configuration.voters:
            return web.json_response(self._member_document(node_id, "already a voter"))
        if node_id not in configuration.learners:
            return _error_response(InvalidArgument(f"{node_id} is not a member"), status=404)
        change = MembershipChange(MembershipChangeKind.PROMOTE_LEARNER, node_id)
        await self._admin(replica.change_membership(change))
        return web.json_response(self._member_document(node_id, "promoted to voter"))

    async def _remove_member(self, request: web.Request) -> web.Response:
        redirect = self._leader_or_redirect(request)
        if redirect is not None:
            return redirect
        node_id = NodeId(request.match_info["node_id"])
        replica = self._replica()
        if node_id not in replica.raft.configuration.members:
            return web.json_response({"id": node_id, "result": "not a member"})
        change = MembershipChange(MembershipChangeKind.REMOVE_MEMBER, node_id)
        await self._admin(replica.change_membership(change))
        return web.json_response({"id": node_id, "result": "removed"})

    async def _transfer_leadership(self, request: web.Request) -> web.Response:
        redirect = self._leader_or_redirect(request)
        if redirect is not None:
            return redirect
        body = await _json_body(request, allow_empty=True)
        _only_fields(body, "target")
        target = body.get("target")
        if target is not None and (type(target) is not str or not target):
            raise _http_error(BadRequest("target: expected a node id"))
        replica = self._replica()
        if target == replica.raft.id:
            return web.json_response({"leader": target, "result": "already the leader"})
        new_leader = await self._admin(
            replica.transfer_leadership(
                None if target is None else NodeId(target), timeout_s=ADMIN_TIMEOUT_S
            )
        )
        return web.json_response({"leader": new_leader, "result": "transferred"})

    async def _take_snapshot(self, request: web.Request) -> web.Response:
        replica = self._replica()
        metadata = await self._admin(replica.take_snapshot(timeout_s=ADMIN_TIMEOUT_S))
        return web.json_response(
            {
                "index": int(metadata.index),
                "term": int(metadata.term),
                "size_bytes": len(replica.raft.log.snapshot.data),
            }
        )

    async def _download_snapshot(self, request: web.Request) -> web.StreamResponse:
        storage = self._node.storage
        if storage is None:
            return _error_response(Unavailable("this node is starting"))
        reader = await asyncio.to_thread(storage.open_snapshot_reader)
        if reader is None:
            return _error_response(Unavailable("this node holds no snapshot yet"), status=404)
        metadata = reader.metadata
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        response.headers["X-Taskraft-Snapshot-Index"] = str(metadata.index)
        response.headers["X-Taskraft-Snapshot-Term"] = str(metadata.term)
        response.headers["X-Taskraft-Snapshot-Crc32"] = f"{reader.data_crc32:08x}"
        response.content_length = reader.data_size_bytes
        response.headers["Content-Disposition"] = (
            f'attachment; filename="taskraft-snapshot-{metadata.index}.bin"'
        )
        await response.prepare(request)
        try:
            while True:
                # The reader checks the data against its crc32 at the end and raises if it is
                # damaged: the response is then cut short, which the client sees as an error.
                chunk = await asyncio.to_thread(next, reader, None)
                if chunk is None:
                    break
                await response.write(chunk)
        finally:
            reader.close()
        await response.write_eof()
        self.metrics.snapshot_downloads.inc()
        return response

    def _member_document(self, node_id: str, result: str) -> dict[str, Any]:
        configuration = self._replica().raft.configuration
        return {
            "id": node_id,
            "voter": NodeId(node_id) in configuration.voters,
            "peer_address": configuration.address_of(NodeId(node_id)),
            "result": result,
        }

    def _replica(self) -> Replica:
        replica = self._node.replica
        if replica is None or replica.stopped:
            raise _http_error(Unavailable("this node is starting or stopping"))
        return replica

    async def _admin(self, operation: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT_S):
                return await operation
        except TimeoutError:
            raise _http_error(
                Unavailable(f"the change did not commit within {ADMIN_TIMEOUT_S:g} s")
            ) from None
        except TaskraftError as error:
            raise _http_error(error) from None

    # -- the JSON queue API ------------------------------------------------------------------

    async def _queue_operation(
        self, operation_class: type[protocol.Operation], arguments: dict[str, object]
    ) -> web.Response:
        try:
            reader = FieldReader(arguments, "")
            operation = operation_class.from_args(reader)
            reader.finish()
        except TaskraftError as error:
            return _error_response(error)
        listener = self._node.listener
        if listener is None:
            return _error_response(Unavailable("this node is starting"))
        try:
            result = await listener.execute(operation)
        except TaskraftError as error:
            if isinstance(error, NotLeader):
                return _error_response(
                    error, leader_http=self._node.http_address_of(error.leader_id)
                )
            return _error_response(error)
        if result is None and operation.result_may_be_nil:
            return web.Response(status=204)
        return web.json_response(_json_safe(operation.result_to_wire(result)))

    async def _list_queues(self, request: web.Request) -> web.Response:
        arguments: dict[str, object] = {}
        if "after" in request.query:
            arguments["after"] = request.query["after"]
        if "limit" in request.query:
            arguments["limit"] = _integer_query(request, "limit")
        return await self._queue_operation(protocol.ListQueues, arguments)

    async def _create_queue(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body.get("priority_range"), list):
            body["priority_range"] = list(body["priority_range"])
        return await self._queue_operation(protocol.CreateQueue, body)

    async def _delete_queue(self, request: web.Request) -> web.Response:
        return await self._queue_operation(
            protocol.DeleteQueue, {"queue": request.match_info["queue"]}
        )

    async def _count(self, request: web.Request) -> web.Response:
        return await self._queue_operation(protocol.Count, {"queue": request.match_info["queue"]})

    async def _enqueue(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        _refuse_path_fields(body, "queue")
        body["payload"] = _payload(body)
        body.pop("payload_base64", None)
        body["queue"] = request.match_info["queue"]
        body.setdefault("priority", 0)
        return await self._queue_operation(protocol.Enqueue, body)

    async def _dequeue(self, request: web.Request) -> web.Response:
        body = await _json_body(request, allow_empty=True)
        _refuse_path_fields(body, "queue")
        body["queue"] = request.match_info["queue"]
        return await self._queue_operation(protocol.Dequeue, body)

    async def _task_operation(
        self, request: web.Request, operation_class: type[protocol.Operation]
    ) -> web.Response:
        body = await _json_body(request)
        _refuse_path_fields(body, "task", "id")
        try:
            task_id = int(request.match_info["task_id"])
        except ValueError:
            return _error_response(BadRequest("the task id in the path is not an integer"))
        lease = body.pop("lease", None)
        body["task"] = {"id": task_id, "lease": lease}
        return await self._queue_operation(operation_class, body)

    async def _ack(self, request: web.Request) -> web.Response:
        return await self._task_operation(request, protocol.Ack)

    async def _nack(self, request: web.Request) -> web.Response:
        return await self._task_operation(request, protocol.Nack)

    async def _extend(self, request: web.Request) -> web.Response:
        return await self._task_operation(request, protocol.Extend)


# -- helpers -----------------------------------------------------------------------------------


def _bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer TOKEN`, or None without one."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")


def _error_document(error: TaskraftError, leader_http: str | None = None) -> dict[str, Any]:
    """The protocol's error object (bounded message, leader fields), plus the leader's HTTP
    address for `not_leader`."""
    document: dict[str, Any] = dict(error_to_wire(error))
    if isinstance(error, NotLeader):
        document.setdefault("leader_id", error.leader_id)
        document.setdefault("leader_address", error.leader_address)
        document["leader_http_address"] = leader_http
    return {"error": document}


def _error_response(
    error: TaskraftError, *, status: int | None = None, leader_http: str | None = None
) -> web.Response:
    return web.json_response(
        _error_document(error, leader_http),
        status=status or _HTTP_STATUS_OF_ERROR.get(error.code, 500),
    )


def _http_error(error: TaskraftError, status: int | None = None) -> web.HTTPException:
    """An exception aiohttp turns into the error document (for handlers deep in a call)."""
    code = status or _HTTP_STATUS_OF_ERROR.get(error.code, 500)
    exception = web.HTTPException(
        text=json.dumps(_error_document(error)), content_type="application/json"
    )
    exception.set_status(code)
    return exception


async def _json_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise _http_error(BadRequest("the request needs a JSON object as its body"))
    try:
        document = json.loads(raw, parse_float=_json_number)
    except ValueError as error:
        raise _http_error(BadRequest(f"the body is not JSON: {error}")) from None
    if not isinstance(document, dict):
        raise _http_error(BadRequest("the body must be a JSON object"))
    return document


# The largest decimal exponent of an integral number read as an int by `_json_number`: every
# integer field is at most 64 bits (below 2e19), and `1e999999999` is not expanded into an int of
# a billion digits.
_INTEGRAL_NUMBER_EXPONENT_MAX = 20


def _json_number(text: str) -> int | float:
    """A JSON number written with a fraction or an exponent (`5.0`, `5e3`): an int when integral.

    JSON Schema, and so docs/openapi.yaml, counts any number with a zero fractional part as an
    integer, while the protocol's fields take an exact int and refuse a float. Such a number is
    therefore converted here, exactly (through `Decimal`, so `9223372036854775807.0` stays that
    integer instead of rounding to 2**63); any other number stays a float and is refused where an
    integer is expected.
    """
    try:
        value = decimal.Decimal(text)
        integral = (
            value.adjusted() <= _INTEGRAL_NUMBER_EXPONENT_MAX
            and value == value.to_integral_value()
        )
    except (decimal.InvalidOperation, ValueError):
        # An exponent beyond what Decimal holds: no integer field takes it either.
        return float(text)
    return int(value) if integral else float(text)


def _refuse_path_fields(body: dict[str, Any], *names: str) -> None:
    for name in names:
        if name in body:
            raise _http_error(BadRequest(f"{name}: comes from the path, not the body"))


def _only_fields(body: dict[str, Any], *names: str) -> None:
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise _http_error(
            BadRequest(f"{unknown[0]}: unknown field; expected {', '.join(names) or 'none'}")
        )


def _text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if type(value) is not str or not value:
        raise _http_error(BadRequest(f"{name}: expected a non-empty string"))
    return value


def _address_field(body: dict[str, Any], name: str) -> str:
    value = _text_field(body, name)
    try:
        parse_address(value)
    except ValueError as error:
        raise _http_error(BadRequest(f"{name}: {error}")) from None
    return value


def _payload(body: dict[str, Any]) -> bytes:
    text = body.get("payload")
    encoded = body.get("payload_base64")
    if (text is None) == (encoded is None):
        raise _http_error(BadRequest("give exactly one of payload (text) and payload_base64"))
    if text is not None:
        if type(text) is not str:
            raise _http_error(BadRequest("payload: expected a string (UTF-8 text)"))
        return text.encode()
    if type(encoded) is not str:
        raise _http_error(BadRequest("payload_base64: expected a base64 string"))
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _http_error(BadRequest(f"payload_base64: not base64: {error}")) from None


def _integer_query(request: web.Request, name: str) -> int:
    try:
        return int(request.query[name])
    except ValueError:
        raise _http_error(BadRequest(f"{name}: expected an integer")) from None


def _json_safe(value: object) -> object:
    """A protocol result in JSON: bytes become `payload` text (when UTF-8) and base64."""
    if isinstance(value, dict):
        converted: dict[str, object] = {}
        for key, item in value.items():
            if isinstance(item, bytes):
                converted[f"{key}_base64"] = base64.b64encode(item).decode()
                try:
                    converted[key] = item.decode()
                except UnicodeDecodeError:
                    converted[key] = None
            else:
                converted[str(key)] = _json_safe(item)
        return converted
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _directory_size(directory: Path) -> int:
    total = 0
    for root, _directories, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


__all__ = ["HttpApi"]
