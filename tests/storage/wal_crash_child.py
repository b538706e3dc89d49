"""The process that test_wal_crash kills: it appends to a write-ahead log until it is killed.

Run as `python wal_crash_child.py DIRECTORY SEED SEGMENT_SIZE_MAX_BYTES`. It recovers the log in
DIRECTORY, then appends batches of entries forever, and after each `sync` prints the last index
it synced, one per line. A printed index is an acknowledgement: the parent may rely on every
entry up to it surviving the kill. Entry content depends only on the index (`expected_entry`),
so the parent can check every entry it finds.

Some batches are partly truncated and written again before the sync, so a kill can also land
in the middle of a truncation.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from taskraft.raft import Entry, EntryKind, LogIndex, Term
from taskraft.storage.wal import WriteAheadLog

# Small batches keep each sync short, so the parent gets many acknowledgements per child; a
# few dozen entries still make a batch span segment boundaries now and then.
BATCH_SIZE_MAX_ENTRIES = 48

_KINDS = list(EntryKind)


def expected_entry(index: int) -> Entry:
    """The entry every run writes at `index`: payloads of 0 to 128 bytes, every kind."""
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=32).digest()
    return Entry(
        Term(1 + index // 1000), LogIndex(index), _KINDS[index % len(_KINDS)], digest * (index % 5)
    )


def main(arguments: list[str]) -> None:
    directory, seed, segment_size_max_bytes = Path(arguments[0]), arguments[1], arguments[2]
    random_source = random.Random(seed)
    log = WriteAheadLog.open(directory, segment_size_max_bytes=int(segment_size_max_bytes))
    next_index = log.last_index + 1
    while True:
        count = random_source.randint(1, BATCH_SIZE_MAX_ENTRIES)
        batch = [expected_entry(index) for index in range(next_index, next_index + count)]
        log.append(batch)
        if random_source.random() < 0.2:
            # Rewrite the tail of the batch: the same content, through a truncation.
            rewritten = random_source.randrange(count)
            log.truncate_from(next_index + rewritten)
            log.append(batch[rewritten:])
        log.sync()
        next_index += count
        sys.stdout.write(f"{next_index - 1}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
