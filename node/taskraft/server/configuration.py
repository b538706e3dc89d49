"""Every option of `taskraft serve` in one table, read from flags, environment, file and defaults.

An operator needs to know, for each knob, what it is for, its unit and default, and where the
value a node runs with came from. So each option is declared once (`OPTIONS`), and the command
line, the environment variables, the TOML file and `--print-config` are all derived from that
table. Precedence, highest first: command-line flag, environment variable `TASKRAFT_<NAME>`,
the TOML file given by `--config` (keys are the option names), the default.

Values are checked here, each error naming the option, where the bad value came from and what
was expected; checks that involve several options or the machine (a data directory that cannot
be written, a port in use) happen when the node starts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskraft.addresses import parse_address

ENVIRONMENT_PREFIX = "TASKRAFT_"


class ConfigurationError(ValueError):
    """An option has a value it cannot take, or the sources contradict each other."""


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its name (TOML key), flag, environment variable, type, default and purpose."""

    name: str
    kind: str  # text, integer, boolean, address, listen_address, members, path, choice
    help: str
    default: object = None
    unit: str = ""
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    # Options that only make sense on the command line or in the environment (not the file).
    file: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def environment_variable(self) -> str:
        return ENVIRONMENT_PREFIX + self.name.upper()

    def expected(self) -> str:
        """What a value must look like, for error messages and help."""
        match self.kind:
            case "integer":
                low = "" if self.minimum is None else f" from {self.minimum}"
                high = "" if self.maximum is None else f" to {self.maximum}"
                unit = f" ({self.unit})" if self.unit else ""
                return f"an integer{low}{high}{unit}"
            case "boolean":
                return "true or false"
            case "address" | "listen_address":
                return "HOST:PORT"
            case "members":
                return "ID=HOST:PORT,ID=HOST:PORT,..."
            case "choice":
                return "one of " + ", ".join(self.choices)
            case "path":
                return "a path"
        return "text"


def _integer(name: str, help: str, default: int, unit: str, low: int, high: int) -> Option:
    return Option(name, "integer", help, default, unit, minimum=low, maximum=high)


