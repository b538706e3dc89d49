"""Client tokens: the token file, digests, the role table, rotation, and the settings around them.

Nothing here starts a node or listens on a socket: the token store reads files in the test's
directory, with a clock the test moves, and the HTTP route table is read from an `HttpApi` built
on a stand-in node. tests/integration/test_token_authentication.py runs the same rules against a
real node process.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from taskraft.cli.serve import (
    register_serve_command,
    resolve_arguments,
    run_serve,
    settings_from_arguments,
)
from taskraft.errors import ERRORS_BY_CODE, Forbidden, Unauthenticated
from taskraft.protocol import OPERATIONS
from taskraft.server import http_api
from taskraft.server.authentication import (
    READ_ONLY_OPERATIONS,
    ROLE_PERMISSIONS,
    Identity,
    Permission,
    Role,
    TokenFileError,
    TokenStore,
    TokenTable,
    operation_permission,
    parse_token_file,
    read_token_file,
    token_digest,
)
from taskraft.server.configuration import ConfigurationError
from taskraft.server.http_api import HttpApi

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"

CLIENT_TOKEN = "c" * 40
READ_TOKEN = "r" * 40
ADMIN_TOKEN = "a" * 40

GOOD_FILE = f"""\
# NAME ROLE TOKEN
billing client {CLIENT_TOKEN}

  grafana   read\t{READ_TOKEN}
    # an indented comment
ops admin {ADMIN_TOKEN}
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the token file --------------------------------------------------------------------------


def test_a_good_file_gives_each_token_its_name_and_role() -> None:
    table = parse_token_file(GOOD_FILE)
    assert len(table) == 3
    assert table.identify(CLIENT_TOKEN) == Identity("billing", Role.CLIENT)
    assert table.identify(READ_TOKEN) == Identity("grafana", Role.READ)
    assert table.identify(ADMIN_TOKEN) == Identity("ops", Role.ADMIN)
    assert table.short == ()


@pytest.mark.parametrize(
    "token", [None, "", "nope", CLIENT_TOKEN + "x", CLIENT_TOKEN[:-1], CLIENT_TOKEN.upper()]
)
def test_no_token_or_an_unknown_one_identifies_nobody(token: str | None) -> None:
    assert parse_token_file(GOOD_FILE).identify(token) is None


def test_only_digests_are_kept() -> None:
    table = parse_token_file(GOOD_FILE)
    digests = {digest for digest, _ in table.entries}
    assert digests == {
        hashlib.sha256(token.encode()).digest() for token in (CLIENT_TOKEN, READ_TOKEN, ADMIN_TOKEN)
    }
    assert token_digest(CLIENT_TOKEN) == hashlib.sha256(CLIENT_TOKEN.encode()).digest()
    assert CLIENT_TOKEN not in repr(table)


def test_tokens_are_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    import taskraft.server.authentication as authentication

    compared: list[tuple[bytes, bytes]] = []
    real = authentication.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(authentication.hmac, "compare_digest", spy)
    table = parse_token_file(GOOD_FILE)
    # Every entry is compared, whether the match comes first or not at all.
    assert table.identify(CLIENT_TOKEN) == Identity("billing", Role.CLIENT)
    assert len(compared) == 3
    assert table.identify("unknown") is None
    assert len(compared) == 6
    assert all(b == token_digest("unknown") for _, b in compared[3:])


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("billing client", 1, "found 2 fields"),
        ("# a comment\n\nbilling client s3cr3t-1 extra", 3, "found 4 fields"),
        ("billing", 1, "found 1 field"),
        ("a client s3cr3t-1\nb superuser s3cr3t-2", 2, "unknown role 'superuser'"),
        ("a client s3cr3t-1\nb CLIENT s3cr3t-2", 2, "unknown role 'CLIENT'"),
        (
            "a client s3cr3t-1\nb read s3cr3t-2\na admin s3cr3t-3",
            3,
            "'a' is already used on line 1",
        ),
        ("a client s3cr3t-1\n\nb read s3cr3t-1", 3, "same as the one on line 1"),
        ("a client s3cr3t-" + "x" * 1025, 1, "longer than 1024 bytes"),
        ("n" * 129 + " client s3cr3t-1", 1, "at most 128 printable characters"),
    ],
)
def test_a_malformed_line_is_named_by_its_number_without_its_token(
    text: str, line: int, reason: str
) -> None:
    with pytest.raises(TokenFileError) as raised:
        parse_token_file(text, "tokens.txt")
    message = str(raised.value)
    assert message.startswith(f"tokens.txt, line {line}: "), message
    assert reason in message
    assert "s3cr3t" not in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_a_file_without_tokens_is_refused(text: str) -> None:
    with pytest.raises(TokenFileError, match="holds no token"):
        parse_token_file(text, "tokens.txt")


