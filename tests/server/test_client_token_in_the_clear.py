"""The client warns, once, before a token crosses a network without TLS.

A bearer token sent in the clear is as good as published to whoever sees the traffic; the
client cannot know whether the network is trusted, so it says so once per client, and never
for this machine's own loopback addresses or a client that uses TLS.
"""

from __future__ import annotations

import logging

import pytest

from taskraft.client import AsyncClient
from taskraft.tls import client_context

TOKEN = "t" * 40


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "without TLS" in record.getMessage()
    ]


def test_a_token_to_another_host_without_tls_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = AsyncClient(["10.1.2.3:7100"], token=TOKEN)
    with caplog.at_level(logging.WARNING, logger="taskraft.client.async_client"):
        client._warn_if_token_in_the_clear("10.1.2.3:7100")
        client._warn_if_token_in_the_clear("queues.example.com:7100")
    (message,) = warnings_of(caplog)
    assert "10.1.2.3:7100" in message and TOKEN not in message


@pytest.mark.parametrize(
    "address", ["127.0.0.1:7100", "localhost:7100", "[::1]:7100", "127.8.9.10:7100"]
)
def test_loopback_is_not_warned_about(caplog: pytest.LogCaptureFixture, address: str) -> None:
    client = AsyncClient([address], token=TOKEN)
    with caplog.at_level(logging.WARNING, logger="taskraft.client.async_client"):
        client._warn_if_token_in_the_clear(address)
    assert warnings_of(caplog) == []


def test_no_warning_with_tls_or_without_a_token(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="taskraft.client.async_client"):
        AsyncClient(
            ["10.1.2.3:7100"], token=TOKEN, tls=client_context()
        )._warn_if_token_in_the_clear("10.1.2.3:7100")
        AsyncClient(["10.1.2.3:7100"])._warn_if_token_in_the_clear("10.1.2.3:7100")
    assert warnings_of(caplog) == []
