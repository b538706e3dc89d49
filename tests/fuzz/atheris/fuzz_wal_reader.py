"""Coverage-guided fuzzing of write-ahead log recovery (`WriteAheadLog.open`).

tests/fuzz/test_storage_corruption.py damages a valid log at random; atheris mutates the damage
towards code not run yet: header checks, record checksums, the torn-tail repair, the gap checks
between segments. Each input picks a segment of the same valid multi-segment log
(`fuzz.corruption.valid_log`) and either cuts it short, XORs bytes into it, or replaces it with
arbitrary bytes. Opening the log must recover or raise `StorageError`, nothing else; a
recovered log holds consecutive entries and accepts the next one. A log only cut short must
recover a prefix of what was written (XORed or replaced bytes could in principle forge a record
with a valid checksum, so only the shape is checked for those). `fuzz.checks.check_log_recovery`
is that check, which the Hypothesis test makes too.

Run: `python tests/fuzz/atheris/fuzz_wal_reader.py -runs=10000` (libFuzzer options);
tests/fuzz/test_atheris.py runs it briefly, `make fuzz` for a minute.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import atheris

# The shared helpers are the package `fuzz` in tests/, which a script run from anywhere
# does not otherwise see.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["taskraft"]):
    from fuzz.checks import check_log_recovery
    from fuzz.corruption import valid_log

VALID_LOG = valid_log()
SEGMENT_NAMES = sorted(VALID_LOG)
CUT, XOR, REPLACE = range(3)


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
        check_log_recovery(
            Path(directory), {**VALID_LOG, name: damaged}, expect_prefix=damage == CUT
        )


def main() -> None:
    # Recovery warns about every torn record it cuts away: thousands of lines per second here.
    logging.disable(logging.WARNING)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
