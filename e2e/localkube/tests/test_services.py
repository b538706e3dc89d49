"""The service proxy's parts that need no cluster: which addresses and ports it serves, which
endpoints it picks, and how it pipes a connection (over loopback, without its interface)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from localkube.api import JsonObject, KubernetesApi
from localkube.names import NameService, PodName, pod_text
from localkube.services import (
    Listener,
    RoundRobin,
    ServicePort,
    ServiceProxy,
    cluster_ip,
    pipe,
    proxied_ports,
    ready_backends,
    slices_by_service,
)

NO_API = cast(KubernetesApi, None)

# Every wait on a condition is bounded by this.
DEADLINE_SECONDS = 10.0


def service(
    name: str,
    address: str | None,
    *,
    namespace: str = "ns",
    kind: str = "ClusterIP",
    ports: list[JsonObject] | None = None,
    selector: dict[str, str] | None = None,
) -> JsonObject:
    spec: JsonObject = {"type": kind, "ports": ports or [{"name": "http", "port": 80}]}
    if address is not None:
        spec["clusterIP"] = address
    if selector is not None:
        spec["selector"] = selector
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec}


def endpoint_slice(
    service_name: str,
    endpoints: list[tuple[str, bool | None]],
    ports: list[JsonObject],
    *,
    name: str = "",
    namespace: str = "ns",
    address_type: str = "IPv4",
) -> JsonObject:
    listed: list[JsonObject] = []
    for address, ready in endpoints:
        conditions: JsonObject = {} if ready is None else {"ready": ready}
        listed.append({"addresses": [address], "conditions": conditions})
    return {
        "metadata": {
            "namespace": namespace,
            "name": name or f"{service_name}-abc",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": address_type,
        "endpoints": listed,
        "ports": ports,
    }


def test_only_services_with_a_cluster_ip_are_proxied() -> None:
    assert cluster_ip(service("a", "10.96.0.10")) == "10.96.0.10"
    assert cluster_ip(service("a", "10.96.0.10", kind="NodePort")) == "10.96.0.10"
    assert cluster_ip(service("a", "10.96.0.10", kind="LoadBalancer")) == "10.96.0.10"
    assert cluster_ip(service("a", "None")) is None
    assert cluster_ip(service("a", None)) is None
    assert cluster_ip(service("a", "", kind="ExternalName")) is None
    assert cluster_ip(service("a", "10.96.0.10", kind="ExternalName")) is None
    assert cluster_ip(service("a", "fd00::10")) is None


def test_proxied_ports_are_the_tcp_ports() -> None:
    ports = proxied_ports(
        [
            service(
                "web",
                "10.96.0.10",
                ports=[
                    {"name": "http", "port": 80, "targetPort": "web"},
                    {"name": "metrics", "port": 9090, "targetPort": 9091},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ],
            ),
            service("plain", "10.96.0.11", ports=[{"port": 8080}]),
            service("headless", "None"),
        ]
    )
    assert ports == {
        ("10.96.0.10", 80): ServicePort("ns", "web", "http", "web"),
        ("10.96.0.10", 9090): ServicePort("ns", "web", "metrics", 9091),
        ("10.96.0.11", 8080): ServicePort("ns", "plain", "", 8080),
    }


def test_ready_backends_follow_the_slices() -> None:
    slices = slices_by_service(
        [
            endpoint_slice(
                "web",
                [("10.244.0.5", True), ("10.244.0.6", False), ("10.244.0.7", None)],
                [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9091}],
                name="web-1",
            ),
            # The same endpoint in a second slice during a move, and an IPv6 slice.
            endpoint_slice("web", [("10.244.0.5", True)], [{"name": "http", "port": 8080}]),
            endpoint_slice(
                "web", [("fd00::5", True)], [{"name": "http", "port": 8080}], address_type="IPv6"
            ),
            endpoint_slice("other", [("10.244.0.9", True)], [{"name": "http", "port": 1}]),
            endpoint_slice("web", [("10.244.0.9", True)], [], namespace="elsewhere"),
        ]
    )
    web = slices[("ns", "web")]
    assert len(web) == 3
    http = ServicePort("ns", "web", "http", "web")
    assert ready_backends(web, http) == [("10.244.0.5", 8080), ("10.244.0.7", 8080)]
    # No slice port of that name: the numeric targetPort, or nothing for a named one.
    assert ready_backends(web, ServicePort("ns", "web", "admin", 7000)) == [
        ("10.244.0.5", 7000),
        ("10.244.0.7", 7000),
    ]
    assert ready_backends(web, ServicePort("ns", "web", "admin", "admin")) == []
    assert ready_backends([], http) == []


def test_round_robin_starts_each_connection_one_further() -> None:
    backends = [("a", 1), ("b", 1), ("c", 1)]
    round_robin = RoundRobin()
    assert [round_robin.order(backends)[0] for _ in range(4)] == [
        ("a", 1),
        ("b", 1),
        ("c", 1),
        ("a", 1),
    ]
    assert round_robin.order(backends) == [("b", 1), ("c", 1), ("a", 1)]
    assert round_robin.order(backends[:1]) == [("a", 1)]
    assert round_robin.order([]) == []


def test_names_of_services_with_a_cluster_ip(tmp_path: Path) -> None:
    names = NameService(NO_API, tmp_path)
    for item in (
        service("web", "10.96.0.10"),
        service("peers", "None", selector={"app": "p"}),
        service("outside", None, kind="ExternalName"),
    ):
        names.services.cache[("ns", item["metadata"]["name"])] = item
    names.pod_objects.cache[("ns", "p-0")] = {
        "metadata": {"namespace": "ns", "name": "p-0", "labels": {"app": "p"}},
        "spec": {"hostname": "p-0", "subdomain": "peers"},
        "status": {"podIP": "10.244.0.5", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    names.render()
    cluster = (tmp_path / "hosts").read_text().splitlines()
    assert "10.96.0.10\tweb.ns.svc.cluster.local" in cluster
    assert "10.96.0.10\tweb.ns.svc" in cluster
    assert "10.244.0.5\tpeers.ns.svc.cluster.local" in cluster
    assert "10.244.0.5\tp-0.peers.ns.svc" in cluster
    assert not [line for line in cluster if "outside" in line]
    records = names._records()
    own = pod_text(PodName("ns", "q", "", "10.244.0.8"), records).splitlines()
    assert "10.96.0.10\tweb" in own
    assert "10.96.0.10\tweb.ns" in own
    other = pod_text(PodName("elsewhere", "q", "", "10.244.0.8"), records).splitlines()
    assert "10.96.0.10\tweb.ns" in other
    assert "10.96.0.10\tweb" not in other


async def _start_backend(name: bytes) -> asyncio.Server:
    """Answers every connection with its name and then echoes what it reads until EOF."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name + b":")
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def _port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        writer.write_eof()  # half-close: the answer still comes back
        answer = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # closed at once, before reading what was sent
        answer = b""
    writer.close()
    return answer


