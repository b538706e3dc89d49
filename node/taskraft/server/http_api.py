"""The HTTP port of a node: liveness, readiness and status, for probes, operators and people.

Kubernetes probes `/healthz` (restart the pod when it fails) and `/readyz` (send it traffic only
when it passes); the operator and `curl` read `/v1/status`. Every answer is computed from the
node's in-memory state, on the event loop, without waiting on Raft, so a probe never queues
behind client traffic. The JSON documents are described in docs/http-api.md.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

import taskraft
from taskraft.raft import LogIndex, Role

if TYPE_CHECKING:
    from taskraft.server.node import Node

# Requests the HTTP port serves at once; probes and status polls need few.
HTTP_CONNECTIONS_MAX = 256


class HttpApi:
    def __init__(self, node: Node, *, host: str, port: int) -> None:
        self._node = node
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        application = web.Application(client_max_size=64 * 1024)
        application.add_routes(
            [
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                web.get("/v1/status", self._status),
            ]
        )
        self._application = application

    async def start(self) -> None:
        self._runner = web.AppRunner(self._application, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, self._host, self._port, backlog=HTTP_CONNECTIONS_MAX
        )
        await self._site.start()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0, the port the system picked."""
        addresses = [] if self._runner is None else self._runner.addresses
        if not addresses:
            raise RuntimeError("the HTTP API is not listening")
        host, port = addresses[0][:2]
        return str(host), int(port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ----------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        """Alive: this answer proves the event loop runs; the Raft driver must still be running."""
        failure = self._node.failure
        if failure is not None:
            return _text(503, f"the Raft driver failed: {failure!r}")
        if self._node.replica is None:
            return _text(503, "starting")
        return _text(200, "ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = self.not_ready_reason()
        if reason is not None:
            return _text(503, reason)
        return _text(200, "ready")

    def not_ready_reason(self) -> str | None:
        """Why this node should not get client traffic yet, or None when it should."""
        replica = self._node.replica
        if replica is None or replica.failure is not None:
            return "the node is starting or has failed"
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
            "uptime_s": round(time.monotonic() - node.started_monotonic, 3),
            "addresses": {
                "client": node.advertised_client_address,
                "peer": node.advertised_peer_address,
                "http": node.advertised_http_address,
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
        members = []
        for member in sorted(configuration.members):
            entry: dict[str, Any] = {
                "id": member,
                "peer_address": configuration.address_of(member),
                "voter": member in configuration.voters,
            }
            if raft.role is Role.LEADER and member in raft.progress:
                progress = raft.progress[member]
                entry["match_index"] = int(progress.match_index)
                entry["next_index"] = int(progress.next_index)
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


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")
