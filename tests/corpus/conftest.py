"""Fixtures of the bad-input corpus: the base fleet repository applied once per session, and a
private copy of it per test (helpers live in `support.py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .support import (
    BASE,
    STATUS_BRANCH,
    Applied,
    git,
    hermetic_env,
    make_pem_values,
    write_tree,
)


@pytest.fixture(scope="session")
def pem_values() -> dict[str, str]:
    return make_pem_values()


@pytest.fixture(scope="session")
def applied_base(tmp_path_factory: pytest.TempPathFactory, pem_values: dict[str, str]) -> Applied:
    """The base fleet applied once (read-only: tests work on copies from `base_copy`)."""
    root = tmp_path_factory.mktemp("corpus-base")
    repo, state = root / "repo", root / "state"
    write_tree(BASE, repo, pem_values)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base fleet")
    fleet = Applied(repo, state, hermetic_env(root / "home"))
    result = fleet.fleetpki("apply", ".", "--state-dir", state)
    assert result.returncode == 0, f"base apply failed:\n{result.stdout}\n{result.stderr}"
    again = fleet.fleetpki("plan", ".", "--state-dir", state, "--detailed-exitcode")
    assert again.returncode == 0, f"base is not converged:\n{again.stdout}\n{again.stderr}"
    git(repo, "rev-parse", f"refs/heads/{STATUS_BRANCH}")
    return fleet


@pytest.fixture
def base_copy(applied_base: Applied, tmp_path: Path) -> Applied:
    """A private copy of the applied base: repository (with its status branch) and state."""
    repo, state = tmp_path / "repo", tmp_path / "state"
    shutil.copytree(applied_base.repo, repo, symlinks=True)
    shutil.copytree(applied_base.state, state, symlinks=True)
    return Applied(repo, state, hermetic_env(tmp_path / "home"))
