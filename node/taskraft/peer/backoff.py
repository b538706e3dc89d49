"""When to try again to reach a peer that is down: exponential backoff with full jitter.

A node connects to each peer with the same policy, so without jitter every node of a cluster
would retry a restarting peer in lockstep. Full jitter (each delay drawn uniformly below an
exponentially growing ceiling) spreads the attempts; the floor keeps even the luckiest draw from
turning into a busy loop, and the cap bounds how long a peer that came back waits for its first
message. Pure: the delay is computed here, slept by the transport.
"""

from __future__ import annotations

import random
from typing import Final

# 2**16 times the floor is past any sensible cap; stopping the exponent there keeps the
# arithmetic small after a peer has been down for days.
_EXPONENT_MAX: Final = 16


class ReconnectBackoff:
    """Delays in [delay_min_ms, ceiling], the ceiling doubling per failure up to delay_max_ms."""

    __slots__ = ("_delay_max_ms", "_delay_min_ms", "_failures", "_random")

    def __init__(
        self, *, delay_min_ms: float, delay_max_ms: float, random_source: random.Random
    ) -> None:
        if not 0 < delay_min_ms <= delay_max_ms:
            raise ValueError(
                f"need 0 < delay_min_ms <= delay_max_ms, got {delay_min_ms} and {delay_max_ms}"
            )
        self._delay_min_ms = delay_min_ms
        self._delay_max_ms = delay_max_ms
        self._random = random_source
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failures since the last reset."""
        return self._failures

    def next_delay_ms(self) -> float:
        """The delay before the next attempt, after one more failure."""
        exponent = min(self._failures, _EXPONENT_MAX)
        ceiling = min(self._delay_max_ms, self._delay_min_ms * 2**exponent)
        self._failures += 1
        return self._random.uniform(self._delay_min_ms, ceiling)

    def reset(self) -> None:
        """Start again from the floor: the peer has proven reachable."""
        self._failures = 0


__all__ = ["ReconnectBackoff"]
