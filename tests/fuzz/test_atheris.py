"""Each coverage-guided harness in tests/fuzz/atheris/ run briefly, in a process of its own.

The harnesses are scripts (libFuzzer takes over the process and ends it), so each runs as a
subprocess for a fixed number of inputs: enough that `make test` notices a harness that no
longer starts or a decoder bug that a few thousand guided inputs find. `make fuzz` runs them
for minutes. A failure shows libFuzzer's report; the input that failed is saved in the test's
temporary directory, and `python tests/fuzz/atheris/fuzz_X.py CRASH_FILE` replays it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

HARNESS_DIRECTORY = Path(__file__).resolve().parent / "atheris"
HARNESSES = sorted(HARNESS_DIRECTORY.glob("fuzz_*.py"))
RUNS = 2000
DEADLINE_S = 120
OUTPUT_TAIL_CHARACTERS = 6000


def test_the_harnesses_are_found() -> None:
    assert {harness.stem for harness in HARNESSES} >= {
        "fuzz_client_stream",
        "fuzz_peer_stream",
        "fuzz_wal_reader",
    }


@pytest.mark.parametrize("harness", HARNESSES, ids=lambda harness: harness.stem)
def test_a_harness_finds_nothing_in_its_runs(harness: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(harness), f"-runs={RUNS}", f"-artifact_prefix={tmp_path}/"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )
    output = completed.stderr + completed.stdout
    assert completed.returncode == 0, output[-OUTPUT_TAIL_CHARACTERS:]
    assert f"Done {RUNS} runs" in output, output[-OUTPUT_TAIL_CHARACTERS:]
