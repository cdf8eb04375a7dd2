"""Fixtures of the operator tests: `kube_emulator`, an in-memory Kubernetes API over HTTP.

This directory has no `__init__.py`, unlike the other test directories, on purpose: tests/ is on
sys.path (pytest's rootdir-based "prepend" import mode), so a package `tests/operator/` would be
imported as `operator` and collide with the standard library's `operator` module (collection
fails with "'operator' is not a package"). Import shared helpers as `tests.kube_emulator`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube_emulator import RunningEmulator


@pytest.fixture
def kube_emulator(tmp_path: Path) -> Iterator[RunningEmulator]:
    """A fresh, empty Kubernetes API (kmock's emulator, see tests/kube_emulator.py) on a free
    loopback port, served by a background thread; stopped (thread joined) on teardown."""
    with RunningEmulator(tmp_path / "kube") as running:
        yield running
