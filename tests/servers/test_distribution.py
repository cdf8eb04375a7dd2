"""OCSP, CRL and CA endpoints over plain HTTP, checked with the system openssl and curl."""

from __future__ import annotations

import base64
import re
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import load_pem_x509_certificate
from cryptography.x509 import ocsp as x509_ocsp

from controller.servers.state import ServerState
from tests.servers.conftest import Env, Running, ca_files, device_cert, run
from tests.servers.test_ocsp_unit import SHA1, UNSUPPORTED_HASHES, cert_id_request


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


def post_ocsp(server: Running, env: Env, der: bytes, name: str) -> tuple[str, Path]:
    """curl POST of a DER request: (HTTP status and content type, response file)."""
    request, response = env.pem(f"{name}.req", der), env.work / f"{name}.resp"
    result = run("curl", "-sS", "--data-binary", f"@{request}", "-H",
                 "Content-Type: application/ocsp-request", "-o", response, "-w",
                 "%{http_code} %{content_type}", f"{server.http}/ocsp")
    assert result.returncode == 0, result.stderr
    return result.stdout, response


def response_status(response: Path) -> str:
    """The responseStatus (lowercase) that `openssl ocsp -respin` reads."""
    text = run("openssl", "ocsp", "-respin", response, "-resp_text", "-noverify")
    found = re.search(r"(?:OCSP Response Status|Responder Error): (\w+)", text.stdout)
    assert found is not None, text.stdout + text.stderr
    return found.group(1).lower()


def test_ocsp_malformed_requests_are_answered(server: Running, env: Env) -> None:
    """Unsupported hash algorithms and negative serials: malformedRequest, never HTTP 500."""
    issuer_path, _ = ca_files(env)
    cert_path, _ = device_cert(env, "dev-2")
    issuer = load_pem_x509_certificate(issuer_path.read_bytes())
    cert = load_pem_x509_certificate(cert_path.read_bytes())
    good = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    name_hash, key_hash = good.issuer_name_hash, good.issuer_key_hash
    cases = {name: cert_id_request(oid, name_hash, key_hash, cert.serial_number)
             for name, oid in UNSUPPORTED_HASHES.items()}
    cases["negative"] = cert_id_request(SHA1, name_hash, key_hash, -cert.serial_number)
    for name, der in cases.items():
        status, response = post_ocsp(server, env, der, name)
        assert status == "200 application/ocsp-response", name
        assert response_status(response) == "malformedrequest", name
    _, response = post_ocsp(server, env, cert_id_request(SHA1, name_hash, key_hash,
                                                         cert.serial_number), "hand-built")
    assert response_status(response) == "successful"


def test_ocsp_failure_is_an_internal_error_response(server: Running, env: Env,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: ServerState, request_der: bytes) -> bytes:
        raise RuntimeError("inventory gone")

    monkeypatch.setattr(ServerState, "ocsp_response", broken)
    status, response = post_ocsp(server, env, b"anything", "broken")
    assert status == "200 application/ocsp-response"
    assert response_status(response) == "internalerror"
