"""Certificates made by forked signing workers (controller/apply/signing.py, parallel.py).

They must chain and pass `openssl verify -x509_strict`, be committed in plan order, and be the
very certificates the in-process path makes from the same inputs: same TBSCertificate bytes
(serial included, when given the same serial); only the (randomised) ECDSA signature differs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from controller import jobs, parallel
from controller.apply import executor as executor_module
from controller.apply import signing
from controller.apply.executor import Executor
from controller.pki import certificates as certs
from controller.pki import keys

CAS = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root}
spec: {type: root, subject: {commonName: Signing Root}, pathLength: 1}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: issuing}
spec:
  type: intermediate
  parentRef: {name: root}
  subject: {commonName: Signing Issuing, organization: Tëst Ünïcode}
  pathLength: 0
  crl: {distributionPoint: "http://crl.example/issuing.crl"}
  ocsp: {url: "http://ocsp.example"}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: own-keys}
spec:
  keyGeneration: device
  usages: [digital signature, key agreement, client auth, server auth]
  subject: {commonName: "{{ device.id }}", organization: "Zürich Sensors"}
  subjectAltNames:
    dnsNames: ["{{ device.id }}.devices.example"]
    uris: ["urn:test:{{ device.id }}"]
    ipAddresses: ["10.0.0.1"]
    emailAddresses: ["{{ device.id }}@devices.example"]
  extensions: [{oid: 1.3.6.1.4.1.55555.1, value: "{{ device.labels.site }}"}]
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: server-keys}
spec:
  keyGeneration: server
  subject: {commonName: "{{ device.id }}"}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: server-keys}
spec:
  issuerRef: {name: issuing}
  profileRef: {name: server-keys}
  devices: [%s]
"""


def own_keys_fleet(count: int) -> str:
    lines = ["---", "apiVersion: fleetpki.io/v1alpha1", "kind: DeviceFleet",
             "metadata: {name: own-keys}", "spec:", "  issuerRef: {name: issuing}",
             "  profileRef: {name: own-keys}", "  devices:"]
    for number in range(count):
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        pem = keys.public_key_to_pem(public).decode().replace("\n", "\\n")
        lines.append(f'    - {{id: d{number:03d}, labels: {{site: "Straße {number}"}}, '
                     f'publicKey: "{pem}"}}')
    return "\n".join(lines) + "\n"


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers for any number of certificates, small batches (several per worker)."""
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", "test-passphrase")
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")
    monkeypatch.setattr(parallel, "MIN_PARALLEL", 1)
    monkeypatch.setattr(executor_module, "BATCH", 4)
    monkeypatch.setattr(parallel.threading, "active_count", lambda: 1)  # threads other tests left
    assert parallel.worker_count(10) == 2


@pytest.mark.usefixtures("inventory_backend")  # forked workers open their own connections
def test_worker_certificates_verify_and_match_the_in_process_path(
        two_workers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, state = tmp_path / "repo", jobs.StateDir.resolve(tmp_path / "state")
    repo.mkdir()
    servers = ", ".join(f"{{id: s{n}}}" for n in range(9))
    (repo / "fleet.yaml").write_text(CAS % servers + own_keys_fleet(23))
    now = jobs.now_utc()
    report = jobs.apply(repo, state, now, write_status=False)
    assert report.result.done == {"create-ca": 2, "issue": 32, "publish-crl": 2}

    with state.inventory() as inventory:
        chain = {name: x509.load_der_x509_certificate(inventory.active_ca(name).der)  # type: ignore[union-attr]
                 for name in ("root", "issuing")}
        made = {(r.owner, r.device): r for fleet in ("own-keys", "server-keys")
                for r in inventory.device_records(fleet)}
        assert len(made) == 32
        keystore = state.keystore()
        for (fleet, device), record in made.items():
            certificate = x509.load_der_x509_certificate(record.der)
            assert certificate.subject.rfc4514_string().startswith(f"CN={device}")
            if fleet == "server-keys":  # the wrapped key is the certificate's key
                private = keystore.unwrap_device_key(record.serial, record.key_blob or b"")
                assert keys.public_key_fingerprint(private.public_key()) == \
                    keys.public_key_fingerprint(certificate.public_key())
        files = []
        for number, record in enumerate(made.values()):
            path = tmp_path / f"{number}.pem"
            path.write_bytes(x509.load_der_x509_certificate(record.der).public_bytes(
                Encoding.PEM))
            files.append(str(path))
        (tmp_path / "root.pem").write_bytes(certs.certificate_to_pem(chain["root"]))
        (tmp_path / "issuing.pem").write_bytes(certs.certificate_to_pem(chain["issuing"]))
        verified = subprocess.run(
            ["openssl", "verify", "-x509_strict", "-CAfile", str(tmp_path / "root.pem"),
             "-untrusted", str(tmp_path / "issuing.pem"), *files],
            capture_output=True, text=True)
        assert verified.returncode == 0, verified.stdout + verified.stderr

        # the same work in this process, given the workers' serials, makes the same TBS bytes
        work = [a for a in report.plan.actions if a.action == "issue" and a.name == "own-keys"]
        serials = iter(int(made[("own-keys", a.device or "")].serial, 16) for a in work)
        monkeypatch.setattr(certs, "random_serial", lambda: next(serials))
        monkeypatch.setenv(parallel.WORKERS_ENV, "0")
        runner = Executor(jobs.load(repo).desired, inventory, keystore, now)
        here = [r for batch in signing.records(runner, work, 5) for r in batch]
    assert [r.device for r in here] == [a.device for a in work]
    for record in here:
        theirs = made[("own-keys", record.device)]
        assert x509.load_der_x509_certificate(record.der).tbs_certificate_bytes == \
            x509.load_der_x509_certificate(theirs.der).tbs_certificate_bytes
        assert (record.intent, record.renew_at, record.not_after, record.fingerprint != "") == \
            (theirs.intent, theirs.renew_at, theirs.not_after, True)


def test_no_workers_when_threads_run_or_work_is_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")
    monkeypatch.setattr(parallel.threading, "active_count", lambda: 1)  # threads other tests left
    assert parallel.worker_count(parallel.MIN_PARALLEL - 1) == 0
    assert parallel.worker_count(parallel.MIN_PARALLEL) == 2
    monkeypatch.setenv(parallel.WORKERS_ENV, "1")
    assert parallel.worker_count(10 * parallel.MIN_PARALLEL) == 0
    monkeypatch.setattr(parallel.threading, "active_count", lambda: 2)
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")
    assert parallel.worker_count(10 * parallel.MIN_PARALLEL) == 0
