"""The whole local cluster: the control plane, the name service, the service proxy, the
provisioner and the node.

`start_cluster` starts them in that order inside one directory and returns once the node is
registered and Ready, the default StorageClass exists, every watch has listed once and the
service proxy serves every ClusterIP;
`LocalCluster.stop` kills every container, then stops the control plane.

Layout of the directory: `control-plane/` (certificates, etcd, logs, admin.kubeconfig),
`hosts` (the cluster's hosts file), `pod-hosts/`, `pods/<namespace>_<pod>_<uid>/<container>/
<restart>.log`, `pod-volumes/`, `volumes/` (persistent volumes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from localkube.api import KubernetesApi
from localkube.controlplane import KUBERNETES_SERVICE_IP, ControlPlane, start_control_plane
from localkube.images import REPOSITORY_ROOT
from localkube.kubelet import NODE_NAME, Kubelet
from localkube.names import NameService
from localkube.network import GATEWAY
from localkube.provisioner import Provisioner
from localkube.services import ServiceProxy

logger = logging.getLogger(__name__)

DEFAULT_BINARIES = REPOSITORY_ROOT / "e2e" / ".bin"
READY_TIMEOUT_SECONDS = 60.0
# How pods reach the API server, as on any cluster: the `kubernetes` Service (the service proxy
# forwards it to the address the API server advertises).
KUBERNETES_SERVICE_URL = f"https://{KUBERNETES_SERVICE_IP}:443"
STOP_TIMEOUT_SECONDS = 30.0


class ClusterError(RuntimeError):
    """The local cluster did not become ready."""


@dataclass
class LocalCluster:
    directory: Path
    control_plane: ControlPlane
    api: KubernetesApi
    names: NameService
    service_proxy: ServiceProxy
    provisioner: Provisioner
    kubelet: Kubelet
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def hosts_file(self) -> Path:
        return self.names.hosts_file

    def failed_component(self) -> str | None:
        """The name of a component that stopped by itself (it should run until `stop`)."""
        for task in self.tasks:
            if task.done():
                return task.get_name()
        return None

    async def stop(self) -> None:
        """Stops the watches, kills every container, stops the control plane."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT_SECONDS)
        try:
            await asyncio.wait_for(self.kubelet.stop(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            logger.error("the kubelet did not stop within %ss", STOP_TIMEOUT_SECONDS)
        await self.api.close()
        await asyncio.to_thread(self.control_plane.stop)


async def start_cluster(
    directory: Path, *, binaries: Path = DEFAULT_BINARIES, node_name: str = NODE_NAME
) -> LocalCluster:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    control_plane = await asyncio.to_thread(
        functools.partial(
            start_control_plane,
            directory / "control-plane",
            binaries=binaries,
            advertise_address=GATEWAY,
        )
    )
    api = KubernetesApi.from_kubeconfig(control_plane.kubeconfig)
    names = NameService(api, directory)
    service_proxy = ServiceProxy(api)
    provisioner = Provisioner(api, directory, node_name=node_name)
    kubelet = Kubelet(api, directory, names, server=KUBERNETES_SERVICE_URL, node_name=node_name)
    cluster = LocalCluster(
        directory, control_plane, api, names, service_proxy, provisioner, kubelet
    )
    cluster.tasks = [
        asyncio.create_task(_logged(names.run()), name="name service"),
        asyncio.create_task(_logged(service_proxy.run()), name="service proxy"),
        asyncio.create_task(_logged(provisioner.run()), name="provisioner"),
        asyncio.create_task(_logged(kubelet.run()), name="kubelet"),
    ]
    try:
        await _wait_ready(cluster)
    except BaseException:
        await cluster.stop()
        raise
    return cluster


async def _logged(work: object) -> None:
    assert asyncio.iscoroutine(work)
    try:
        await work
    except asyncio.CancelledError:
        raise
    except BaseException:
        logger.exception("a component of the local cluster failed")
        raise


async def _wait_ready(cluster: LocalCluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    conditions = {
        "the node registered": cluster.kubelet.registered,
        "the default StorageClass": cluster.provisioner.storage_class_ready,
        "the pod watch": cluster.kubelet.pods.synced,
        "the service watch": cluster.names.services.synced,
        "the name service's pod watch": cluster.names.pod_objects.synced,
        "the service proxy's first pass": cluster.service_proxy.synced,
    }
    for what, event in conditions.items():
        while not event.is_set():
            failed = cluster.failed_component()
            if failed is not None:
                raise ClusterError(f"the {failed} stopped while waiting for {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterError(f"timed out after {READY_TIMEOUT_SECONDS}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 1.0))
    node = await cluster.api.get(f"/api/v1/nodes/{cluster.kubelet.node_name}")
    ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
    if not ready or ready[0]["status"] != "True":
        raise ClusterError(f"node {cluster.kubelet.node_name} is not Ready: {ready}")
