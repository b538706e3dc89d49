"""The deterministic simulator: many seeds pass, a seed replays exactly, and the checkers bite.

Each seed draws its own mix of faults (swarm testing); seed N runs a cluster of 1, 3 or 5 nodes
(N % 3) for 10,000 ticks of faults, then a liveness phase. `make sim SEEDS=N` runs more.
"""

from __future__ import annotations

import pytest

from taskraft.raft.log import RaftLog
from taskraft.sim import SimulationFailure, SimulationSettings, run_simulation
from taskraft.sim.__main__ import CLUSTER_SIZES, main

SEEDS_IN_TEST_SUITE = 300
TICKS_PER_SEED = 10_000


@pytest.mark.parametrize("seed", range(SEEDS_IN_TEST_SUITE))
def test_seed_keeps_every_safety_property_and_recovers(seed: int) -> None:
    settings = SimulationSettings(
        seed=seed, nodes=CLUSTER_SIZES[seed % len(CLUSTER_SIZES)], ticks=TICKS_PER_SEED
    )
    result = run_simulation(settings)
    assert result.proposals_acknowledged > 0
    assert result.leaders_elected > 0


def test_a_seed_replays_exactly() -> None:
    settings = SimulationSettings(seed=12345, nodes=5, ticks=3_000)
    assert run_simulation(settings) == run_simulation(settings)


def test_different_seeds_draw_different_runs() -> None:
    first = run_simulation(SimulationSettings(seed=1, nodes=3, ticks=2_000))
    second = run_simulation(SimulationSettings(seed=4, nodes=3, ticks=2_000))
    assert first.messages_sent != second.messages_sent


def test_election_restriction_bug_is_caught_with_a_replay_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Granting votes to candidates with stale logs breaks leader completeness (thesis 3.6.1)."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    failure = None
    for seed in range(30):
        try:
            run_simulation(SimulationSettings(seed=seed, nodes=5, ticks=3_000))
        except SimulationFailure as caught:
            failure = caught
            break
    assert failure is not None, "the simulator missed a broken election restriction"
    assert "leader completeness" in str(failure)
    assert f"replay: python -m taskraft.sim --seed {seed} --nodes 5" in str(failure)


def test_command_line_reports_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "2", "--first-seed", "7", "--ticks", "500", "--workers", "1"]) == 0
    assert "2 seeds (500 ticks each)" in capsys.readouterr().out
