"""ClusterIP Services for the local cluster: a userspace service proxy, as kube-proxy's old
userspace mode was.

Pods reach a Service through its virtual address, and something on the node has to answer
there. This proxy runs in the cluster's network namespace (where `python -m localkube up`
runs) and keeps:

* an interface `localkube-svc` (a dummy device, or a bridge without ports where the kernel has
  no dummy driver) holding every proxied Service's ClusterIP as a /32, so the namespace accepts
  packets for it from the pods' bridge (pods route everything through 10.244.0.1);
* for every TCP port of every Service with a ClusterIP (types ClusterIP, NodePort and
  LoadBalancer; not headless, not ExternalName) an asyncio server on ClusterIP:port. Each
  accepted connection goes to the next ready endpoint, round-robin, of the Service's
  EndpointSlices (label kubernetes.io/service-name; the slice port named as the Service port,
  else the numeric targetPort), and bytes are piped both ways through bounded buffers. With no
  ready endpoint the connection is closed at once.

Services and EndpointSlices are watched; every change reconciles addresses and listeners, and
a periodic pass retries what failed (a port still in use, say). On stop every listener and
connection is closed and the interface removed with its addresses.

Not proxied: UDP and SCTP ports, node ports, external and load-balancer addresses, IPv6
ClusterIPs, session affinity. The backends see the proxy's address (10.244.0.1) as the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from localkube.api import JsonObject, KubernetesApi, Reflector

logger = logging.getLogger(__name__)

INTERFACE_NAME = "localkube-svc"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PROXIED_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer"})
CONNECTIONS_PER_SERVICE_MAX = 1000
CONNECT_TIMEOUT_SECONDS = 5.0
# Backends tried for one connection before giving up (each within the connect timeout).
CONNECT_ATTEMPTS_MAX = 3
# Bytes read at once, and the stream buffer limit (a reader pauses at twice this).
CHUNK_BYTES = 64 * 1024
# A full pass even without changes, retrying listeners or addresses that failed.
RESYNC_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
# At most one warning about refused connections per this many seconds.
DROP_LOG_INTERVAL_SECONDS = 10.0

Backend = tuple[str, int]
ListenAddress = tuple[str, int]


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service: where its connections go."""

    namespace: str
    service: str
    port_name: str  # empty for the single unnamed port
    target_port: int | str  # a number, or the name of a container port

    @property
    def service_key(self) -> tuple[str, str]:
        return self.namespace, self.service


def cluster_ip(service: JsonObject) -> str | None:
    """The Service's virtual IPv4 address if it has one that a proxy should serve: None for
    headless and ExternalName Services and those not allocated yet."""
    spec = service.get("spec") or {}
    if spec.get("type", "ClusterIP") not in PROXIED_TYPES:
        return None
    address = spec.get("clusterIP")
    if not address or address == "None":
        return None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    return address if parsed.version == 4 else None


def proxied_ports(services: Iterable[JsonObject]) -> dict[ListenAddress, ServicePort]:
    """Every ClusterIP:port to listen on, with the Service port behind it (TCP only)."""
    ports: dict[ListenAddress, ServicePort] = {}
    for service in services:
        address = cluster_ip(service)
        if address is None:
            continue
        metadata = service["metadata"]
        for port in service["spec"].get("ports") or []:
            if port.get("protocol", "TCP") != "TCP" or not port.get("port"):
                continue
            target = port.get("targetPort", port["port"])
            ports[(address, int(port["port"]))] = ServicePort(
                namespace=metadata.get("namespace", ""),
                service=metadata["name"],
                port_name=port.get("name") or "",
                target_port=target,
            )
    return ports


def slices_by_service(slices: Iterable[JsonObject]) -> dict[tuple[str, str], list[JsonObject]]:
    """EndpointSlices by the (namespace, name) of the Service they belong to."""
    index: dict[tuple[str, str], list[JsonObject]] = defaultdict(list)
    for endpoint_slice in slices:
        metadata = endpoint_slice["metadata"]
        service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            index[(metadata.get("namespace", ""), service)].append(endpoint_slice)
    return dict(index)


def ready_backends(slices: Iterable[JsonObject], port: ServicePort) -> list[Backend]:
    """The ready endpoints' addresses with the port for `port`, sorted and without repeats (an
    endpoint may briefly appear in two slices). A missing ready condition means ready, as the
    EndpointSlice API says."""
    backends: set[Backend] = set()
    for endpoint_slice in slices:
        if endpoint_slice.get("addressType") != "IPv4":
            continue
        number = _slice_port(endpoint_slice, port)
        if number is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            addresses = endpoint.get("addresses") or []
            if addresses:
                backends.add((addresses[0], number))
    return sorted(backends)


