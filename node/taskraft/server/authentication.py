"""Bearer tokens of the client port and the HTTP API: who a caller is, and what it may do.

A node started with `--auth-token-file PATH` requires a token on the client protocol (in the
handshake) and on the HTTP API (`Authorization: Bearer TOKEN`), except for the probes and, by
default, `/metrics`. The file holds one token a line:

    # NAME ROLE TOKEN
    billing  client  0b4f...
    grafana  read    9a1c...
    ops      admin   77de...

Blank lines and lines starting with `#` are ignored. NAME names the token in logs (it is not a
secret); ROLE is one of `read`, `client` and `admin` (`ROLE_PERMISSIONS`); TOKEN is any string
without spaces, best 32 random bytes in hex or base64. Names and tokens are unique in a file.

Only the SHA-256 digest of each token is kept in memory, and a presented token's digest is
compared with every known one with `hmac.compare_digest`, so neither the tokens nor the time a
comparison takes say anything about them. Nothing here logs a token, nor a line that holds one.

Rotation without a restart: `TokenStore` looks at the file's identity (device, inode, size,
modification and change times) at most once a second, when a caller authenticates, and reads it
again when it changed. A file that became unreadable or malformed keeps the tokens in force and
logs an error once per change. Connections already open keep the identity they authenticated
with until they close.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from taskraft.protocol.limits import TOKEN_MAX_BYTES

logger = logging.getLogger(__name__)

# How often, at most, the token file is looked at for a change.
RELOAD_CHECK_INTERVAL_S = 1.0
# Tokens shorter than this are accepted with a warning: they can be guessed.
TOKEN_LENGTH_RECOMMENDED = 16
# Names appear in logs; they are short and printable.
TOKEN_NAME_MAX_CHARS = 128


class Role(enum.Enum):
    """What a token may do, from least to most."""

    READ = "read"
    CLIENT = "client"
    ADMIN = "admin"


class Permission(enum.Enum):
    """A kind of operation, as the roles grant them."""

    # Reads that change nothing: status, list queues, count a queue's tasks, /metrics.
    READ = "read"
    # Every other queue operation: create and delete queues, enqueue, dequeue, ack, nack, extend.
    WRITE = "write"
    # The cluster itself: membership, leadership transfer, snapshots.
    ADMIN = "admin"


ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.READ: frozenset({Permission.READ}),
    Role.CLIENT: frozenset({Permission.READ, Permission.WRITE}),
    Role.ADMIN: frozenset({Permission.READ, Permission.WRITE, Permission.ADMIN}),
}

# The client protocol's operations that change nothing; every other one needs WRITE, so an
# operation added later is refused to `read` tokens until it is listed here.
READ_ONLY_OPERATIONS = frozenset({"status", "list_queues", "count"})


def operation_permission(operation: str) -> Permission:
    """The permission a client protocol operation (by its wire name) needs."""
    return Permission.READ if operation in READ_ONLY_OPERATIONS else Permission.WRITE


@dataclass(frozen=True, slots=True)
class Identity:
    """Who presented a token: the token's name in the file, and its role."""

    name: str
    role: Role

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


class TokenFileError(ValueError):
    """The token file cannot be read or holds a malformed line (named by its number)."""


