"""A kubelet whose containers are local processes: one Node of the local cluster.

It registers the Node (Ready, schedulable, with capacity), keeps it alive through its Lease in
kube-node-lease and status heartbeats, and runs the Pods bound to it: a network namespace of
the pod's own with an address from 10.244.0.0/16 (network.py; reported before any container
starts), a hosts file, volumes, init containers in order, then the containers with their probes and
restarts (containers.py); status through the status subresource; graceful deletion (preStop,
SIGTERM, SIGKILL after the grace period, then the deletion of the Pod object with a uid
precondition, as a real kubelet finishes it). Pods that vanish from the API are killed at once;
on `stop`, every process it started is killed and waited for.

Not done: Events, `kubectl logs`/`exec`/`port-forward` (no kubelet server on port 10250; the
logs are files, see containers.py), resource limits, sidecar init containers
(restartPolicy Always on an init container), ephemeral containers, in-place updates of a
running pod's spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localkube.addresses import AddressAllocator
from localkube.api import ApiError, JsonObject, KubernetesApi, Reflector
from localkube.containers import STOP_WAIT_SECONDS, ContainerRunner, PodContext, now_text
from localkube.environment import ContainerConfigError
from localkube.names import NameService, PodName
from localkube.network import GATEWAY, PodNetworks
from localkube.release import KUBERNETES_VERSION
from localkube.volumes import VolumeManager, VolumeNotReadyError

logger = logging.getLogger(__name__)

NODE_NAME = "localkube"
# The node's own address: the cluster network's gateway, where pods reach it.
HOST_ADDRESS = GATEWAY
HEARTBEAT_SECONDS = 10.0
LEASE_DURATION_SECONDS = 40
MAX_PODS = 110
VOLUME_RETRY_INITIAL_SECONDS = 1.0
VOLUME_RETRY_MAX_SECONDS = 10.0
STATUS_COALESCE_SECONDS = 0.1
STATUS_RETRY_SECONDS = 1.0
SHUTDOWN_GRACE_SECONDS = 3.0
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}


def node_allocatable(directory: Path) -> dict[str, str]:
    memory_kibibytes = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kibibytes = int(line.split()[1])
    disk = shutil.disk_usage(directory)
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kibibytes}Ki",
        "pods": str(MAX_PODS),
        "ephemeral-storage": str(disk.total),
    }


class Kubelet:
    def __init__(
        self,
        api: KubernetesApi,
        directory: Path,
        names: NameService,
        *,
        server: str,
        node_name: str = NODE_NAME,
    ) -> None:
        self.api = api
        self.directory = directory
        self.names = names
        self.server = server
        self.node_name = node_name
        self.allocatable = node_allocatable(directory)
        self.addresses = AddressAllocator()
        self.networks = PodNetworks()
        self.volumes = VolumeManager(api, directory, self.allocatable)
        self.workers: dict[str, PodWorker] = {}
        self.processes: set[int] = set()
        self.registered = asyncio.Event()
        self.stopping = False
        self.started_at = now_text()
        self.pods = Reflector(
            api,
            "/api/v1/pods",
            self._pod_changed,
            params={"fieldSelector": f"spec.nodeName={node_name}"},
        )

    async def run(self) -> None:
        await self._register()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._heartbeats())
            group.create_task(self.pods.run())

    async def stop(self) -> None:
        """Kills every container (SIGTERM, SIGKILL shortly after) and waits for them."""
        self.stopping = True
        workers = list(self.workers.values())
        await asyncio.gather(
            *(worker.shut_down(SHUTDOWN_GRACE_SECONDS) for worker in workers),
            return_exceptions=True,
        )
        for process_group in list(self.processes):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process_group, signal.SIGKILL)
        self.processes.clear()

    # ------------------------------------------------------------------------------------
    # The Node

    def _node_status(self) -> JsonObject:
        heartbeat = now_text()

        def condition(kind: str, status: str, reason: str, message: str) -> JsonObject:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": self.started_at,
            }

        return {
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_ADDRESS},
                {"type": "Hostname", "address": self.node_name},
            ],
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "localkube processes",
                "containerRuntimeVersion": "localkube://1",
                "kubeletVersion": f"{KUBERNETES_VERSION}-localkube",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": self._architecture(),
            },
        }

    def _architecture(self) -> str:
        machine = platform.machine()
        return _ARCHITECTURES.get(machine, machine)

    async def _register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": self._architecture(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": self._architecture(),
        }
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
            "spec": {},
        }
        try:
            await self.api.create("/api/v1/nodes", node)
        except ApiError as error:
            if error.status != 409:
                raise
            await self.api.patch(
                f"/api/v1/nodes/{self.node_name}", {"metadata": {"labels": labels}}
            )
        await self._post_node_status()
        await self._renew_lease()
        self.registered.set()
        logger.info("node %s registered", self.node_name)

    async def _post_node_status(self) -> None:
        await self.api.patch(
            f"/api/v1/nodes/{self.node_name}/status",
            {"status": self._node_status()},
            strategic=True,
        )

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        renew_time = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000Z"
        lease = await self.api.get_or_none(path)
        if lease is None:
            node = await self.api.get(f"/api/v1/nodes/{self.node_name}")
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node_name,
                "uid": node["metadata"]["uid"],
            }
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node_name, "ownerReferences": [owner]},
                "spec": {
                    "holderIdentity": self.node_name,
                    "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                    "renewTime": renew_time,
                },
            }
            await self.api.create(path.rsplit("/", 1)[0], body)
            return
        lease["spec"]["holderIdentity"] = self.node_name
        lease["spec"]["leaseDurationSeconds"] = LEASE_DURATION_SECONDS
        lease["spec"]["renewTime"] = renew_time
        await self.api.put(path, lease)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            for beat in (self._renew_lease, self._post_node_status):
                try:
                    await beat()
                except (ApiError, OSError, TimeoutError) as error:
                    logger.warning("node heartbeat failed: %s", error)
                except Exception:
                    logger.exception("node heartbeat failed")

    # ------------------------------------------------------------------------------------
    # Pods

    def _pod_changed(self, kind: str, pod: JsonObject) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.removed.set()
            return
        if worker is None:
            if self.stopping:
                return
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            worker.task = asyncio.create_task(worker.run(), name=f"pod {uid}")
        else:
            worker.update(pod)

    def forget(self, uid: str) -> None:
        self.workers.pop(uid, None)

    async def lookup(self, kind: str, namespace: str, name: str) -> JsonObject | None:
        resource = {"ConfigMap": "configmaps", "Secret": "secrets"}[kind]
        found = await self.api.get_or_none(f"/api/v1/namespaces/{namespace}/{resource}/{name}")
        if found is not None:
            found.setdefault("kind", kind)
        return found


@dataclass
class ConditionState:
    status: str
    reason: str
    message: str
    since: str


@dataclass
class PodWorker:
    """Runs one pod from its first sight to its deletion."""

    kubelet: Kubelet
    pod: JsonObject
    task: asyncio.Task[None] | None = None
    context: PodContext | None = None
    init_runners: list[ContainerRunner] = field(default_factory=list)
    runners: list[ContainerRunner] = field(default_factory=list)
    runner_tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    removed: asyncio.Event = field(default_factory=asyncio.Event)
    deletion_requested: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    initialized: bool = False
    finished: bool = False  # every container ended for good (phase Succeeded or Failed)
    failed_reason: str = ""
    address: str = ""
    start_time: str = ""
    conditions: dict[str, ConditionState] = field(default_factory=dict)
    shutting_down: bool = False

    def __post_init__(self) -> None:
        self.update(self.pod)

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def label(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    def update(self, pod: JsonObject) -> None:
        status = pod.setdefault("status", {})
        if self.address:
            status["podIP"] = self.address
            status["podIPs"] = [{"ip": self.address}]
            status["hostIP"] = HOST_ADDRESS
            status["hostIPs"] = [{"ip": HOST_ADDRESS}]
        self.pod = pod
        if self.context is not None:
            self.context.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deletion_requested.set()

    def changed(self) -> None:
        self.dirty.set()

    # ------------------------------------------------------------------------------------

    async def run(self) -> None:
        phase = self.pod.get("status", {}).get("phase")
        reporter: asyncio.Task[None] | None = None
        try:
            if phase in ("Succeeded", "Failed") or self.deletion_requested.is_set():
                # Finished, or deleted, before this kubelet ran it: nothing to stop.
                await self._wait_for_end()
                if not self.removed.is_set():
                    await self._delete_object()
                return
            reporter = asyncio.create_task(self._report_loop())
            lifecycle = asyncio.create_task(self._lifecycle())
            ending = asyncio.create_task(self._wait_for_end())
            await asyncio.wait({lifecycle, ending}, return_when=asyncio.FIRST_COMPLETED)
            if lifecycle.done() and not ending.done():
                self._log_failure(lifecycle)
                # Terminal: the pod stays until it is deleted.
                await ending
            if not self.shutting_down:
                grace = self._grace_seconds() if not self.removed.is_set() else 0.0
                await self._stop_containers(time.monotonic() + grace)
            lifecycle.cancel()
            await asyncio.wait({lifecycle}, timeout=STOP_WAIT_SECONDS)
            if not self.removed.is_set() and not self.shutting_down:
                self.finished = True
                await self._report()
                await self._delete_object()
        except Exception:
            logger.exception("pod %s failed in the kubelet", self.label)
        finally:
            if reporter is not None:
                reporter.cancel()
            await self._release()

    async def _wait_for_end(self) -> None:
        waits = {
            asyncio.create_task(self.removed.wait()),
            asyncio.create_task(self.deletion_requested.wait()),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _log_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("pod %s: %s", self.label, task.exception())

    def _grace_seconds(self) -> float:
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(grace)

    async def shut_down(self, grace: float) -> None:
        """The kubelet stops: kill the containers, leave the Pod object alone."""
        self.shutting_down = True
        await self._stop_containers(time.monotonic() + grace)
        self.removed.set()
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=STOP_WAIT_SECONDS + grace)

    async def _stop_containers(self, deadline: float) -> None:
        runners = [*self.init_runners, *self.runners]
        await asyncio.gather(
            *(runner.stop(deadline, self.runner_tasks.get(runner.name)) for runner in runners),
            return_exceptions=True,
        )

    async def _release(self) -> None:
        self.kubelet.names.remove_pod(self.uid)
        try:
            await self.kubelet.networks.delete(self.uid)
        except Exception:
            logger.exception("pod %s: removing its network namespace failed", self.label)
        self.kubelet.addresses.release(self.uid)
        self.kubelet.volumes.cleanup(self.uid)
        self.kubelet.forget(self.uid)

    async def _delete_object(self) -> None:
        metadata = self.pod["metadata"]
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}"
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": metadata["uid"]}}
        try:
            await self.kubelet.api.delete(path, body)
        except ApiError as error:
            if error.status not in (404, 409):
                logger.warning("deleting pod %s: %s", self.label, error)

    # ------------------------------------------------------------------------------------
    # Starting the pod

    async def _lifecycle(self) -> None:
        spec = self.pod["spec"]
        metadata = self.pod["metadata"]
        status = self.pod.get("status", {})
        network_namespace = None
        if spec.get("hostNetwork"):
            self.address = HOST_ADDRESS
        else:
            self.address = self.kubelet.addresses.allocate(self.uid, status.get("podIP"))
            network_namespace = await self.kubelet.networks.create(self.uid, self.address)
        self.start_time = status.get("startTime") or now_text()
        self.update(self.pod)
        hostname = (spec.get("hostname") or metadata["name"])[:63]
        hosts_file = self.kubelet.names.add_pod(
            self.uid,
            PodName(metadata["namespace"], hostname, spec.get("subdomain", ""), self.address),
        )
        log_directory = (
            self.kubelet.directory
            / "pods"
            / f"{metadata['namespace']}_{metadata['name']}_{self.uid}"
        )
        log_directory.mkdir(parents=True, exist_ok=True)
        self.context = PodContext(
            pod=self.pod,
            address=self.address,
            hostname=hostname,
            hosts_file=hosts_file,
            volumes={},
            log_directory=log_directory,
            server=self.kubelet.server,
            allocatable=self.kubelet.allocatable,
            lookup=self.kubelet.lookup,
            changed=self.changed,
            processes=self.kubelet.processes,
            scratch_directory=self.kubelet.volumes.pod_root(self.pod) / "_image-files",
            network_namespace=network_namespace,
        )
        self.init_runners = [
            ContainerRunner(self.context, container, init=True)
            for container in spec.get("initContainers") or []
        ]
        self.runners = [
            ContainerRunner(self.context, container) for container in spec["containers"]
        ]
        # The address is in the status before any container starts.
        await self._report()
        await self._prepare_volumes()
        for runner in self.init_runners:
            task = asyncio.create_task(runner.run())
            self.runner_tasks[runner.name] = task
            exit_code = await task
            if exit_code != 0:
                self.finished = True
                self.failed_reason = f"init container {runner.name} failed"
                self.changed()
                return
        self.initialized = True
        self.changed()
        for runner in self.runners:
            self.runner_tasks[runner.name] = asyncio.create_task(runner.run())
        await asyncio.gather(*(self.runner_tasks[runner.name] for runner in self.runners))
        self.finished = True
        self.changed()

    async def _prepare_volumes(self) -> None:
        assert self.context is not None
        delay = VOLUME_RETRY_INITIAL_SECONDS
        while True:
            try:
                self.context.volumes = await self.kubelet.volumes.prepare(self.pod)
                return
            except (VolumeNotReadyError, ContainerConfigError, ApiError, OSError) as error:
                message = f"MountVolume.SetUp failed: {error}"
                for runner in [*self.init_runners, *self.runners]:
                    reason = runner.state.get("waiting", {}).get("reason", "ContainerCreating")
                    runner.state = {"waiting": {"reason": reason, "message": message}}
                self.changed()
                logger.info("pod %s: %s; again in %.0fs", self.label, message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, VOLUME_RETRY_MAX_SECONDS)

    # ------------------------------------------------------------------------------------
    # Status

    def _phase(self) -> str:
        if self.finished:
            # Also after the containers were stopped for the pod's deletion: Succeeded when
            # every container exited 0, else Failed (the kubelet's terminal phase).
            if self.failed_reason or not self.initialized:
                return "Failed"
            codes = [runner.state.get("terminated", {}).get("exitCode") for runner in self.runners]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        if not self.initialized:
            return "Pending"
        never_ran = [
            runner
            for runner in self.runners
            if "waiting" in runner.state and runner.restart_count == 0 and not runner.last_state
        ]
        return "Pending" if never_ran else "Running"

    def _set_condition(self, kind: str, status: str, reason: str = "", message: str = "") -> None:
        current = self.conditions.get(kind)
        if current is None or current.status != status:
            self.conditions[kind] = ConditionState(status, reason, message, now_text())
        else:
            current.reason = reason
            current.message = message

    def _status(self) -> JsonObject:
        phase = self._phase()
        self._set_condition("PodReadyToStartContainers", "True")
        incomplete = [
            runner.name for runner in self.init_runners if "terminated" not in runner.state
        ]
        if self.initialized or not self.init_runners:
            self._set_condition("Initialized", "True")
        else:
            self._set_condition(
                "Initialized",
                "False",
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete)}]",
            )
        unready = [runner.name for runner in self.runners if not runner.ready]
        if phase in ("Succeeded", "Failed"):
            self._set_condition("ContainersReady", "False", "PodCompleted")
            self._set_condition("Ready", "False", "PodCompleted")
        elif unready:
            message = f"containers with unready status: [{' '.join(unready)}]"
            self._set_condition("ContainersReady", "False", "ContainersNotReady", message)
            self._set_condition("Ready", "False", "ContainersNotReady", message)
        else:
            self._set_condition("ContainersReady", "True")
            gates = self._unready_gates()
            if gates:
                message = f"corresponding condition of pod readiness gate {gates} does not exist."
                self._set_condition("Ready", "False", "ReadinessGatesNotReady", message)
            else:
                self._set_condition("Ready", "True")
        conditions = []
        for kind, state in self.conditions.items():
            condition: JsonObject = {
                "type": kind,
                "status": state.status,
                "lastProbeTime": None,
                "lastTransitionTime": state.since,
                "reason": state.reason or None,
                "message": state.message or None,
            }
            conditions.append(condition)
        status: JsonObject = {
            "phase": phase,
            "hostIP": HOST_ADDRESS,
            "hostIPs": [{"ip": HOST_ADDRESS}],
            "podIP": self.address,
            "podIPs": [{"ip": self.address}],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": [runner.status() for runner in self.runners],
        }
        if self.init_runners:
            status["initContainerStatuses"] = [runner.status() for runner in self.init_runners]
        if self.failed_reason and phase == "Failed":
            status["message"] = self.failed_reason
        return status

    def _unready_gates(self) -> list[str]:
        gates = [gate["conditionType"] for gate in self.pod["spec"].get("readinessGates") or []]
        present = {
            condition["type"]: condition.get("status")
            for condition in self.pod.get("status", {}).get("conditions") or []
        }
        return [gate for gate in gates if present.get(gate) != "True"]

    async def _report(self) -> None:
        metadata = self.pod["metadata"]
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}/status"
        body = {"metadata": {"uid": metadata["uid"]}, "status": self._status()}
        try:
            await self.kubelet.api.patch(path, body, strategic=True)
        except ApiError as error:
            if error.status in (404, 409):
                return
            raise

    async def _report_loop(self) -> None:
        while True:
            await self.dirty.wait()
            await asyncio.sleep(STATUS_COALESCE_SECONDS)
            self.dirty.clear()
            try:
                await self._report()
            except (ApiError, OSError, TimeoutError) as error:
                logger.warning("status of pod %s: %s", self.label, error)
                self.dirty.set()
                await asyncio.sleep(STATUS_RETRY_SECONDS)
