"""`make demo` keeps working: the demo runs its whole story against real processes and exits 0."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from taskraft.demo import ports_free


def free_base_port() -> int:
    chooser = random.Random()
    for _ in range(100):
        base_port = chooser.randrange(30000, 40000, 10)
        if ports_free(base_port, 3):
            return base_port
    raise AssertionError("no free ports for the demo")


@pytest.mark.timeout(180)
def test_the_demo_tells_its_whole_story_and_exits_zero() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "taskraft.demo", "--base-port", str(free_base_port())],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "every check held" in finished.stdout
    assert "exit statuses: {'n1': 0, 'n2': 0, 'n3': 0}" in finished.stdout