def token_digest(token: str) -> bytes:
    """The SHA-256 digest of a token's UTF-8 bytes: all that is kept of it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class TokenTable:
    """The tokens of one version of the file, as (digest, identity) pairs."""

    entries: tuple[tuple[bytes, Identity], ...]
    # Names of tokens shorter than TOKEN_LENGTH_RECOMMENDED, for a warning.
    short: tuple[str, ...] = ()

    def identify(self, token: str | None) -> Identity | None:
        """The identity of `token`, or None for no token or one the table does not hold.

        Every entry is compared, whatever matched before, so the time taken depends only on
        the number of tokens.
        """
        if not token:
            return None
        digest = token_digest(token)
        found: Identity | None = None
        for known, identity in self.entries:
            if hmac.compare_digest(known, digest) and found is None:
                found = identity
        return found

    @property
    def names(self) -> tuple[str, ...]:
        """The tokens' names, in the file's order (they are not secret)."""
        return tuple(identity.name for _digest, identity in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def parse_token_file(text: str, source: str = "the token file") -> TokenTable:
    """The tokens of a token file's text; TokenFileError naming the line at fault.

    Messages name the line and what is wrong with it, never its token.
    """
    entries: list[tuple[bytes, Identity]] = []
    short: list[str] = []
    line_of_name: dict[str, int] = {}
    line_of_digest: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source}, line {number}"
        if len(fields) != 3:
            raise TokenFileError(
                f"{where}: expected NAME ROLE TOKEN separated by spaces, found {len(fields)} "
                f"field{'' if len(fields) == 1 else 's'}"
            )
        name, role_text, token = fields
        if len(name) > TOKEN_NAME_MAX_CHARS or not name.isprintable():
            raise TokenFileError(
                f"{where}: the name must be at most {TOKEN_NAME_MAX_CHARS} printable characters"
            )
        try:
            role = Role(role_text)
        except ValueError:
            known = ", ".join(role.value for role in Role)
            shown = role_text if len(role_text) <= 32 and role_text.isprintable() else "?"
            raise TokenFileError(
                f"{where}: unknown role {shown!r} for {name!r}; expected one of {known}"
            ) from None
        if len(token.encode("utf-8", "surrogatepass")) > TOKEN_MAX_BYTES:
            raise TokenFileError(
                f"{where}: the token of {name!r} is longer than {TOKEN_MAX_BYTES} bytes"
            )
        if name in line_of_name:
            raise TokenFileError(
                f"{where}: the name {name!r} is already used on line {line_of_name[name]}"
            )
        digest = token_digest(token)
        if digest in line_of_digest:
            raise TokenFileError(
                f"{where}: the token of {name!r} is the same as the one on line "
                f"{line_of_digest[digest]}; each token must be unique"
            )
        line_of_name[name] = number
        line_of_digest[digest] = number
        entries.append((digest, Identity(name, role)))
        if len(token) < TOKEN_LENGTH_RECOMMENDED:
            short.append(name)
    if not entries:
        raise TokenFileError(f"{source} holds no token")
    return TokenTable(tuple(entries), tuple(short))


def read_token_file(path: Path) -> TokenTable:
    """The tokens of the file at `path`; TokenFileError when it is unreadable or malformed."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TokenFileError(
            f"cannot read the token file {path}: {error.strerror or error}"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TokenFileError(f"the token file {path}, line {line}: not UTF-8") from None
    return parse_token_file(text, f"the token file {path}")


_FileIdentity = tuple[int, int, int, int, int]


def _file_identity(path: Path) -> _FileIdentity:
    status = os.stat(path)
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


class TokenStore:
    """The tokens of a token file, read again when the file changes.

    `load` reads the file for a node that starts, and raises TokenFileError when it cannot; after
    that, `identify` never raises: a file that went bad keeps the tokens read last.
    """

    def __init__(
        self,
        path: Path,
        table: TokenTable,
        *,
        file_identity: _FileIdentity | None = None,
        check_interval_s: float = RELOAD_CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._table = table
        self._file_identity = file_identity
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._next_check = clock() + check_interval_s
        # Times the file was read again successfully, for tests and logs.
        self.reloads = 0

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        check_interval_s: float = RELOAD_CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> TokenStore:
        """The store of the file at `path`; TokenFileError when it is unreadable or malformed."""
        try:
            identity: _FileIdentity | None = _file_identity(path)
        except OSError:
            identity = None
        table = read_token_file(path)
        _warn_short(table, path)
        return cls(
            path, table, file_identity=identity, check_interval_s=check_interval_s, clock=clock
        )

    @property
    def token_count(self) -> int:
        return len(self._table)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the tokens in force (read last), without looking at the file."""
        return self._table.names

    def identify(self, token: str | None) -> Identity | None:
        """Who `token` belongs to, or None: no token, or one the file does not hold."""
        self.check_for_changes()
        return self._table.identify(token)

    def check_for_changes(self, *, force: bool = False) -> None:
        """Read the file again if it changed since it was last read (at most once in
        `check_interval_s`, unless `force`)."""
        now = self._clock()
        if not force and now < self._next_check:
            return
        self._next_check = now + self._check_interval_s
        try:
            identity: _FileIdentity | None = _file_identity(self.path)
        except OSError as error:
            identity = None
            if self._file_identity is not None:
                logger.error(
                    "cannot look at the token file %s: %s; keeping the %d tokens read before",
                    self.path,
                    error.strerror or error,
                    len(self._table),
                )
            self._file_identity = None
            return
        if identity == self._file_identity:
            return
        self._file_identity = identity
        try:
            table = read_token_file(self.path)
        except TokenFileError as error:
            logger.error("%s; keeping the %d tokens read before", error, len(self._table))
            return
        self._table = table
        self.reloads += 1
        logger.info("read %d tokens from %s, which changed", len(table), self.path)
        _warn_short(table, self.path)


def _warn_short(table: TokenTable, path: Path) -> None:
    if table.short:
        logger.warning(
            "the token file %s holds tokens shorter than %d characters, which can be guessed: "
            "%s; use long random tokens (openssl rand -hex 32)",
            path,
            TOKEN_LENGTH_RECOMMENDED,
            ", ".join(table.short),
        )


__all__ = [
    "READ_ONLY_OPERATIONS",
    "ROLE_PERMISSIONS",
    "Identity",
    "Permission",
    "Role",
    "TokenFileError",
    "TokenStore",
    "TokenTable",
    "operation_permission",
    "parse_token_file",
    "read_token_file",
    "token_digest",
]
