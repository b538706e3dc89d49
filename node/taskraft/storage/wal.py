"""The write-ahead log: a node's Raft entries on disk, written in batches, synced once per batch.

A node may acknowledge entries only once they are durable (see `taskraft.raft.ready`), so every
Ready that carries entries costs an fsync. The log therefore separates writing from syncing: the
driver `append`s everything one Ready carries, then calls `sync` once, and a single fdatasync
makes the whole batch durable (group commit).

Layout. The log is a directory of segment files named `{first_index:020d}.wal`, each holding a
run of consecutive entries. Segments let the prefix a snapshot covers be dropped by deleting
whole files, and keep recovery from ever reading one unbounded file. A segment starts with a
header, then holds records; all integers are little-endian:

    header: magic b"TRFTWAL\\0" | format version u16 | first index u64 | crc32 u32 of the above
    record: payload length u32 | crc32 u32 | kind u8 | term u64 | index u64 | payload

A record's crc32 covers its kind, term, index and payload. It is computed when writing and
verified whenever a record is read.

Recovery. `WriteAheadLog.open` reads every segment and checks every header, every checksum and
that indexes run without a gap from record to record and from segment to segment. Only one kind
of damage is repaired: a crash can leave the last record of the last segment half written (cut
short, or failing its checksum with nothing after it). A record torn that way was never synced,
so never acknowledged, and it is cut away with a warning. Any other damage raises `StorageError`
and the operator must replace the member: the log never skips data, because a skipped entry may be
one this member acknowledged and the leader counted towards a commit.

The write path keeps the files on disk a contiguous log at every moment, so that a crash at any
point recovers:

- A segment is synced before the next one is created, and a new segment's header is written to
  a temporary file, synced, renamed into place and the directory synced. Only the last segment
  can therefore end in a torn record, and a segment file never exists without its header.
- Truncation syncs the shortened file before anything is written over the removed records, so
  a power loss cannot leave new records mixed with the old ones that followed them.
- Whole segments are removed one at a time with a directory sync after each: newest first when
  truncating (a crash leaves a prefix of the log), oldest first when dropping a snapshotted
  prefix (a crash leaves a suffix).

A known limit: a power loss on a file system that persists unsynced pages out of order can leave
a damaged record followed by more written bytes. Recovery cannot tell that apart from damage to
synced data, so it reports it as corruption rather than guess.

A failed fsync or write puts the log in a failed state: every later call raises
`StorageFailure`, because after a failed fsync the kernel may have dropped the unsynced pages and
a retried fsync could report success for data that never reached the disk.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import struct
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from taskraft.raft import Entry, EntryKind, LogIndex, Term
from taskraft.storage.protocol import (
    FAILURE_ADVICE,
    RECOVERY_ADVICE,
    StorageError,
    StorageFailure,
)

logger = logging.getLogger(__name__)

SEGMENT_MAGIC = b"TRFTWAL\0"
SEGMENT_FORMAT_VERSION = 1
SEGMENT_SUFFIX = ".wal"
TEMPORARY_SUFFIX = ".tmp"

# Magic, format version and first index; the crc32 of these bytes follows them.
_SEGMENT_HEADER_FIELDS = struct.Struct("<8sHQ")
_SEGMENT_HEADER_CHECKSUM = struct.Struct("<I")
SEGMENT_HEADER_SIZE_BYTES = _SEGMENT_HEADER_FIELDS.size + _SEGMENT_HEADER_CHECKSUM.size

RECORD_HEADER = struct.Struct("<IIBQQ")
# The writer packs a record header in two parts, because the checksum (in the first part) covers
# the kind, term and index (the second part). Together they are exactly RECORD_HEADER.
_RECORD_LENGTH_CHECKSUM = struct.Struct("<II")
_RECORD_CHECKED_FIELDS = struct.Struct("<BQQ")
_RECORD_CHECKED_OFFSET = _RECORD_LENGTH_CHECKSUM.size
# Where the index field sits inside a record header, to find a record that follows a damaged one.
_RECORD_INDEX_OFFSET = RECORD_HEADER.size - 8
_INDEX_FIELD = struct.Struct("<Q")

# One record carries one entry, and one entry carries one client command or configuration,
# which are orders of magnitude smaller. 64 MiB matches the most a leader admits beyond its commit
# index (RaftOptions.uncommitted_size_max_bytes), and is small enough that a damaged length field
# is recognised as damage before anything is read or allocated for it.
RECORD_PAYLOAD_SIZE_MAX_BYTES = 64 * 1024 * 1024

# Large enough that segment creation (two fsyncs and a rename) is rare next to the per-batch
# fdatasync, small enough that recovery holds one segment in memory at a time without strain
# and that dropping a snapshotted prefix frees space in useful steps.
SEGMENT_SIZE_MAX_BYTES = 64 * 1024 * 1024

_UNSIGNED_64_MAX = 2**64 - 1
_SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")
_KIND_BY_VALUE = {kind.value: kind for kind in EntryKind}

_RECOVERY_ADVICE = (
    "This member's log is damaged on disk, and the log never skips entries to get past damage. "
    + RECOVERY_ADVICE
)


def segment_name(first_index: int) -> str:
    """The file name of the segment whose first entry has index `first_index`."""
    return f"{first_index:020d}{SEGMENT_SUFFIX}"


def encode_segment_header(first_index: int) -> bytes:
    fields = _SEGMENT_HEADER_FIELDS.pack(SEGMENT_MAGIC, SEGMENT_FORMAT_VERSION, first_index)
    return fields + _SEGMENT_HEADER_CHECKSUM.pack(zlib.crc32(fields))


@dataclass(slots=True)
class _Segment:
    path: Path
    first_index: int
    # Byte offset of each record in the file: entry `first_index + i` starts at offsets[i].
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    # Where the last whole record ends, which is where the next one is written.
    size_bytes: int = SEGMENT_HEADER_SIZE_BYTES

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.offsets) - 1


@dataclass(frozen=True, slots=True)
class _Scan:
    """What reading one segment found: its valid records, and the damage after them if any."""

    offsets: array[int]
    end_offset: int
    damage: str | None


class WriteAheadLog:
    """Raft entries in segment files; `append` writes, `sync` makes everything written durable.

    Indexes: `first_index` and `last_index` bound the stored entries. An empty log holds no entry
    and reports `last_index == first_index - 1`, where `first_index` is the index it expects next
    (1 for a new log, or what `reset` set); an empty log still accepts any index at its first
    append, since after a snapshot it restarts just past the snapshot.

    Not thread-safe, and one process per directory: the caller holds the data directory's lock.
    """

    def __init__(
        self, directory: Path, segment_size_max_bytes: int, directory_descriptor: int
    ) -> None:
        """Use `WriteAheadLog.open`, which recovers the log from disk."""
        self._directory = directory
        self._segment_size_max_bytes = segment_size_max_bytes
        self._directory_descriptor: int | None = directory_descriptor
        self._segments: list[_Segment] = []
        # Open for writing on the last segment, the only one that is ever appended to.
        self._active_descriptor: int | None = None
        self._unsynced = False
        self._failure: StorageFailure | None = None

    @classmethod
    def open(
        cls, directory: Path, *, segment_size_max_bytes: int = SEGMENT_SIZE_MAX_BYTES
    ) -> WriteAheadLog:
        """Open the log in `directory`, creating it if missing, and recover what it holds.

        Cuts away a torn last record (logging a warning); raises `StorageError` for any other
        damage, naming the file and the byte offset.
        """
        if segment_size_max_bytes <= SEGMENT_HEADER_SIZE_BYTES + RECORD_HEADER.size:
            raise ValueError(
                f"segment_size_max_bytes is {segment_size_max_bytes}; a segment must hold at "
                f"least its {SEGMENT_HEADER_SIZE_BYTES}-byte header and one record header"
            )
        directory = Path(directory)
        _create_directory(directory)
        try:
            directory_descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise StorageError(
                f"cannot open the write-ahead log directory {directory}: {error}. The volume or "
                "its permissions are at fault; the operator should check them."
            ) from error
        log = cls(directory, segment_size_max_bytes, directory_descriptor)
        try:
            log._recover()
        except BaseException:
            log.close()
            raise
        return log

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def first_index(self) -> LogIndex:
        """The index of the first stored entry; for an empty log, the index it expects next."""
        self._check_usable()
        if not self._segments:
            return LogIndex(1)
        return LogIndex(self._segments[0].first_index)

    @property
    def last_index(self) -> LogIndex:
        """The index of the last stored entry; `first_index - 1` for an empty log."""
        self._check_usable()
        if not self._segments:
            return LogIndex(0)
        return LogIndex(self._segments[-1].last_index)

    def entries(self) -> list[Entry]:
        """Every stored entry, read back from disk with each checksum verified again."""
        self._check_usable()
        entries: list[Entry] = []
        for segment in self._segments:
            data = _read_file(segment.path)
            _decode_records(segment, data, entries)
        return entries

    def append(self, entries: Sequence[Entry]) -> None:
        """Write `entries` after the log, without syncing: call `sync` before acknowledging them.

        The entries must have consecutive indexes. Stored entries at or after `entries[0].index`
        are truncated first (see `truncate_from`). An empty log accepts any first index.
        """
        self._check_usable()
        if not entries:
            return
        first = entries[0].index
        _check_batch(entries)
        if not self._is_empty() and first <= self._segments[-1].last_index:
            self.truncate_from(first)
        if self._is_empty():
            if not self._segments or self._segments[-1].first_index != first:
                self.reset(first)
        elif first != self._segments[-1].last_index + 1:
            raise ValueError(
                f"entries start at index {first} but the log ends at index "
                f"{self._segments[-1].last_index}: a log cannot have a gap"
            )
        try:
            self._write_records(entries)
        except OSError as error:
            raise self._fail(
                f"writing entries {first} to {entries[-1].index} to {self._segments[-1].path} "
                f"failed: {error}"
            ) from error

    def sync(self) -> None:
        """Make everything appended so far durable with one fdatasync (the group commit)."""
        self._check_usable()
        if not self._unsynced:
            return
        segment = self._segments[-1]
        try:
            os.fdatasync(self._require_active_descriptor())
        except OSError as error:
            raise self._fail(f"fdatasync of {segment.path} failed: {error}") from error
        self._unsynced = False

    def truncate_from(self, index: int) -> None:
        """Remove every entry at or after `index`.

        The removal is durable when this returns (it is synced at once, so that later appends
        over the same bytes cannot mix with the removed records after a power loss); the caller
        still calls `sync` after appending the entries that replace them. Removing the first
        entry or earlier empties the log, which then expects `index` next.
        """
        self._check_usable()
        if index < 1:
            raise ValueError(f"log indexes start at 1; cannot truncate from {index}")
        if self._is_empty() or index > self._segments[-1].last_index:
            return
        if index <= self._segments[0].first_index:
            self.reset(index)
            return
        position = bisect.bisect_right(self._segments, index, key=_first_index_of) - 1
        segment = self._segments[position]
        offset = segment.offsets[index - segment.first_index]
        try:
            if position < len(self._segments) - 1:
                self._close_active()
                while len(self._segments) > position + 1:
                    self._remove_segment(self._segments.pop())
                self._active_descriptor = os.open(segment.path, os.O_WRONLY)
            descriptor = self._require_active_descriptor()
            os.ftruncate(descriptor, offset)
            os.fdatasync(descriptor)
        except OSError as error:
            raise self._fail(
                f"truncating the log from index {index} at byte offset {offset} of "
                f"{segment.path} failed: {error}"
            ) from error
        del segment.offsets[index - segment.first_index :]
        segment.size_bytes = offset
        self._unsynced = False

    def drop_before(self, index: int) -> None:
        """Durably delete the segments whose entries all precede `index`.

        Used once a snapshot at `index - 1` covers those entries. Only whole segments are
        deleted, so `first_index` may stay below `index`; the last segment is always kept, as it
        is the one being appended to.
        """
        self._check_usable()
        try:
            while len(self._segments) > 1 and self._segments[1].first_index <= index:
                self._remove_segment(self._segments.pop(0))
        except OSError as error:
            raise self._fail(f"deleting segments before index {index} failed: {error}") from error

    def reset(self, next_index: int) -> None:
        """Delete every entry, durably; the log then expects `next_index` next.

        Used when a snapshot from the leader replaces the whole log. The caller makes the
        snapshot durable first, since a crash here can leave any prefix of the old log.
        """
        self._check_usable()
        if not 1 <= next_index <= _UNSIGNED_64_MAX:
            raise ValueError(f"log indexes start at 1 and fit in 64 bits; got {next_index}")
        try:
            self._close_active()
            while self._segments:
                self._remove_segment(self._segments.pop())
            self._create_segment(next_index)
        except OSError as error:
            raise self._fail(
                f"resetting the log in {self._directory} to start at index {next_index} "
                f"failed: {error}"
            ) from error
        self._unsynced = False

    def close(self) -> None:
        """Release the files. Does not sync: what was appended since `sync` may be lost."""
        for descriptor in (self._active_descriptor, self._directory_descriptor):
            if descriptor is not None:
                os.close(descriptor)
        self._active_descriptor = None
        self._directory_descriptor = None

    # Recovery.

    def _recover(self) -> None:
        paths = self._segment_paths()
        for position, (named_index, path) in enumerate(paths):
            is_last = position == len(paths) - 1
            data = _read_file(path)
            first_index = _decode_segment_header(data, path)
            if first_index != named_index:
                raise _corruption(
                    path,
                    0,
                    f"the header says the segment starts at index {first_index}, but the file "
                    f"name says {named_index}",
                )
            if self._segments:
                _check_follows(self._segments[-1], first_index, path)
            scan = _scan_records(data, path, first_index)
            segment = _Segment(path, first_index, scan.offsets, scan.end_offset)
            if scan.damage is not None:
                _check_torn(data, path, segment, scan.damage, is_last=is_last)
            self._segments.append(segment)
            if is_last:
                self._open_last_segment(len(data), scan.damage)

    def _segment_paths(self) -> list[tuple[int, Path]]:
        """The segment files in index order; removes temporaries left by an interrupted creation.

        A temporary holds only a header that was never renamed into place, so no entry.
        """
        try:
            names = sorted(os.listdir(self._directory))
        except OSError as error:
            raise StorageError(
                f"cannot list the write-ahead log directory {self._directory}: {error}. The "
                "volume or its permissions are at fault; the operator should check them."
            ) from error
        segments: list[tuple[int, Path]] = []
        for name in names:
            path = self._directory / name
            if name.endswith(SEGMENT_SUFFIX + TEMPORARY_SUFFIX):
                logger.warning("removing %s, left by a crash while it was being created", path)
                try:
                    path.unlink()
                    os.fsync(self._require_directory_descriptor())
                except OSError as error:
                    raise StorageFailure(
                        f"cannot remove the leftover temporary segment {path}: {error}. The "
                        "volume or its permissions are at fault; the operator should check them."
                    ) from error
                continue
            if not name.endswith(SEGMENT_SUFFIX):
                continue
            match = _SEGMENT_NAME.match(name)
            if match is None:
                raise _corruption(
                    path,
                    0,
                    "the file name is not a 20-digit first index followed by .wal, so this is "
                    "not a segment the log wrote",
                )
            segments.append((int(match.group(1)), path))
        segments.sort()
        return segments

    def _open_last_segment(self, file_size_bytes: int, damage: str | None) -> None:
        segment = self._segments[-1]
        try:
            self._active_descriptor = os.open(segment.path, os.O_WRONLY)
            if file_size_bytes > segment.size_bytes:
                os.ftruncate(self._active_descriptor, segment.size_bytes)
                os.fdatasync(self._active_descriptor)
        except OSError as error:
            raise StorageFailure(
                f"cannot open {segment.path} for writing, or cut its torn last record: {error}. "
                "The volume or its permissions are at fault; the operator should check them."
            ) from error
        if file_size_bytes > segment.size_bytes:
            logger.warning(
                "write-ahead log segment %s: cut a torn last record at byte offset %d (%s); "
                "a crash interrupted its write, and the entries up to index %d are kept",
                segment.path,
                segment.size_bytes,
                damage,
                segment.last_index,
            )

    # Writing.

    def _write_records(self, entries: Sequence[Entry]) -> None:
        """Pack the records into one buffer per segment and write each with one call."""
        segment = self._segments[-1]
        size_max_bytes = self._segment_size_max_bytes
        start = position = segment.size_bytes
        buffer = bytearray()
        offsets: array[int] = array("Q")
        for entry in entries:
            data = entry.data
            record_size_bytes = RECORD_HEADER.size + len(data)
            if position + record_size_bytes > size_max_bytes and (segment.offsets or offsets):
                self._write_at(segment, buffer, start, offsets, position)
                segment = self._roll(entry.index)
                start = position = segment.size_bytes
                buffer = bytearray()
                offsets = array("Q")
            checked = _RECORD_CHECKED_FIELDS.pack(entry.kind.value, entry.term, entry.index)
            buffer += _RECORD_LENGTH_CHECKSUM.pack(len(data), zlib.crc32(data, zlib.crc32(checked)))
            buffer += checked
            buffer += data
            offsets.append(position)
            position += record_size_bytes
        self._write_at(segment, buffer, start, offsets, position)

    def _write_at(
        self, segment: _Segment, buffer: bytearray, start: int, offsets: array[int], end: int
    ) -> None:
        descriptor = self._require_active_descriptor()
        view = memoryview(buffer)
        written = 0
        while written < len(view):
            written += os.pwrite(descriptor, view[written:], start + written)
        segment.offsets.extend(offsets)
        segment.size_bytes = end
        self._unsynced = True

    def _roll(self, first_index: int) -> _Segment:
        """Start a new segment at `first_index`, once the current one is durable."""
        descriptor = self._require_active_descriptor()
        os.fdatasync(descriptor)
        self._unsynced = False
        return self._create_segment(first_index)

    def _create_segment(self, first_index: int) -> _Segment:
        path = self._directory / segment_name(first_index)
        temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            header = encode_segment_header(first_index)
            if os.write(descriptor, header) != len(header):
                raise OSError(f"short write of the {len(header)}-byte header of {temporary}")
            os.fsync(descriptor)
            os.rename(temporary, path)
            os.fsync(self._require_directory_descriptor())
        except BaseException:
            os.close(descriptor)
            raise
        if self._active_descriptor is not None:
            os.close(self._active_descriptor)
        self._active_descriptor = descriptor
        segment = _Segment(path, first_index)
        self._segments.append(segment)
        return segment

    def _remove_segment(self, segment: _Segment) -> None:
        """Delete one segment durably; the caller has taken it out of `_segments` and closed it.

        One directory sync per file keeps the removals in order on disk, so the files left by a
        crash are still a contiguous log.
        """
        segment.path.unlink()
        os.fsync(self._require_directory_descriptor())

    def _close_active(self) -> None:
        if self._active_descriptor is not None:
            os.close(self._active_descriptor)
            self._active_descriptor = None

    # State.

    def _is_empty(self) -> bool:
        return not self._segments or self._segments[-1].last_index < self._segments[0].first_index

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise StorageFailure(
                f"the write-ahead log in {self._directory} failed earlier and accepts no more "
                f"calls: {self._failure}"
            )
        if self._directory_descriptor is None:
            raise ValueError(f"the write-ahead log in {self._directory} is closed")

    def _fail(self, problem: str) -> StorageFailure:
        """Enter the failed state; returns the error to raise."""
        self._failure = StorageFailure(
            f"{problem}. The write-ahead log stops here. {FAILURE_ADVICE}"
        )
        return self._failure

    def _require_active_descriptor(self) -> int:
        assert self._active_descriptor is not None, "the log has no segment open for writing"
        return self._active_descriptor

    def _require_directory_descriptor(self) -> int:
        assert self._directory_descriptor is not None, "the log is closed"
        return self._directory_descriptor


def _first_index_of(segment: _Segment) -> int:
    return segment.first_index


def _check_batch(entries: Sequence[Entry]) -> None:
    first = entries[0].index
    if first < 1 or first + len(entries) - 1 > _UNSIGNED_64_MAX:
        raise ValueError(
            f"entry indexes must be between 1 and 2**64 - 1; the batch starts at index {first}"
        )
    for offset, entry in enumerate(entries):
        if entry.index != first + offset:
            raise ValueError(
                f"entries to append must have consecutive indexes: entry {offset} of the batch "
                f"has index {entry.index}, expected {first + offset}"
            )
        if len(entry.data) > RECORD_PAYLOAD_SIZE_MAX_BYTES:
            raise ValueError(
                f"entry {entry.index} carries {len(entry.data)} bytes, more than the "
                f"{RECORD_PAYLOAD_SIZE_MAX_BYTES}-byte record limit (RECORD_PAYLOAD_SIZE_MAX_BYTES)"
            )
        if not 0 <= entry.term <= _UNSIGNED_64_MAX:
            raise ValueError(f"entry {entry.index} has term {entry.term}, outside 0 to 2**64 - 1")


def _create_directory(directory: Path) -> None:
    """Create `directory` if it is missing, durably, so the log is not lost with its parent."""
    if directory.is_dir():
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        parent = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(parent)
        finally:
            os.close(parent)
    except OSError as error:
        raise StorageFailure(
            f"cannot create the write-ahead log directory {directory}: {error}. The volume or "
            "its permissions are at fault; the operator should check them."
        ) from error


def _read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise StorageError(
            f"cannot read write-ahead log segment {path}: {error}. The volume or its permissions "
            "are at fault; the operator should check them."
        ) from error


def _corruption(path: Path, offset: int, problem: str) -> StorageError:
    return StorageError(
        f"write-ahead log segment {path}, byte offset {offset}: {problem}. {_RECOVERY_ADVICE}"
    )


def _decode_segment_header(data: bytes, path: Path) -> int:
    """The first index a segment's header declares; `StorageError` when the header is bad."""
    if len(data) < SEGMENT_HEADER_SIZE_BYTES:
        raise _corruption(
            path,
            0,
            f"the file is {len(data)} bytes long, shorter than the "
            f"{SEGMENT_HEADER_SIZE_BYTES}-byte segment header",
        )
    magic, version, first_index = _SEGMENT_HEADER_FIELDS.unpack_from(data, 0)
    (checksum,) = _SEGMENT_HEADER_CHECKSUM.unpack_from(data, _SEGMENT_HEADER_FIELDS.size)
    if magic != SEGMENT_MAGIC:
        raise _corruption(path, 0, f"the file starts with {magic!r}, not the segment magic")
    if checksum != zlib.crc32(data[: _SEGMENT_HEADER_FIELDS.size]):
        raise _corruption(path, 0, "the segment header fails its checksum")
    if version != SEGMENT_FORMAT_VERSION:
        raise StorageError(
            f"write-ahead log segment {path}, byte offset 8: format version {version}, but this "
            f"build reads only version {SEGMENT_FORMAT_VERSION}. Run the build that wrote it, "
            f"or: {RECOVERY_ADVICE}"
        )
    if first_index < 1:
        raise _corruption(path, 10, "the segment header says it starts at index 0")
    return int(first_index)


