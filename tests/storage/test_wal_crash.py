"""Crash test of the write-ahead log with real processes killed by SIGKILL at random moments.

A child process (wal_crash_child.py) appends and syncs in a loop and prints each index it has
synced. The parent kills it after a random number of acknowledgements plus a random delay, then
recovers the log in its own process: every acknowledged entry must be there, in order, with
its content, and every entry recovered beyond the acknowledgements must be whole and correct
too. The next child continues from wherever recovery left the log.

The run is driven by one seed; a failure message names it, and setting TASKRAFT_WAL_CRASH_SEED
replays it.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from storage.wal_crash_child import expected_entry
from taskraft.raft import Entry
from taskraft.storage.wal import WriteAheadLog

CHILD_SCRIPT = Path(__file__).with_name("wal_crash_child.py")
KILLS = 60
KILLS_MIN = 50
# Small segments so that kills also land around segment creation.
SEGMENT_SIZE_MAX_BYTES = 16 * 1024
# The whole test stays within a minute on a loaded machine: it stops after KILLS_MIN kills
# once this budget is spent, and a child that does not acknowledge within its deadline fails.
TIME_BUDGET_SECONDS = 40.0
ACKNOWLEDGEMENT_DEADLINE_SECONDS = 20.0
# Enough to vary where the kill lands within an append, a truncation or an fdatasync.
KILL_DELAY_MAX_SECONDS = 0.004


class ChildOutput:
    """Reads the acknowledgements a child prints, without ever blocking past a deadline."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        assert child.stdout is not None
        self._descriptor = child.stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._descriptor, selectors.EVENT_READ)
        self._pending = b""
        self.acknowledged: list[int] = []
        self.closed = False

    def read_until(self, count: int, deadline: float) -> None:
        """Read until `count` acknowledgements arrived, the output closed or the deadline passed."""
        while len(self.acknowledged) < count and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._selector.select(remaining):
                self._consume(os.read(self._descriptor, 65536))

    def drain(self) -> None:
        """Read what a dead child left in the pipe."""
        while not self.closed:
            self._consume(os.read(self._descriptor, 65536))
        self._selector.close()

    def _consume(self, data: bytes) -> None:
        if not data:
            self.closed = True
            return
        # A line cut short by the kill is not an acknowledgement: only whole lines count.
        *lines, self._pending = (self._pending + data).split(b"\n")
        self.acknowledged.extend(int(line) for line in lines)


def test_acknowledged_entries_survive_sigkill(tmp_path: Path) -> None:
    seed = int(os.environ.get("TASKRAFT_WAL_CRASH_SEED", "1729"))
    random_source = random.Random(seed)
    directory = tmp_path / "wal"
    expected: list[Entry] = []
    acknowledged = 0
    kills = 0
    started = time.monotonic()
    while kills < KILLS and (kills < KILLS_MIN or time.monotonic() - started < TIME_BUDGET_SECONDS):
        context = f"seed {seed}, kill {kills + 1}"
        child = subprocess.Popen(
            [
                sys.executable,
                str(CHILD_SCRIPT),
                str(directory),
                str(random_source.randrange(2**32)),
                str(SEGMENT_SIZE_MAX_BYTES),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        output = ChildOutput(child)
        try:
            wanted = random_source.randint(1, 6)
            output.read_until(wanted, time.monotonic() + ACKNOWLEDGEMENT_DEADLINE_SECONDS)
            if len(output.acknowledged) < wanted:
                child.kill()
                _, errors = child.communicate(timeout=10)
                raise AssertionError(
                    f"{context}: the child acknowledged {len(output.acknowledged)} of {wanted} "
                    f"batches before its deadline or its exit; its errors:\n{errors.decode()}"
                )
            time.sleep(random_source.uniform(0, KILL_DELAY_MAX_SECONDS))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            output.drain()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
            assert child.stdout is not None and child.stderr is not None
            child.stdout.close()
            child.stderr.close()
        kills += 1
        assert output.acknowledged == sorted(output.acknowledged), context
        assert output.acknowledged[0] > acknowledged, context
        acknowledged = output.acknowledged[-1]

        with WriteAheadLog.open(directory, segment_size_max_bytes=SEGMENT_SIZE_MAX_BYTES) as log:
            recovered = log.entries()
            assert log.first_index == 1, context
            assert log.last_index >= acknowledged, f"{context}: acknowledged entries were lost"
        while len(expected) < len(recovered):
            expected.append(expected_entry(len(expected) + 1))
        assert recovered == expected[: len(recovered)], f"{context}: recovered entries differ"
    assert kills >= KILLS_MIN
