"""EST enrollments gated by policy, and IDevID bootstrap (RFC 7030 3.3.2) with curl and openssl,
on a repository of their own: an enrollment fleet with a device a deny rule forbids, and a
`bootstrap: idevid` fleet trusting a manufacturer CA (`type: external`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from controller import jobs
from controller.pki import keys
from controller.sources.repo import load_repository
from tests.servers.conftest import CAS, Env, Running, run
from tests.servers.test_est import certificate_from, csr, post, secret, verify

FLEETS = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {{name: maker}}
spec:
  type: external
  certificate: "{maker}"
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {{name: factory}}
spec:
  issuerRef: {{name: issuing}}
  profileRef: {{name: sensor}}
  enrollment:
    bootstrap: idevid
    idevid: {{issuerRef: {{name: maker}}, identity: serialNumber}}
  devices: [{{id: SN-1001}}, {{id: SN-1002}}]
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {{name: field}}
spec:
  issuerRef: {{name: issuing}}
  profileRef: {{name: sensor}}
  enrollment: {{bootstrap: secret}}
  devices: [{{id: ok-1}}, {{id: blocked-1}}]
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificatePolicy
metadata: {{name: quarantine}}
spec:
  selector: {{fleets: [field]}}
  rules:
    - name: not-blocked
      expression: device.id != "blocked-1"
      message: blocked-1 is quarantined
"""


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = jobs.now_utc()
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                False, False), critical=True)
                   .sign(key, hashes.SHA256()))
    return certificate, key


