"""An exclusive lock on a node's data directory.

Two processes writing the same write-ahead log and hard state would interleave their writes and
could each vote in the same term: a misconfigured deployment (two pods on one volume, or a node
restarted while its old process still runs) must fail at start, not corrupt the cluster. The
lock is an `flock` on `LOCK` in the directory, released by the kernel when the holder dies, so a
crash never leaves a stale lock behind. The holder's pid is written into the file only to name
it in the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from taskraft.storage.protocol import StorageError

LOCK_FILE_NAME = "LOCK"

# A pid is at most a few digits; reading a little more than that is enough to name the holder.
HOLDER_SIZE_MAX_BYTES = 64


class DataDirectoryLock:
    """Held while a node uses its data directory; `acquire` fails when another holds it."""

    def __init__(self, directory: Path, descriptor: int) -> None:
        self.directory = directory
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, directory: Path) -> DataDirectoryLock:
        """Lock `directory` for this process, or raise `StorageError` when it is in use."""
        path = directory / LOCK_FILE_NAME
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StorageError(
                f"cannot open lock file {path}: {error}. The operator should check that the "
                "data directory exists and is writable by the node."
            ) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            raise StorageError(
                f"data directory {directory} is in use by process {holder}; two nodes must "
                "never share one. Stop the other process or give this node its own directory."
            ) from error
        except OSError as error:
            os.close(descriptor)
            raise StorageError(
                f"cannot lock {path}: {error}. The file system of the data directory must "
                "support flock; the operator should use a local volume."
            ) from error
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            os.close(descriptor)
            raise StorageError(
                f"cannot write the holder's pid into {path}: {error}. The operator should "
                "check the volume."
            ) from error
        return cls(directory, descriptor)

    def release(self) -> None:
        """Give the directory up. Does nothing when already released.

        The file stays: removing it would let a process that opened it before the removal
        hold a lock on a file no longer in the directory, while another locks a new one.
        """
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(descriptor, fcntl.LOCK_UN)
            os.close(descriptor)

    def __enter__(self) -> DataDirectoryLock:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(descriptor: int) -> str:
    """The pid the holder wrote into the lock file, or "unknown" when it is not there yet."""
    try:
        content = os.pread(descriptor, HOLDER_SIZE_MAX_BYTES, 0)
    except OSError:
        return "unknown"
    holder = content.decode(errors="replace").strip()
    return holder if holder.isdigit() else "unknown"
