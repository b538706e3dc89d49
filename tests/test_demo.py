"""`make demo` keeps working: the demo runs its whole story against real processes and exits 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taskraft.local_cluster import free_base_port


@pytest.mark.timeout(180)
def test_the_demo_tells_its_whole_story_and_exits_zero() -> None:
    base_port = free_base_port(3, low=30_000, high=40_000)
    finished = subprocess.run(
        [sys.executable, "-m", "taskraft.demo", "--base-port", str(base_port)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "every check held" in finished.stdout
    assert "exit statuses: {'n1': 0, 'n2': 0, 'n3': 0}" in finished.stdout
