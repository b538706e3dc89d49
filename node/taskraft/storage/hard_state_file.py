"""The file that holds a node's hard state: current term, vote and commit hint.

The term and the vote are what keep a node from voting twice in a term after a restart, so this
file must be written before a vote leaves the node and must never be read back wrong. It is
rewritten whole and atomically (see `durable_file`) and carries a checksum; any damage makes
reading it fail loudly rather than hand the Raft core a term or vote it never had.

Layout, little-endian:

    magic b"TRFTHST\\0" | format version u16 | term u64 | commit u64
    | vote length u16 | vote (UTF-8, length 0 means no vote) | crc32 u32 of everything before it
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from taskraft.raft import HardState, LogIndex, NodeId, Term
from taskraft.storage.durable_file import write_file_atomically
from taskraft.storage.protocol import RECOVERY_ADVICE, StorageError

MAGIC = b"TRFTHST\0"
FORMAT_VERSION = 1

# Node ids are the DNS names of their pods (at most 253 bytes); a kilobyte leaves room for any
# reasonable id while keeping a damaged file from being read as a huge one.
VOTE_SIZE_MAX_BYTES = 1024

_FIXED = struct.Struct("<8sHQQH")
_CHECKSUM = struct.Struct("<I")
_UNSIGNED_64_MAX = 2**64 - 1

FILE_SIZE_MAX_BYTES = _FIXED.size + VOTE_SIZE_MAX_BYTES + _CHECKSUM.size


def encode_hard_state(hard_state: HardState) -> bytes:
    """The file content for `hard_state`; ValueError when it cannot be represented."""
    if hard_state.vote == "":
        raise ValueError("an empty node id cannot be stored as a vote: it reads back as no vote")
    vote = (hard_state.vote or "").encode()
    if len(vote) > VOTE_SIZE_MAX_BYTES:
        raise ValueError(
            f"node id {hard_state.vote!r} is {len(vote)} bytes in UTF-8; node ids longer than "
            f"{VOTE_SIZE_MAX_BYTES} bytes cannot be stored: configure shorter node ids"
        )
    for name, value in (("term", hard_state.term), ("commit", hard_state.commit)):
        if not 0 <= value <= _UNSIGNED_64_MAX:
            raise ValueError(f"hard state {name} {value} does not fit in an unsigned 64-bit field")
    body = _FIXED.pack(MAGIC, FORMAT_VERSION, hard_state.term, hard_state.commit, len(vote)) + vote
    return body + _CHECKSUM.pack(zlib.crc32(body))


def write_hard_state(path: Path, hard_state: HardState) -> None:
    """Durably replace the hard state in `path`; returns only once it is on disk.

    Raises `StorageFailure` when writing or syncing fails: the node must then stop.
    """
    write_file_atomically(path, encode_hard_state(hard_state))


def read_hard_state(path: Path) -> HardState | None:
    """The hard state stored in `path`, or None when the file does not exist (a fresh node).

    Raises `StorageError` when the file cannot be read or is damaged in any way.
    """
    try:
        with open(path, "rb") as file:
            # One byte more than the largest valid file tells an oversized file from a full one.
            content = file.read(FILE_SIZE_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError(
            f"cannot read hard state file {path}: {error}. The disk or the permissions of the "
            "data directory are at fault; the operator should check the volume."
        ) from error
    return decode_hard_state(content, path)


def decode_hard_state(content: bytes, path: Path) -> HardState:
    """Parse the content of hard state file `path`, checking every byte of it."""
    if len(content) < _FIXED.size + _CHECKSUM.size:
        raise _corrupt(path, f"it is {len(content)} bytes, shorter than any valid hard state")
    magic, version, term, commit, vote_size = _FIXED.unpack_from(content)
    if magic != MAGIC:
        raise _corrupt(path, f"it starts with {magic!r} instead of the magic {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise _corrupt(
            path, f"its format version is {version}; this build reads version {FORMAT_VERSION}"
        )
    if vote_size > VOTE_SIZE_MAX_BYTES:
        raise _corrupt(path, f"its vote length {vote_size} exceeds {VOTE_SIZE_MAX_BYTES} bytes")
    expected_size = _FIXED.size + vote_size + _CHECKSUM.size
    if len(content) != expected_size:
        raise _corrupt(
            path, f"it is {len(content)} bytes but its vote length implies {expected_size}"
        )
    body_size = expected_size - _CHECKSUM.size
    (stored_checksum,) = _CHECKSUM.unpack_from(content, body_size)
    computed_checksum = zlib.crc32(content[:body_size])
    if stored_checksum != computed_checksum:
        raise _corrupt(
            path,
            f"the crc32 at byte {body_size} is {stored_checksum:#010x} but the content "
            f"gives {computed_checksum:#010x}",
        )
    vote_bytes = content[_FIXED.size : body_size]
    try:
        vote = vote_bytes.decode() if vote_bytes else None
    except UnicodeDecodeError as error:
        raise _corrupt(path, f"its vote is not valid UTF-8 ({error})") from error
    return HardState(
        term=Term(term), vote=NodeId(vote) if vote is not None else None, commit=LogIndex(commit)
    )


def _corrupt(path: Path, what: str) -> StorageError:
    return StorageError(
        f"hard state file {path} is corrupt: {what}. This member's term and vote cannot be "
        f"trusted. {RECOVERY_ADVICE}"
    )
