"""The pure classification: states, weak keys and chains, with certificates made here."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from controller.discovery.classify import Known, Sighting, classify, summary
from controller.pki.certificates import certificate_fingerprint

NOW = datetime(2030, 1, 1, tzinfo=UTC)
WINDOW = timedelta(days=30)
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def make(name: str, key: Key, issuer: tuple[x509.Certificate, Key] | None = None, *,
         days: int = 365, digest: hashes.HashAlgorithm | None = None) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(signer_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=400))
            .not_valid_after(NOW + timedelta(days=days))
            .sign(signer_key, digest or hashes.SHA256()))


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = make("root", root_key)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make("issuing", ca_key, (root, root_key))
    return {"root": root, "ca": ca, "ca_key": ca_key}


def known(certificate: x509.Certificate, state: str = "active") -> Known:
    return Known("device", "sensors", "dev-1", state, certificate_fingerprint(certificate),
                 "keyCompromise" if state == "revoked" else None)


def run(certificate: x509.Certificate, pki: dict, inventory: dict[str, Known],
        chain: tuple[x509.Certificate, ...] | None = None) -> tuple[str, tuple[str, ...]]:
    sighting = (Sighting("tls:h:1", (certificate, *chain), presented_chain=True)
                if chain is not None else Sighting("file:x", (certificate,)))
    (finding,) = classify(sighting, lambda serial: inventory.get(serial), [pki["root"], pki["ca"]],
                          [pki["root"]], NOW, WINDOW)
    return finding.state, finding.states


def serial(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "040x")


def test_states(pki: dict) -> None:
    issuer = (pki["ca"], pki["ca_key"])
    device = make("dev-1", ec.generate_private_key(ec.SECP256R1()), issuer)
    recorded = {serial(device): known(device)}
    assert run(device, pki, recorded, (pki["ca"],)) == ("managed", ("managed",))
    assert run(device, pki, recorded, ()) == ("wrong-chain", ("wrong-chain",))
    assert run(device, pki, {serial(device): known(device, "revoked")})[0] == "revoked"
    # our CA signed it but the inventory does not know it; and a forged twin of a known serial
    unknown = make("dev-9", ec.generate_private_key(ec.SECP256R1()), issuer)
    assert run(unknown, pki, {})[0] == "unknown"
    twin = make("dev-1", ec.generate_private_key(ec.SECP256R1()), issuer)
    assert run(twin, pki, {serial(twin): known(device)})[0] == "unknown"
    soon = make("dev-2", ec.generate_private_key(ec.SECP256R1()), issuer, days=10)
    assert run(soon, pki, {serial(soon): known(soon)}) == ("expiring", ("expiring",))
    gone = make("dev-3", ec.generate_private_key(ec.SECP256R1()), issuer, days=-1)
    assert run(gone, pki, {serial(gone): known(gone, "revoked")}) == ("revoked",
                                                                      ("revoked", "expired"))


@pytest.mark.parametrize(("key", "digest", "weak"), [
    (rsa.generate_private_key(65537, 2048), None, True),
    (rsa.generate_private_key(65537, 3072), None, False),
    (ec.generate_private_key(ec.SECP224R1()), None, True),
    (ec.generate_private_key(ec.SECP256R1()), None, False),
])
def test_weak_keys_and_signatures(pki: dict, key: Key, digest: hashes.HashAlgorithm | None,
                                  weak: bool) -> None:
    certificate = make("old", key, digest=digest)
    state, states = run(certificate, pki, {serial(certificate): known(certificate)})
    assert ("weak" in states) is weak


def test_sha1_signature_is_weak(pki: dict, tmp_path: Path) -> None:
    """cryptography no longer signs with SHA-1: openssl makes the certificate."""
    openssl = shutil.which("openssl")
    assert openssl is not None
    subprocess.run([openssl, "req", "-x509", "-sha1", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", tmp_path / "k.pem", "-out",
                    tmp_path / "c.pem", "-subj", "/CN=old", "-days", "3650"],
                   check=True, capture_output=True)
    certificate = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    finding = classify(Sighting("file:c.pem", (certificate,)), lambda s: None, [], [],
                       datetime.now(UTC), WINDOW)[0]
    assert finding.states == ("unknown", "weak")
    assert "weak signature: SHA1" in finding.problems


def test_unreadable_and_summary(pki: dict) -> None:
    findings = classify(Sighting("file:x.p12", error="wrong passphrase"), lambda s: None, [], [],
                        NOW, WINDOW)
    assert [(f.state, f.problems) for f in findings] == [("unreadable", ("wrong passphrase",))]
    assert summary(findings)["unreadable"] == 1 and summary(findings)["managed"] == 0
