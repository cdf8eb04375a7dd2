"""Measure `fleetpki serve` on loopback: `python bench/servers.py [--ocsp N] [--enroll N]`.

Builds a throw-away repo (root + intermediate, a `keyGeneration: device` fleet whose device
keys are declared), applies it, starts `fleetpki serve` as a subprocess and measures, with one
keep-alive `http.client` connection each:
- OCSP POSTs for one certificate without a nonce (served from the response cache) and with a
  fresh nonce each time (signed per request);
- EST simpleenroll with one-time secrets (each an HMAC check, a signature and a commit).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from controller import jobs
from controller.pki import keys
from controller.servers.est import new_secret

CAS = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root}
spec: {type: root, subject: {commonName: Bench Root}, pathLength: 1}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: issuing}
spec: {type: intermediate, parentRef: {name: root}, subject: {commonName: Bench Issuing}}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: sensor}
spec: {keyGeneration: device, subject: {commonName: "{{ device.id }}"}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DeviceKeys = dict[str, ec.EllipticCurvePrivateKey]


def build(root: Path, devices: int) -> tuple[Path, jobs.StateDir, DeviceKeys]:
    repo, state = root / "repo", jobs.StateDir(root / "state")
    repo.mkdir()
    (repo / "cas.yaml").write_text(CAS)
    device_keys = {f"d{i}": ec.generate_private_key(ec.SECP256R1()) for i in range(devices)}
    lines = ["apiVersion: fleetpki.io/v1alpha1", "kind: DeviceFleet",
             "metadata: {name: bench}", "spec:", "  issuerRef: {name: issuing}",
             "  profileRef: {name: sensor}", "  devices:"]
    for device, key in device_keys.items():
        pem = keys.public_key_to_pem(key.public_key()).decode().replace("\n", "\\n")
        lines.append(f'    - {{id: {device}, publicKey: "{pem}"}}')
    (repo / "fleet.yaml").write_text("\n".join(lines) + "\n")
    jobs.apply(repo, state, jobs.now_utc(), write_status=False)
    return repo, state, device_keys


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ocsp", type=int, default=2000)
    parser.add_argument("--enroll", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("FLEETPKI_PASSPHRASE", "bench-passphrase")
    with tempfile.TemporaryDirectory(prefix="fleetpki-bench-") as temporary:
        root = Path(temporary)
        repo, state, device_keys = build(root, max(args.enroll, 1))
        with state.inventory() as inventory:
            issuing = inventory.active_ca("issuing")
            leaf = inventory.active_device("bench", "d0")
            assert issuing is not None and leaf is not None
            issuer_cert = x509.load_der_x509_certificate(issuing.der)
            leaf_cert = x509.load_der_x509_certificate(leaf.der)
            chain = b"".join(x509.load_der_x509_certificate(g.der).public_bytes(
                serialization.Encoding.PEM) for name in inventory.ca_names()
                for g in inventory.ca_generations(name))
            secrets: dict[str, str] = {}
            with inventory.transaction():
                for device in device_keys:
                    secrets[device], record = new_secret("bench", device, jobs.now_utc())
                    inventory.put_enrollment_secret(record)
        http_port, https_port = free_port(), free_port()
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "fleetpki"), "serve", str(repo), "--state-dir",
             str(state.path), "--http", f"127.0.0.1:{http_port}", "--https",
             f"127.0.0.1:{https_port}", "--tls-ca", "issuing"],
            stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", https_port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            rows = []
            connection = http.client.HTTPConnection("127.0.0.1", http_port)
            builder = ocsp.OCSPRequestBuilder().add_certificate(leaf_cert, issuer_cert,
                                                                 hashes.SHA1())
            plain = builder.build().public_bytes(serialization.Encoding.DER)
            for label, make in (("OCSP POST, no nonce (cached)", lambda: plain),
                                ("OCSP POST, fresh nonce (signed)", lambda: builder.add_extension(
                                    x509.OCSPNonce(os.urandom(16)), critical=False).build()
                                    .public_bytes(serialization.Encoding.DER))):
                bodies = [make() for _ in range(args.ocsp)]
                start = time.perf_counter()
                for body in bodies:
                    connection.request("POST", "/ocsp", body,
                                       {"Content-Type": "application/ocsp-request"})
                    reply = connection.getresponse()
                    reply.read()
                    assert reply.status == 200
                rows.append((label, args.ocsp, time.perf_counter() - start))
            context = ssl.create_default_context(cadata=chain.decode())
            tls = http.client.HTTPSConnection("127.0.0.1", https_port, context=context)
            csrs = []
            for device, key in list(device_keys.items())[:args.enroll]:
                csr = (x509.CertificateSigningRequestBuilder().subject_name(
                    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
                    .sign(key, hashes.SHA256()))
                auth = base64.b64encode(f"{device}:{secrets[device]}".encode()).decode()
                csrs.append((auth, base64.encodebytes(csr.public_bytes(
                    serialization.Encoding.DER))))
            start = time.perf_counter()
            for auth, body in csrs:
                tls.request("POST", "/.well-known/est/simpleenroll", body,
                            {"Content-Type": "application/pkcs10",
                             "Authorization": f"Basic {auth}"})
                reply = tls.getresponse()
                reply.read()
                assert reply.status == 200, reply.status
            rows.append(("EST simpleenroll (secret + issue)", len(csrs),
                         time.perf_counter() - start))
        finally:
            server.terminate()
            server.wait(10)
    print(f"{'operation':<36} {'n':>6} {'seconds':>8} {'rate':>10}")
    for label, count, seconds in rows:
        print(f"{label:<36} {count:>6} {seconds:>8.2f} {rate(count, seconds):>10}")


if __name__ == "__main__":
    main()
