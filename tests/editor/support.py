"""Paths and a CLI runner shared by the editor/CI integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_REPO = ROOT / "examples" / "fleet-repo"
POLICIES = ROOT / "policies"
SCHEMA_DIR = ROOT / "docs" / "schema"
CI_DIR = ROOT / "examples" / "ci"
BIN = os.path.dirname(sys.executable)


def env_with_bin() -> dict[str, str]:
    """The environment with this interpreter's bin directory (where `fleetpki` is) first."""
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
            "COLUMNS": "200"}


def fleetpki(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the `fleetpki` console script of this venv (or the module, if it is not there)."""
    script = Path(BIN) / "fleetpki"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "controller.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=env_with_bin(), capture_output=True,
                          text=True, check=False, timeout=300)
