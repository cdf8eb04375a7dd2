"""Fixtures for the API-layer tests: a writer for small repositories in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import MakeRepo, minimal_files, write_repo


@pytest.fixture
def make_repo(tmp_path: Path) -> MakeRepo:
    """`make_repo({"path": text, ...}, drop=("path",))`: the minimal repo with changes applied."""

    def make(changes: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> Path:
        files = minimal_files()
        files.update(changes or {})
        for name in drop:
            files.pop(name)
        return write_repo(tmp_path / "repo", files)

    return make
