"""Fixtures shared by test directories: `kube_emulator` (tests/stores, tests/operator), and
`inventory_backend`, which runs a test on SQLite and on a real PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.api import devices as devices_module
from controller.plan import planner
from tests.kube_emulator import RunningEmulator
from tests.postgres import REQUIRE_ENV, Cluster, server_bindir

DATABASE_ENV = "FLEETPKI_DATABASE_URL"


@pytest.fixture
def kube_emulator(tmp_path: Path) -> Iterator[RunningEmulator]:
    """A fresh, empty Kubernetes API (kmock's emulator, see tests/kube_emulator.py) on a free
    loopback port, served by a background thread; stopped (thread joined) on teardown."""
    with RunningEmulator(tmp_path / "kube") as running:
        yield running


@pytest.fixture(autouse=True)
def _no_outside_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a database from the environment the tests run in: only `inventory_backend`'s."""
    monkeypatch.delenv(DATABASE_ENV, raising=False)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for the session (skips the test without the server
    binaries, unless FLEETPKI_REQUIRE_POSTGRES=1)."""
    bindir = server_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(message)
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def inventory_backend(request: pytest.FixtureRequest,
                      monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The test once on the state directory's SQLite file (None) and once on a fresh
    PostgreSQL database (its URL), which $FLEETPKI_DATABASE_URL then selects."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres").database()
    monkeypatch.setenv(DATABASE_ENV, url)
    return url


def _calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
           noted: Callable[..., str]) -> list[str]:
    """Each call of `module.name` (still made), as `noted` of its arguments, in order."""
    calls: list[str] = []
    real = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(noted(*args, **kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.fixture
def validated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the device rows validated into `Device` models, in order."""
    return _calls(monkeypatch, devices_module, "_validate",
                  lambda item, raw, *rest: str(raw.get("id")))


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the devices the planner renders (calls `device_intent` for)."""
    return _calls(monkeypatch, planner, "device_intent", lambda fleet, profile, dev, *rest: dev.id)


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The formats of device texts parsed into rows (whole), in order."""
    return _calls(monkeypatch, devices_module, "parse_device_rows", lambda text, fmt: fmt)
