"""Snapshots of the queue's state on disk, written and read as streams.

A snapshot can be far larger than the memory a node should spend on it, so it is never held
whole: `SnapshotWriter` takes the data chunk by chunk (from the state machine, or from the
leader's InstallSnapshot messages) and `SnapshotReader` hands it back chunk by chunk. Both sides
keep a running crc32, so a damaged file is detected instead of restoring a wrong queue.

Each snapshot is one file, `snapshot-{index:020d}-{term:020d}.snap`, written under a `.tmp` name
and renamed into place only once complete and synced; a crash mid-write leaves only a `.tmp`
file, which is ignored and later removed. Layout, little-endian:

    header:  magic b"TRFTSNP\\0" | format version u16 | index u64 | term u64
             | configuration length u32 | configuration (Configuration.encode())
             | crc32 u32 of the header bytes before it
    data:    the state machine's bytes, opaque here
    trailer: data length u64 | crc32 u32 of the data | magic b"TRFTEND\\0"

The trailer is written last, so a file cut short by a crash or a full disk lacks its end magic
and its lengths disagree with its size; either is detected before any data is read.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from taskraft.raft import Configuration, LogIndex, Snapshot, SnapshotMetadata, Term
from taskraft.storage.durable_file import TEMPORARY_SUFFIX, fsync_directory
from taskraft.storage.protocol import (
    FAILURE_ADVICE,
    RECOVERY_ADVICE,
    StorageError,
    StorageFailure,
)

logger = logging.getLogger(__name__)

MAGIC = b"TRFTSNP\0"
END_MAGIC = b"TRFTEND\0"
FORMAT_VERSION = 1

# A configuration lists member ids of at most a few hundred bytes each; a mebibyte holds
# thousands of members while keeping a damaged length from making us allocate gigabytes.
CONFIGURATION_SIZE_MAX_BYTES = 1024 * 1024

# Large enough that reading is dominated by the disk rather than by per-call overhead, small
# enough that a node restoring or sending a snapshot keeps only this much of it in memory.
READ_CHUNK_SIZE_BYTES = 1024 * 1024

_HEADER_FIXED = struct.Struct("<8sHQQI")
_CHECKSUM = struct.Struct("<I")
_TRAILER = struct.Struct("<QI8s")
_UNSIGNED_64_MAX = 2**64 - 1
_FILE_NAME = re.compile(r"snapshot-(\d{20})-(\d{20})\.snap")


def snapshot_file_name(index: int, term: int) -> str:
    """The name of the file holding the snapshot at `index` taken in `term`."""
    return f"snapshot-{index:020d}-{term:020d}.snap"


@dataclass(frozen=True, slots=True)
class _SnapshotFile:
    """A snapshot file as its name describes it, before its content is trusted."""

    index: int
    term: int
    path: Path


@dataclass(frozen=True, slots=True)
class _Layout:
    """What the header and trailer of a snapshot file say about it."""

    metadata: SnapshotMetadata
    data_offset: int
    data_size_bytes: int
    data_checksum: int


def _corrupt(path: Path, what: str, offset: int | None = None) -> StorageError:
    where = f" at byte {offset}" if offset is not None else ""
    return StorageError(
        f"snapshot file {path} is corrupt{where}: {what}. The member must not load it: it "
        "falls back to an older valid snapshot when its log still continues from there. "
        f"Otherwise: {RECOVERY_ADVICE}"
    )


def _unreadable(path: Path, error: OSError) -> StorageError:
    return StorageError(
        f"cannot read snapshot file {path}: {error}. The disk or the permissions of the data "
        "directory are at fault; the operator should check the volume."
    )


def _write_failed(path: Path, error: OSError) -> StorageFailure:
    return StorageFailure(f"writing snapshot file {path} failed: {error}. {FAILURE_ADVICE}")


def _encode_header(metadata: SnapshotMetadata) -> bytes:
    configuration = metadata.configuration.encode()
    if len(configuration) > CONFIGURATION_SIZE_MAX_BYTES:
        raise ValueError(
            f"the configuration of snapshot {metadata.index} encodes to {len(configuration)} "
            f"bytes; at most {CONFIGURATION_SIZE_MAX_BYTES} can be stored"
        )
    for name, value in (("index", metadata.index), ("term", metadata.term)):
        if not 0 <= value <= _UNSIGNED_64_MAX:
            raise ValueError(f"snapshot {name} {value} does not fit in an unsigned 64-bit field")
    header = (
        _HEADER_FIXED.pack(MAGIC, FORMAT_VERSION, metadata.index, metadata.term, len(configuration))
        + configuration
    )
    return header + _CHECKSUM.pack(zlib.crc32(header))


def _read_exactly(file: BinaryIO, size: int, offset: int, path: Path, what: str) -> bytes:
    try:
        file.seek(offset)
        content = file.read(size)
    except OSError as error:
        raise _unreadable(path, error) from error
    if len(content) != size:
        raise _corrupt(path, f"the file ends inside the {what}", offset + len(content))
    return content


def _read_header(file: BinaryIO, path: Path) -> tuple[SnapshotMetadata, int]:
    """The metadata of the snapshot in `file` and the offset at which its data starts."""
    fixed = _read_exactly(file, _HEADER_FIXED.size, 0, path, "header")
    magic, version, index, term, configuration_size = _HEADER_FIXED.unpack(fixed)
    if magic != MAGIC:
        raise _corrupt(path, f"it starts with {magic!r} instead of the magic {MAGIC!r}", 0)
    if version != FORMAT_VERSION:
        raise _corrupt(
            path,
            f"its format version is {version}; this build reads version {FORMAT_VERSION}",
            len(MAGIC),
        )
    if configuration_size > CONFIGURATION_SIZE_MAX_BYTES:
        raise _corrupt(
            path,
            f"its configuration length {configuration_size} exceeds "
            f"{CONFIGURATION_SIZE_MAX_BYTES} bytes",
            _HEADER_FIXED.size - 4,
        )
    configuration_bytes = _read_exactly(
        file, configuration_size, _HEADER_FIXED.size, path, "configuration"
    )
    checksum_offset = _HEADER_FIXED.size + configuration_size
    (stored,) = _CHECKSUM.unpack(
        _read_exactly(file, _CHECKSUM.size, checksum_offset, path, "header checksum")
    )
    computed = zlib.crc32(fixed + configuration_bytes)
    if stored != computed:
        raise _corrupt(
            path,
            f"the header crc32 is {stored:#010x} but the header gives {computed:#010x}",
            checksum_offset,
        )
    try:
        configuration = Configuration.decode(configuration_bytes)
    except (ValueError, KeyError, TypeError) as error:
        raise _corrupt(
            path, f"its configuration cannot be decoded ({error})", _HEADER_FIXED.size
        ) from error
    metadata = SnapshotMetadata(index=LogIndex(index), term=Term(term), configuration=configuration)
    return metadata, checksum_offset + _CHECKSUM.size


def _read_layout(file: BinaryIO, path: Path) -> _Layout:
    """Check the header and the trailer of `file`; the data is checked while it is read."""
    metadata, data_offset = _read_header(file, path)
    try:
        file_size = os.fstat(file.fileno()).st_size
    except OSError as error:
        raise _unreadable(path, error) from error
    if file_size < data_offset + _TRAILER.size:
        raise _corrupt(path, f"it is {file_size} bytes, too short to hold its trailer", file_size)
    trailer_offset = file_size - _TRAILER.size
    trailer = _read_exactly(file, _TRAILER.size, trailer_offset, path, "trailer")
    data_size, data_checksum, end_magic = _TRAILER.unpack(trailer)
    if end_magic != END_MAGIC:
        raise _corrupt(
            path,
            f"it ends with {end_magic!r} instead of the magic {END_MAGIC!r}; it was cut short "
            "or overwritten",
            file_size - len(END_MAGIC),
        )
    if data_size != trailer_offset - data_offset:
        raise _corrupt(
            path,
            f"its trailer says {data_size} data bytes but the file holds "
            f"{trailer_offset - data_offset}",
            trailer_offset,
        )
    return _Layout(metadata, data_offset, data_size, data_checksum)


class SnapshotReader(Iterator[bytes]):
    """The data of one snapshot as chunks of at most `chunk_size_bytes`, checked as it goes.

    The crc32 of the data can only be checked once all of it is read, so the iteration raises
    `StorageError` at its end when the data is damaged. A consumer must therefore treat what it
    received as provisional (for example restore into a fresh state machine) until the
    iteration ends without error. Obtain readers from `SnapshotStore.open_reader`.
    """

    def __init__(self, path: Path, file: BinaryIO, layout: _Layout, chunk_size_bytes: int) -> None:
        if chunk_size_bytes <= 0:
            raise ValueError(f"chunk size must be positive, not {chunk_size_bytes}")
        self.path = path
        self.metadata = layout.metadata
        self.data_size_bytes = layout.data_size_bytes
        # The crc32 the trailer records for the data: what a reader checks at the end.
        self.data_crc32 = layout.data_checksum
        self._file: BinaryIO | None = file
        self._layout = layout
        self._chunk_size_bytes = chunk_size_bytes
        self._position = layout.data_offset
        self._remaining_bytes = layout.data_size_bytes
        self._checksum = 0
        self._seeked = False

    def __iter__(self) -> SnapshotReader:
        return self

    def __next__(self) -> bytes:
        file = self._file
        if file is None:
            raise StopIteration
        try:
            if self._remaining_bytes == 0:
                self._check_data_checksum()
                self.close()
                raise StopIteration
            return self._read_chunk(file)
        except StorageError:
            self.close()
            raise

    def _read_chunk(self, file: BinaryIO) -> bytes:
        size = min(self._chunk_size_bytes, self._remaining_bytes)
        try:
            if not self._seeked:
                file.seek(self._position)
                self._seeked = True
            chunk = file.read(size)
        except OSError as error:
            raise _unreadable(self.path, error) from error
        if len(chunk) != size:
            raise _corrupt(self.path, "the file ends inside the data", self._position + len(chunk))
        self._checksum = zlib.crc32(chunk, self._checksum)
        self._position += size
        self._remaining_bytes -= size
        return chunk

    def _check_data_checksum(self) -> None:
        if self._checksum != self._layout.data_checksum:
            start = self._layout.data_offset
            raise _corrupt(
                self.path,
                f"its data (bytes {start} to {start + self._layout.data_size_bytes}) gives "
                f"crc32 {self._checksum:#010x} but the trailer says "
                f"{self._layout.data_checksum:#010x}",
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class SnapshotWriter:
    """Writes one snapshot as a stream; it appears under its final name only once committed.

    Use as a context manager: leaving the block without `commit` (by an exception or
    otherwise) aborts and removes the temporary file. Every write or sync failure raises
    `StorageFailure`, after which the node must stop.
    """

    def __init__(
        self, metadata: SnapshotMetadata, file: BinaryIO, temporary_path: Path, final_path: Path
    ) -> None:
        self.metadata = metadata
        self.temporary_path = temporary_path
        self.final_path = final_path
        self.data_size_bytes = 0
        self._file: BinaryIO | None = file
        self._checksum = 0

    @classmethod
    def create(cls, directory: Path, metadata: SnapshotMetadata) -> SnapshotWriter:
        """Start writing the snapshot described by `metadata` into `directory`."""
        header = _encode_header(metadata)
        final_path = directory / snapshot_file_name(metadata.index, metadata.term)
        temporary_path = final_path.with_name(final_path.name + TEMPORARY_SUFFIX)
        try:
            file = open(temporary_path, "wb")  # noqa: SIM115 (closed by commit or abort)
        except OSError as error:
            raise _write_failed(temporary_path, error) from error
        writer = cls(metadata, file, temporary_path, final_path)
        try:
            file.write(header)
        except OSError as error:
            writer.abort()
            raise _write_failed(temporary_path, error) from error
        return writer

    def write(self, chunk: bytes) -> None:
        """Append `chunk` to the snapshot's data."""
        file = self._open_file()
        try:
            file.write(chunk)
        except OSError as error:
            self.abort()
            raise _write_failed(self.temporary_path, error) from error
        self._checksum = zlib.crc32(chunk, self._checksum)
        self.data_size_bytes += len(chunk)

    def commit(self) -> Path:
        """Finish the file, sync it and rename it into place; returns its final path.

        Returns only once the snapshot and its name are durable.
        """
        file = self._open_file()
        trailer = _TRAILER.pack(self.data_size_bytes, self._checksum, END_MAGIC)
        try:
            file.write(trailer)
            file.flush()
            os.fsync(file.fileno())
            file.close()
            self._file = None
            os.replace(self.temporary_path, self.final_path)
        except OSError as error:
            self.abort()
            raise _write_failed(self.temporary_path, error) from error
        fsync_directory(self.final_path.parent)
        return self.final_path

    def abort(self) -> None:
        """Drop the partly written snapshot. Does nothing once committed or aborted."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        with contextlib.suppress(OSError):
            self.temporary_path.unlink(missing_ok=True)

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            raise ValueError(f"snapshot writer for {self.final_path} is already closed")
        return self._file

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.abort()


class SnapshotStore:
    """The snapshot files in one directory, which holds nothing else of the form they use.

    Do not call `delete_older_than` while a `SnapshotWriter` is writing into the directory:
    it removes the temporary files of unfinished snapshots.
    """

    def __init__(
        self, directory: Path, *, read_chunk_size_bytes: int = READ_CHUNK_SIZE_BYTES
    ) -> None:
        if read_chunk_size_bytes <= 0:
            raise ValueError(f"read_chunk_size_bytes must be positive, not {read_chunk_size_bytes}")
        self.directory = directory
        self.read_chunk_size_bytes = read_chunk_size_bytes

    def list(self) -> list[SnapshotMetadata]:
        """The snapshots whose header is intact, oldest first. Their data is not checked here.

        A file with a damaged header is left out with a warning.
        """
        snapshots: builtins.list[SnapshotMetadata] = []
        for snapshot_file in self._snapshot_files():
            try:
                snapshots.append(self._read_metadata(snapshot_file))
            except StorageError as error:
                logger.warning("ignoring snapshot with unreadable header: %s", error)
        return snapshots

    def newest_valid(self) -> SnapshotMetadata | None:
        """The newest snapshot whose every byte checks out, or None when there is none.

        A damaged newest snapshot is skipped with a warning and older ones are tried. This is
        only safe when the log still continues right after the snapshot returned: the log was
        compacted up to the newer snapshot, so the entries between the two may be gone. The
        caller must check that the first stored entry after the snapshot has index
        `metadata.index + 1` (and, when None is returned, that the log starts at index 1), and
        refuse to start otherwise; the storage layer does that.
        """
        for snapshot_file in reversed(self._snapshot_files()):
            try:
                metadata = self._read_metadata(snapshot_file)
                self.verify(metadata)
            except StorageError as error:
                logger.warning("skipping damaged snapshot, trying an older one: %s", error)
                continue
            return metadata
        return None

    def open_reader(self, metadata: SnapshotMetadata) -> SnapshotReader:
        """A reader of the data of the snapshot described by `metadata`.

        Header and trailer are checked here; the data's crc32 at the end of the iteration.
        """
        path = self.directory / snapshot_file_name(metadata.index, metadata.term)
        try:
            file = open(path, "rb")  # noqa: SIM115 (closed by the reader)
        except FileNotFoundError as error:
            raise StorageError(
                f"snapshot file {path} does not exist; it was removed while in use, which is "
                "a bug in the storage layer"
            ) from error
        except OSError as error:
            raise _unreadable(path, error) from error
        try:
            layout = _read_layout(file, path)
            if layout.metadata != metadata:
                raise _corrupt(
                    path, f"its header describes {layout.metadata}, not the expected {metadata}"
                )
        except BaseException:
            file.close()
            raise
        return SnapshotReader(path, file, layout, self.read_chunk_size_bytes)

    def read_all(self, metadata: SnapshotMetadata) -> bytes:
        """The whole data of a snapshot, checked. Holds it all in memory: small snapshots only."""
        with self.open_reader(metadata) as reader:
            return b"".join(reader)

    def verify(self, metadata: SnapshotMetadata) -> None:
        """Read the whole snapshot file and raise `StorageError` if any part of it is damaged."""
        with self.open_reader(metadata) as reader:
            for _chunk in reader:
                pass

    def save(self, snapshot: Snapshot) -> Path:
        """Durably write an in-memory snapshot; returns its path once it is on disk."""
        with SnapshotWriter.create(self.directory, snapshot.metadata) as writer:
            writer.write(snapshot.data)
            return writer.commit()

    def delete_older_than(self, index: int) -> None:
        """Remove snapshots below `index`, never the newest one, and unfinished `.tmp` files.

        Older snapshots are removed whether or not they are valid, so pass the index of a
        snapshot known to be valid (one just written, or the one `newest_valid` returned).
        """
        snapshot_files = self._snapshot_files()
        doomed = [
            snapshot_file.path
            for snapshot_file in snapshot_files[:-1]
            if snapshot_file.index < index
        ]
        doomed.extend(self._temporary_files())
        if not doomed:
            return
        for path in doomed:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise StorageFailure(
                    f"cannot remove old snapshot file {path}: {error}. The node must stop; the "
                    "operator should check the volume (permissions, disk errors)."
                ) from error
        fsync_directory(self.directory)

    def _read_metadata(self, snapshot_file: _SnapshotFile) -> SnapshotMetadata:
        path = snapshot_file.path
        try:
            with open(path, "rb") as file:
                metadata, _data_offset = _read_header(file, path)
        except OSError as error:
            raise _unreadable(path, error) from error
        if (metadata.index, metadata.term) != (snapshot_file.index, snapshot_file.term):
            raise _corrupt(
                path,
                f"its header says index {metadata.index} and term {metadata.term}, "
                "which disagrees with its name",
            )
        return metadata

    def _directory_entries(self) -> builtins.list[Path]:
        try:
            return builtins.list(self.directory.iterdir())
        except OSError as error:
            raise StorageError(
                f"cannot list snapshot directory {self.directory}: {error}. The operator "
                "should check that the data directory exists and is readable."
            ) from error

    def _snapshot_files(self) -> builtins.list[_SnapshotFile]:
        """The finished snapshot files, by (index, term), judged by their names only."""
        found: builtins.list[_SnapshotFile] = []
        for path in self._directory_entries():
            match = _FILE_NAME.fullmatch(path.name)
            if match is not None:
                found.append(_SnapshotFile(int(match[1]), int(match[2]), path))
        return sorted(found, key=lambda snapshot_file: (snapshot_file.index, snapshot_file.term))

    def _temporary_files(self) -> builtins.list[Path]:
        return [
            path
            for path in self._directory_entries()
            if path.name.endswith(TEMPORARY_SUFFIX)
            and _FILE_NAME.fullmatch(path.name.removesuffix(TEMPORARY_SUFFIX))
        ]
