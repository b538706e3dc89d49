"""Cluster DNS names for the local node, through hosts files instead of a DNS server.

The local cluster runs no DNS server; the names a pod would resolve through CoreDNS are written
to hosts files instead:

* `<directory>/hosts`, the cluster's file: localhost; every Service with a ClusterIP as
  `<service>.<namespace>.svc` and `<service>.<namespace>.svc.cluster.local` with that address
  (`localkube.services` proxies it); every headless Service (with a selector) under the same
  names with the addresses of its ready endpoints (all of them with publishNotReadyAddresses),
  and every endpoint that has a hostname (a pod with spec.hostname and spec.subdomain naming
  that headless Service) as `<hostname>.<service>.<namespace>.svc(.cluster.local)`. The
  endpoints are computed from the Pods by the endpoints controller's rules (the same answer
  the EndpointSlices give, without waiting for the controller). `localkube run` binds it over
  /etc/hosts for the command it runs.
* one file per pod, bound over the pod's /etc/hosts: the cluster's lines, the short names a
  search path would give inside the pod's namespace (`<service>`, `<service>.<namespace>`,
  `<hostname>.<service>`) and the pod's own hostname, as the kubelet writes it.

Files are rewritten in place (same inode), because bind mounts refer to the inode.

Not resolved: ExternalName Services and pod A records by dashed address.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localkube.api import JsonObject, KubernetesApi, Reflector
from localkube.services import cluster_ip

logger = logging.getLogger(__name__)

CLUSTER_DOMAIN = "cluster.local"
LOCALHOST_LINES = (
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::0\tip6-localnet",
    "fe00::0\tip6-mcastprefix",
    "fe00::1\tip6-allnodes",
    "fe00::2\tip6-allrouters",
)


@dataclass(frozen=True)
class PodName:
    """What a pod's own hosts file says about the pod."""

    namespace: str
    hostname: str
    subdomain: str
    address: str


@dataclass(frozen=True)
class Record:
    namespace: str
    service: str
    hostname: str  # empty for the Service's own name
    address: str


class NameService:
    """Watches Services and Pods and keeps the hosts files current."""

    def __init__(self, api: KubernetesApi, directory: Path) -> None:
        self.hosts_file = directory / "hosts"
        self.pod_directory = directory / "pod-hosts"
        self.pod_directory.mkdir(parents=True, exist_ok=True)
        self.pods: dict[str, PodName] = {}
        self.services = Reflector(api, "/api/v1/services", self._changed)
        self.pod_objects = Reflector(api, "/api/v1/pods", self._changed)
        self.render()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.services.run())
            group.create_task(self.pod_objects.run())

    def add_pod(self, uid: str, name: PodName) -> Path:
        """The pod's hosts file, written now and kept current until `remove_pod`."""
        self.pods[uid] = name
        path = self.pod_directory / uid
        _write_in_place(path, pod_text(name, self._records()))
        return path

    def remove_pod(self, uid: str) -> None:
        self.pods.pop(uid, None)
        (self.pod_directory / uid).unlink(missing_ok=True)

    def _changed(self, _kind: str, _item: JsonObject) -> None:
        self.render()

    def render(self) -> None:
        records = self._records()
        _write_in_place(self.hosts_file, cluster_text(records))
        for uid, name in list(self.pods.items()):
            _write_in_place(self.pod_directory / uid, pod_text(name, records))

    def _records(self) -> list[Record]:
        """What the endpoints controller and CoreDNS would publish, computed from the Pods:
        the API server refuses loopback addresses in Endpoints and EndpointSlices, so the
        controllers cannot record pods whose addresses are in 127.1.0.0/16."""
        pods_by_namespace: dict[str, list[JsonObject]] = defaultdict(list)
        for (namespace, _), pod in self.pod_objects.cache.items():
            pods_by_namespace[namespace].append(pod)
        records: set[Record] = set()
        for (namespace, name), service in self.services.cache.items():
            address = cluster_ip(service)
            if address is not None:
                records.add(Record(namespace, name, "", address))
                continue
            spec = service.get("spec", {})
            selector = spec.get("selector")
            if spec.get("clusterIP") != "None" or not selector:
                continue
            publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
            for pod in pods_by_namespace[namespace]:
                labels = pod["metadata"].get("labels", {})
                if any(labels.get(key) != value for key, value in selector.items()):
                    continue
                address = pod.get("status", {}).get("podIP")
                if not address or not _publishable(pod, publish_not_ready):
                    continue
                records.add(Record(namespace, name, "", address))
                pod_spec = pod.get("spec", {})
                if pod_spec.get("hostname") and pod_spec.get("subdomain") == name:
                    records.add(Record(namespace, name, pod_spec["hostname"], address))
        return sorted(
            records,
            key=lambda record: (record.namespace, record.service, record.hostname, record.address),
        )


def cluster_text(records: list[Record]) -> str:
    """The cluster's hosts file."""
    lines = [
        "# Cluster names of localkube (Services and headless Services' pods).",
        *LOCALHOST_LINES,
    ]
    lines += _lines(records, _fully_qualified)
    return "\n".join(lines) + "\n"


def pod_text(pod: PodName, records: list[Record]) -> str:
    """A pod's hosts file: its own name, then the cluster's names with the short forms its
    namespace's search path would complete."""
    lines = ["# Kubernetes-managed hosts file (localkube).", *LOCALHOST_LINES]
    if pod.subdomain:
        domain = f"{pod.subdomain}.{pod.namespace}.svc.{CLUSTER_DOMAIN}"
        lines.append(f"{pod.address}\t{pod.hostname}.{domain}\t{pod.hostname}")
    else:
        lines.append(f"{pod.address}\t{pod.hostname}")
    lines += _lines(
        records, lambda record: _fully_qualified(record) + _short(record, pod.namespace)
    )
    return "\n".join(lines) + "\n"


def _publishable(pod: JsonObject, publish_not_ready: bool) -> bool:
    """As the endpoints controller decides: terminal pods never; with publishNotReadyAddresses
    every other pod; else only a ready pod that is not terminating."""
    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return False
    if publish_not_ready:
        return True
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _fully_qualified(record: Record) -> list[str]:
    base = f"{record.service}.{record.namespace}.svc"
    if record.hostname:
        base = f"{record.hostname}.{base}"
    return [f"{base}.{CLUSTER_DOMAIN}", base]


def _short(record: Record, namespace: str) -> list[str]:
    """The names the search path `<namespace>.svc.cluster.local svc.cluster.local` would
    complete."""
    prefix = f"{record.hostname}." if record.hostname else ""
    names = [f"{prefix}{record.service}.{record.namespace}"]
    if record.namespace == namespace:
        names.append(f"{prefix}{record.service}")
    return names


def _lines(records: list[Record], names_of: Callable[[Record], list[str]]) -> list[str]:
    by_address: dict[str, list[str]] = defaultdict(list)
    for record in records:
        for name in names_of(record):
            if name not in by_address[record.address]:
                by_address[record.address].append(name)
    # One line per (address, name): a name with several addresses appears on several lines,
    # and the resolver returns all of them.
    lines: list[str] = []
    for address in sorted(by_address):
        lines.extend(f"{address}\t{name}" for name in by_address[address])
    return lines


def _write_in_place(path: Path, text: str) -> None:
    """Overwrites the file's content keeping its inode (bind mounts point at the inode)."""
    data = text.encode()
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.fchmod(descriptor, 0o644)
        os.pwrite(descriptor, data, 0)
        os.ftruncate(descriptor, len(data))
    finally:
        os.close(descriptor)
