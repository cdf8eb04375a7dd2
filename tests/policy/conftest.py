"""Fixtures of the policy tests (builders live in `support.py`)."""

from __future__ import annotations

import pytest

from controller import jobs

from .support import NOW, PASSPHRASE, FleetRepo


@pytest.fixture
def repo() -> FleetRepo:
    """A fresh repository that passes every default policy."""
    return FleetRepo()


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> str:
    """The keystore passphrase for in-process `jobs.apply` and `fleetpki apply`."""
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    return PASSPHRASE


@pytest.fixture
def fixed_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's clock, pinned to NOW."""
    monkeypatch.setattr(jobs, "now_utc", lambda: NOW)
