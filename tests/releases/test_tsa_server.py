"""fleetpki's time-stamping authority over HTTP (RFC 3161 section 3.4): `fleetpki serve`
answers `POST /tsa/<profile>`, checked with OpenSSL's `ts` client as the independent side."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from controller.stores.releases import Releases
from tests.releases.support import OPENSSL, PASSPHRASE, Setup, needs_openssl, signing_profile

pytestmark = needs_openssl


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def served(setup: Setup) -> Iterator[str]:
    """The applied repository served over HTTP; its base URL."""
    setup.declare(signing_profile())
    setup.apply()
    port = free_port()
    environment = {**os.environ, "FLEETPKI_PASSPHRASE": PASSPHRASE}
    with open(setup.tmp / "serve.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", setup.repo,
                                   "--state-dir", setup.state.path, "--http",
                                   f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                  env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                root = urllib.request.urlopen(url + "/ca/root.pem", timeout=2).read()
                (setup.tmp / "root.pem").write_bytes(root)
                break
            except OSError:
                assert server.poll() is None, (setup.tmp / "serve.log").read_text()
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def ts(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, "ts", *map(str, args)], capture_output=True, text=True,
                          check=check)


def post(url: str, body: bytes) -> bytes:
    request = urllib.request.Request(url, body, {"Content-Type": "application/timestamp-query"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"] == "application/timestamp-reply"
        answer: bytes = response.read()
        return answer


def test_openssl_gets_and_verifies_a_timestamp(setup: Setup, served: str) -> None:
    data = setup.tmp / "firmware.bin"
    data.write_bytes(b"an artifact to timestamp\n" * 100)
    query, reply = setup.tmp / "q.tsq", setup.tmp / "r.tsr"
    ts("-query", "-data", data, "-sha256", "-cert", "-out", query)
    reply.write_bytes(post(served + "/tsa/tsa", query.read_bytes()))
    text = ts("-reply", "-in", reply, "-text").stdout
    assert "Status: Granted." in text and "Nonce: 0x" in text
    verified = ts("-verify", "-in", reply, "-queryfile", query, "-CAfile", setup.tmp / "root.pem")
    assert "Verification: OK" in verified.stdout
    verified = ts("-verify", "-in", reply, "-data", data, "-CAfile", setup.tmp / "root.pem")
    assert "Verification: OK" in verified.stdout
    data.write_bytes(b"another artifact\n")
    refused = ts("-verify", "-in", reply, "-data", data, "-CAfile", setup.tmp / "root.pem",
                 check=False)
    assert refused.returncode != 0 and "Verification: OK" not in refused.stdout

    # the TSA certificate was issued on the first request, recorded and audited; then reused
    with setup.state.reader() as inventory:
        (tsa,) = Releases(inventory).active("tsa")
    audit = (setup.state.path / "audit" / "audit.jsonl").read_text().splitlines()
    issued = [json.loads(line) for line in audit if '"SigningProfile/tsa"' in line]
    assert [r["serial"] for r in issued if r["action"] == "certificate.issued"] == [tsa.serial]
    sha384 = setup.tmp / "q384.tsq"
    ts("-query", "-data", data, "-sha384", "-no_nonce", "-out", sha384)
    (setup.tmp / "r384.tsr").write_bytes(post(served + "/tsa/tsa", sha384.read_bytes()))
    without_certs = ts("-reply", "-in", setup.tmp / "r384.tsr", "-token_out", "-out",
                       setup.tmp / "token.der")
    assert without_certs.returncode == 0
    verified = ts("-verify", "-in", setup.tmp / "r384.tsr", "-queryfile", sha384, "-CAfile",
                  setup.tmp / "root.pem", "-untrusted", _tsa_chain(setup, served, tsa.der),
                  check=False)
    assert "Verification: OK" in verified.stdout, verified.stdout + verified.stderr
    with setup.state.reader() as inventory:
        assert len(Releases(inventory).active("tsa")) == 1, "the certificate is reused"


def _tsa_chain(setup: Setup, served: str, der: bytes) -> Path:
    """The TSA certificate and its issuing CA, PEM (for a token without certificates)."""
    path = setup.tmp / "tsa-chain.pem"
    issuing = urllib.request.urlopen(served + "/ca/signing-ca.pem", timeout=10).read()
    path.write_bytes(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM) + issuing)
    return path


def test_refusals(setup: Setup, served: str) -> None:
    data = setup.tmp / "data"
    data.write_bytes(b"x")
    query = setup.tmp / "sha1.tsq"
    ts("-query", "-data", data, "-sha1", "-out", query)
    (setup.tmp / "sha1.tsr").write_bytes(post(served + "/tsa/tsa", query.read_bytes()))
    text = ts("-reply", "-in", setup.tmp / "sha1.tsr", "-text").stdout
    assert "Status: Rejected." in text
    assert "unrecognized or unsupported algorithm identifier" in text and "SHA-256" in text
    garbage = ts("-reply", "-in", _write(setup, "junk.tsr", post(served + "/tsa/tsa", b"junk")),
                 "-text").stdout
    assert "Status: Rejected." in garbage and "not a DER TimeStampReq" in garbage
    for name in ("firmware", "absent"):  # a code-signing profile is no TSA
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(served + f"/tsa/{name}", query.read_bytes())
        assert refused.value.code == 404


def _write(setup: Setup, name: str, data: bytes) -> Path:
    path = setup.tmp / name
    path.write_bytes(data)
    return path
