"""`fleetpki lint` over an inventory built by a real apply, with deliberately bad data: two
devices declaring one public key, certificates shorter-lived than the expiry window, a clock
moved past their end, and key algorithms outside an allowed list."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controller import jobs
from controller.pki import keys
from tests.hierarchy import two_cas
from tests.policy.support import NOW, init_repo, invoke, show

CAS = two_cas("Lint", "duration: 2000h") + """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: short}
spec:
  keyGeneration: device
  duration: 480h
  subject: {commonName: "{{ device.id }}"}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: server-ed25519}
spec: {keyAlgorithm: Ed25519, subject: {commonName: "{{ device.id }}"}}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: legacy}
spec:
  issuerRef: {name: issuing}
  profileRef: {name: server-ed25519}
  devices: [{id: old-1}]
"""


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return keys.public_key_to_pem(key.public_key()).decode().replace("\n", "\\n")


@pytest.fixture
def applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            inventory_backend: str | None) -> tuple[Path, Path]:
    """(repository, state directory) after one apply at NOW, on SQLite and on PostgreSQL (the
    SQL checks of controller/stores/facts.py)."""
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", "lint-test-passphrase")
    monkeypatch.setattr(jobs, "now_utc", lambda: NOW)
    repo, state = tmp_path / "repo", tmp_path / "state"
    repo.mkdir()
    shared, own = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    devices = ", ".join(f'{{id: {device}, publicKey: "{pem(key)}"}}' for device, key in
                        (("twin-a", shared), ("twin-b", shared), ("single", own)))
    (repo / "cas.yaml").write_text(CAS)
    (repo / "sensors.yaml").write_text(
        "apiVersion: fleetpki.io/v1alpha1\nkind: DeviceFleet\nmetadata: {name: sensors}\n"
        f"spec:\n  issuerRef: {{name: issuing}}\n  profileRef: {{name: short}}\n"
        f"  devices: [{devices}]\n")
    init_repo(repo)
    invoke("apply", repo, "--state-dir", state)
    return repo, state


def lint(repo: Path, state: Path, *args: str, rc: int = 0) -> dict[str, Any]:
    result = invoke("lint", repo, "--state-dir", state, "-o", "json", *args, rc=rc)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def found(report: dict[str, Any], code: str) -> list[tuple[str, str | None, str]]:
    return sorted((f["object"], f["device"], f["severity"]) for f in report["findings"]
                  if f["code"] == code)


def test_findings_right_after_apply(applied: tuple[Path, Path]) -> None:
    report = lint(*applied)
    assert found(report, "shared-public-key") == [("DeviceFleet/sensors", "twin-a", "critical"),
                                                  ("DeviceFleet/sensors", "twin-b", "critical")]
    twin_a = next(f for f in report["findings"] if f["device"] == "twin-a"
                  and f["code"] == "shared-public-key")
    assert "sensors/twin-b" in twin_a["message"]
    # a 20-day profile is inside the default 30-day window; the legacy fleet's year is not
    assert found(report, "certificate-expiring") == [
        ("DeviceFleet/sensors", d, "warning") for d in ("single", "twin-a", "twin-b")]
    assert found(report, "ca-expiring") == [("CertificateAuthority/issuing", None, "warning")]
    assert not found(report, "weak-key") and not found(report, "certificate-expired")
    assert report["summary"] == {"critical": 2, "warning": 4, "info": 0}
    assert report["counts"] == {"ca-expiring": 1, "certificate-expiring": 3,
                                "shared-public-key": 2}
    assert report["checkedAt"] == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert set(report["findings"][0]) == {"code", "severity", "object", "device", "message"}
    assert report["findings"][0]["severity"] == "critical"  # most severe first


def test_a_later_clock_finds_expired_certificates_and_crls(
        applied: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "now_utc", lambda: NOW + timedelta(days=25))
    report = lint(*applied, "--fail-on", "critical", rc=1)
    assert found(report, "certificate-expired") == [
        ("DeviceFleet/sensors", d, "critical") for d in ("single", "twin-a", "twin-b")]
    assert found(report, "crl-expired") == [("CertificateAuthority/issuing", None, "critical"),
                                            ("CertificateAuthority/root", None, "critical")]
    assert not found(report, "certificate-expiring")
    # --max-age: the legacy fleet's certificate, 25 days old, is older than 10 days
    older = lint(*applied, "--max-age", "10d")
    assert ("DeviceFleet/legacy", "old-1", "info") in found(older, "certificate-too-old")


def test_key_algorithms_outside_the_allowed_list(applied: tuple[Path, Path]) -> None:
    # server-generated keys are named by the intent, device keys read from the certificate
    only_ec = lint(*applied, "--key-algorithm", "ECDSA-P256")
    assert found(only_ec, "weak-key") == [("DeviceFleet/legacy", "old-1", "critical")]
    only_ed = lint(*applied, "--key-algorithm", "Ed25519")
    assert [d for _, d, _ in found(only_ed, "weak-key")] == ["single", "twin-a", "twin-b"]
    assert any("has a ECDSA-P256 key (allowed: Ed25519)" in f["message"]
               for f in only_ed["findings"])


def test_text_output_and_exit_codes(applied: tuple[Path, Path]) -> None:
    repo, state = applied
    text = invoke("lint", repo, "--state-dir", state).stdout
    assert "critical shared-public-key" in text and "DeviceFleet/sensors twin-a:" in text
    assert text.rstrip().endswith("2 critical, 4 warning, 0 info finding(s)")
    invoke("lint", repo, "--state-dir", state, "--fail-on", "warning", rc=1)
    invoke("lint", repo, "--state-dir", state, "--expiring-within", "1d",
           "--ca-expiring-within", "1d", "--fail-on", "warning", rc=1)  # the shared key
    bad = invoke("lint", repo, "--state-dir", state, "--max-age", "soon", rc=2)
    assert "--max-age" in bad.stderr and "invalid duration 'soon'" in bad.stderr
    unknown = invoke("lint", repo, "--state-dir", state, "--key-algorithm", "RSA-1024", rc=2)
    assert "unknown key algorithm 'RSA-1024'" in unknown.stderr


def test_without_an_inventory(tmp_path: Path) -> None:
    result = invoke("lint", tmp_path, "--state-dir", tmp_path / "none", rc=1)
    assert result.stderr.startswith("error: no inventory in")


def test_the_fleet_status_lists_shared_keys(applied: tuple[Path, Path]) -> None:
    """Findings that need no threshold are on the fleet's status (`attention`)."""
    repo, _ = applied
    status = show(repo, "fleetpki/status", "status/DeviceFleet/sensors.yaml")["status"]
    assert sorted((a["device"], a["reason"].split(":")[0]) for a in status["attention"]) == [
        ("twin-a", "lint shared-public-key"), ("twin-b", "lint shared-public-key")]
    legacy = show(repo, "fleetpki/status", "status/DeviceFleet/legacy.yaml")["status"]
    assert "attention" not in legacy
