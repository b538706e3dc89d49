"""ReconnectBackoff: delays between the floor and a doubling ceiling, capped, reset on success."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskraft.peer import ReconnectBackoff


def backoff(seed: int = 0) -> ReconnectBackoff:
    return ReconnectBackoff(delay_min_ms=50, delay_max_ms=2000, random_source=random.Random(seed))


@given(st.integers(0, 2**32))
def test_delays_stay_between_the_floor_and_a_doubling_ceiling(seed: int) -> None:
    policy = backoff(seed)
    for failure in range(40):
        delay = policy.next_delay_ms()
        assert 50 <= delay <= min(2000, 50 * 2**failure)


def test_delays_grow_on_average_and_reset_to_the_floor() -> None:
    policy = backoff()
    first = [policy.next_delay_ms() for _ in range(3)]
    later = [policy.next_delay_ms() for _ in range(100)]
    assert first[0] == 50
    assert sum(later) / len(later) > 800
    policy.reset()
    assert policy.failures == 0
    assert policy.next_delay_ms() == 50


def test_jitter_spreads_nodes_that_retry_together() -> None:
    delays = set()
    for seed in range(20):
        policy = backoff(seed)
        for _ in range(5):
            delay = policy.next_delay_ms()
        delays.add(round(delay))
    assert len(delays) > 15


def test_a_peer_down_for_days_costs_no_large_numbers() -> None:
    policy = backoff()
    for _ in range(100_000):
        assert policy.next_delay_ms() <= 2000


@pytest.mark.parametrize(("low", "high"), [(0, 10), (-1, 10), (20, 10)])
def test_nonsense_bounds_are_refused(low: float, high: float) -> None:
    with pytest.raises(ValueError):
        ReconnectBackoff(delay_min_ms=low, delay_max_ms=high, random_source=random.Random())
