"""Shared pytest configuration for the taskraft test suite."""

import os

from hypothesis import HealthCheck, settings

# `HYPOTHESIS_PROFILE=fuzz` (as `make fuzz` sets it): many more examples for every Hypothesis test
# that does not fix its own `max_examples` (tests/fuzz scales its counts with fuzz.budget).
settings.register_profile(
    "fuzz",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz":
    settings.load_profile("fuzz")
