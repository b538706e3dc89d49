"""Tests of the small durable files: atomic writes, hard state, snapshots and the directory lock.

Damage is simulated byte by byte: every byte of a small file is flipped in turn and every prefix
of it is tried, and each must be refused with `StorageError`, never read back as other data.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from taskraft.raft import (
    Configuration,
    HardState,
    LogIndex,
    NodeId,
    Snapshot,
    SnapshotMetadata,
    Term,
)
from taskraft.storage import StorageError, StorageFailure
from taskraft.storage.durable_file import write_file_atomically
from taskraft.storage.hard_state_file import (
    VOTE_SIZE_MAX_BYTES,
    read_hard_state,
    write_hard_state,
)
from taskraft.storage.lock import DataDirectoryLock
from taskraft.storage.snapshot_files import (
    READ_CHUNK_SIZE_BYTES,
    SnapshotStore,
    SnapshotWriter,
    snapshot_file_name,
)

MEBIBYTE = 1024 * 1024


def failing_fsync(descriptor: int) -> None:
    raise OSError(errno.EIO, "Input/output error (injected)")


def damaged_copies(content: bytes) -> list[tuple[str, bytes]]:
    """Every single-byte corruption (all bits, then the lowest bit) and every truncation."""
    copies = []
    for position in range(len(content)):
        for mask in (0xFF, 0x01):
            damaged = bytearray(content)
            damaged[position] ^= mask
            copies.append((f"byte {position} xor {mask:#04x}", bytes(damaged)))
    for length in range(len(content)):
        copies.append((f"truncated to {length} bytes", content[:length]))
    copies.append(("one byte appended", content + b"\0"))
    return copies


def metadata(index: int, term: int = 1) -> SnapshotMetadata:
    return SnapshotMetadata(
        index=LogIndex(index),
        term=Term(term),
        configuration=Configuration(
            voters=frozenset({NodeId("node-a"), NodeId("node-b"), NodeId("node-c")}),
            learners=frozenset({NodeId("node-d")}),
        ),
    )


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_write_replaces_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    write_file_atomically(target, b"first")
    write_file_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


# --- hard state ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hard_state",
    [
        HardState(),
        HardState(term=Term(7), vote=NodeId("node-b"), commit=LogIndex(42)),
        HardState(term=Term(2**64 - 1), vote=NodeId("nœud-é"), commit=LogIndex(2**64 - 1)),
        HardState(term=Term(3), vote=NodeId("n" * VOTE_SIZE_MAX_BYTES), commit=LogIndex(1)),
    ],
)
def test_hard_state_round_trip(tmp_path: Path, hard_state: HardState) -> None:
    path = tmp_path / "HARDSTATE"
    write_hard_state(path, hard_state)
    assert read_hard_state(path) == hard_state


def test_missing_hard_state_file_reads_as_none(tmp_path: Path) -> None:
    assert read_hard_state(tmp_path / "HARDSTATE") is None


def test_hard_state_vote_longer_than_bound_is_refused(tmp_path: Path) -> None:
    too_long = HardState(term=Term(1), vote=NodeId("n" * (VOTE_SIZE_MAX_BYTES + 1)))
    with pytest.raises(ValueError, match="node id"):
        write_hard_state(tmp_path / "HARDSTATE", too_long)
    with pytest.raises(ValueError, match="empty node id"):
        write_hard_state(tmp_path / "HARDSTATE", HardState(term=Term(1), vote=NodeId("")))
    assert not (tmp_path / "HARDSTATE").exists()


def test_every_damaged_hard_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "HARDSTATE"
    write_hard_state(path, HardState(term=Term(5), vote=NodeId("node-a"), commit=LogIndex(9)))
    content = path.read_bytes()
    for description, damaged in damaged_copies(content):
        path.write_bytes(damaged)
        with pytest.raises(StorageError) as raised:
            read_hard_state(path)
        message = str(raised.value)
        assert str(path) in message, description
        assert "wipe its data directory" in message and "new member id" in message, description


def test_failed_hard_state_fsync_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "HARDSTATE"
    previous = HardState(term=Term(4), vote=NodeId("node-a"), commit=LogIndex(3))
    write_hard_state(path, previous)
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageFailure, match="previous content is intact"):
        write_hard_state(path, HardState(term=Term(5), vote=NodeId("node-b")))
    monkeypatch.undo()
    assert read_hard_state(path) == previous
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["HARDSTATE"]


# --- snapshots -----------------------------------------------------------------------------


def test_large_snapshot_streams_in_bounded_chunks(tmp_path: Path) -> None:
    payload = random.Random(1).randbytes(3 * MEBIBYTE)
    wanted = metadata(index=1000, term=3)
    with SnapshotWriter.create(tmp_path, wanted) as writer:
        # An odd chunk size, so chunks written and chunks read never line up.
        for start in range(0, len(payload), 7919):
            writer.write(payload[start : start + 7919])
        path = writer.commit()
    assert path == tmp_path / snapshot_file_name(1000, 3)

    store = SnapshotStore(tmp_path)
    assert store.list() == [wanted]
    assert store.newest_valid() == wanted
    with store.open_reader(wanted) as reader:
        assert reader.data_size_bytes == len(payload)
        chunks = list(reader)
    assert all(0 < len(chunk) <= READ_CHUNK_SIZE_BYTES for chunk in chunks)
    assert len(chunks) == 3
    assert b"".join(chunks) == payload

    small_chunks = list(SnapshotStore(tmp_path, read_chunk_size_bytes=65536).open_reader(wanted))
    assert max(len(chunk) for chunk in small_chunks) == 65536
    assert b"".join(small_chunks) == payload


def test_snapshot_round_trip_through_save(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for snapshot in (Snapshot(metadata(30, 2), b"thirty"), Snapshot(metadata(10, 1), b"")):
        store.save(snapshot)
    assert [entry.index for entry in store.list()] == [10, 30]
    assert store.read_all(metadata(30, 2)) == b"thirty"
    assert store.read_all(metadata(10, 1)) == b""
    store.verify(metadata(10, 1))


def test_every_damaged_snapshot_file_is_refused(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, read_chunk_size_bytes=16)
    wanted = metadata(index=12, term=4)
    path = store.save(Snapshot(wanted, b"queue state: three tasks, one leased"))
    content = path.read_bytes()
    for description, damaged in damaged_copies(content):
        path.write_bytes(damaged)
        with pytest.raises(StorageError) as raised:
            store.verify(wanted)
        assert str(path) in str(raised.value), description
        with pytest.raises(StorageError):
            store.read_all(wanted)
        with pytest.raises(StorageError):
            for _chunk in store.open_reader(wanted):
                pass
        assert store.newest_valid() is None, description


def test_damage_is_located_by_byte_offset(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    wanted = metadata(index=5)
    path = store.save(Snapshot(wanted, b"data"))
    content = path.read_bytes()
    path.write_bytes(b"X" + content[1:])
    with pytest.raises(StorageError, match="corrupt at byte 0: it starts with"):
        store.verify(wanted)
    path.write_bytes(content[:-3])
    with pytest.raises(StorageError, match="instead of the magic"):
        store.verify(wanted)


def test_newest_corrupt_snapshot_falls_back_to_older_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore(tmp_path)
    store.save(Snapshot(metadata(10), b"older"))
    newest = store.save(Snapshot(metadata(20), b"newer"))
    content = bytearray(newest.read_bytes())
    content[-21] ^= 0xFF  # the last data byte, just before the trailer
    newest.write_bytes(bytes(content))

    with caplog.at_level(logging.WARNING, logger="taskraft.storage.snapshot_files"):
        assert store.newest_valid() == metadata(10)
    assert any(str(newest) in record.getMessage() for record in caplog.records)
    # Its header is intact, so it is still listed; only its data is damaged.
    assert [entry.index for entry in store.list()] == [10, 20]


def test_list_skips_a_snapshot_whose_header_is_damaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore(tmp_path)
    store.save(Snapshot(metadata(10), b"older"))
    newest = store.save(Snapshot(metadata(20), b"newer"))
    newest.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert store.list() == [metadata(10)]
    assert any(str(newest) in record.getMessage() for record in caplog.records)


def test_temporary_leftovers_are_ignored_then_removed(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(Snapshot(metadata(10), b"ten"))
    leftover = tmp_path / (snapshot_file_name(30, 2) + ".tmp")
    leftover.write_bytes(b"TRFTSNP\0 cut short by a crash")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_bytes(b"not ours")

    assert store.list() == [metadata(10)]
    assert store.newest_valid() == metadata(10)
    store.delete_older_than(10)
    assert not leftover.exists()
    assert unrelated.exists()
    assert store.read_all(metadata(10)) == b"ten"


def test_delete_older_than_keeps_the_newest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for index in (10, 20, 30):
        store.save(Snapshot(metadata(index), b"x"))
    store.delete_older_than(20)
    assert [entry.index for entry in store.list()] == [20, 30]
    store.delete_older_than(1000)
    assert [entry.index for entry in store.list()] == [30]


def test_writer_leaves_nothing_when_aborted(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), SnapshotWriter.create(tmp_path, metadata(5)) as writer:
        writer.write(b"partial")
        raise RuntimeError("state machine failed mid-snapshot")
    with SnapshotWriter.create(tmp_path, metadata(6)) as writer:
        writer.write(b"never committed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"too late")


def test_failed_snapshot_fsync_raises_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path)
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageFailure, match="never retried"):
        store.save(Snapshot(metadata(5), b"data"))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_reader_refuses_metadata_that_disagrees_with_the_file(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(Snapshot(metadata(5), b"data"))
    other = SnapshotMetadata(LogIndex(5), Term(1), Configuration(voters=frozenset({NodeId("z")})))
    with pytest.raises(StorageError, match="not the expected"):
        store.read_all(other)
    with pytest.raises(StorageError, match="does not exist"):
        store.read_all(metadata(6))


# --- data directory lock -------------------------------------------------------------------

TRY_LOCK = """
import sys
from pathlib import Path
from taskraft.storage import StorageError
from taskraft.storage.lock import DataDirectoryLock
try:
    DataDirectoryLock.acquire(Path(sys.argv[1])).release()
except StorageError as error:
    print(error)
    sys.exit(3)
"""


def try_lock_in_other_process(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lock_excludes_another_process_and_names_the_holder(tmp_path: Path) -> None:
    with DataDirectoryLock.acquire(tmp_path):
        attempt = try_lock_in_other_process(tmp_path)
        assert attempt.returncode == 3, attempt.stderr
        assert f"in use by process {os.getpid()}" in attempt.stdout
        assert "two nodes must never share one" in attempt.stdout
        with pytest.raises(StorageError, match=f"in use by process {os.getpid()}"):
            DataDirectoryLock.acquire(tmp_path)
    attempt = try_lock_in_other_process(tmp_path)
    assert attempt.returncode == 0, attempt.stdout + attempt.stderr


def test_released_lock_can_be_acquired_again(tmp_path: Path) -> None:
    lock = DataDirectoryLock.acquire(tmp_path)
    lock.release()
    lock.release()
    again = DataDirectoryLock.acquire(tmp_path)
    assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())
    again.release()
