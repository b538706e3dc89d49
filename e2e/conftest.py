"""Shared setup of the end-to-end tests: skip without a cluster, stop the story at a failure.

Every test of e2e/ skips, saying how to run it, unless KUBECONFIG is set, `kubectl cluster-info`
answers and Helm is found (e2e/.bin/helm from `make helm`, or `helm` on PATH). The tests of a
module are the steps of one story that build on each other: once a step fails, the later steps
of that module are skipped instead of failing for the same cause.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Generator
from pathlib import Path

import pytest

E2E_DIRECTORY = Path(__file__).resolve().parent
REPOSITORY = E2E_DIRECTORY.parent
HOW_TO_RUN = (
    "run it with `make e2e` and KUBECONFIG naming a cluster, e.g. kind: "
    "`kind create cluster --name taskraft && kind get kubeconfig --name taskraft > /tmp/kind.yaml "
    "&& export KUBECONFIG=/tmp/kind.yaml`; build and load the images first: "
    "`docker build -f node/Dockerfile -t taskraft:0.1.0 . && "
    "docker build -f operator/Dockerfile -t taskraft-operator:0.1.0 . && "
    "kind load docker-image --name taskraft taskraft:0.1.0 taskraft-operator:0.1.0`; "
    "Helm: e2e/.bin/helm (`make helm`) or helm on PATH"
)
CLUSTER_INFO_TIMEOUT_S = 30.0


def helm_path() -> str | None:
    """e2e/.bin/helm when it was built (`make helm`), else `helm` on PATH."""
    built = E2E_DIRECTORY / ".bin" / "helm"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    return shutil.which("helm")


def _why_not_runnable() -> str | None:
    if not os.environ.get("KUBECONFIG"):
        return "KUBECONFIG is not set"
    if shutil.which("kubectl") is None:
        return "kubectl is not on PATH"
    try:
        answer = subprocess.run(
            ["kubectl", "cluster-info"],
            capture_output=True,
            text=True,
            timeout=CLUSTER_INFO_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`kubectl cluster-info` did not answer within {CLUSTER_INFO_TIMEOUT_S:g} s"
    if answer.returncode != 0:
        lines = (answer.stderr.strip() or answer.stdout.strip()).splitlines()
        return f"`kubectl cluster-info` failed: {lines[-1] if lines else answer.returncode}"
    if helm_path() is None:
        return "Helm is not found"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if E2E_DIRECTORY in Path(str(item.path)).parents]
    if not ours:
        return
    problem = _why_not_runnable()
    if problem is None:
        return
    marker = pytest.mark.skip(reason=f"end-to-end test skipped: {problem}; {HOW_TO_RUN}")
    for item in ours:
        item.add_marker(marker)


_FAILED_STEP = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when in ("setup", "call") and item.parent is not None:
        item.parent.stash.setdefault(_FAILED_STEP, item.name)
    return report


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.parent is not None and _FAILED_STEP in item.parent.stash:
        pytest.skip(f"an earlier step of the story failed: {item.parent.stash[_FAILED_STEP]}")


@pytest.fixture(scope="session")
def helm() -> str:
    path = helm_path()
    assert path is not None, "checked at collection"
    return path
