"""Command line of the simulator: run many seeds in parallel, or replay one.

    python -m taskraft.sim --seeds 1000              # seeds 0..999, cluster sizes 1, 3 and 5
    python -m taskraft.sim --seed 42 --nodes 3       # replay one seed exactly
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from taskraft.sim.simulation import (
    SimulationFailure,
    SimulationResult,
    SimulationSettings,
    run_simulation,
)

CLUSTER_SIZES = (1, 3, 5)
# A long run reports how far it got, so an interrupted run still says which seeds passed.
PROGRESS_EVERY_SEEDS = 100


def settings_for(
    first_seed: int, count: int, nodes: int | None, ticks: int, storage: str = "memory"
) -> Iterator[SimulationSettings]:
    """Seeds in order; without a fixed size, seed N gets cluster size CLUSTER_SIZES[N % 3]."""
    for seed in range(first_seed, first_seed + count):
        size = nodes if nodes is not None else CLUSTER_SIZES[seed % len(CLUSTER_SIZES)]
        yield SimulationSettings(seed=seed, nodes=size, ticks=ticks, storage=storage)


def run_one(settings: SimulationSettings) -> tuple[SimulationSettings, SimulationResult | str]:
    try:
        return settings, run_simulation(settings)
    except SimulationFailure as failure:
        return settings, str(failure)


def run_many(
    all_settings: list[SimulationSettings], workers: int
) -> tuple[list[SimulationResult], list[str]]:
    results: list[SimulationResult] = []
    failures: list[str] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        outcomes = pool.map(run_one, all_settings, chunksize=4)
        for done, (settings, outcome) in enumerate(outcomes, start=1):
            if isinstance(outcome, str):
                failures.append(outcome)
                print(f"FAILED {outcome}", file=sys.stderr, flush=True)
            else:
                results.append(outcome)
            if done % PROGRESS_EVERY_SEEDS == 0:
                print(
                    f"... {done} seeds done, through seed {settings.seed}: "
                    f"{len(failures)} failed",
                    file=sys.stderr,
                    flush=True,
                )
    return results, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskraft.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, help="replay exactly this seed")
    parser.add_argument("--nodes", type=int, help="cluster size (default: cycle 1, 3, 5)")
    parser.add_argument("--ticks", type=int, default=10_000, help="ticks of the safety phase")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--storage",
        choices=("memory", "file"),
        default="memory",
        help="where nodes persist: in memory, or real files in a temporary directory",
    )
    arguments = parser.parse_args(argv)
    if arguments.seed is not None:
        arguments.first_seed, arguments.seeds = arguments.seed, 1
    all_settings = list(
        settings_for(
            arguments.first_seed,
            arguments.seeds,
            arguments.nodes,
            arguments.ticks,
            arguments.storage,
        )
    )
    started = time.monotonic()
    results, failures = run_many(all_settings, max(1, arguments.workers))
    elapsed = time.monotonic() - started
    applied = sum(result.highest_applied_index for result in results)
    elections = sum(result.leaders_elected for result in results)
    print(
        f"{len(all_settings)} seeds ({arguments.ticks} ticks each) in {elapsed:.1f} s: "
        f"{len(results)} passed, {len(failures)} failed; {elections} leaders elected, "
        f"{applied} entries applied"
    )
    if len(all_settings) == 1 and results:
        print(results[0])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
