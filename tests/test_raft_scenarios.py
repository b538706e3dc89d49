"""Scenario tests of the Raft core: transcripts in tests/scenarios/testdata/*.txt.

Each file drives an in-memory cluster (see tests/scenarios/harness.py) and holds the output
every command is expected to print. To regenerate the expected output after a deliberate change
of behaviour, run

    TASKRAFT_REWRITE_SCENARIOS=1 .venv/bin/pytest tests/test_raft_scenarios.py

and read the diff of the testdata before keeping it: the transcripts are the specification.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from scenarios.harness import run_scenario

TESTDATA = Path(__file__).parent / "scenarios" / "testdata"
REWRITE = os.environ.get("TASKRAFT_REWRITE_SCENARIOS") == "1"

# File name -> reason, for a scenario whose expected output is written by hand to the correct
# behaviour while a known bug in the core makes it fail: it runs as a strict xfail, and
# TASKRAFT_REWRITE_SCENARIOS leaves it alone rather than record the bug as the expectation.
KNOWN_CORE_BUGS: dict[str, str] = {}


def _scenario_params() -> list[object]:
    params: list[object] = []
    for path in sorted(TESTDATA.glob("*.txt")):
        marks = []
        if path.name in KNOWN_CORE_BUGS and not REWRITE:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_CORE_BUGS[path.name]))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.mark.parametrize("path", _scenario_params())
def test_scenario(path: Path) -> None:
    if REWRITE and path.name in KNOWN_CORE_BUGS:
        pytest.skip(f"not rewritten, known core bug: {KNOWN_CORE_BUGS[path.name]}")
    scenario = run_scenario(path)
    expected = scenario.render(actual=False)
    actual = scenario.render(actual=True)
    if actual == expected:
        return
    if REWRITE:
        path.write_text(actual)
        return
    mismatches = [
        f"  line {case.line_number}: {case.command}"
        for case in scenario.cases
        if case.actual != case.expected
    ]
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{path.name} (expected)",
            tofile=f"{path.name} (actual)",
        )
    )
    pytest.fail(
        f"{path.name}: output differs for\n"
        + "\n".join(mismatches)
        + "\n\n"
        + diff
        + "\nRun with TASKRAFT_REWRITE_SCENARIOS=1 to accept the actual output.",
        pytrace=False,
    )


def test_there_are_scenarios() -> None:
    assert sorted(TESTDATA.glob("*.txt")), f"no scenario files in {TESTDATA}"
