"""ML-DSA end to end through apply: CAs, server-generated device keys, CRLs, exports.

The system OpenSSL (3.0) does not know ML-DSA, so signatures are checked with cryptography's
own verification (its bundled OpenSSL is >= 3.5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import mldsa

from controller import exports, jobs
from controller.pki.errors import PKIError

REPO = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: pq-root}
spec: {type: root, keyAlgorithm: ML-DSA-87, subject: {commonName: PQ Root}, pathLength: 1}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: pq-issuing}
spec:
  type: intermediate
  parentRef: {name: pq-root}
  keyAlgorithm: ML-DSA-65
  subject: {commonName: PQ Issuing}
  pathLength: 0
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: pq-device}
spec:
  keyAlgorithm: ML-DSA-44
  subject: {commonName: "{{ device.id }}"}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: pq}
spec:
  issuerRef: {name: pq-issuing}
  profileRef: {name: pq-device}
  devices: [{id: pq-1}, {id: pq-2}]
"""


@pytest.fixture
def applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, jobs.StateDir]:
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", "test-passphrase")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pq.yaml").write_text(REPO)
    state = jobs.StateDir(tmp_path / "state")
    report = jobs.apply(repo, state, jobs.now_utc(), write_status=False)
    assert report.result.done == {"create-ca": 2, "issue": 2, "publish-crl": 2}
    return repo, state


def test_mldsa_chain_verifies(applied: tuple[Path, jobs.StateDir], tmp_path: Path) -> None:
    _, state = applied
    with state.inventory() as inventory:
        exports.export_device_pem(inventory, state.keystore, "pq", "pq-1", tmp_path / "out")
    leaf = x509.load_pem_x509_certificate((tmp_path / "out/cert.pem").read_bytes())
    issuing = x509.load_pem_x509_certificate((tmp_path / "out/chain.pem").read_bytes())
    root = x509.load_pem_x509_certificate((tmp_path / "out/ca.pem").read_bytes())
    assert isinstance(leaf.public_key(), mldsa.MLDSA44PublicKey)
    assert isinstance(issuing.public_key(), mldsa.MLDSA65PublicKey)
    assert isinstance(root.public_key(), mldsa.MLDSA87PublicKey)
    leaf.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    key_pem = (tmp_path / "out/key.pem").read_bytes()
    assert b"PRIVATE KEY" in key_pem  # the server-generated ML-DSA key is exported too


def test_mldsa_crl_is_signed_by_the_ca(applied: tuple[Path, jobs.StateDir]) -> None:
    _, state = applied
    with state.inventory() as inventory:
        crl = x509.load_der_x509_crl(exports.crl_bytes(inventory, "pq-issuing", der=True))
        ca_record = inventory.active_ca("pq-issuing")
        assert ca_record is not None
        ca = x509.load_der_x509_certificate(ca_record.der)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.subject


def test_mldsa_pkcs12_export_is_a_clear_error(applied: tuple[Path, jobs.StateDir],
                                              tmp_path: Path) -> None:
    _, state = applied
    with state.inventory() as inventory, pytest.raises(PKIError, match="ML-DSA"):
        exports.export_device_p12(inventory, state.keystore, "pq", "pq-1", tmp_path / "p12",
                                  b"export-password")
