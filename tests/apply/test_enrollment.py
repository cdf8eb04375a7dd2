"""Fleets with `spec.enrollment`: devices declare no key, enroll one over EST, and keep it.

The planner issues nothing for a device awaiting enrollment; once enrolled, renewals (due, or a
changed declaration) re-certify the enrolled key, since fleetpki never holds that private key.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from controller import jobs
from controller.apply.executor import Executor
from controller.pki import keys
from controller.servers.est import find_device, issue

pytestmark = pytest.mark.usefixtures("inventory_backend")  # on SQLite and on PostgreSQL
REPO = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root}
spec: {type: root, subject: {commonName: Enrollment Root}, pathLength: 0}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: device-keys}
spec:
  keyGeneration: device
  duration: 2160h
  subject: {commonName: "{{ device.id }}", organization: "{{ device.labels.org }}"}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: field}
spec:
  issuerRef: {name: root}
  profileRef: {name: device-keys}
  enrollment: {bootstrap: secret}
  devices: [{id: unit-1, labels: {org: ACME}}, {id: unit-2, labels: {org: ACME}}]
"""


def csr_for(device: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, device)])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(
        key, keys.signature_hash(key))


@pytest.fixture
def enrolled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> tuple[Path, jobs.StateDir, ec.EllipticCurvePrivateKey]:
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", "test-passphrase")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "fleet.yaml").write_text(REPO)
    state = jobs.StateDir.resolve(tmp_path / "state")
    now = jobs.now_utc()
    report = jobs.apply(repo, state, now, write_status=False)
    assert report.result.done == {"create-ca": 1, "publish-crl": 1}  # nothing to issue yet
    device_key = ec.generate_private_key(ec.SECP256R1())
    declaration = jobs.load(repo)
    with state.inventory() as inventory:
        executor = Executor(declaration.desired, inventory, state.keystore(), now)
        issue(executor, inventory, find_device(declaration.desired, "unit-1", "field"),
              csr_for("unit-1", device_key), now)
    return repo, state, device_key


def active_key(state: jobs.StateDir, device: str) -> bytes:
    with state.inventory() as inventory:
        record = inventory.active_device("field", device)
    assert record is not None
    public = x509.load_der_x509_certificate(record.der).public_key()
    return keys.public_key_to_pem(keys.supported_public_key(public))


def test_enrolled_device_is_converged_and_the_other_awaits(
        enrolled: tuple[Path, jobs.StateDir, ec.EllipticCurvePrivateKey]) -> None:
    repo, state, _ = enrolled
    assert jobs.plan(repo, state, jobs.now_utc()).actions == ()


def test_renewal_recertifies_the_enrolled_key(
        enrolled: tuple[Path, jobs.StateDir, ec.EllipticCurvePrivateKey]) -> None:
    repo, state, device_key = enrolled
    later = jobs.now_utc() + timedelta(days=80)  # inside the 30-day renewal window of 90 days
    report = jobs.apply(repo, state, later, write_status=False)
    assert report.result.done.get("renew") == 1 and "issue" not in report.result.done
    assert active_key(state, "unit-1") == keys.public_key_to_pem(device_key.public_key())


def test_declaration_change_recertifies_the_enrolled_key(
        enrolled: tuple[Path, jobs.StateDir, ec.EllipticCurvePrivateKey]) -> None:
    repo, state, device_key = enrolled
    (repo / "fleet.yaml").write_text(REPO.replace("org: ACME}}, {id: unit-2",
                                                  "org: Initech}}, {id: unit-2"))
    planned = jobs.plan(repo, state, jobs.now_utc())
    assert [(a.action, a.device) for a in planned.actions if a.kind == "DeviceFleet"] == [
        ("renew", "unit-1")]
    jobs.apply(repo, state, jobs.now_utc(), write_status=False)
    with state.inventory() as inventory:
        record = inventory.active_device("field", "unit-1")
    assert record is not None
    subject = x509.load_der_x509_certificate(record.der).subject.rfc4514_string()
    assert "O=Initech" in subject
    assert active_key(state, "unit-1") == keys.public_key_to_pem(device_key.public_key())
