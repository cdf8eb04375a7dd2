"""Fixtures shared by test directories: `kube_emulator` (tests/stores, tests/operator)."""

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
