"""Helpers for the deploy/ and examples/ tests: tools found on PATH, required in CI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
REQUIRE_ENV = "FLEETPKI_REQUIRE_KUBE"


def tool(name: str, override: str | None = None) -> str:
    """The tool's path; skipped when missing, a failure when FLEETPKI_REQUIRE_KUBE=1."""
    found = os.environ.get(override) if override else None
    found = found or shutil.which(name)
    if found is None:
        message = f"{name} is not installed"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)")
        pytest.skip(message)
    return found


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def objects(directory: Path) -> list[dict[str, Any]]:
    return [d for path in sorted(directory.glob("*.yaml")) for d in documents(path)
            if path.name != "kustomization.yaml"]


def find(items: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in items if d["kind"] == kind and d["metadata"]["name"] == name]
    return found