def _slice_port(endpoint_slice: JsonObject, port: ServicePort) -> int | None:
    for slice_port in endpoint_slice.get("ports") or []:
        if (slice_port.get("name") or "") != port.port_name:
            continue
        if slice_port.get("protocol", "TCP") == "TCP" and slice_port.get("port"):
            return int(slice_port["port"])
    if isinstance(port.target_port, int):
        return port.target_port
    if isinstance(port.target_port, str) and port.target_port.isdigit():
        return int(port.target_port)
    return None


class RoundRobin:
    """The order in which a connection tries backends: each connection starts one further."""

    def __init__(self) -> None:
        self.next_index = 0

    def order(self, backends: list[Backend]) -> list[Backend]:
        if not backends:
            return []
        start = self.next_index % len(backends)
        self.next_index = start + 1
        return backends[start:] + backends[:start]


@dataclass
class Listener:
    """The server on one ClusterIP:port and the connections it accepted."""

    address: ListenAddress
    target: ServicePort
    server: asyncio.Server | None = None
    connections: set[asyncio.Task[Any]] = field(default_factory=set)
    round_robin: RoundRobin = field(default_factory=RoundRobin)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for connection in self.connections:
            connection.cancel()
        if self.connections:
            await asyncio.wait(self.connections, timeout=STOP_TIMEOUT_SECONDS)
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), STOP_TIMEOUT_SECONDS)


