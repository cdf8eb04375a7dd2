"""The code base stays lint- and type-clean: CI runs these as part of the test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", "controller", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run("mypy", "controller")
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers_hold() -> None:
    """The import-linter contracts in pyproject.toml: models, PKI, planning and policy import
    no store, source, status writer, server, CLI, operator, git, SQLite or web library; the
    operator and the CLI reach the stores only through the job layer."""
    script = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(script)], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "2 kept, 0 broken" in result.stdout, \
        result.stdout + result.stderr
