"""The `setup` fixture of the release tests: a fleet repository, state and CLI in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.releases.support import Setup


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps messages at the console width
    return Setup(tmp_path, monkeypatch)