OPTIONS: tuple[Option, ...] = (
    Option("config", "path", "a TOML file of options (keys are the option names)", file=False),
    Option("node_id", "text", "this node's id: unique in the cluster, never reused for a new disk"),
    Option("data_dir", "path", "directory of the write-ahead log and snapshots; one per node"),
    Option("client_address", "listen_address", "where clients connect", "127.0.0.1:7100"),
    Option("peer_address", "listen_address", "where other nodes connect", "127.0.0.1:7101"),
    Option(
        "http_address", "listen_address", "the HTTP API: probes, status, metrics", "127.0.0.1:7102"
    ),
    Option(
        "initial_members",
        "members",
        "founding members of a new cluster with their peer addresses (this node included); "
        "used only while the data directory is empty",
    ),
    Option(
        "join",
        "boolean",
        "start empty and wait for the leader to add this node (instead of initial_members)",
        False,
    ),
    Option(
        "advertise_client_address",
        "address",
        "address clients are told to use for this node (default: client_address)",
    ),
    Option(
        "advertise_peer_address",
        "address",
        "address other nodes use for this node (default: peer_address)",
    ),
    Option(
        "advertise_http_address",
        "address",
        "address of this node's HTTP API as others see it (default: http_address)",
    ),
    Option("cluster_id", "text", "refuse peers that belong to another cluster id"),
    Option(
        "cluster_secret_file",
        "path",
        "a file holding the cluster's shared secret (at least 32 bytes, surrounding whitespace "
        "ignored); every peer connection must prove it, both ways. Without it the peer port "
        "serves anyone who can reach it",
    ),
    _integer(
        "tick_interval_ms",
        "the Raft clock: heartbeats every heartbeat_interval_ticks, elections after 1 to 2 "
        "election timeouts",
        100,
        "ms",
        1,
        60_000,
    ),
    _integer(
        "election_timeout_ticks",
        "ticks without a leader before a follower campaigns; must exceed the heartbeat interval",
        10,
        "ticks",
        2,
        10_000,
    ),
    _integer(
        "heartbeat_interval_ticks",
        "ticks between the leader's heartbeats",
        1,
        "ticks",
        1,
        10_000,
    ),
    _integer(
        "snapshot_interval_entries",
        "take a snapshot after this many applied entries: bounds the log a restart replays",
        100_000,
        "entries",
        1,
        1_000_000_000,
    ),
    _integer(
        "connections_max",
        "client connections served at once; one more is told `overloaded` and closed",
        1000,
        "connections",
        1,
        1_000_000,
    ),
    _integer(
        "client_handshake_timeout_ms",
        "a client connection that sends no handshake within this time is closed",
        10_000,
        "ms",
        1,
        3_600_000,
    ),
    _integer(
        "long_polls_max",
        "dequeues waiting for a task at once; one more is told `overloaded`",
        10_000,
        "requests",
        0,
        1_000_000,
    ),
    _integer(
        "requests_per_token_max",
        "client requests in flight at once on this node across all connections of one token "
        "name (a waiting dequeue counts while it waits); one more is told `overloaded` and the "
        "connection stays open (0: no limit). Only with auth_token_file; without tokens it is "
        "ignored",
        0,
        "requests",
        0,
        1_000_000,
    ),
    _integer(
        "pending_proposals_max",
        "commands waiting to commit; beyond, clients are told `overloaded`",
        10_000,
        "commands",
        1,
        10_000_000,
    ),
    _integer(
        "ready_lag_max_entries",
        "/readyz fails while the applied index trails the commit index by more",
        1000,
        "entries",
        0,
        1_000_000_000,
    ),
    _integer(
        "shutdown_timeout_ms",
        "on SIGTERM, how long to wait for leadership to move and requests in flight to finish",
        10_000,
        "ms",
        0,
        600_000,
    ),
    _integer(
        "status_log_interval_s",
        "a one-line status at info level this often (0: never)",
        60,
        "s",
        0,
        86_400,
    ),
    Option(
        "auth_token_file",
        "path",
        "client tokens, one `NAME ROLE TOKEN` a line (ROLE: read, client or admin), required "
        "on the client port and the HTTP API; re-read when it changes. Without it the node "
        "serves anyone",
    ),
    Option(
        "metrics_require_token",
        "boolean",
        "/metrics needs a token of the auth token file too (by default it is open)",
        False,
    ),
    Option(
        "tls_cert",
        "path",
        "this node's certificate chain (PEM): TLS on the client, peer and HTTP ports; needs "
        "tls_key and tls_ca; reloaded when it changes. Without it every port is plain TCP",
    ),
    Option("tls_key", "path", "the private key of tls_cert (PEM)"),
    Option(
        "tls_ca",
        "path",
        "the authorities (PEM) that issue the peers' certificates (mutual TLS on the peer "
        "port) and that a client certificate, when one is presented, must come from",
    ),
    Option(
        "log_level",
        "choice",
        "log verbosity",
        "info",
        choices=("debug", "info", "warning", "error"),
    ),
    Option(
        "event_loop",
        "choice",
        "the asyncio event loop: uvloop (faster) when installed, or the standard one",
        "auto",
        choices=("auto", "uvloop", "asyncio"),
    ),
    Option(
        "log_format",
        "choice",
        "JSON lines for log collectors, or text for people",
        "json",
        choices=("json", "text"),
    ),
)

OPTIONS_BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}


@dataclass(frozen=True, slots=True)
class ResolvedValue:
    value: Any
    source: str  # "flag", "environment", "file <path>", "default"


@dataclass(frozen=True, slots=True)
class ResolvedConfiguration:
    values: Mapping[str, ResolvedValue]

    def __getitem__(self, name: str) -> Any:
        return self.values[name].value

    def describe(self) -> str:
        """The effective configuration, one option a line, with where each value came from."""
        width = max(len(name) for name in self.values)
        lines = []
        for name, resolved in self.values.items():
            shown = "(not set)" if resolved.value is None else _show(resolved.value)
            lines.append(f"{name:<{width}}  {shown}  [{resolved.source}]")
        return "\n".join(lines)


def _show(value: object) -> str:
    if isinstance(value, dict):
        return ",".join(f"{key}={address}" for key, address in value.items())
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_members(text: str) -> dict[str, str]:
    """`n1=host:7101,n2=host:7111` as {node id: peer address}; ValueError when malformed."""
    members: dict[str, str] = {}
    for item in text.split(","):
        node_id, separator, address = item.strip().partition("=")
        if not separator or not node_id:
            raise ValueError(f"not ID=HOST:PORT: {item.strip()!r}")
        parse_address(address)
        if node_id in members:
            raise ValueError(f"member {node_id} is listed twice")
        members[node_id] = address
    return members


