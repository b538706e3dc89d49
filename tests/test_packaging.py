"""Packaging checks: both import packages install, and nothing shadows the stdlib."""

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_operator_is_the_standard_library_module() -> None:
    import operator

    assert hasattr(operator, "itemgetter")


def test_operator_is_stdlib_even_from_the_repo_root() -> None:
    # With the repository root first on sys.path, the operator/ folder must not
    # shadow the standard library (it has no __init__.py).
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(hasattr(operator, 'itemgetter'))"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "True"


def test_both_packages_import() -> None:
    taskraft = importlib.import_module("taskraft")
    taskraft_operator = importlib.import_module("taskraft_operator")
    assert Path(taskraft.__file__ or "").parent == REPO_ROOT / "node" / "taskraft"
    assert (
        Path(taskraft_operator.__file__ or "").parent
        == REPO_ROOT / "operator" / "taskraft_operator"
    )


def test_version_matches_pyproject() -> None:
    import taskraft

    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        pyproject = tomllib.load(f)
    assert taskraft.__version__ == pyproject["project"]["version"]
