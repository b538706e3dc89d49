"""Storage benchmark: what one durable append, a restart and a snapshot cost on this machine.

Why it exists. Every Ready batch that carries entries costs one fdatasync before the node may
acknowledge them, so the log's throughput is bounded by the disk's sync rate and by the CPU the
log spends around each sync. A restart reads and checks the whole log, and a snapshot is written
and read back as a stream. This script measures each of these through the storage layer's own
classes (`FileStorage`, `WriteAheadLog`, `SnapshotWriter`, `SnapshotStore`), so the figures
quoted for taskraft's storage come from one place.

Run it on the volume a node would use, on an otherwise idle machine:

    .venv/bin/python bench/storage.py [--quick] [--directory DIR]

It works in a fresh temporary directory (under DIR when given, else under the system's
temporary directory) and removes it at the end. `--quick` shrinks every size so that the whole
run takes seconds; its figures only show that the benchmark works.

How to read the numbers:

- Durable appends: each `FileStorage.persist` call appends one batch and makes it durable with
  one fdatasync. Rates are taken over the time spent inside `persist` only (building the
  entries is left out). "persist" latencies are wall-clock, so they include the sync. "append
  CPU" is measured in a separate pass that calls `WriteAheadLog.append` alone, without any
  sync, and reads `time.process_time` around each call: user plus kernel CPU of this process
  (encoding, checksums, the pwrite into the page cache), not time spent waiting. It is the CPU
  a batch costs on top of its fsync, and unlike wall-clock time it is hardly disturbed by other
  processes on the machine.
- fdatasync floor: a bare fdatasync after dirtying 64 bytes of a small file in the same
  directory, once by overwriting them in place and once by appending them (appending also
  changes the file size, as the log does). No log can sync more often than this.
- Recovery: a log of small entries is written, its pages are dropped from the page cache (with
  posix_fadvise; best effort, and the host of a virtual machine may still cache them), and
  `FileStorage.open` (reads and checks every record) plus `load` (reads the records again and
  builds the entries) are timed: the "cold" row. The "warm" row repeats it with the log in the
  page cache. The target is judged on the cold row.
- Snapshot: a state of small tasks (id, priority, 32-byte payload) packed with msgpack in
  chunks, streamed through `SnapshotWriter` and committed (fsync, rename, directory fsync), then
  streamed back through `SnapshotStore.open_reader` (data checksum verified) and unpacked. The
  unpacked tasks are counted and dropped: building a real queue from them costs more.

MB means 10^6 bytes. Log throughput counts the bytes written to the log: payload plus the
record header of every entry.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack
from reporting import file_system_description, percentile, print_table

from taskraft.raft import (
    Configuration,
    Entry,
    EntryKind,
    LogIndex,
    NodeId,
    SnapshotMetadata,
    Term,
)
from taskraft.storage.file_storage import FileStorage
from taskraft.storage.snapshot_files import SnapshotStore, SnapshotWriter
from taskraft.storage.wal import RECORD_HEADER, WriteAheadLog

ENTRY_SIZES_BYTES = (64, 1024)
BATCH_SIZES = (1, 16, 256)
TERM = Term(1)
MEGABYTE = 1_000_000

# The targets the storage layer is held to.
TARGET_BATCH_SIZE = 256
TARGET_ENTRY_SIZE_BYTES = 64
TARGET_BATCH_CPU_SECONDS = 0.001
TARGET_RECOVERY_ENTRIES = 1_000_000
TARGET_RECOVERY_SECONDS = 10.0

RECOVERY_BATCH_SIZE = 256
SNAPSHOT_TASK_PAYLOAD_BYTES = 32
SNAPSHOT_TASKS_PER_CHUNK = 16_384


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and how large each measurement runs."""

    case_duration_seconds: float
    case_batches_max: int
    case_bytes_max: int
    cpu_batches_max: int
    floor_duration_seconds: float
    floor_syncs_max: int
    recovery_entries: int
    snapshot_tasks: int