def _check_follows(previous: _Segment, first_index: int, path: Path) -> None:
    expected = previous.last_index + 1
    if first_index > expected:
        raise _corruption(
            path,
            0,
            f"the segment starts at index {first_index}, but {previous.path.name} ends at index "
            f"{previous.last_index}: entries {expected} to {first_index - 1} are missing (a "
            "segment file was lost)",
        )
    if first_index < expected:
        raise _corruption(
            path,
            0,
            f"the segment starts at index {first_index}, but {previous.path.name} already holds "
            f"entries up to index {previous.last_index}",
        )


def _record_damage(data: bytes, view: memoryview, offset: int) -> str | None:
    """What is wrong with the bytes of the record at `offset`, or None when they are whole."""
    remaining = len(data) - offset
    if remaining < RECORD_HEADER.size:
        return f"only {remaining} bytes remain, less than a {RECORD_HEADER.size}-byte record header"
    length, checksum = _RECORD_LENGTH_CHECKSUM.unpack_from(data, offset)
    if length > RECORD_PAYLOAD_SIZE_MAX_BYTES:
        return f"payload length {length} exceeds the {RECORD_PAYLOAD_SIZE_MAX_BYTES}-byte limit"
    end = offset + RECORD_HEADER.size + length
    if end > len(data):
        return f"the record needs {end - offset} bytes but only {remaining} remain"
    if zlib.crc32(view[offset + _RECORD_CHECKED_OFFSET : end]) != checksum:
        return "the record fails its checksum"
    return None


