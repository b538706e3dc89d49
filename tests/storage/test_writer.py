"""The storage writer keeps fsyncs off the event loop without weakening what they promise."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from taskraft.raft import (
    Configuration,
    Entry,
    HardState,
    LogIndex,
    NodeId,
    SnapshotMetadata,
    Term,
)
from taskraft.storage import StorageFailure
from taskraft.storage.file_storage import FileStorage
from taskraft.storage.writer import StorageWriter

# Every wait in these tests is on a condition, bounded by this deadline.
DEADLINE_SECONDS = 10.0


def batch(first: int, last: int) -> list[Entry]:
    return [Entry(Term(1), LogIndex(i), data=b"x" * 64) for i in range(first, last + 1)]


def test_the_event_loop_keeps_running_while_an_fsync_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage.open(tmp_path)
    loop_ran_during_fsync = threading.Event()
    real_fdatasync = os.fdatasync

    def slow_fdatasync(descriptor: int) -> None:
        # The fsync finishes only once the event loop proved it still runs meanwhile.
        assert loop_ran_during_fsync.wait(DEADLINE_SECONDS), "the event loop was blocked"
        real_fdatasync(descriptor)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)

    async def scenario() -> None:
        writer = StorageWriter(storage)
        persisting = asyncio.create_task(
            writer.persist(snapshot=None, entries=batch(1, 256), hard_state=None)
        )
        await asyncio.sleep(0)  # yield: the write starts on its thread
        loop_ran_during_fsync.set()
        await asyncio.wait_for(persisting, DEADLINE_SECONDS)
        await writer.close()

    asyncio.run(scenario())
    reopened = FileStorage.open(tmp_path)
    assert len(reopened.load().entries) == 256
    reopened.close()


def test_batches_reach_the_disk_in_the_order_they_were_handed_over(tmp_path: Path) -> None:
    async def scenario() -> None:
        writer = StorageWriter(FileStorage.open(tmp_path), pending_log_batches_max=4)
        await asyncio.gather(
            *(
                writer.persist(snapshot=None, entries=batch(first, first + 9), hard_state=None)
                for first in range(1, 200, 10)
            )
        )
        await writer.close()

    asyncio.run(scenario())
    reopened = FileStorage.open(tmp_path)
    assert [entry.index for entry in reopened.load().entries] == list(range(1, 201))
    reopened.close()


def test_a_failed_fsync_reaches_the_caller_and_every_later_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fdatasync(descriptor: int) -> None:
        raise OSError(5, "Input/output error")

    async def scenario() -> None:
        writer = StorageWriter(FileStorage.open(tmp_path))
        monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
        with pytest.raises(StorageFailure):
            await writer.persist(snapshot=None, entries=batch(1, 1), hard_state=None)
        monkeypatch.undo()
        with pytest.raises(StorageFailure):
            await writer.persist(snapshot=None, entries=batch(2, 2), hard_state=None)
        await writer.close()

    asyncio.run(scenario())


def test_the_log_keeps_accepting_writes_while_a_snapshot_is_written(tmp_path: Path) -> None:
    log_written_during_snapshot = threading.Event()
    metadata = SnapshotMetadata(
        LogIndex(100), Term(1), Configuration(voters=frozenset({NodeId("1")}))
    )

    def state_chunks() -> Iterator[bytes]:
        yield b"first half of the state "
        # The snapshot cannot finish until a log write has gone through beside it.
        assert log_written_during_snapshot.wait(DEADLINE_SECONDS), "log blocked by snapshot"
        yield b"second half"

    async def scenario() -> None:
        writer = StorageWriter(FileStorage.open(tmp_path, segment_size_max_bytes=4096))
        await writer.persist(snapshot=None, entries=batch(1, 100), hard_state=None)
        snapshotting = asyncio.create_task(writer.write_snapshot(metadata, state_chunks()))
        await writer.persist(snapshot=None, entries=batch(101, 110), hard_state=None)
        log_written_during_snapshot.set()
        await asyncio.wait_for(snapshotting, DEADLINE_SECONDS)
        await writer.close()

    asyncio.run(scenario())
    reopened = FileStorage.open(tmp_path)
    recovered = reopened.load()
    assert recovered.snapshot is not None
    assert recovered.snapshot.data == b"first half of the state second half"
    assert recovered.entries[-1].index == 110
    reopened.close()


def test_a_batch_that_only_moves_the_commit_index_skips_the_log_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage.open(tmp_path)
    threads: list[str] = []
    real_persist = storage.persist

    def recording_persist(**batch_parts: Any) -> None:
        threads.append(threading.current_thread().name)
        real_persist(**batch_parts)

    monkeypatch.setattr(storage, "persist", recording_persist)

    async def scenario() -> None:
        writer = StorageWriter(storage)
        voted = HardState(term=Term(2), vote=NodeId("n1"), commit=LogIndex(0))
        await writer.persist(snapshot=None, entries=batch(1, 3), hard_state=voted)
        # Only the commit index moves: nothing to write, so no hand-off to the log thread.
        await writer.persist(
            snapshot=None, entries=(), hard_state=replace(voted, commit=LogIndex(3))
        )
        # A new term must reach the disk: the log thread again.
        await writer.persist(
            snapshot=None,
            entries=(),
            hard_state=HardState(term=Term(3), vote=None, commit=LogIndex(3)),
        )
        await writer.close()

    asyncio.run(scenario())
    loop_thread = threading.current_thread().name
    assert threads[1] == loop_thread
    assert threads[0] != loop_thread and threads[2] != loop_thread
    reopened = FileStorage.open(tmp_path)
    recovered = reopened.load()
    assert (recovered.hard_state.term, recovered.hard_state.vote) == (3, None)
    assert len(recovered.entries) == 3
    reopened.close()
