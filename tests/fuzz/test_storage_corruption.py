"""Damaged storage files: the write-ahead log, snapshot files and the hard state file.

Whatever the damage (flipped bytes, a file cut short at any point, garbage appended), reading
gives back the valid content or a prefix of it, or raises `StorageError`: never another
exception and never an entry, snapshot or hard state that was not written.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fuzz.budget import fuzz_settings
from fuzz.checks import check_log_recovery
from fuzz.corruption import corrupted, valid_log
from taskraft.raft import (
    Configuration,
    HardState,
    LogIndex,
    NodeId,
    Snapshot,
    SnapshotMetadata,
    Term,
)
from taskraft.storage import StorageError
from taskraft.storage.hard_state_file import decode_hard_state, encode_hard_state
from taskraft.storage.snapshot_files import SnapshotStore


@fuzz_settings(150)
@given(data=st.data())
def test_a_damaged_log_recovers_a_prefix_or_raises_storage_error(data: st.DataObject) -> None:
    files = valid_log()
    name = data.draw(st.sampled_from(sorted(files)), label="segment")
    damaged = data.draw(corrupted(files[name]), label="content")
    with tempfile.TemporaryDirectory() as directory:
        check_log_recovery(Path(directory), {**files, name: damaged}, expect_prefix=True)


METADATA = SnapshotMetadata(
    index=LogIndex(40),
    term=Term(3),
    configuration=Configuration(
        voters=frozenset({NodeId("node-a"), NodeId("node-b")}),
        learners=frozenset({NodeId("node-c")}),
    ),
)
SNAPSHOT_DATA = bytes(range(256)) * 2


@functools.cache
def valid_snapshot() -> tuple[str, bytes]:
    with tempfile.TemporaryDirectory() as directory:
        path = SnapshotStore(Path(directory)).save(Snapshot(METADATA, SNAPSHOT_DATA))
        return path.name, path.read_bytes()


@fuzz_settings(150)
@given(data=st.data(), chunk_size=st.integers(1, 600))
def test_a_damaged_snapshot_reads_whole_or_raises_storage_error(
    data: st.DataObject, chunk_size: int
) -> None:
    name, content = valid_snapshot()
    damaged = data.draw(corrupted(content), label="content")
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / name).write_bytes(damaged)
        store = SnapshotStore(Path(directory), read_chunk_size_bytes=chunk_size)
        for metadata in store.list():
            assert metadata == METADATA
        newest = store.newest_valid()
        assert newest in (None, METADATA)
        try:
            read = store.read_all(METADATA)
        except StorageError:
            assert newest is None
            return
        assert read == SNAPSHOT_DATA
        assert newest == METADATA


HARD_STATES = st.builds(
    HardState,
    term=st.integers(0, 2**64 - 1).map(Term),
    vote=st.none() | st.text(min_size=1, max_size=20).map(NodeId),
    commit=st.integers(0, 2**64 - 1).map(LogIndex),
)


@fuzz_settings(200)
@given(hard_state=HARD_STATES, data=st.data())
def test_a_damaged_hard_state_decodes_as_written_or_raises_storage_error(
    hard_state: HardState, data: st.DataObject
) -> None:
    damaged = data.draw(corrupted(encode_hard_state(hard_state)), label="content")
    try:
        decoded = decode_hard_state(damaged, Path("hard-state"))
    except StorageError:
        return
    assert decoded == hard_state


@fuzz_settings(200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_no_hard_state(content: bytes) -> None:
    with contextlib.suppress(StorageError):
        decode_hard_state(content, Path("hard-state"))