def _scan_records(data: bytes, path: Path, first_index: int) -> _Scan:
    """Check the records of one segment; stop at the first damaged one.

    A record that is whole but does not belong (wrong index, unknown kind) raises at once:
    no crash produces one.
    """
    view = memoryview(data)
    offsets: array[int] = array("Q")
    offset = SEGMENT_HEADER_SIZE_BYTES
    expected = first_index
    while offset < len(data):
        damage = _record_damage(data, view, offset)
        if damage is not None:
            return _Scan(offsets, offset, damage)
        length, _, kind, _, index = RECORD_HEADER.unpack_from(data, offset)
        if index != expected:
            raise _corruption(
                path, offset, f"the record holds index {index} where index {expected} belongs"
            )
        if kind not in _KIND_BY_VALUE:
            raise _corruption(path, offset, f"the record has the unknown entry kind {kind}")
        offsets.append(offset)
        offset += RECORD_HEADER.size + length
        expected += 1
    return _Scan(offsets, offset, None)


def _check_torn(data: bytes, path: Path, segment: _Segment, damage: str, *, is_last: bool) -> None:
    """Raise unless the damaged record at `segment.size_bytes` is a torn write at the log's end.

    A crash can only tear the last record of the last segment, and a torn record runs to the end
    of the file. Since the length field is not covered by the checksum, a damaged length could
    also make a record in the middle appear to run to the end; a valid record with the next
    index after it shows that this is what happened.
    """
    offset = segment.size_bytes
    if not is_last:
        raise _corruption(
            path, offset, f"{damage}, in a segment that a later segment follows, so it was synced"
        )
    if len(data) - offset >= RECORD_HEADER.size:
        length, _ = _RECORD_LENGTH_CHECKSUM.unpack_from(data, offset)
        following_bytes = len(data) - (offset + RECORD_HEADER.size + length)
        if following_bytes > 0:
            raise _corruption(
                path,
                offset,
                f"{damage}, and {following_bytes} more bytes follow it, so it is not a write "
                "torn at the end of the log",
            )
    follower = _find_record(data, offset, segment.last_index + 2)
    if follower is not None:
        raise _corruption(
            path,
            offset,
            f"{damage}, and a valid record of index {segment.last_index + 2} follows at byte "
            f"offset {follower}, so the record's length field is damaged",
        )