def convert(option: Option, raw: object, source: str) -> Any:
    """`raw` (text from a flag or the environment, or a TOML value) as the option's type."""
    try:
        return _CONVERTERS[option.kind](option, raw)
    except (ValueError, TypeError) as error:
        raise ConfigurationError(
            f"option {option.name} ({option.flag}, {option.environment_variable}) from {source}: "
            f"expected {option.expected()}, got {raw!r}" + (f" ({error})" if str(error) else "")
        ) from None


def _convert_text(option: Option, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError("")
    return raw


def _convert_integer(option: Option, raw: object) -> int:
    if isinstance(raw, bool):
        raise ValueError("")
    if isinstance(raw, str):
        raw = int(raw.strip())
    if not isinstance(raw, int):
        raise ValueError("")
    if option.minimum is not None and raw < option.minimum:
        raise ValueError("too small")
    if option.maximum is not None and raw > option.maximum:
        raise ValueError("too large")
    return raw


def _convert_boolean(option: Option, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    raise ValueError("")


def _convert_address(option: Option, raw: object) -> str:
    text = _convert_text(option, raw)
    parse_address(text, allow_port_zero=option.kind == "listen_address")
    return text


def _convert_members(option: Option, raw: object) -> dict[str, str]:
    if isinstance(raw, dict):
        raw = ",".join(f"{key}={value}" for key, value in raw.items())
    return parse_members(_convert_text(option, raw))


def _convert_choice(option: Option, raw: object) -> str:
    text = _convert_text(option, raw).lower()
    if text not in option.choices:
        raise ValueError("")
    return text


def _convert_path(option: Option, raw: object) -> Path:
    return Path(_convert_text(option, raw))


_CONVERTERS: Mapping[str, Callable[[Option, object], Any]] = {
    "text": _convert_text,
    "integer": _convert_integer,
    "boolean": _convert_boolean,
    "address": _convert_address,
    "listen_address": _convert_address,
    "members": _convert_members,
    "choice": _convert_choice,
    "path": _convert_path,
}


def read_file(path: Path) -> dict[str, Any]:
    """The options of a TOML file; ConfigurationError for an unreadable file or unknown key."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise ConfigurationError(f"cannot read the config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"the config file {path} is not valid TOML: {error}") from None
    for key in document:
        option = OPTIONS_BY_NAME.get(key)
        if option is None or not option.file:
            known = ", ".join(option.name for option in OPTIONS if option.file)
            raise ConfigurationError(
                f"the config file {path} has an unknown option {key!r}; known options: {known}"
            )
    return document


def resolve(
    flags: Mapping[str, object],
    environment: Mapping[str, str],
) -> ResolvedConfiguration:
    """Every option's value and source: flags (those given), environment, file, default."""
    file_values: dict[str, Any] = {}
    file_source = ""
    config_path = _first_given("config", flags, environment)
    if config_path is not None:
        path = convert(OPTIONS_BY_NAME["config"], config_path[0], config_path[1])
        file_values = read_file(path)
        file_source = f"file {path}"
    values: dict[str, ResolvedValue] = {}
    for option in OPTIONS:
        given = _first_given(option.name, flags, environment)
        if given is not None:
            raw, source = given
        elif option.name in file_values:
            raw, source = file_values[option.name], file_source
        else:
            values[option.name] = ResolvedValue(option.default, "default")
            continue
        values[option.name] = ResolvedValue(convert(option, raw, source), source)
    return ResolvedConfiguration(values)


def _first_given(
    name: str, flags: Mapping[str, object], environment: Mapping[str, str]
) -> tuple[object, str] | None:
    option = OPTIONS_BY_NAME[name]
    if flags.get(name) is not None:
        return flags[name], "flag"
    if option.environment_variable in environment:
        return environment[option.environment_variable], "environment"
    return None


def unknown_environment_variables(
    environment: Mapping[str, str], also_known: Sequence[str] = ()
) -> list[str]:
    """`TASKRAFT_*` variables no option reads: most likely a typo worth a warning."""
    known = {option.environment_variable for option in OPTIONS} | set(also_known)
    return sorted(
        name for name in environment if name.startswith(ENVIRONMENT_PREFIX) and name not in known
    )


__all__ = [
    "OPTIONS",
    "ConfigurationError",
    "Option",
    "ResolvedConfiguration",
    "convert",
    "parse_members",
    "read_file",
    "resolve",
    "unknown_environment_variables",
]
