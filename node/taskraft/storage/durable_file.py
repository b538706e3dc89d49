"""Writing small files so that a crash leaves either the old content or the new, never a mix.

A file rewritten in place can be torn by a crash: half old bytes, half new. Writing the new
content to a temporary file in the same directory, syncing it, renaming it over the target and
then syncing the directory makes the replacement atomic and durable: the rename is atomic on
POSIX file systems, and the directory sync makes the rename itself survive a power loss.

Every failure to write or sync raises `StorageFailure`. An fsync is never retried: after a failed
fsync the kernel may have dropped the dirty pages, so a second fsync can report success for data
that never reached the disk.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from taskraft.storage.protocol import FAILURE_ADVICE, StorageFailure

TEMPORARY_SUFFIX = ".tmp"


def temporary_path_for(path: Path) -> Path:
    """Where the next content of `path` is written before it is renamed into place.

    The name is fixed rather than random, so a temporary file left by a crash is simply
    overwritten by the next write instead of piling up.
    """
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def fsync_directory(path: Path) -> None:
    """Make the creations, renames and removals of entries in directory `path` durable."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        raise StorageFailure(
            f"cannot open directory {path} to sync it: {error}. The disk or its permissions "
            "are at fault; the node must stop, and the operator should check the volume."
        ) from error
    try:
        os.fsync(descriptor)
    except OSError as error:
        raise StorageFailure(
            f"fsync of directory {path} failed: {error}. Renames and removals in it may be "
            f"lost. {FAILURE_ADVICE}"
        ) from error
    finally:
        os.close(descriptor)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace the content of `path` with `data`, durably: a crash leaves the old or the new.

    Returns only once the new content and the rename are on disk. On failure the temporary
    file is removed (best effort), the previous content of `path` is untouched unless the
    failure came after the rename, and `StorageFailure` is raised.
    """
    temporary = temporary_path_for(path)
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise StorageFailure(
            f"writing {path} failed: {error}. Its previous content is intact. {FAILURE_ADVICE}"
        ) from error
    fsync_directory(path.parent)
