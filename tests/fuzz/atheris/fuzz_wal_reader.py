"""Coverage-guided fuzzing of write-ahead log recovery (`WriteAheadLog.open`).

tests/fuzz/test_storage_corruption.py damages a valid log at random; atheris mutates the damage
towards code not run yet: header checks, record checksums, the torn-tail repair, the gap checks
between segments. Each input picks a segment of a valid multi-segment log and either cuts it
short, XORs bytes into it, or replaces it with arbitrary bytes. Opening the log must recover or
raise `StorageError`, nothing else; a recovered log holds consecutive entries and accepts the
next one. A log only cut short must recover a prefix of what was written (XORed or replaced
bytes could in principle forge a record with a valid checksum, so only the shape is checked
for those).

Run: `python tests/fuzz/atheris/fuzz_wal_reader.py -runs=10000` (libFuzzer options);
tests/fuzz/test_atheris.py runs it briefly, `make fuzz` for a minute.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["taskraft"]):
    from taskraft.raft import Entry, EntryKind, LogIndex, Term
    from taskraft.storage import StorageError
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
CUT, XOR, REPLACE = range(3)


def _valid_log() -> dict[str, bytes]:
    """The segment files of a log holding ENTRIES, by name."""
    with tempfile.TemporaryDirectory() as directory:
        with WriteAheadLog.open(
            Path(directory), segment_size_max_bytes=SEGMENT_SIZE_MAX_BYTES
        ) as log:
            log.append(ENTRIES)
            log.sync()
        return {path.name: path.read_bytes() for path in Path(directory).iterdir()}


VALID_LOG = _valid_log()
SEGMENT_NAMES = sorted(VALID_LOG)


def _damaged(provider: atheris.FuzzedDataProvider) -> tuple[str, bytes, int]:
    name = SEGMENT_NAMES[provider.ConsumeIntInRange(0, len(SEGMENT_NAMES) - 1)]
    content = VALID_LOG[name]
    damage = provider.ConsumeIntInRange(CUT, REPLACE)
    if damage == CUT:
        return name, content[: provider.ConsumeIntInRange(0, len(content))], damage
    if damage == XOR:
        offset = provider.ConsumeIntInRange(0, len(content) - 1)
        mask = provider.ConsumeBytes(len(content) - offset)
        damaged = bytearray(content)
        for position, byte in enumerate(mask, start=offset):
            damaged[position] ^= byte
        return name, bytes(damaged), damage
    return name, provider.ConsumeBytes(provider.remaining_bytes()), damage


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    name, damaged, damage = _damaged(provider)
    # libFuzzer ends the process without unwinding, so no directory outlives its input.
    with tempfile.TemporaryDirectory(prefix="fuzz-wal-") as directory:
        _recover(Path(directory), name, damaged, damage)


def _recover(directory: Path, name: str, damaged: bytes, damage: int) -> None:
    for file_name, content in VALID_LOG.items():
        (directory / file_name).write_bytes(damaged if file_name == name else content)
    try:
        log = WriteAheadLog.open(directory, segment_size_max_bytes=SEGMENT_SIZE_MAX_BYTES)
    except StorageError:
        return
    with log:
        recovered = log.entries()
        indexes = [entry.index for entry in recovered]
        assert indexes == list(range(1, len(recovered) + 1)), indexes
        if damage == CUT:
            assert recovered == ENTRIES[: len(recovered)]
        # The recovered log is usable: the next entry can be appended after its end.
        log.append([Entry(Term(9), LogIndex(len(recovered) + 1), EntryKind.NOOP)])
        log.sync()


def main() -> None:
    # Recovery warns about every torn record it cuts away: thousands of lines per second here.
    logging.disable(logging.WARNING)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
