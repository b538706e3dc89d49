"""The options of `taskraft serve`: every source, their precedence, and every validation error.

Sources are checked through `resolve` (flags > environment > TOML file > default); the command
line is checked end to end by running `taskraft serve` as a process: `--print-config`, and the
refusals a node gives at start for a data directory it cannot use and a port in use.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from taskraft.cli import build_parser
from taskraft.cli.serve import settings_from_arguments
from taskraft.local_cluster import free_port
from taskraft.server.configuration import (
    OPTIONS,
    ConfigurationError,
    resolve,
    unknown_environment_variables,
)

DEADLINE_S = 30.0


def flags(**given: object) -> dict[str, object]:
    values: dict[str, object] = {option.name: None for option in OPTIONS}
    values.update(given)
    return values


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_every_option_has_a_flag_a_variable_a_help_and_a_valid_default() -> None:
    parser_help = build_parser().parse_args(["serve"])  # parses with every default
    assert parser_help.handler is not None
    names = [option.name for option in OPTIONS]
    assert len(names) == len(set(names))
    for option in OPTIONS:
        assert option.help and option.flag.startswith("--")
        assert option.environment_variable == "TASKRAFT_" + option.name.upper()
    resolved = resolve(flags(), {})
    for option in OPTIONS:
        assert resolved.values[option.name].source == "default"
        assert resolved[option.name] == option.default


def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        'tick_interval_ms = 30\nconnections_max = 40\nlog_format = "text"\n'
        'initial_members = "n1=a:1"\njoin = false\n',
    )
    environment = {
        "TASKRAFT_CONFIG": str(config),
        "TASKRAFT_TICK_INTERVAL_MS": "20",
        "TASKRAFT_CONNECTIONS_MAX": "50",
    }
    resolved = resolve(flags(tick_interval_ms="10"), environment)
    assert (resolved["tick_interval_ms"], resolved.values["tick_interval_ms"].source) == (
        10,
        "flag",
    )
    assert (resolved["connections_max"], resolved.values["connections_max"].source) == (
        50,
        "environment",
    )
    assert resolved["log_format"] == "text"
    assert resolved.values["log_format"].source == f"file {config}"
    assert resolved["initial_members"] == {"n1": "a:1"}
    assert resolved.values["election_timeout_ticks"].source == "default"
    described = resolved.describe()
    assert "tick_interval_ms" in described and "[flag]" in described
    assert f"[file {config}]" in described


@pytest.mark.parametrize(
    ("given", "environment", "fragment"),
    [
        ({"tick_interval_ms": "fast"}, {}, "option tick_interval_ms (--tick-interval-ms"),
        ({"tick_interval_ms": "0"}, {}, "expected an integer from 1 to 60000 (ms), got '0'"),
        ({}, {"TASKRAFT_CONNECTIONS_MAX": "-1"}, "from environment: expected an integer from 1"),
        ({"client_address": "localhost"}, {}, "expected HOST:PORT, got 'localhost'"),
        ({"advertise_peer_address": "n1:0"}, {}, "expected HOST:PORT"),
        ({"initial_members": "n1"}, {}, "expected ID=HOST:PORT"),
        ({"initial_members": "n1=a:1,n1=b:2"}, {}, "listed twice"),
        ({"log_format": "yaml"}, {}, "expected one of json, text"),
        ({}, {"TASKRAFT_JOIN": "perhaps"}, "expected true or false"),
    ],
)
def test_a_bad_value_names_the_option_its_source_and_what_was_expected(
    given: dict[str, object], environment: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        resolve(flags(**given), environment)
    assert fragment in str(raised.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bogus = 1\n", "unknown option 'bogus'"),
        ("config = 'other.toml'\n", "unknown option 'config'"),
        ("tick_interval_ms = 'fast'\n", "from file"),
        ("connections_max = true\n", "expected an integer"),
        ("this is not toml", "is not valid TOML"),
    ],
)
def test_a_bad_config_file_is_refused_with_the_reason(
    tmp_path: Path, text: str, fragment: str
) -> None:
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigurationError, match=fragment.replace("(", r"\(")):
        resolve(flags(config=str(config)), {})


def test_a_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the config file"):
        resolve(flags(config=str(tmp_path / "absent.toml")), {})


def test_contradictory_options_are_refused(tmp_path: Path) -> None:
    parser = build_parser()
    common = ["serve", "--node-id", "n1", "--data-dir", str(tmp_path)]
    cases = [
        (["--election-timeout-ticks", "3", "--heartbeat-interval-ticks", "3"], "must exceed"),
        (["--join", "--initial-members", "n1=a:1"], "not both or none"),
        ([], "not both or none"),
        (["--initial-members", "n2=a:1"], "not among the initial members"),
    ]
    for extra, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            settings_from_arguments(parser.parse_args([*common, *extra]), {})


def test_unknown_taskraft_variables_are_reported_as_likely_typos() -> None:
    environment = {"TASKRAFT_TICK_INTERVALL_MS": "5", "TASKRAFT_SERVERS": "a:1", "HOME": "/"}
    assert unknown_environment_variables(environment, ["TASKRAFT_SERVERS"]) == [
        "TASKRAFT_TICK_INTERVALL_MS"
    ]


def serve(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskraft", "serve", *arguments],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_print_config_shows_each_value_and_where_it_came_from(tmp_path: Path) -> None:
    config = write_config(tmp_path, "snapshot_interval_entries = 777\n")
    finished = serve(
        "--config", str(config), "--node-id", "n9", "--data-dir", str(tmp_path), "--join",
        "--print-config",
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    lines = {line.split()[0]: line for line in finished.stdout.splitlines()}
    assert lines["node_id"].split()[1:] == ["n9", "[flag]"]
    assert lines["snapshot_interval_entries"].endswith(f"[file {config}]")
    assert "777" in lines["snapshot_interval_entries"]
    assert lines["tick_interval_ms"].endswith("[default]")


def test_print_config_still_shows_the_values_of_an_incomplete_configuration() -> None:
    finished = serve("--node-id", "n9", "--print-config")
    assert finished.returncode == 2
    assert "n9  [flag]" in finished.stdout
    assert "missing --data-dir" in finished.stderr


def test_a_bad_option_on_the_command_line_exits_2_naming_it(tmp_path: Path) -> None:
    finished = serve(
        "--node-id", "n1", "--data-dir", str(tmp_path), "--join", "--tick-interval-ms", "x"
    )
    assert finished.returncode == 2
    assert "tick_interval_ms" in finished.stderr and "'x'" in finished.stderr


def test_an_unwritable_data_directory_stops_the_start_with_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    ports = [free_port() for _ in range(3)]
    finished = serve(
        "--node-id", "n1",
        "--data-dir", str(blocker / "data"),
        "--client-address", f"127.0.0.1:{ports[0]}",
        "--peer-address", f"127.0.0.1:{ports[1]}",
        "--http-address", f"127.0.0.1:{ports[2]}",
        "--initial-members", f"n1=127.0.0.1:{ports[1]}",
        "--log-format", "text",
    )  # fmt: skip
    assert finished.returncode == 2
    last_line = finished.stderr.strip().splitlines()[-1]
    assert "cannot start" in last_line and str(blocker) in last_line


def test_a_port_in_use_stops_the_start_with_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        peer, http = free_port(), free_port()
        finished = serve(
            "--node-id", "n1",
            "--data-dir", str(tmp_path / "data"),
            "--client-address", f"127.0.0.1:{busy}",
            "--peer-address", f"127.0.0.1:{peer}",
            "--http-address", f"127.0.0.1:{http}",
            "--initial-members", f"n1=127.0.0.1:{peer}",
            "--log-format", "text",
        )  # fmt: skip
    assert finished.returncode == 2
    last_line = finished.stderr.strip().splitlines()[-1]
    assert "cannot start" in last_line and "address already in use" in last_line
