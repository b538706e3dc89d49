"""What the benchmarks share to print their results and describe the machine.

Imported by the scripts of this folder (`python bench/storage.py`, `python bench/queue_bench.py`
put the folder on the import path), so that both print their tables and facts the same way.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print rows under headers: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for line in (headers, *rows):
        cells = [
            cell.ljust(width) if position == 0 else cell.rjust(width)
            for position, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print(flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value at `fraction` (0 to 1) of the sorted `values`, which must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def file_system_description(directory: Path) -> str:
    """The device, type and mount point of the file system holding `directory`."""
    try:
        completed = subprocess.run(
            ["df", "-T", str(directory)], capture_output=True, text=True, check=True, timeout=10
        )
        fields = completed.stdout.splitlines()[-1].split()
        return f"{fields[1]} on {fields[0]}, mounted at {fields[-1]}"
    except (OSError, subprocess.SubprocessError, IndexError):
        status = os.statvfs(directory)
        return f"unknown type (df failed); block size {status.f_bsize} bytes"
