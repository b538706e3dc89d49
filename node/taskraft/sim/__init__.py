"""A deterministic, seeded cluster simulator that attacks the Raft core with faults.

`python -m taskraft.sim --seeds N` runs many seeds; a failing seed prints the command that
replays it exactly. `python -m taskraft.sim.demo` narrates one healthy run.
"""

from taskraft.sim.checkers import SafetyChecker, SafetyViolation
from taskraft.sim.network import NetworkFaults, SimulatedNetwork
from taskraft.sim.simulation import (
    FaultPlan,
    Simulation,
    SimulationFailure,
    SimulationResult,
    SimulationSettings,
    run_simulation,
)

__all__ = [
    "FaultPlan",
    "NetworkFaults",
    "SafetyChecker",
    "SafetyViolation",
    "SimulatedNetwork",
    "Simulation",
    "SimulationFailure",
    "SimulationResult",
    "SimulationSettings",
    "run_simulation",
]
