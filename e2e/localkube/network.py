"""The local cluster's network: a network namespace of its own, and one per pod inside it.

Pods of a real cluster each have their own network stack: every pod may listen on 0.0.0.0 with
the same ports, and reaches the others by their pod IPs. Sharing this machine's network would
break both (the nodes of a QueueCluster all listen on 0.0.0.0:7100), and changing the machine's
network is not ours to do. So the whole local cluster runs in a network namespace it creates
(`enter_cluster_namespace`, also a private mount namespace, for the hosts file): there a bridge
`localkube0` holds the cluster network's gateway address 10.244.0.1/16, where the control plane
and the kubelet listen. Each pod gets a network namespace of its own (`PodNetworks.create`,
the pod's sandbox) with loopback and an `eth0` whose other end is plugged into the bridge, its
pod IP from 10.244.0.0/16 and a default route through the gateway. Nothing of this is visible
outside the cluster's namespace, and all of it disappears with the namespace's last process.

Commands run through `ip` (iproute2); every one is bounded in time and its failure raised.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import subprocess
import sys
from pathlib import Path

CLUSTER_NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
GATEWAY = "10.244.0.1"
BRIDGE = "localkube0"
# The network namespace `enter_cluster_namespace` left, set for the program it starts (and
# inherited by its children).
INSIDE_VARIABLE = "LOCALKUBE_CLUSTER_NAMESPACE"
# Where `ip netns add` keeps the pods' namespaces (a tmpfs of the cluster's mount namespace).
NAMESPACES_DIRECTORY = Path("/run/netns")
COMMAND_TIMEOUT_SECONDS = 20.0


class NetworkError(RuntimeError):
    """A network command failed; the message has its output."""


def inside_cluster_namespace() -> bool:
    """True in the namespaces `enter_cluster_namespace` made (and in their children)."""
    outside = os.environ.get(INSIDE_VARIABLE)
    return outside is not None and outside != _network_namespace()


def _network_namespace() -> str:
    return os.readlink("/proc/self/ns/net")


def enter_cluster_namespace(arguments: list[str]) -> None:
    """Replace this process by `sys.executable` with `arguments` in new network and mount
    namespaces (same PID, so signals reach it); return at once when already there."""
    if inside_cluster_namespace():
        return
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        raise NetworkError("the local cluster needs `unshare` (util-linux) and `ip` (iproute2)")
    command = [unshare, "--net", "--mount", "--propagation", "private", "--"]
    command += [sys.executable, *arguments]
    # The namespace this process leaves: the new one differs from it.
    os.execve(unshare, command, {**os.environ, INSIDE_VARIABLE: _network_namespace()})


def set_up_cluster_network() -> None:
    """Loopback up, and the bridge with the gateway address (inside the cluster namespace)."""
    if not inside_cluster_namespace():
        raise NetworkError("refusing to change the network outside the cluster's namespace")
    _ip("link", "set", "lo", "up")
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("address", "add", f"{GATEWAY}/{CLUSTER_NETWORK.prefixlen}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    # `ip netns` keeps namespaces under /run/netns; a tmpfs of this mount namespace keeps them
    # out of the machine's /run.
    NAMESPACES_DIRECTORY.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0755", "localkube-netns", str(NAMESPACES_DIRECTORY)],
        check=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )


class PodNetworks:
    """The pods' sandboxes: a network namespace each, named after the pod's uid."""

    @staticmethod
    def namespace_name(uid: str) -> str:
        return f"pod-{uid}"

    @staticmethod
    def _veth_name(uid: str) -> str:
        # Interface names have at most 15 characters.
        return "veth" + uid.replace("-", "")[:11]

    def path(self, uid: str) -> Path:
        return NAMESPACES_DIRECTORY / self.namespace_name(uid)

    async def create(self, uid: str, address: str) -> Path:
        """The pod's network namespace with `address` on eth0; its path (for setns)."""
        await asyncio.to_thread(self._create, uid, address)
        return self.path(uid)

    async def delete(self, uid: str) -> None:
        """Remove the pod's namespace (its veth pair goes with it); nothing when absent."""
        await asyncio.to_thread(self._delete, uid)

    def _create(self, uid: str, address: str) -> None:
        if not inside_cluster_namespace():
            raise NetworkError("pods' networks exist only inside the cluster's namespace")
        name = self.namespace_name(uid)
        veth = self._veth_name(uid)
        self._delete(uid)  # a sandbox left by an earlier attempt of the same pod
        _ip("netns", "add", name)
        try:
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", veth, "master", BRIDGE, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip(
                "-n",
                name,
                "address",
                "add",
                f"{address}/{CLUSTER_NETWORK.prefixlen}",
                "dev",
                "eth0",
            )
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "route", "add", "default", "via", GATEWAY)
        except NetworkError:
            self._delete(uid)
            raise

    def _delete(self, uid: str) -> None:
        if self.path(uid).exists():
            _ip("netns", "delete", self.namespace_name(uid))


def _ip(*arguments: str) -> None:
    completed = subprocess.run(
        ["ip", *arguments],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        raise NetworkError(f"ip {' '.join(arguments)}: {completed.stderr.strip()}")
