"""Fixtures of the integration tests (helpers live in `support.py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .support import PASSPHRASE, Applied, Cli, base_env, copy_example


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The CLI in-process (fast)."""
    return Cli(base_env(tmp_path / "home"), tmp_path, in_process=True)


@pytest.fixture
def cli_process(tmp_path: Path) -> Cli:
    """The CLI in a subprocess, exactly as a user runs it."""
    return Cli(base_env(tmp_path / "home"), tmp_path)


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> str:
    """For in-process `controller.jobs` calls."""
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    return PASSPHRASE


@pytest.fixture(scope="session")
def applied_example_template(tmp_path_factory: pytest.TempPathFactory) -> Applied:
    """The example applied once per session (read-only: tests copy it with `applied_example`)."""
    base = tmp_path_factory.mktemp("example")
    repo = copy_example(base / "repo")
    state = base / "state"
    Cli(base_env(base / "home"), base)("apply", repo, "--state-dir", state)
    return Applied(repo, state)


@pytest.fixture
def applied_example(applied_example_template: Applied, tmp_path: Path) -> Applied:
    """A private copy of the applied example (repo with its status branch, and state)."""
    repo = tmp_path / "repo"
    state = tmp_path / "state"
    shutil.copytree(applied_example_template.repo, repo, symlinks=True)
    shutil.copytree(applied_example_template.state, state, symlinks=True)
    return Applied(repo, state)
