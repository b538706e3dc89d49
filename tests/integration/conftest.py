"""Fixtures of the integration tests: `clusters` starts real `taskraft serve` processes.

Every cluster a test starts is stopped when the test ends, whatever happened; when the test
failed (or its setup did), the tail of each node's log is added to the test's report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from process_cluster import CLUSTERS_KEY, ClusterFactory, log_tails

from taskraft.local_cluster import LocalCluster


@pytest.fixture
def clusters(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClusterFactory]:
    started: list[LocalCluster] = []
    request.node.stash[CLUSTERS_KEY] = started
    factory = ClusterFactory(tmp_path, started)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        started: list[LocalCluster] = item.stash.get(CLUSTERS_KEY, [])
        for title, text in log_tails(started):
            report.sections.append((title, text))
    return report
