"""How many examples each fuzz test runs: few in `make test`, many under `make fuzz`."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"

# Under the fuzz profile every count is multiplied by this.
FUZZ_FACTOR = 50


def examples(default: int) -> int:
    """`default` in ordinary runs, `default * FUZZ_FACTOR` under `HYPOTHESIS_PROFILE=fuzz`."""
    return default * FUZZ_FACTOR if FUZZING else default


def fuzz_settings(default: int) -> settings:
    """The settings of one fuzz test: `examples(default)` examples, no deadline."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