def _find_record(data: bytes, after: int, index: int) -> int | None:
    """The offset of a valid record of `index` starting after offset `after`, if there is one."""
    view = memoryview(data)
    needle = _INDEX_FIELD.pack(index)
    search_from = after + 1 + _RECORD_INDEX_OFFSET
    while True:
        found = data.find(needle, search_from)
        if found < 0:
            return None
        candidate = found - _RECORD_INDEX_OFFSET
        if _record_damage(data, view, candidate) is None:
            return candidate
        search_from = found + 1


def _decode_records(segment: _Segment, data: bytes, entries: list[Entry]) -> None:
    """Append the entries of `segment` to `entries`, checking each record against the index."""
    view = memoryview(data)
    for position, offset in enumerate(segment.offsets):
        damage = _record_damage(data, view, offset)
        if damage is not None:
            raise _changed_on_disk(segment.path, offset, damage)
        length, _, kind, term, index = RECORD_HEADER.unpack_from(data, offset)
        if index != segment.first_index + position or kind not in _KIND_BY_VALUE:
            raise _changed_on_disk(
                segment.path, offset, f"the record holds index {index} and kind {kind}"
            )
        start = offset + RECORD_HEADER.size
        payload = bytes(view[start : start + length])
        entries.append(Entry(Term(term), LogIndex(index), _KIND_BY_VALUE[kind], payload))


def _changed_on_disk(path: Path, offset: int, problem: str) -> StorageError:
    return _corruption(
        path,
        offset,
        f"{problem}, although it was whole when the log was opened: something outside the log "
        "changed the file",
    )
