"""Every status document git-only mode writes validates against the status models
(controller/api/status.py), which generate the CRDs' status schema: writer and schema cannot
drift. Each scenario adds a part of the status the others do not reach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from controller.api.status import STATUS_KINDS

from .support import Applied, Cli, commit_all, dump_yaml, status_files

API = "fleetpki.io/v1alpha1"


def check_all(repo: Path) -> dict[str, dict[str, Any]]:
    """Validate every status file; returns them (by path) for scenario-specific asserts."""
    files = status_files(repo)
    assert files, "the status branch has files"
    for path, document in files.items():
        kind = document["kind"]
        assert path == f"status/{kind}/{document['metadata']['name']}.yaml"
        try:
            STATUS_KINDS[kind].model_validate(document["status"])
        except ValidationError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{path} does not match the {kind} status model:\n{exc}")
    return files


def external_ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Maker IDevID CA")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                  critical=True)
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_status_of_the_applied_example_matches_the_models(applied_example: Applied) -> None:
    files = check_all(applied_example.repo)
    assert {d["kind"] for d in files.values()} == {"CertificateAuthority", "DeviceFleet",
                                                   "CertificateProfile", "SigningProfile",
                                                   "Release"}
    sensors = files["status/DeviceFleet/sensors.yaml"]["status"]
    assert sensors["devices"]["active"] == 1000
    ca = files["status/CertificateAuthority/devices-ca.yaml"]["status"]
    assert {"certificate", "crl", "conditions", "observedCommit"} <= set(ca)
    release = files["status/Release/sensor-fw-1.4.2.yaml"]["status"]
    assert release["state"] == "Signed" and release["signature"]["state"] == "active"
    firmware = files["status/SigningProfile/firmware.yaml"]["status"]
    assert firmware["certificate"]["serial"] == release["signature"]["serial"]


def test_every_part_of_a_status_matches_the_models(applied_example: Applied, cli: Cli) -> None:
    """External CA, a fleet awaiting enrollment, policy warnings, a denied device (attention),
    a suspended fleet."""
    repo, state = applied_example
    dump_yaml(repo / "more.yaml",
              {"apiVersion": API, "kind": "CertificateAuthority", "metadata": {"name": "maker"},
               "spec": {"type": "external", "certificate": external_ca_pem()}},
              {"apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": "field"},
               "spec": {"issuerRef": {"name": "devices-ca"},
                        "profileRef": {"name": "gateway-csr"},
                        "enrollment": {"bootstrap": "secret"},
                        "devices": [{"id": "unit-1"}, {"id": "unit-2"}]}},
              {"apiVersion": API, "kind": "CertificatePolicy", "metadata": {"name": "house"},
               "spec": {"rules": [
                   {"name": "not-1002", "expression": "device.id != 'sensor-1002'",
                    "message": "sensor-1002 is not allowed"},
                   {"name": "not-1001", "action": "warn",
                    "expression": "device.id != 'sensor-1001'",
                    "message": "sensor-1001 is odd"}]}})
    csv = repo / "fleets" / "sensors.csv"
    csv.write_text(csv.read_text() + "sensor-1001,TS-100,bonn,\nsensor-1002,TS-100,bonn,\n")
    text = (repo / "fleets" / "gateways.yaml").read_text()
    (repo / "fleets" / "gateways.yaml").write_text(text.replace(
        "  devices:\n", "  suspend: true\n  devices:\n", 1))
    commit_all(repo, "more of everything")
    cli("apply", repo, "--state-dir", state, rc=None)
    files = check_all(repo)
    maker = files["status/CertificateAuthority/maker.yaml"]["status"]
    assert maker["certificate"]["external"] is True
    field = files["status/DeviceFleet/field.yaml"]["status"]
    assert field["devices"]["awaitingEnrollment"] >= 1
    sensors = files["status/DeviceFleet/sensors.yaml"]["status"]
    assert sensors["policyWarnings"] == ["house/not-1001: sensor-1001 is odd"]
    assert {a["device"] for a in sensors["attention"]} == {"sensor-1001", "sensor-1002"}
    gateways = files["status/DeviceFleet/gateways.yaml"]["status"]
    assert "Suspended" in {c["reason"] for c in gateways["conditions"]}


def test_kept_and_refused_statuses_match_the_models(applied_example: Applied, cli: Cli) -> None:
    """A mistake in the declaration (statuses kept, Stalled InvalidSpec), then a wrong
    passphrase (Failed)."""
    repo, state = applied_example
    path = repo / "fleets" / "gateways.yaml"
    path.write_text(path.read_text().replace("name: gateway-csr", "name: nope"))
    commit_all(repo, "a mistake")
    cli("apply", repo, "--state-dir", state, rc=1)
    stalled = check_all(repo)["status/DeviceFleet/gateways.yaml"]["status"]["conditions"]
    assert {"type": "Stalled", "status": "True", "reason": "InvalidSpec"}.items() <= \
        next(c for c in stalled if c["type"] == "Stalled").items()
    path.write_text(path.read_text().replace("name: nope", "name: gateway-csr"))
    (repo / "fleets" / "sensors.csv").write_text(
        (repo / "fleets" / "sensors.csv").read_text() + "sensor-1001,TS-100,bonn,\n")
    commit_all(repo, "fixed, and one more sensor")
    cli("apply", repo, "--state-dir", state, rc=1,
        env={"FLEETPKI_PASSPHRASE": "not-the-passphrase"})
    check_all(repo)
