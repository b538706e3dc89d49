"""The file storage as the node's driver uses it: recovery rules, group commit, snapshots."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from taskraft.raft import (
    Configuration,
    Entry,
    HardState,
    LogIndex,
    NodeId,
    RaftNode,
    Snapshot,
    SnapshotMetadata,
    Term,
    bootstrap_state,
)
from taskraft.sim import SimulationSettings
from taskraft.sim.file_storage import FileStorageProvider
from taskraft.sim.simulation import Simulation
from taskraft.storage import StorageError, StorageFailure
from taskraft.storage.file_storage import FileStorage
from taskraft.storage.snapshot_files import SnapshotStore

ONE = NodeId("1")
SOLO = Configuration(voters=frozenset({ONE}))


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [
        Entry(Term(term), LogIndex(i), data=f"task-{i}".encode()) for i in range(first, last + 1)
    ]


def open_storage(path: Path) -> FileStorage:
    return FileStorage.open(path, segment_size_max_bytes=1024)


def test_bootstrap_entries_and_hard_state_survive_a_restart(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    bootstrap = bootstrap_state(SOLO)
    storage.persist(snapshot=bootstrap.snapshot, entries=(), hard_state=None)
    storage.persist(snapshot=None, entries=entries(1, 50), hard_state=HardState(Term(1), ONE))
    storage.close()
    recovered = open_storage(tmp_path).load()
    assert recovered.snapshot == bootstrap.snapshot
    assert list(recovered.entries) == entries(1, 50)
    assert (recovered.hard_state.term, recovered.hard_state.vote) == (1, ONE)


def test_one_log_sync_per_batch_and_hard_state_only_on_term_or_vote_change(
    tmp_path: Path,
) -> None:
    storage = open_storage(tmp_path)
    storage.persist(snapshot=None, entries=entries(1, 256), hard_state=HardState(Term(1), ONE))
    storage.persist(
        snapshot=None, entries=entries(257, 300), hard_state=HardState(Term(1), ONE, LogIndex(9))
    )
    statistics = storage.statistics()
    assert statistics.log_syncs == 2
    assert statistics.hard_state_writes == 1, "a commit-only change must not rewrite hard state"


def test_a_truncated_suffix_stays_truncated_after_restart(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.persist(snapshot=None, entries=entries(1, 40, term=1), hard_state=None)
    storage.persist(snapshot=None, entries=entries(30, 32, term=2), hard_state=None)
    storage.close()
    recovered = list(open_storage(tmp_path).load().entries)
    assert recovered == entries(1, 29, term=1) + entries(30, 32, term=2)


def test_a_taken_snapshot_drops_the_log_it_covers(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.persist(snapshot=None, entries=entries(1, 200), hard_state=None)
    segments_before = len(list((tmp_path / "wal").glob("*.wal")))
    metadata = SnapshotMetadata(LogIndex(150), Term(1), SOLO)
    storage.save_snapshot(Snapshot(metadata, b"state at 150"))
    assert len(list((tmp_path / "wal").glob("*.wal"))) < segments_before
    storage.close()
    recovered = open_storage(tmp_path).load()
    assert recovered.snapshot == Snapshot(metadata, b"state at 150")
    assert [entry.index for entry in recovered.entries if entry.index > 150] == list(
        range(151, 201)
    )


def test_a_snapshot_from_the_leader_replaces_the_log(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.persist(snapshot=None, entries=entries(1, 20, term=1), hard_state=None)
    snapshot = Snapshot(SnapshotMetadata(LogIndex(90), Term(3), SOLO), b"leader state")
    storage.persist(snapshot=snapshot, entries=entries(91, 92, term=3), hard_state=None)
    storage.close()
    recovered = open_storage(tmp_path).load()
    assert recovered.snapshot == snapshot
    assert list(recovered.entries) == entries(91, 92, term=3)


def test_a_log_that_does_not_continue_the_snapshot_refuses_to_start(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.persist(snapshot=None, entries=entries(1, 200), hard_state=None)
    storage.close()
    first_segment = sorted((tmp_path / "wal").glob("*.wal"))[0]
    os.remove(first_segment)
    with pytest.raises(StorageError) as error:
        open_storage(tmp_path).load()
    message = str(error.value)
    assert str(tmp_path) in message and "wipe" in message


def test_two_processes_cannot_open_one_data_directory(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        open_storage(tmp_path)
    storage.close()
    open_storage(tmp_path).close()


def test_a_failed_fsync_stops_the_storage_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(tmp_path)
    storage.persist(snapshot=None, entries=entries(1, 5), hard_state=None)

    def failing_sync(descriptor: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_sync)
    monkeypatch.setattr(os, "fsync", failing_sync)
    with pytest.raises(StorageFailure):
        storage.persist(snapshot=None, entries=entries(6, 6), hard_state=None)
    monkeypatch.undo()
    with pytest.raises(StorageFailure):
        storage.persist(snapshot=None, entries=entries(6, 6), hard_state=None)


def test_a_single_node_restarts_from_its_data_directory(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.persist(snapshot=bootstrap_state(SOLO).snapshot, entries=(), hard_state=None)

    def drive(node: RaftNode) -> list[bytes]:
        applied: list[bytes] = []
        while node.has_ready():
            ready = node.ready()
            storage.persist(
                snapshot=ready.snapshot, entries=ready.entries, hard_state=ready.hard_state
            )
            applied += [entry.data for entry in ready.committed_entries if entry.data]
            node.advance(ready)
        return applied

    node = RaftNode(node_id=ONE, persisted=storage.load(), random_source=random.Random(1))
    drive(node)
    node.propose([b"a", b"b"])
    assert drive(node) == [b"a", b"b"]
    storage.close()
    storage = open_storage(tmp_path)
    restarted = RaftNode(node_id=ONE, persisted=storage.load(), random_source=random.Random(2))
    assert drive(restarted) == [b"a", b"b"], "a restart re-applies the committed log"
    storage.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simulated_cluster_on_file_storage(seed: int, tmp_path: Path) -> None:
    settings = SimulationSettings(seed=seed, nodes=3, ticks=1_500)
    simulation = Simulation(settings, storage_provider=FileStorageProvider(tmp_path))
    result = simulation.run()
    assert result.proposals_acknowledged > 0
    for node in simulation.nodes.values():
        node.storage.close()


def test_a_crash_while_the_leaders_snapshot_replaces_the_log_is_finished_at_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The snapshot is durable before the old log is deleted; a crash between leaves both."""
    storage = open_storage(tmp_path)
    storage.persist(snapshot=None, entries=entries(1, 100, term=1), hard_state=None)
    storage.close()
    # What a crash right after writing the leader's snapshot, before the reset, leaves behind.
    leader_snapshot = Snapshot(SnapshotMetadata(LogIndex(90), Term(3), SOLO), b"leader state")
    SnapshotStore(tmp_path / "snapshots").save(leader_snapshot)
    storage = open_storage(tmp_path)
    recovered = storage.load()
    assert recovered.snapshot == leader_snapshot
    assert not recovered.entries, "entries of the replaced log must not survive"
    assert "interrupted replacement" in caplog.text
    storage.persist(snapshot=None, entries=entries(91, 95, term=3), hard_state=None)
    storage.close()
    assert list(open_storage(tmp_path).load().entries) == entries(91, 95, term=3)