def test_short_tokens_are_accepted_and_named_for_a_warning() -> None:
    table = parse_token_file("dev client secret\nprod client " + "p" * 32)
    assert table.identify("secret") == Identity("dev", Role.CLIENT)
    assert table.short == ("dev",)


def test_reading_a_file_that_is_missing_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read the token file"):
        read_token_file(tmp_path / "missing")
    path = tmp_path / "tokens"
    path.write_bytes(b"a client ok1\nb client \xff\xfe\n")
    with pytest.raises(TokenFileError, match=r"line 2: not UTF-8"):
        read_token_file(path)


# -- the role table ----------------------------------------------------------------------------


def test_the_roles_grant_read_write_and_admin_in_order() -> None:
    assert ROLE_PERMISSIONS[Role.READ] == {Permission.READ}
    assert ROLE_PERMISSIONS[Role.CLIENT] == {Permission.READ, Permission.WRITE}
    assert ROLE_PERMISSIONS[Role.ADMIN] == set(Permission)
    assert Identity("x", Role.READ).may(Permission.READ)
    assert not Identity("x", Role.READ).may(Permission.WRITE)
    assert not Identity("x", Role.CLIENT).may(Permission.ADMIN)
    assert Identity("x", Role.ADMIN).may(Permission.ADMIN)


def test_read_tokens_may_send_only_the_operations_that_change_nothing() -> None:
    assert {"status", "list_queues", "count"} == READ_ONLY_OPERATIONS
    assert set(OPERATIONS) >= READ_ONLY_OPERATIONS
    reader = Identity("r", Role.READ)
    client = Identity("c", Role.CLIENT)
    for name in OPERATIONS:
        assert reader.may(operation_permission(name)) == (name in READ_ONLY_OPERATIONS), name
        assert client.may(operation_permission(name)), name
    # An operation nobody classified needs WRITE.
    assert operation_permission("some_new_operation") is Permission.WRITE


def test_the_errors_have_their_codes() -> None:
    assert (Unauthenticated.code, Unauthenticated.name) == (20, "unauthenticated")
    assert (Forbidden.code, Forbidden.name) == (21, "forbidden")
    assert ERRORS_BY_CODE[20] is Unauthenticated and ERRORS_BY_CODE[21] is Forbidden
    assert not Unauthenticated.retryable and not Forbidden.retryable
    assert http_api._HTTP_STATUS_OF_ERROR[20] == 401
    assert http_api._HTTP_STATUS_OF_ERROR[21] == 403


def test_the_http_routes_need_the_permissions_openapi_documents() -> None:
    api = HttpApi(SimpleNamespace(), host="127.0.0.1", port=0, metrics=SimpleNamespace())
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    documented = {
        (method.upper(), path): operation["x-taskraft-permission"]
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "delete")
    }
    served = {
        route: "none" if permission is None else permission.value
        for route, permission in api.route_permissions.items()
    }
    assert served == documented
    admin = {route for route, permission in served.items() if permission == "admin"}
    assert admin == {
        ("POST", "/v1/members"),
        ("POST", "/v1/members/{node_id}/promote"),
        ("DELETE", "/v1/members/{node_id}"),
        ("POST", "/v1/leadership/transfer"),
        ("POST", "/v1/snapshot"),
        ("GET", "/v1/snapshot"),
    }
    assert served[("GET", "/healthz")] == served[("GET", "/readyz")] == "none"
    assert "bearerToken" in spec["components"]["securitySchemes"]


