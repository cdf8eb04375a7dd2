"""`fleetpki operator` against the Kubernetes API emulator: objects in, `.status` out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.kube_emulator import RunningEmulator, wait_for
from tests.kube_objects import (
    authority,
    fleet,
    is_ready,
    profile,
    running_operator,
)

NS = "fleet-demo"
FLEETS = "fleetpki.io/v1alpha1/devicefleets"
CAS = "fleetpki.io/v1alpha1/certificateauthorities"
PASSPHRASE = "operator-tests-passphrase"


@pytest.fixture(autouse=True)
def environment(kube_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig))
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)


def objects(kube: RunningEmulator, devices: list[str], **spec: Any) -> None:
    for body in (authority(NS), profile(NS), fleet(NS, devices, **spec)):
        kube.create(body)


def test_a_fleet_converges_and_status_follows_changes(kube_emulator: RunningEmulator,
                                                      tmp_path: Path) -> None:
    objects(kube_emulator, ["s-1", "s-2", "s-3"])
    with running_operator(tmp_path / "state", (NS,)):
        sensors = wait_for(lambda: (f := kube_emulator.get(FLEETS, NS, "sensors"))
                           and is_ready(f) and f, timeout=60)
        assert sensors["status"]["devices"]["active"] == 3
        assert sensors["status"]["observedGeneration"] == sensors["metadata"]["generation"]
        ca = kube_emulator.get(CAS, NS, "devices-ca")
        assert is_ready(ca) and ca["status"]["certificate"]["serial"]
        assert ca["status"]["crl"]["number"] >= 1
        secrets = [s for s in kube_emulator.kube.objects if "secrets" in str(s)]
        assert secrets, "the CA key is kept in a Secret"
