"""Hypothesis strategies that damage a file's bytes the ways disks and crashes do, and a valid log.

`valid_log` is the write-ahead log that both tests/fuzz/test_storage_corruption.py (with
`corrupted`) and tests/fuzz/atheris/fuzz_wal_reader.py (with libFuzzer's bytes) damage.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from hypothesis import strategies as st

from taskraft.raft import Entry, EntryKind, LogIndex, Term
from taskraft.storage.wal import WriteAheadLog

# Small segments, so that the log spans several files and damage can hit any of them.
SEGMENT_SIZE_MAX_BYTES = 200
ENTRIES = [
    Entry(
        Term(1 + index // 7),
        LogIndex(index),
        (EntryKind.COMMAND, EntryKind.NOOP)[index % 2],
        bytes([index]) * (index % 11),
    )
    for index in range(1, 31)
]


@functools.cache
def valid_log() -> dict[str, bytes]:
    """The segment files of a log holding ENTRIES, by name."""
    with tempfile.TemporaryDirectory() as directory:
        with WriteAheadLog.open(
            Path(directory), segment_size_max_bytes=SEGMENT_SIZE_MAX_BYTES
        ) as log:
            log.append(ENTRIES)
            log.sync()
        files = {path.name: path.read_bytes() for path in Path(directory).iterdir()}
    assert len(files) > 2, "the log should span several segments"
    return files


@st.composite
def corrupted(draw: st.DrawFn, content: bytes) -> bytes:
    """`content` with flipped bytes, cut short at any point, with garbage appended, or several
    of these at once; always different from `content`."""
    damaged = bytearray(content)
    kinds = draw(st.lists(st.sampled_from(["flip", "truncate", "append"]), min_size=1, max_size=3))
    for kind in kinds:
        if kind == "flip" and damaged:
            for _ in range(draw(st.integers(1, 4))):
                position = draw(st.integers(0, len(damaged) - 1))
                damaged[position] ^= draw(st.integers(1, 255))
        elif kind == "truncate" and damaged:
            del damaged[draw(st.integers(0, len(damaged) - 1)) :]
        else:
            damaged += draw(st.binary(min_size=1, max_size=64))
    if bytes(damaged) == content:
        damaged += b"\0"
    return bytes(damaged)