FULL_SETTINGS = Settings(
    case_duration_seconds=2.0,
    case_batches_max=20_000,
    case_bytes_max=256 * 1024 * 1024,
    cpu_batches_max=2_000,
    floor_duration_seconds=2.0,
    floor_syncs_max=20_000,
    recovery_entries=TARGET_RECOVERY_ENTRIES,
    snapshot_tasks=1_000_000,
)

QUICK_SETTINGS = Settings(
    case_duration_seconds=0.25,
    case_batches_max=500,
    case_bytes_max=8 * 1024 * 1024,
    cpu_batches_max=200,
    floor_duration_seconds=0.25,
    floor_syncs_max=500,
    recovery_entries=10_000,
    snapshot_tasks=10_000,
)


# -- output ------------------------------------------------------------------------------------


def print_heading(title: str) -> None:
    print(title)
    print("-" * len(title))


def format_rate(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


def format_megabytes_per_second(size_bytes: int, seconds: float) -> str:
    return f"{size_bytes / MEGABYTE / seconds:,.2f}" if seconds > 0 else "-"


def format_milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def format_size(size_bytes: int) -> str:
    return f"{size_bytes // 1024} KiB" if size_bytes >= 1024 else f"{size_bytes} B"


# -- machine facts -----------------------------------------------------------------------------


def print_machine_facts(directory: Path, quick: bool) -> None:
    print_heading("taskraft storage benchmark")
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"platform:      {platform.platform()}")
    print(f"python:        {platform.python_implementation()} {platform.python_version()}")
    print(f"cpus:          {os.cpu_count()} (1-minute load average at start: {load_average:.2f})")
    print(f"directory:     {directory}")
    print(f"file system:   {file_system_description(directory)}")
    mode = "quick (tiny sizes: checks that it works, not a measurement)" if quick else "full"
    print(f"mode:          {mode}")
    print(flush=True)


# -- durable appends ---------------------------------------------------------------------------


def make_batch(first_index: int, count: int, payload: bytes) -> list[Entry]:
    return [
        Entry(TERM, LogIndex(first_index + offset), EntryKind.COMMAND, payload)
        for offset in range(count)
    ]


def record_size_bytes(entry_size_bytes: int) -> int:
    return RECORD_HEADER.size + entry_size_bytes


