"""Pod IP addresses of the local node: one per pod, from the cluster network 10.244.0.0/16.

Each address goes on the `eth0` of the pod's own network namespace (network.py); the gateway
10.244.0.1 is the cluster's, never a pod's. A released address is not handed out again for a
while, so a client still talking to a deleted pod does not reach its successor by accident.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from localkube.network import CLUSTER_NETWORK, GATEWAY

POD_NETWORK = CLUSTER_NETWORK
RESERVED = frozenset({GATEWAY})
QUARANTINE_SECONDS = 90.0


class AddressesExhaustedError(Exception):
    """Every address of the pod network is in use or quarantined."""


class AddressAllocator:
    def __init__(
        self,
        network: ipaddress.IPv4Network = POD_NETWORK,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.network = network
        self.clock = clock
        self.in_use: dict[str, str] = {}  # address -> owner (pod uid)
        self.released_at: dict[str, float] = {}
        self.next_candidate = 0

    def allocate(self, owner: str, preferred: str | None = None) -> str:
        """An address for `owner`: the one it already has, `preferred` when free (a pod's
        status keeps its address), or the next free one after the last handed out."""
        for address, holder in self.in_use.items():
            if holder == owner:
                return address
        if preferred and self._free(preferred):
            return self._take(preferred, owner)
        hosts = self.network.num_addresses - 2
        for step in range(hosts):
            index = (self.next_candidate + step) % hosts
            address = str(self.network.network_address + 1 + index)
            if self._free(address):
                self.next_candidate = index + 1
                return self._take(address, owner)
        raise AddressesExhaustedError(f"no free address in {self.network}")

    def release(self, owner: str) -> None:
        for address, holder in list(self.in_use.items()):
            if holder == owner:
                del self.in_use[address]
                self.released_at[address] = self.clock()

    def _free(self, address: str) -> bool:
        try:
            if ipaddress.IPv4Address(address) not in self.network:
                return False
        except ValueError:
            return False
        if address in self.in_use or address in RESERVED:
            return False
        released = self.released_at.get(address)
        if released is None:
            return True
        if self.clock() - released >= QUARANTINE_SECONDS:
            del self.released_at[address]
            return True
        return False

    def _take(self, address: str, owner: str) -> str:
        self.in_use[address] = owner
        return address
