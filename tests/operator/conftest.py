"""The operator tests' fixture `kube_emulator` is shared, in tests/conftest.py.

This directory has no `__init__.py`, unlike the other test directories, on purpose: tests/ is on
sys.path (pytest's rootdir-based "prepend" import mode), so a package `tests/operator/` would be
imported as `operator` and collide with the standard library's `operator` module (collection
fails with "'operator' is not a package"). Import shared helpers as `tests.kube_emulator`.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.kube_emulator import RunningEmulator
from tests.kube_objects import PASSPHRASE


@pytest.fixture(autouse=True)
def operator_environment(kube_emulator: RunningEmulator,
                         monkeypatch: pytest.MonkeyPatch) -> RunningEmulator:
    """The emulator as the operator's cluster ($KUBECONFIG) and the keystore passphrase."""
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig))
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    return kube_emulator


@pytest.fixture
def api(kube_emulator: RunningEmulator) -> client.ApiClient:
    return kube_emulator.api_client()