def _idevid(env: Env, name: str, serial: str, issuer: x509.Certificate,
            issuer_key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    """(certificate PEM, key PEM) of a manufacturer certificate with subject serialNumber."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = jobs.now_utc()
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([
                       x509.NameAttribute(x509.NameOID.COMMON_NAME, "Sensor"),
                       x509.NameAttribute(x509.NameOID.SERIAL_NUMBER, serial)]))
                   .issuer_name(issuer.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                                  critical=False)
                   .sign(issuer_key, hashes.SHA256()))
    (env.keys / f"{name}.key").write_bytes(keys.private_key_to_pem(key))
    return (env.pem(f"{name}.pem", certificate.public_bytes(Encoding.PEM)),
            env.keys / f"{name}.key")


@pytest.fixture(scope="module")
def idevid_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    os.environ["FLEETPKI_PASSPHRASE"] = "test-passphrase"
    base = tmp_path_factory.mktemp("idevid")
    env = Env(base / "repo", jobs.StateDir(base / "state"), base / "keys", base / "work")
    for directory in (env.repo, env.keys, env.work):
        directory.mkdir()
    maker, maker_key = _ca("Maker IDevID CA")
    (env.work / "maker.key").write_bytes(keys.private_key_to_pem(maker_key))
    pem = maker.public_bytes(Encoding.PEM).decode().replace("\n", "\\n")
    (env.repo / "cas.yaml").write_text(CAS)
    (env.repo / "fleets.yaml").write_text(FLEETS.format(maker=pem))
    env.pem("maker.pem", maker.public_bytes(Encoding.PEM))
    report = env.apply()
    assert report.result.done == {"create-ca": 2, "issue": 1, "publish-crl": 2}
    yield env
    del os.environ["FLEETPKI_PASSPHRASE"]


@pytest.fixture(scope="module")
def idevid_server(idevid_env: Env) -> Iterator[Running]:
    running = Running(idevid_env)
    yield running
    running.stop()


def _maker(env: Env) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    certificate = x509.load_pem_x509_certificate((env.work / "maker.pem").read_bytes())
    key = keys.load_private_key_pem((env.work / "maker.key").read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return certificate, key


def _new_key(env: Env, name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (env.keys / f"{name}.key").write_bytes(keys.private_key_to_pem(key))


def _enrolled_with_secret(server: Running, env: Env, fleet: str,
                          device: str) -> tuple[Path, Path]:
    """(certificate PEM, key PEM) of a fresh secret enrollment of `device` (a key of its own)."""
    name = f"{device}-own"
    _new_key(env, name)
    token = secret(env, device, fleet=fleet)
    status, body, _ = post(server, env, "/simpleenroll", csr(env, device, f"/CN={device}",
                                                             key=name),
                           "--user", f"{device}:{token}", name=name)
    assert status == "200", body.read_text()
    return certificate_from(env, body, name), env.keys / f"{name}.key"


def test_external_ca_is_planned_for_nothing(idevid_env: Env) -> None:
    plan = jobs.plan(idevid_env.repo, idevid_env.state, jobs.now_utc())
    assert not [a for a in plan.actions if a.name == "maker"]
    assert not plan.problems


def test_fleet_cannot_be_issued_by_an_external_ca(idevid_env: Env, tmp_path: Path) -> None:
    for source in idevid_env.repo.iterdir():
        (tmp_path / source.name).write_text(source.read_text())
    fleets = tmp_path / "fleets.yaml"
    fleets.write_text(fleets.read_text().replace(
        "metadata: {name: field}\nspec:\n  issuerRef: {name: issuing}",
        "metadata: {name: field}\nspec:\n  issuerRef: {name: maker}"))
    _, problems = load_repository(tmp_path)
    assert [p.field for p in problems] == ["spec.issuerRef.name"]
    assert "external" in problems[0].message


def test_policy_denies_an_est_enrollment(idevid_server: Running, idevid_env: Env,
                                         caplog: pytest.LogCaptureFixture) -> None:
    env = idevid_env
    for device in ("ok-1", "blocked-1"):
        _new_key(env, device)
    token = secret(env, "blocked-1", fleet="field")
    with caplog.at_level(logging.WARNING, logger="controller.servers.app"):
        status, body, _ = post(idevid_server, env, "/simpleenroll",
                               csr(env, "blocked-1", "/CN=blocked-1"), "--user",
                               f"blocked-1:{token}", name="blocked")
    assert status == "403"
    assert "quarantine/not-blocked: blocked-1 is quarantined" in body.read_text()
    assert "quarantine/not-blocked: blocked-1 is quarantined" in caplog.text
    token = secret(env, "ok-1", fleet="field")
    status, body, _ = post(idevid_server, env, "/simpleenroll", csr(env, "ok-1", "/CN=ok-1"),
                           "--user", f"ok-1:{token}", name="ok")
    assert status == "200", body.read_text()


def test_idevid_enrollment(idevid_server: Running, idevid_env: Env) -> None:
    env = idevid_env
    maker, maker_key = _maker(env)
    cert, key = _idevid(env, "idevid-1001", "SN-1001", maker, maker_key)
    _new_key(env, "SN-1001")
    request = csr(env, "SN-1001", "/CN=SN-1001")
    status, body, _ = post(idevid_server, env, "/simpleenroll", request, "--cert", cert,
                           "--key", key, name="idevid")
    assert status == "200", body.read_text()
    pem = certificate_from(env, body, "SN-1001-est")
    verify(env, pem)
    issued = x509.load_pem_x509_certificate(pem.read_bytes())
    assert issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "SN-1001"
    with env.state.inventory() as inventory:
        record = inventory.active_device("factory", "SN-1001")
    assert record is not None and record.der == issued.public_bytes(Encoding.DER)
    # the enrolled key is kept: the next plan issues nothing more for the fleet
    plan = jobs.plan(env.repo, env.state, jobs.now_utc())
    assert not [a for a in plan.actions if a.name == "factory"]


def test_idevid_refusals(idevid_server: Running, idevid_env: Env,
                         caplog: pytest.LogCaptureFixture) -> None:
    env = idevid_env
    maker, maker_key = _maker(env)
    _new_key(env, "SN-9999")
    undeclared, undeclared_key = _idevid(env, "idevid-9999", "SN-9999", maker, maker_key)
    with caplog.at_level(logging.WARNING, logger="controller.servers.app"):
        status, body, _ = post(idevid_server, env, "/simpleenroll",
                               csr(env, "SN-9999", "/CN=SN-9999"), "--cert", undeclared,
                               "--key", undeclared_key, name="undeclared")
    assert status == "403" and "not a device declared" in body.read_text()
    assert "'SN-9999' is not a device declared in fleet 'factory'" in caplog.text

    other, other_key = _ca("Another Maker")  # not trusted: the TLS handshake may drop it
    foreign, foreign_key = _idevid(env, "foreign-1002", "SN-1002", other, other_key)
    _new_key(env, "SN-1002")
    request = csr(env, "SN-1002", "/CN=SN-1002")
    result = run("curl", "-sS", "--cacert", env.work / "bundle.pem", "--cert", foreign,
                 "--key", foreign_key, "--data-binary", f"@{request}", "-o", "/dev/null",
                 "-w", "%{http_code}",
                 f"{idevid_server.https}/.well-known/est/simpleenroll")
    assert result.returncode != 0 or result.stdout in ("401", "403"), result.stdout

    # a certificate of ours (not issued by the maker) is no IDevID either
    ours, ours_key = _enrolled_with_secret(idevid_server, env, "field", "ok-1")
    status, body, _ = post(idevid_server, env, "/simpleenroll", request, "--cert", ours,
                           "--key", ours_key, name="ours")
    assert status == "403" and "not an IDevID issued by 'maker'" in body.read_text()

    status, _, _ = post(idevid_server, env, "/simpleenroll", request, name="nocert")
    assert status == "401"
