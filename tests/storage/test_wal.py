"""Tests of the write-ahead log: round trips, recovery from damage, truncation and failed syncs.

Damage is simulated byte by byte: every byte of a small log is flipped and the end of the last
record is cut at every offset. Recovery must either refuse the log with `StorageError` naming
the file and offset, or cut exactly a torn last record; it must never return other entries.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
from pathlib import Path

import pytest

from taskraft.raft import Entry, EntryKind, LogIndex, Term
from taskraft.storage import StorageError, StorageFailure
from taskraft.storage import wal as wal_module
from taskraft.storage.wal import (
    RECORD_HEADER,
    SEGMENT_HEADER_SIZE_BYTES,
    WriteAheadLog,
    encode_segment_header,
    segment_name,
)

# Small enough that a few dozen short entries span several segments.
SMALL_SEGMENT_SIZE_BYTES = 256


def make_entries(first: int, count: int, *, term: int = 1) -> list[Entry]:
    """Entries of every kind, with payloads from empty to a few dozen bytes."""
    kinds = list(EntryKind)
    return [
        Entry(Term(term), LogIndex(index), kinds[index % len(kinds)], b"%d;" % index * (index % 5))
        for index in range(first, first + count)
    ]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def first_index_of(path: Path) -> int:
    return int(path.name.removesuffix(".wal"))


def record_offsets(path: Path) -> list[int]:
    """Where each record of the segment file `path` starts."""
    content = path.read_bytes()
    offsets = []
    offset = SEGMENT_HEADER_SIZE_BYTES
    while offset < len(content):
        offsets.append(offset)
        (length,) = struct.unpack_from("<I", content, offset)
        offset += RECORD_HEADER.size + length
    return offsets


def write_log(directory: Path, entries: list[Entry], segment_size_max_bytes: int) -> None:
    with WriteAheadLog.open(directory, segment_size_max_bytes=segment_size_max_bytes) as log:
        log.append(entries)
        log.sync()


def read_log(directory: Path) -> list[Entry]:
    with WriteAheadLog.open(directory, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        return log.entries()


def failing_sync(descriptor: int) -> None:
    raise OSError(errno.EIO, "Input/output error (injected)")


# Round trips.


def test_entries_of_every_kind_round_trip_across_segments(tmp_path: Path) -> None:
    entries = make_entries(1, 60)
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        for start in range(0, 60, 7):
            log.append(entries[start : start + 7])
            log.sync()
        assert log.entries() == entries
    assert len(segment_files(tmp_path)) >= 5
    assert {entry.kind for entry in entries} == set(EntryKind)
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        assert (log.first_index, log.last_index) == (1, 60)
        assert log.entries() == entries
    for path in segment_files(tmp_path):
        assert path.stat().st_size <= SMALL_SEGMENT_SIZE_BYTES


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    big = Entry(Term(1), LogIndex(2), EntryKind.COMMAND, b"x" * 1000)
    entries = [*make_entries(1, 1), big, *make_entries(3, 2)]
    write_log(tmp_path, entries, SMALL_SEGMENT_SIZE_BYTES)
    names = [path.name for path in segment_files(tmp_path)]
    assert names == [segment_name(1), segment_name(2), segment_name(3)]
    assert read_log(tmp_path) == entries


def test_appending_after_reopening_continues_the_log(tmp_path: Path) -> None:
    entries = make_entries(1, 40)
    for start in range(0, 40, 10):
        with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
            assert log.last_index == start
            log.append(entries[start : start + 10])
            log.sync()
    assert read_log(tmp_path) == entries


def test_an_empty_log_starts_wherever_its_first_entry_does(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path / "new" / "wal") as log:
        assert (log.first_index, log.last_index) == (1, 0)
        assert log.entries() == []
        log.sync()
        log.append(make_entries(101, 3))
        assert (log.first_index, log.last_index) == (101, 103)
        log.sync()
    assert read_log(tmp_path / "new" / "wal") == make_entries(101, 3)


def test_append_refuses_gaps_and_batches_that_are_not_consecutive(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(make_entries(1, 3))
        with pytest.raises(ValueError, match="gap"):
            log.append(make_entries(5, 1))
        with pytest.raises(ValueError, match="consecutive"):
            log.append([*make_entries(4, 1), *make_entries(6, 1)])
        with pytest.raises(ValueError, match="between 1 and"):
            log.append([Entry(Term(1), LogIndex(0))])
        assert log.entries() == make_entries(1, 3)


def test_append_refuses_a_payload_over_the_record_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal_module, "RECORD_PAYLOAD_SIZE_MAX_BYTES", 100)
    with WriteAheadLog.open(tmp_path) as log:
        with pytest.raises(ValueError, match="record limit"):
            log.append([Entry(Term(1), LogIndex(1), EntryKind.COMMAND, b"x" * 101)])
        assert log.last_index == 0


# Damage.


def test_every_flipped_byte_is_refused_or_cuts_only_the_last_record(tmp_path: Path) -> None:
    entries = make_entries(1, 4)
    pristine_directory = tmp_path / "pristine"
    write_log(pristine_directory, entries, SMALL_SEGMENT_SIZE_BYTES)
    (pristine,) = segment_files(pristine_directory)
    content = pristine.read_bytes()
    last_record_offset = record_offsets(pristine)[-1]
    directory = tmp_path / "damaged"
    directory.mkdir()
    path = directory / pristine.name
    outcomes = {"refused": 0, "cut": 0}
    for position in range(len(content)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(content)
            damaged[position] ^= mask
            path.write_bytes(damaged)
            case = f"byte {position} xor {mask:#04x}"
            try:
                recovered = read_log(directory)
            except StorageError as error:
                assert path.name in str(error), case
                assert "byte offset" in str(error), case
                outcomes["refused"] += 1
                continue
            assert position >= last_record_offset, f"{case}: damage before the last record"
            assert recovered == entries[:-1], case
            assert path.stat().st_size == last_record_offset, case
            outcomes["cut"] += 1
    assert outcomes["refused"] > 0 and outcomes["cut"] > 0


def test_a_torn_last_record_is_cut_at_every_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = make_entries(1, 29)
    pristine = tmp_path / "pristine"
    write_log(pristine, entries, SMALL_SEGMENT_SIZE_BYTES)
    assert len(segment_files(pristine)) > 1
    last_segment = segment_files(pristine)[-1]
    last_record_offset = record_offsets(last_segment)[-1]
    file_size = last_segment.stat().st_size
    assert file_size - last_record_offset > RECORD_HEADER.size
    replacement = make_entries(29, 2, term=2)
    for cut in range(last_record_offset + 1, file_size):
        directory = tmp_path / f"cut-{cut}"
        shutil.copytree(pristine, directory)
        with open(directory / last_segment.name, "r+b") as file:
            file.truncate(cut)
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="taskraft.storage.wal"),
            WriteAheadLog.open(directory, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log,
        ):
            assert log.entries() == entries[:-1], f"cut at {cut}"
            log.append(replacement)
            log.sync()
        (warning,) = caplog.records
        assert last_segment.name in warning.getMessage()
        assert f"byte offset {last_record_offset}" in warning.getMessage()
        assert read_log(directory) == entries[:-1] + replacement
        shutil.rmtree(directory)


def test_a_missing_middle_segment_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, make_entries(1, 60), SMALL_SEGMENT_SIZE_BYTES)
    files = segment_files(tmp_path)
    files[2].unlink()
    with pytest.raises(StorageError, match="missing") as raised:
        read_log(tmp_path)
    assert files[3].name in str(raised.value)
    assert "wipe" in str(raised.value)


def test_a_segment_whose_header_disagrees_with_its_name_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, make_entries(1, 60), SMALL_SEGMENT_SIZE_BYTES)
    victim = segment_files(tmp_path)[2]
    first_index = first_index_of(victim)
    content = victim.read_bytes()
    victim.write_bytes(encode_segment_header(first_index + 1) + content[SEGMENT_HEADER_SIZE_BYTES:])
    with pytest.raises(StorageError, match="file name says") as raised:
        read_log(tmp_path)
    assert victim.name in str(raised.value)


def test_a_segment_with_the_wrong_first_index_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, make_entries(1, 60), SMALL_SEGMENT_SIZE_BYTES)
    victim = segment_files(tmp_path)[2]
    first_index = first_index_of(victim)
    content = victim.read_bytes()
    moved = victim.with_name(segment_name(first_index - 1))
    victim.unlink()
    moved.write_bytes(encode_segment_header(first_index - 1) + content[SEGMENT_HEADER_SIZE_BYTES:])
    with pytest.raises(StorageError) as raised:
        read_log(tmp_path)
    assert moved.name in str(raised.value)
    assert "byte offset 0" in str(raised.value)


def test_a_corrupt_record_in_a_middle_segment_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, make_entries(1, 60), SMALL_SEGMENT_SIZE_BYTES)
    victim = segment_files(tmp_path)[1]
    content = bytearray(victim.read_bytes())
    content[-1] ^= 0xFF
    victim.write_bytes(content)
    with pytest.raises(StorageError, match="checksum") as raised:
        read_log(tmp_path)
    assert victim.name in str(raised.value)


def test_a_cut_short_middle_segment_is_refused_not_repaired(tmp_path: Path) -> None:
    write_log(tmp_path, make_entries(1, 60), SMALL_SEGMENT_SIZE_BYTES)
    victim = segment_files(tmp_path)[1]
    size = victim.stat().st_size
    with open(victim, "r+b") as file:
        file.truncate(size - 3)
    with pytest.raises(StorageError, match="later segment follows") as raised:
        read_log(tmp_path)
    assert victim.name in str(raised.value)
    assert victim.stat().st_size == size - 3


def test_a_corrupt_record_in_the_middle_of_the_last_segment_is_refused(tmp_path: Path) -> None:
    entries = make_entries(1, 6)
    write_log(tmp_path, entries, SMALL_SEGMENT_SIZE_BYTES)
    (victim,) = segment_files(tmp_path)
    content = bytearray(victim.read_bytes())
    content[record_offsets(victim)[3] + RECORD_HEADER.size - 1] ^= 0x01
    victim.write_bytes(content)
    with pytest.raises(StorageError, match="more bytes follow") as raised:
        read_log(tmp_path)
    assert victim.name in str(raised.value)


def test_a_damaged_length_is_not_taken_for_a_torn_end(tmp_path: Path) -> None:
    """A length that runs past the end of the file hides the records after it; they are found."""
    entries = make_entries(1, 6)
    write_log(tmp_path, entries, SMALL_SEGMENT_SIZE_BYTES)
    (victim,) = segment_files(tmp_path)
    content = bytearray(victim.read_bytes())
    offset = record_offsets(victim)[2]
    content[offset : offset + 4] = (100_000).to_bytes(4, "little")
    victim.write_bytes(content)
    with pytest.raises(StorageError, match="length field is damaged") as raised:
        read_log(tmp_path)
    assert f"byte offset {offset}" in str(raised.value)


@pytest.mark.parametrize("content", [b"", b"TRFTWAL\0\x01"], ids=["empty", "short header"])
def test_a_segment_without_a_whole_header_is_refused(tmp_path: Path, content: bytes) -> None:
    write_log(tmp_path, make_entries(1, 3), SMALL_SEGMENT_SIZE_BYTES)
    (tmp_path / segment_name(4)).write_bytes(content)
    with pytest.raises(StorageError, match="segment header") as raised:
        read_log(tmp_path)
    assert segment_name(4) in str(raised.value)


def test_a_file_that_is_not_a_segment_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.wal").write_bytes(b"")
    with pytest.raises(StorageError, match=r"notes\.wal"):
        read_log(tmp_path)


def test_a_temporary_left_by_a_crash_is_removed(tmp_path: Path) -> None:
    write_log(tmp_path, make_entries(1, 3), SMALL_SEGMENT_SIZE_BYTES)
    leftover = tmp_path / (segment_name(4) + ".tmp")
    leftover.write_bytes(encode_segment_header(4))
    assert read_log(tmp_path) == make_entries(1, 3)
    assert not leftover.exists()


# Truncation, dropping and reset.


def test_truncate_from_the_middle_of_a_segment(tmp_path: Path) -> None:
    entries = make_entries(1, 60)
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        log.append(entries)
        log.sync()
        files_before = segment_files(tmp_path)
        index = log.last_index - 1
        assert first_index_of(files_before[-1]) < index
        log.truncate_from(index)
        assert log.last_index == index - 1
        assert segment_files(tmp_path) == files_before
        assert log.entries() == entries[: index - 1]
        replacement = make_entries(index, 5, term=2)
        log.append(replacement)
        log.sync()
    assert read_log(tmp_path) == entries[: index - 1] + replacement


def test_truncate_from_across_segments(tmp_path: Path) -> None:
    entries = make_entries(1, 60)
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        log.append(entries)
        log.sync()
        files = segment_files(tmp_path)
        third_start = first_index_of(files[2])
        log.truncate_from(third_start)
        assert log.last_index == third_start - 1
        assert segment_files(tmp_path) == files[:3]
        second_start = first_index_of(files[1])
        log.truncate_from(second_start + 1)
        assert segment_files(tmp_path) == files[:2]
        assert log.entries() == entries[:second_start]
        log.truncate_from(10_000)
        assert log.last_index == second_start
    assert read_log(tmp_path) == entries[:second_start]


def test_append_over_stored_entries_replaces_them(tmp_path: Path) -> None:
    entries = make_entries(1, 60)
    replacement = make_entries(10, 20, term=2)
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        log.append(entries)
        log.append(replacement)
        log.sync()
        assert log.last_index == 29
    assert read_log(tmp_path) == entries[:9] + replacement


def test_truncating_the_first_entry_empties_the_log(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        log.append(make_entries(5, 30))
        log.truncate_from(5)
        assert (log.first_index, log.last_index) == (5, 4)
        assert log.entries() == []
        log.append(make_entries(5, 2, term=3))
        log.sync()
    assert read_log(tmp_path) == make_entries(5, 2, term=3)


def test_drop_before_deletes_only_whole_segments_below_the_index(tmp_path: Path) -> None:
    entries = make_entries(1, 60)
    write_log(tmp_path, entries, SMALL_SEGMENT_SIZE_BYTES)
    files = segment_files(tmp_path)
    third_start = first_index_of(files[2])
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        log.drop_before(third_start + 1)
        assert log.first_index == third_start
        assert segment_files(tmp_path) == files[2:]
        assert log.entries() == entries[third_start - 1 :]
        log.drop_before(third_start)
        assert log.first_index == third_start
        log.drop_before(10_000)
        assert segment_files(tmp_path) == files[-1:]
        log.append(make_entries(61, 3))
        log.sync()
        kept = log.entries()
    assert kept[-1].index == 63
    assert read_log(tmp_path) == kept


def test_reset_empties_the_log_and_remembers_where_it_restarts(tmp_path: Path) -> None:
    write_log(tmp_path, make_entries(1, 60), SMALL_SEGMENT_SIZE_BYTES)
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        log.reset(1000)
        assert (log.first_index, log.last_index) == (1000, 999)
    assert [path.name for path in segment_files(tmp_path)] == [segment_name(1000)]
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        assert (log.first_index, log.last_index) == (1000, 999)
        assert log.entries() == []
        log.append(make_entries(1000, 3))
        log.sync()
    assert read_log(tmp_path) == make_entries(1000, 3)


def test_an_empty_log_restarts_where_its_first_append_says(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size_max_bytes=SMALL_SEGMENT_SIZE_BYTES) as log:
        log.reset(1000)
        log.append(make_entries(2000, 3))
        log.sync()
    assert [path.name for path in segment_files(tmp_path)] == [segment_name(2000)]
    assert read_log(tmp_path) == make_entries(2000, 3)


# Failures.


def test_a_failed_fdatasync_stops_the_log_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = WriteAheadLog.open(tmp_path)
    log.append(make_entries(1, 3))
    log.sync()
    log.append(make_entries(4, 3))
    monkeypatch.setattr(os, "fdatasync", failing_sync)
    with pytest.raises(StorageFailure, match="fdatasync") as raised:
        log.sync()
    assert "never retried" in str(raised.value)
    monkeypatch.undo()
    with pytest.raises(StorageFailure):
        log.sync()
    with pytest.raises(StorageFailure):
        log.append(make_entries(7, 1))
    with pytest.raises(StorageFailure):
        log.entries()
    with pytest.raises(StorageFailure):
        log.truncate_from(2)
    with pytest.raises(StorageFailure):
        _ = log.last_index
    log.close()
    assert read_log(tmp_path)[:3] == make_entries(1, 3)


def test_a_failed_fsync_while_creating_a_segment_stops_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = WriteAheadLog.open(tmp_path)
    monkeypatch.setattr(os, "fsync", failing_sync)
    with pytest.raises(StorageFailure, match="Input/output error"):
        log.append(make_entries(1, 3))
    monkeypatch.undo()
    with pytest.raises(StorageFailure):
        log.append(make_entries(1, 3))
    with pytest.raises(StorageFailure):
        log.sync()
    log.close()


def test_a_failed_fdatasync_while_truncating_stops_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = WriteAheadLog.open(tmp_path)
    log.append(make_entries(1, 5))
    monkeypatch.setattr(os, "fdatasync", failing_sync)
    with pytest.raises(StorageFailure, match="truncating"):
        log.append(make_entries(3, 1, term=2))
    monkeypatch.undo()
    with pytest.raises(StorageFailure):
        log.sync()
    log.close()


def test_a_closed_log_refuses_calls(tmp_path: Path) -> None:
    log = WriteAheadLog.open(tmp_path)
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append(make_entries(1, 1))
