"""OCSP, CRL and CA endpoints over plain HTTP, checked with the system openssl and curl."""

from __future__ import annotations

import base64
import re
import urllib.parse
import urllib.request

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import load_pem_x509_certificate
from cryptography.x509 import ocsp as x509_ocsp

from tests.servers.conftest import Env, Running, ca_files, device_cert, run


def ocsp(server: Running, issuer: object, cert: object, bundle: object,
         *extra: str) -> str:
    result = run("openssl", "ocsp", "-issuer", issuer, "-cert", cert, "-url",
                 f"{server.http}/ocsp", "-CAfile", bundle, "-resp_text", *extra)
    assert result.returncode == 0, result.stderr
    assert "Response verify OK" in result.stderr, result.stderr
    return result.stdout


def crl_serials(server: Running, env: Env) -> set[str]:
    path = env.work / "issuing.crl"
    fetched = run("curl", "-sSf", "-o", path, f"{server.http}/crl/issuing.crl")
    assert fetched.returncode == 0, fetched.stderr
    text = run("openssl", "crl", "-inform", "DER", "-in", path, "-noout", "-text")
    assert text.returncode == 0, text.stderr
    return {s.lower().lstrip("0") for s in re.findall(r"Serial Number: ([0-9A-F]+)", text.stdout)}


def test_ocsp_good_then_revoked_and_crl_follows(server: Running, env: Env) -> None:
    issuer, bundle = ca_files(env)
    cert, serial = device_cert(env, "dev-1")
    for extra in ((), ("-no_nonce",)):
        output = ocsp(server, issuer, cert, bundle, *extra)
        assert f"{cert}: good" in output
        assert "Next Update:" in output
    assert serial.lstrip("0") not in crl_serials(server, env)

    env.write({"dev-1": "keyCompromise"})
    assert env.apply().result.done.get("revoke") == 1
    for extra in (("-no_nonce",), ()):  # the cached nonce-less answer is invalidated too
        output = ocsp(server, issuer, cert, bundle, *extra)
        assert f"{cert}: revoked" in output
        assert "Reason: keyCompromise" in output
    assert serial.lstrip("0") in crl_serials(server, env)


def test_ocsp_unknown_serial(server: Running, env: Env) -> None:
    issuer, bundle = ca_files(env)
    result = run("openssl", "ocsp", "-issuer", issuer, "-serial", "0x1234567890", "-url",
                 f"{server.http}/ocsp", "-CAfile", bundle)
    assert result.returncode == 0, result.stderr
    assert "0x1234567890: unknown" in result.stdout


def test_ocsp_get(server: Running, env: Env) -> None:
    issuer_path, _ = ca_files(env)
    cert_path, _ = device_cert(env, "dev-2")
    issuer = load_pem_x509_certificate(issuer_path.read_bytes())
    cert = load_pem_x509_certificate(cert_path.read_bytes())
    request = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
    encoded = urllib.parse.quote(base64.b64encode(
        request.public_bytes(serialization.Encoding.DER)).decode(), safe="")
    with urllib.request.urlopen(f"{server.http}/ocsp/{encoded}", timeout=10) as reply:
        assert reply.headers["Content-Type"] == "application/ocsp-response"
        response = x509_ocsp.load_der_ocsp_response(reply.read())
    assert response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == x509_ocsp.OCSPCertStatus.GOOD


def test_ca_and_missing(server: Running, env: Env) -> None:
    issuer, _ = ca_files(env)
    result = run("curl", "-sSf", f"{server.http}/ca/issuing.pem")
    assert result.returncode == 0 and result.stdout == issuer.read_text()
    missing = run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                  f"{server.http}/crl/nope.crl")
    assert missing.stdout == "404"