class ServiceProxy:
    """Watches Services and EndpointSlices and serves every ClusterIP port; `synced` is set once
    the first pass after both watches listed is done."""

    def __init__(
        self,
        api: KubernetesApi,
        *,
        interface: str = INTERFACE_NAME,
        connections_per_service: int = CONNECTIONS_PER_SERVICE_MAX,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.interface = interface
        self.connections_per_service = connections_per_service
        self.connect_timeout = connect_timeout
        self.services = Reflector(api, "/api/v1/services", self._changed)
        self.endpoint_slices = Reflector(
            api, "/apis/discovery.k8s.io/v1/endpointslices", self._changed
        )
        self.synced = asyncio.Event()
        self.listeners: dict[ListenAddress, Listener] = {}
        self.addresses: set[str] = set()
        self._changes = asyncio.Event()
        self._slices: dict[tuple[str, str], list[JsonObject]] = {}
        self._connection_counts: dict[tuple[str, str], int] = {}
        self._dropped = 0
        self._dropped_logged_at = 0.0

    async def run(self) -> None:
        await self._create_interface()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.services.run())
                group.create_task(self.endpoint_slices.run())
                group.create_task(self._reconcile_forever())
        finally:
            await self._shut_down()

    def _changed(self, _kind: str, _item: JsonObject) -> None:
        self._changes.set()

    async def _reconcile_forever(self) -> None:
        await self.services.synced.wait()
        await self.endpoint_slices.synced.wait()
        while True:
            self._changes.clear()
            await self.reconcile()
            self.synced.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changes.wait(), RESYNC_SECONDS)

    async def reconcile(self) -> None:
        """Brings addresses and listeners in line with the watched Services and slices."""
        wanted = proxied_ports(self.services.cache.values())
        self._slices = slices_by_service(self.endpoint_slices.cache.values())
        for listen_address, listener in list(self.listeners.items()):
            target = wanted.get(listen_address)
            if target is not None and target.service_key == listener.target.service_key:
                listener.target = target
                continue
            del self.listeners[listen_address]
            logger.info("closing %s:%s of %s/%s", *listen_address, *listener.target.service_key)
            await listener.close()
        wanted_addresses = {address for address, _ in wanted}
        for address in sorted(wanted_addresses - self.addresses):
            if await _ip("addr", "add", f"{address}/32", "dev", self.interface, exists_ok=True):
                self.addresses.add(address)
        for listen_address, target in wanted.items():
            if listen_address not in self.listeners and listen_address[0] in self.addresses:
                await self._open_listener(Listener(listen_address, target))
        for address in sorted(self.addresses - wanted_addresses):
            await _ip("addr", "del", f"{address}/32", "dev", self.interface, missing_ok=True)
            self.addresses.discard(address)

    async def _open_listener(self, listener: Listener) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(listener, reader, writer)

        host, port = listener.address
        service_key = listener.target.service_key
        try:
            listener.server = await asyncio.start_server(
                serve, host=host, port=port, reuse_address=True, limit=CHUNK_BYTES
            )
        except OSError as error:
            logger.warning("cannot listen on %s:%s for %s/%s: %s", host, port, *service_key, error)
            return
        self.listeners[listener.address] = listener
        logger.info("listening on %s:%s for %s/%s", host, port, *service_key)

    async def _serve(
        self, listener: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        target = listener.target
        count = self._connection_counts.get(target.service_key, 0)
        if count >= self.connections_per_service:
            self._log_drop(target)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        listener.connections.add(task)
        self._connection_counts[target.service_key] = count + 1
        upstream: asyncio.StreamWriter | None = None
        try:
            backends = ready_backends(self._slices.get(target.service_key, []), target)
            connected = await self._connect(listener.round_robin.order(backends), target)
            if connected is None:
                return
            upstream_reader, upstream = connected
            await pipe(reader, writer, upstream_reader, upstream)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("proxying a connection to %s/%s failed", *target.service_key)
        finally:
            listener.connections.discard(task)
            remaining = self._connection_counts.get(target.service_key, 1) - 1
            if remaining > 0:
                self._connection_counts[target.service_key] = remaining
            else:
                self._connection_counts.pop(target.service_key, None)
            writer.close()
            if upstream is not None:
                upstream.close()

    async def _connect(
        self, backends: list[Backend], target: ServicePort
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if not backends:
            logger.debug("%s/%s has no ready endpoint", *target.service_key)
        for host, port in backends[:CONNECT_ATTEMPTS_MAX]:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=CHUNK_BYTES), self.connect_timeout
                )
            except (OSError, TimeoutError) as error:
                logger.info(
                    "cannot reach %s:%s of %s/%s: %s", host, port, *target.service_key, error
                )
        return None

    def _log_drop(self, target: ServicePort) -> None:
        self._dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= DROP_LOG_INTERVAL_SECONDS:
            logger.warning(
                "refused %d connection(s) beyond %d per Service (the latest to %s/%s)",
                self._dropped,
                self.connections_per_service,
                *target.service_key,
            )
            self._dropped = 0
            self._dropped_logged_at = now

    async def _create_interface(self) -> None:
        await _ip("link", "del", self.interface, missing_ok=True, quiet=True)
        if not await _ip("link", "add", self.interface, "type", "dummy", quiet=True):
            logger.info("no dummy interfaces here; %s is a bridge without ports", self.interface)
            if not await _ip("link", "add", self.interface, "type", "bridge"):
                raise RuntimeError(f"cannot create the interface {self.interface}")
        if not await _ip("link", "set", self.interface, "up"):
            raise RuntimeError(f"cannot bring the interface {self.interface} up")

    async def _shut_down(self) -> None:
        listeners = list(self.listeners.values())
        self.listeners.clear()
        await asyncio.gather(*(listener.close() for listener in listeners))
        self.addresses.clear()
        await _ip("link", "del", self.interface, missing_ok=True)
        logger.info("stopped: closed %d listener(s), removed %s", len(listeners), self.interface)


async def pipe(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    """Copies both ways until both directions ended; the end of one direction is passed on as
    a half-close, an error in either ends both. The caller closes the writers."""
    directions = [
        asyncio.create_task(_copy(client_reader, upstream_writer)),
        asyncio.create_task(_copy(upstream_reader, client_writer)),
    ]
    try:
        await asyncio.wait(directions, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for direction in directions:
            direction.cancel()
        await asyncio.gather(*directions, return_exceptions=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK_BYTES):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def _ip(
    *arguments: str, exists_ok: bool = False, missing_ok: bool = False, quiet: bool = False
) -> bool:
    """Runs `ip ARGUMENTS`; whether it succeeded (or failed only because what it adds exists
    or what it removes is gone, when allowed)."""
    process = await asyncio.create_subprocess_exec(
        "ip",
        *arguments,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, error_output = await process.communicate()
    if process.returncode == 0:
        return True
    message = error_output.decode(errors="replace").strip()
    if exists_ok and "exists" in message:
        return True
    if missing_ok and ("Cannot find device" in message or "Cannot assign" in message):
        return True
    if not quiet:
        logger.warning("ip %s failed: %s", " ".join(arguments), message)
    return False