def test_a_lost_snapshot_behind_an_empty_log_refuses_to_start(tmp_path: Path) -> None:
    """A log reset after the leader's snapshot expects that snapshot; without it, data is gone."""
    storage = open_storage(tmp_path)
    snapshot = Snapshot(SnapshotMetadata(LogIndex(90), Term(3), SOLO), b"leader state")
    storage.persist(snapshot=snapshot, entries=(), hard_state=None)
    storage.close()
    (snapshot_file,) = (tmp_path / "snapshots").glob("*.snap")
    snapshot_file.write_bytes(b"damaged")
    with pytest.raises(StorageError, match=r"entries 1\.\.90 are missing"):
        open_storage(tmp_path).load()


def test_the_newest_snapshot_reads_back_as_a_stream(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    assert storage.open_snapshot_reader() is None
    state = bytes(range(256)) * 20_000
    metadata = SnapshotMetadata(LogIndex(7), Term(2), SOLO)
    storage.write_snapshot(metadata, (state[i : i + 65_536] for i in range(0, len(state), 65_536)))
    reader = storage.open_snapshot_reader()
    assert reader is not None
    with reader:
        chunks = list(reader)
    assert reader.metadata == metadata
    assert len(chunks) > 1 and b"".join(chunks) == state
    storage.close()
