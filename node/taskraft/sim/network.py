"""A simulated network for the cluster simulator: it drops, delays, duplicates and reorders.

Messages are scheduled for delivery at a future tick drawn from the seed; ties break by a
sequence number so delivery order depends only on the seed. Partitions are sets of blocked
directed links, so one-way and asymmetric partitions are just some links and not others.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from taskraft.raft import Message, NodeId


@dataclass(slots=True)
class NetworkFaults:
    """Fault rates of the network; all zero is a perfect network with one-tick latency."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    delay_max_ticks: int = 1


@dataclass(slots=True)
class SimulatedNetwork:
    random_source: random.Random
    faults: NetworkFaults = field(default_factory=NetworkFaults)
    blocked_links: set[tuple[NodeId, NodeId]] = field(default_factory=set)
    # Messages in flight are bounded like every queue: beyond this the network drops, as a full
    # socket buffer would.
    in_flight_max: int = 100_000
    _queue: list[tuple[int, int, Message]] = field(default_factory=list)
    _sequence: int = 0
    sent: int = 0
    dropped: int = 0
    delivered: int = 0

    def send(self, message: Message, now: int) -> None:
        self.sent += 1
        if (message.sender, message.recipient) in self.blocked_links:
            self.dropped += 1
            return
        faults = self.faults
        if faults.drop_probability and self.random_source.random() < faults.drop_probability:
            self.dropped += 1
            return
        copies = 1
        if (
            faults.duplicate_probability
            and self.random_source.random() < faults.duplicate_probability
        ):
            copies = 2
        for _ in range(copies):
            if len(self._queue) >= self.in_flight_max:
                self.dropped += 1
                return
            delay = 1
            if faults.delay_max_ticks > 1:
                delay = self.random_source.randint(1, faults.delay_max_ticks)
            self._sequence += 1
            heapq.heappush(self._queue, (now + delay, self._sequence, message))

    def due(self, now: int) -> list[Message]:
        """Messages whose delivery tick has come, in delivery order; blocked links drop them."""
        ready: list[Message] = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            message = heapq.heappop(queue)[2]
            if (message.sender, message.recipient) in self.blocked_links:
                self.dropped += 1
                continue
            ready.append(message)
        self.delivered += len(ready)
        return ready

    def partition(self, groups: list[set[NodeId]], *, one_way: bool = False) -> None:
        """Cut every link between different groups (only from earlier to later ones if one_way)."""
        self.blocked_links.clear()
        for position, group in enumerate(groups):
            for other_position, other in enumerate(groups):
                if position == other_position or (one_way and other_position < position):
                    continue
                for sender in group:
                    for recipient in other:
                        self.blocked_links.add((sender, recipient))

    def heal(self) -> None:
        self.blocked_links.clear()

    def in_flight(self) -> int:
        return len(self._queue)