def batches_allowed(entry_size_bytes: int, batch_size: int, settings: Settings) -> int:
    """How many batches fit in the byte budget of one case (at least one)."""
    batch_bytes = batch_size * record_size_bytes(entry_size_bytes)
    return max(1, settings.case_bytes_max // batch_bytes)


@dataclass(frozen=True, slots=True)
class AppendCase:
    entry_size_bytes: int
    batch_size: int
    persist_seconds: list[float]
    append_cpu_seconds: list[float]

    @property
    def entries(self) -> int:
        return len(self.persist_seconds) * self.batch_size


def measure_persist(
    directory: Path, entry_size_bytes: int, batch_size: int, settings: Settings
) -> list[float]:
    """Wall-clock seconds of each `FileStorage.persist` call, one batch and one fsync each."""
    payload = os.urandom(entry_size_bytes)
    batches_max = min(
        settings.case_batches_max, batches_allowed(entry_size_bytes, batch_size, settings)
    )
    storage = FileStorage.open(directory)
    durations: list[float] = []
    try:
        deadline = time.perf_counter() + settings.case_duration_seconds
        next_index = 1
        while len(durations) < batches_max and time.perf_counter() < deadline:
            batch = make_batch(next_index, batch_size, payload)
            started = time.perf_counter()
            storage.persist(snapshot=None, entries=batch, hard_state=None)
            durations.append(time.perf_counter() - started)
            next_index += batch_size
        syncs = storage.statistics().log_syncs
    finally:
        storage.close()
    if syncs != len(durations):
        raise RuntimeError(f"expected one log sync per persist call, saw {syncs}")
    return durations


def measure_append_cpu(
    directory: Path, entry_size_bytes: int, batch_size: int, settings: Settings
) -> list[float]:
    """CPU seconds (user + kernel) of each `WriteAheadLog.append` call, with no sync at all."""
    payload = os.urandom(entry_size_bytes)
    batches = min(settings.cpu_batches_max, batches_allowed(entry_size_bytes, batch_size, settings))
    cpu_seconds: list[float] = []
    with WriteAheadLog.open(directory) as log:
        for batch_number in range(batches):
            batch = make_batch(1 + batch_number * batch_size, batch_size, payload)
            started = time.process_time()
            log.append(batch)
            cpu_seconds.append(time.process_time() - started)
    return cpu_seconds


def run_append_case(
    work_directory: Path, entry_size_bytes: int, batch_size: int, settings: Settings
) -> AppendCase:
    persist_directory = work_directory / f"persist-{entry_size_bytes}-{batch_size}"
    cpu_directory = work_directory / f"append-cpu-{entry_size_bytes}-{batch_size}"
    try:
        persist_seconds = measure_persist(persist_directory, entry_size_bytes, batch_size, settings)
        append_cpu_seconds = measure_append_cpu(
            cpu_directory, entry_size_bytes, batch_size, settings
        )
    finally:
        shutil.rmtree(persist_directory, ignore_errors=True)
        shutil.rmtree(cpu_directory, ignore_errors=True)
    return AppendCase(entry_size_bytes, batch_size, persist_seconds, append_cpu_seconds)


def report_append_cases(cases: Sequence[AppendCase]) -> None:
    print_heading("Durable appends: FileStorage.persist, one batch and one fdatasync per call")
    headers = (
        "entry",
        "batch",
        "batches",
        "appends/s",
        "MB/s",
        "fsyncs/s",
        "persist median ms",
        "persist p99 ms",
        "append CPU median ms",
    )
    rows = []
    for case in cases:
        total_seconds = sum(case.persist_seconds)
        log_bytes = case.entries * record_size_bytes(case.entry_size_bytes)
        rows.append(
            (
                format_size(case.entry_size_bytes),
                str(case.batch_size),
                str(len(case.persist_seconds)),
                format_rate(case.entries, total_seconds),
                format_megabytes_per_second(log_bytes, total_seconds),
                format_rate(len(case.persist_seconds), total_seconds),
                format_milliseconds(statistics.median(case.persist_seconds)),
                format_milliseconds(percentile(case.persist_seconds, 0.99)),
                format_milliseconds(statistics.median(case.append_cpu_seconds)),
            )
        )
    print_table(headers, rows)
    print(
        "Rates are over the time inside persist. MB/s counts payload plus the "
        f"{RECORD_HEADER.size}-byte record header.\n"
        "append CPU: time.process_time around WriteAheadLog.append alone (no fsync), in a "
        "separate pass;\nit is the CPU one batch costs besides its fsync.\n",
        flush=True,
    )


# -- fdatasync floor ---------------------------------------------------------------------------


def measure_fdatasync(path: Path, *, append: bool, settings: Settings) -> list[float]:
    """Seconds of each bare fdatasync after writing 64 bytes, in place or at the file's end."""
    small_file_bytes = 4096
    dirty_bytes = os.urandom(64)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    durations: list[float] = []
    try:
        os.write(descriptor, bytes(small_file_bytes))
        os.fsync(descriptor)
        end = small_file_bytes
        deadline = time.perf_counter() + settings.floor_duration_seconds
        while len(durations) < settings.floor_syncs_max and time.perf_counter() < deadline:
            if append:
                os.pwrite(descriptor, dirty_bytes, end)
                end += len(dirty_bytes)
            else:
                os.pwrite(descriptor, dirty_bytes, 0)
            started = time.perf_counter()
            os.fdatasync(descriptor)
            durations.append(time.perf_counter() - started)
    finally:
        os.close(descriptor)
        path.unlink(missing_ok=True)
    return durations


def report_fdatasync_floor(rows_by_name: dict[str, list[float]]) -> None:
    print_heading("fdatasync floor: a bare fdatasync on a small file in the same directory")
    headers = ("write before each sync", "syncs", "fsyncs/s", "median ms", "p99 ms")
    rows = [
        (
            name,
            str(len(durations)),
            format_rate(len(durations), sum(durations)),
            format_milliseconds(statistics.median(durations)),
            format_milliseconds(percentile(durations, 0.99)),
        )
        for name, durations in rows_by_name.items()
    ]
    print_table(headers, rows)


# -- recovery ----------------------------------------------------------------------------------


def drop_from_page_cache(paths: Sequence[Path]) -> None:
    """Ask the kernel to forget the cached pages of `paths`; best effort, only for clean pages."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def write_log(log_directory: Path, entry_count: int, entry_size_bytes: int) -> float:
    """Write `entry_count` entries in batches with one sync at the end; returns the seconds."""
    payload = os.urandom(entry_size_bytes)
    started = time.perf_counter()
    with WriteAheadLog.open(log_directory) as log:
        for first_index in range(1, entry_count + 1, RECOVERY_BATCH_SIZE):
            count = min(RECOVERY_BATCH_SIZE, entry_count + 1 - first_index)
            log.append(make_batch(first_index, count, payload))
        log.sync()
    return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class RecoveryTiming:
    open_seconds: float
    load_seconds: float

    @property
    def total_seconds(self) -> float:
        return self.open_seconds + self.load_seconds


def time_recovery(data_directory: Path, expected_entries: int) -> RecoveryTiming:
    """Time `FileStorage.open` (recovers and checks the log) and `load` (builds the entries)."""
    started = time.perf_counter()
    storage = FileStorage.open(data_directory)
    try:
        opened = time.perf_counter()
        state = storage.load()
        loaded = time.perf_counter()
    finally:
        storage.close()
    if len(state.entries) != expected_entries:
        raise RuntimeError(f"recovered {len(state.entries)} entries, expected {expected_entries}")
    return RecoveryTiming(opened - started, loaded - opened)


def run_recovery(work_directory: Path, settings: Settings) -> RecoveryTiming:
    data_directory = work_directory / "recovery"
    log_directory = data_directory / "wal"
    entries = settings.recovery_entries
    try:
        write_seconds = write_log(log_directory, entries, TARGET_ENTRY_SIZE_BYTES)
        log_bytes = sum(path.stat().st_size for path in log_directory.iterdir())
        drop_from_page_cache(sorted(log_directory.iterdir()))
        cold = time_recovery(data_directory, entries)
        warm = time_recovery(data_directory, entries)
    finally:
        shutil.rmtree(data_directory, ignore_errors=True)
    print_heading(
        f"Recovery: {entries:,} entries of {TARGET_ENTRY_SIZE_BYTES} B, "
        f"{log_bytes / MEGABYTE:.1f} MB of log"
    )
    print(
        f"written in {write_seconds:.2f} s through WriteAheadLog.append, batches of "
        f"{RECOVERY_BATCH_SIZE}, one fdatasync at the end"
    )
    headers = ("page cache", "open s", "load s", "total s", "entries/s")
    rows = [
        (
            name,
            f"{timing.open_seconds:.3f}",
            f"{timing.load_seconds:.3f}",
            f"{timing.total_seconds:.3f}",
            format_rate(entries, timing.total_seconds),
        )
        for name, timing in (("cold (dropped)", cold), ("warm", warm))
    ]
    print_table(headers, rows)
    print(
        "open: FileStorage.open, which reads every segment and checks every record.\n"
        "load: FileStorage.load, which reads them again and builds the Entry objects.\n",
        flush=True,
    )
    return cold


# -- snapshot ----------------------------------------------------------------------------------


def make_tasks(first_id: int, count: int) -> list[tuple[int, int, bytes]]:
    """Small tasks as a queue would hold them: id, priority, and a random payload."""
    payloads = os.urandom(count * SNAPSHOT_TASK_PAYLOAD_BYTES)
    tasks = []
    for task_id in range(first_id, first_id + count):
        start = (task_id - first_id) * SNAPSHOT_TASK_PAYLOAD_BYTES
        payload = payloads[start : start + SNAPSHOT_TASK_PAYLOAD_BYTES]
        tasks.append((task_id, task_id * 7919 % 1000, payload))
    return tasks


def encode_tasks(task_count: int) -> tuple[list[bytes], float]:
    """The state as msgpack chunks of (id, priority, payload) tasks, and the seconds packing took.

    Only `msgpack.packb` is timed; building the Python tuples stands in for walking the queue.
    """
    chunks: list[bytes] = []
    packing_seconds = 0.0
    for first_id in range(0, task_count, SNAPSHOT_TASKS_PER_CHUNK):
        tasks = make_tasks(first_id, min(SNAPSHOT_TASKS_PER_CHUNK, task_count - first_id))
        started = time.perf_counter()
        chunks.append(msgpack.packb(tasks))
        packing_seconds += time.perf_counter() - started
    return chunks, packing_seconds


def snapshot_metadata(index: int) -> SnapshotMetadata:
    voters = frozenset(NodeId(f"taskraft-{number}") for number in range(3))
    return SnapshotMetadata(LogIndex(index), TERM, Configuration(voters=voters))


@dataclass(frozen=True, slots=True)
class SnapshotTiming:
    data_bytes: int
    packing_seconds: float
    writing_seconds: float
    commit_seconds: float
    reading_seconds: float
    unpacking_seconds: float


def write_snapshot(
    directory: Path, metadata: SnapshotMetadata, chunks: Sequence[bytes]
) -> tuple[float, float]:
    """Stream `chunks` through a SnapshotWriter; returns the seconds of writing and of commit."""
    started = time.perf_counter()
    with SnapshotWriter.create(directory, metadata) as writer:
        for chunk in chunks:
            writer.write(chunk)
        written = time.perf_counter()
        writer.commit()
        committed = time.perf_counter()
    return written - started, committed - written


def read_snapshot(
    store: SnapshotStore, metadata: SnapshotMetadata, expected_tasks: int
) -> tuple[float, float]:
    """Stream the snapshot back and unpack it; returns the seconds of reading and unpacking."""
    unpacker = msgpack.Unpacker(use_list=False)
    reading_seconds = unpacking_seconds = 0.0
    tasks = 0
    with store.open_reader(metadata) as reader:
        while True:
            started = time.perf_counter()
            chunk = next(reader, None)
            read = time.perf_counter()
            reading_seconds += read - started
            if chunk is None:
                break
            unpacker.feed(chunk)
            for task_list in unpacker:
                tasks += len(task_list)
            unpacking_seconds += time.perf_counter() - read
    if tasks != expected_tasks:
        raise RuntimeError(f"unpacked {tasks} tasks from the snapshot, expected {expected_tasks}")
    return reading_seconds, unpacking_seconds


def run_snapshot(work_directory: Path, settings: Settings) -> SnapshotTiming:
    directory = work_directory / "snapshots"
    directory.mkdir()
    task_count = settings.snapshot_tasks
    metadata = snapshot_metadata(task_count)
    try:
        chunks, packing_seconds = encode_tasks(task_count)
        writing_seconds, commit_seconds = write_snapshot(directory, metadata, chunks)
        data_bytes = sum(len(chunk) for chunk in chunks)
        del chunks
        store = SnapshotStore(directory)
        drop_from_page_cache(sorted(directory.iterdir()))
        reading_seconds, unpacking_seconds = read_snapshot(store, metadata, task_count)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return SnapshotTiming(
        data_bytes,
        packing_seconds,
        writing_seconds,
        commit_seconds,
        reading_seconds,
        unpacking_seconds,
    )


def report_snapshot(timing: SnapshotTiming, task_count: int) -> None:
    print_heading(
        f"Snapshot: {task_count:,} tasks (id, priority, {SNAPSHOT_TASK_PAYLOAD_BYTES}-byte "
        f"payload), {timing.data_bytes / MEGABYTE:.1f} MB of msgpack"
    )
    write_total = timing.packing_seconds + timing.writing_seconds + timing.commit_seconds
    read_total = timing.reading_seconds + timing.unpacking_seconds
    headers = ("step", "seconds", "MB/s")
    steps = (
        ("pack (msgpack.packb)", timing.packing_seconds),
        ("write (SnapshotWriter.write, streamed)", timing.writing_seconds),
        ("commit (fsync, rename, directory fsync)", timing.commit_seconds),
        ("write total", write_total),
        ("read (SnapshotStore.open_reader, cold)", timing.reading_seconds),
        ("unpack (msgpack.Unpacker)", timing.unpacking_seconds),
        ("read total", read_total),
    )
    rows = [
        (name, f"{seconds:.3f}", format_megabytes_per_second(timing.data_bytes, seconds))
        for name, seconds in steps
    ]
    print_table(headers, rows)


# -- summary -----------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "met" if value < target else "MISSED"


def report_summary(
    cases: Sequence[AppendCase], recovery: RecoveryTiming, settings: Settings
) -> None:
    print_heading("Targets")
    target_case = next(
        case
        for case in cases
        if case.batch_size == TARGET_BATCH_SIZE and case.entry_size_bytes == TARGET_ENTRY_SIZE_BYTES
    )
    cpu_seconds = statistics.median(target_case.append_cpu_seconds)
    print(
        f"batch of {TARGET_BATCH_SIZE} x {TARGET_ENTRY_SIZE_BYTES} B: one fsync + "
        f"{cpu_seconds * 1000:.3f} ms CPU (target < {TARGET_BATCH_CPU_SECONDS * 1000:.0f} ms): "
        f"{verdict(cpu_seconds, TARGET_BATCH_CPU_SECONDS)}"
    )
    entries = settings.recovery_entries
    if entries == TARGET_RECOVERY_ENTRIES:
        seconds = recovery.total_seconds
        print(
            f"recovery of {entries:,} entries: {seconds:.2f} s "
            f"(target < {TARGET_RECOVERY_SECONDS:.0f} s): "
            f"{verdict(seconds, TARGET_RECOVERY_SECONDS)}"
        )
    else:
        seconds = recovery.total_seconds * TARGET_RECOVERY_ENTRIES / entries
        print(
            f"recovery of {entries:,} entries: {recovery.total_seconds:.3f} s; scaled linearly "
            f"to {TARGET_RECOVERY_ENTRIES:,}: {seconds:.2f} s\n"
            f"  (target < {TARGET_RECOVERY_SECONDS:.0f} s for {TARGET_RECOVERY_ENTRIES:,}; "
            "an estimate only: run without --quick to measure it)"
        )


# -- main --------------------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: check that the benchmark works"
    )
    parser.add_argument(
        "--directory",
        type=Path,
        help="where to create the temporary working directory (default: the system's temporary "
        "directory); put it on the volume to measure. Only the working directory is removed.",
    )
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    settings = QUICK_SETTINGS if arguments.quick else FULL_SETTINGS
    if arguments.directory is not None:
        arguments.directory.mkdir(parents=True, exist_ok=True)
    work_directory = Path(tempfile.mkdtemp(prefix="taskraft-bench-", dir=arguments.directory))
    try:
        print_machine_facts(work_directory, arguments.quick)
        cases = [
            run_append_case(work_directory, entry_size, batch_size, settings)
            for entry_size in ENTRY_SIZES_BYTES
            for batch_size in BATCH_SIZES
        ]
        report_append_cases(cases)
        floor = {
            "64 B in place": measure_fdatasync(
                work_directory / "floor", append=False, settings=settings
            ),
            "64 B appended": measure_fdatasync(
                work_directory / "floor", append=True, settings=settings
            ),
        }
        report_fdatasync_floor(floor)
        recovery = run_recovery(work_directory, settings)
        snapshot = run_snapshot(work_directory, settings)
        report_snapshot(snapshot, settings.snapshot_tasks)
        report_summary(cases, recovery, settings)
    finally:
        shutil.rmtree(work_directory, ignore_errors=True)


if __name__ == "__main__":
    main()