# -- rotation ----------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    """Replace the file's content in place, its modification time visibly later."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_a_changed_file_is_read_again_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"old client {'o' * 32}\n")
    clock = FakeClock()
    store = TokenStore.load(path, clock=clock)
    assert store.identify("o" * 32) == Identity("old", Role.CLIENT)

    _write(path, f"new client {'n' * 32}\n")
    # Within the second since the last look, the file is not looked at.
    clock.now += 0.5
    assert store.identify("n" * 32) is None
    assert store.identify("o" * 32) is not None
    clock.now += 0.6
    assert store.identify("n" * 32) == Identity("new", Role.CLIENT)
    assert store.identify("o" * 32) is None
    assert store.reloads == 1

    # An unchanged file is not read again.
    clock.now += 5
    assert store.identify("n" * 32) is not None
    assert store.reloads == 1


def test_a_file_replaced_by_a_rename_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"a client {'a' * 32}\n")
    clock = FakeClock()
    store = TokenStore.load(path, clock=clock)
    replacement = tmp_path / "tokens.new"
    replacement.write_text(f"b client {'b' * 32}\n")
    replacement.replace(path)
    clock.now += 1.5
    assert store.identify("b" * 32) == Identity("b", Role.CLIENT)
    assert store.identify("a" * 32) is None


def test_a_file_gone_bad_keeps_the_tokens_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    secret = "k" * 32
    path.write_text(f"keep client {secret}\n")
    clock = FakeClock()
    store = TokenStore.load(path, clock=clock)
    caplog.set_level(logging.INFO, logger="taskraft.server.authentication")

    _write(path, f"keep client {secret}\nbroken line with {'s' * 30} four\n")
    clock.now += 2
    assert store.identify(secret) == Identity("keep", Role.CLIENT)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "line 2" in errors[0].getMessage()
    assert "keeping the 1 tokens read before" in errors[0].getMessage()
    clock.now += 2
    store.identify(secret)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    # Gone, then back and fixed.
    path.unlink()
    clock.now += 2
    assert store.identify(secret) is not None
    path.write_text(f"fixed admin {'f' * 32}\n")
    clock.now += 2
    assert store.identify("f" * 32) == Identity("fixed", Role.ADMIN)
    assert store.identify(secret) is None
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert "s" * 30 not in record.getMessage()
        assert "f" * 32 not in record.getMessage()


def test_a_store_of_a_malformed_file_cannot_be_loaded(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("a client tok1\nb nobody tok2\n")
    with pytest.raises(TokenFileError, match="line 2"):
        TokenStore.load(path)


def test_the_table_is_immutable_and_small() -> None:
    table = TokenTable(((token_digest("x"), Identity("x", Role.READ)),))
    with pytest.raises(AttributeError):
        table.entries = ()  # type: ignore[misc]


# -- settings ----------------------------------------------------------------------------------


def _serve_arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_serve_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


BASE = ("--node-id", "n1", "--initial-members", "n1=127.0.0.1:7101")


def test_the_token_file_comes_from_the_flag_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    arguments = _serve_arguments(*BASE, "--data-dir", str(tmp_path), "--auth-token-file", str(path))
    assert settings_from_arguments(arguments, {}).auth_token_file == path
    from_environment = settings_from_arguments(
        _serve_arguments(*BASE, "--data-dir", str(tmp_path)),
        {"TASKRAFT_AUTH_TOKEN_FILE": str(path), "TASKRAFT_METRICS_REQUIRE_TOKEN": "true"},
    )
    assert from_environment.auth_token_file == path
    assert from_environment.metrics_require_token
    default = settings_from_arguments(_serve_arguments(*BASE, "--data-dir", str(tmp_path)), {})
    assert default.auth_token_file is None and not default.metrics_require_token


def test_metrics_require_token_needs_a_token_file(tmp_path: Path) -> None:
    arguments = _serve_arguments(*BASE, "--data-dir", str(tmp_path), "--metrics-require-token")
    with pytest.raises(ConfigurationError, match="needs auth_token_file"):
        settings_from_arguments(arguments, {})


def test_print_config_shows_the_path_never_the_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"ops admin {ADMIN_TOKEN}\n")
    for name in list(os.environ):
        if name.startswith("TASKRAFT_"):
            monkeypatch.delenv(name)
    arguments = _serve_arguments(
        *BASE, "--data-dir", str(tmp_path), "--auth-token-file", str(path), "--print-config"
    )
    assert run_serve(arguments) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("auth_token_file "))
    assert line.split()[1:] == [str(path), "[flag]"]
    assert "metrics_require_token" in out
    assert ADMIN_TOKEN not in out
    assert resolve_arguments(arguments, {})["auth_token_file"] == path