def test_pipe_passes_a_half_close_on() -> None:
    async def scenario() -> None:
        backend = await _start_backend(b"one")

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", _port(backend)
            )
            try:
                await pipe(reader, writer, upstream_reader, upstream_writer)
            finally:
                writer.close()
                upstream_writer.close()

        front = await asyncio.start_server(forward, "127.0.0.1", 0)
        payload = b"x" * 300_000
        assert await _exchange(_port(front), payload) == b"one:" + payload
        front.close()
        backend.close()

    asyncio.run(scenario())


def test_connections_spread_over_ready_endpoints_and_are_bounded() -> None:
    async def scenario() -> None:
        backends = [await _start_backend(b"one"), await _start_backend(b"two")]
        proxy = ServiceProxy(NO_API, connections_per_service=1, connect_timeout=2)
        proxy._slices = slices_by_service(
            [
                endpoint_slice(
                    "web",
                    [("127.0.0.1", True)],
                    [{"name": "http", "port": _port(server)}],
                    name=f"web-{index}",
                )
                for index, server in enumerate(backends)
            ]
        )
        listener = Listener(("127.0.0.1", 0), ServicePort("ns", "web", "http", "web"))
        await proxy._open_listener(listener)
        assert listener.server is not None
        port = _port(listener.server)
        answers = {await _exchange(port, b"hi") for _ in range(4)}
        assert answers == {b"one:hi", b"two:hi"}

        # Beyond the limit of one connection per Service, a connection is closed at once.
        _, held = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(DEADLINE_SECONDS):
            while not listener.connections:
                await asyncio.sleep(0.01)
        assert await _exchange(port, b"hi") == b""
        held.close()
        async with asyncio.timeout(DEADLINE_SECONDS):
            while listener.connections:
                await asyncio.sleep(0.01)

        # Without a ready endpoint, too.
        proxy._slices = slices_by_service(
            [endpoint_slice("web", [("127.0.0.1", False)], [{"name": "http", "port": 1}])]
        )
        assert await _exchange(port, b"hi") == b""

        proxy._slices = {}
        await listener.close()
        for server in backends:
            server.close()

    asyncio.run(scenario())
