"""`fleetpki serve` /metrics scraped over HTTP: the gauges match the inventory, requests and
refusals are counted by endpoint, no device id is a label; a revoked certificate presented to
EST is a lint finding (CLI and metric)."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.parser import text_string_to_metric_families

from tests.servers.conftest import DEVICES, FLEETPKI, Env, ca_files, run

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: int) -> tuple[str, Samples]:
    result = run("curl", "-sSf", f"http://127.0.0.1:{http}/metrics")
    assert result.returncode == 0, result.stderr
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(result.stdout)
               for s in family.samples}
    return result.stdout, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset({"namespace": "", **labels}.items())),
                       samples.get((name, frozenset(labels.items()))))


def test_gauges_match_the_inventory(served: tuple[int, int, Path], env: Env) -> None:
    http, _, _ = served
    assert run("curl", "-sSf", "-o", "/dev/null", f"http://127.0.0.1:{http}/crl/issuing.crl"
               ).returncode == 0
    assert run("curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{http}/ca/nope.pem"
               ).returncode == 0
    assert run("curl", "-sSf", "-o", "/dev/null", "--data-binary", "not DER", "-H",
               "Content-Type: application/ocsp-request", f"http://127.0.0.1:{http}/ocsp"
               ).returncode == 0  # 200, an OCSP malformedRequest
    text, samples = scrape(http)
    with env.state.reader() as inventory:
        for fleet in ("sensors", "gateways"):
            counts = inventory.fleet_counts(fleet, 0)
            assert value(samples, "fleetpki_certificates", fleet=fleet, ca="issuing",
                         state="active") == counts["active"] > 0
        issuing = inventory.active_ca("issuing")
        assert issuing is not None
        crl = inventory.crl(issuing.serial)
        assert crl is not None
    assert value(samples, "fleetpki_inventory_up") == 1
    expiry = value(samples, "fleetpki_ca_expiry_seconds", ca="issuing")
    assert expiry is not None and 0 < expiry <= issuing.not_after - issuing.not_before
    assert value(samples, "fleetpki_crl_validity_seconds", ca="issuing") == \
        crl.next_update - crl.this_update
    assert value(samples, "fleetpki_lint_findings", code="shared-public-key",
                 severity="critical") == 0
    assert value(samples, "fleetpki_server_requests_total", endpoint="crl") == 1
    assert value(samples, "fleetpki_server_refusals_total", endpoint="ca",
                 reason="not-found") == 1
    assert value(samples, "fleetpki_server_request_duration_seconds_count", endpoint="crl") == 1
    assert value(samples, "fleetpki_server_refusals_total", endpoint="ocsp",
                 reason="malformed") == 1
    for device in (*DEVICES, "gw-1", "new-1"):
        assert device not in text  # never a label, never a value


def test_revoked_certificate_presented_to_est_is_found(served: tuple[int, int, Path],
                                                       env: Env) -> None:
    http, https, _ = served
    with env.state.reader() as inventory:
        latest = inventory.device_history("sensors", "dev-3")[-1]
    env.write({"dev-3": "keyCompromise"})
    env.apply()
    cert = env.pem("dev-3-revoked.pem",
                   x509.load_der_x509_certificate(latest.der).public_bytes(Encoding.PEM))
    request = env.work / "dev-3.der"
    assert run("openssl", "req", "-new", "-key", env.keys / "dev-3.key", "-subj", "/CN=dev-3",
               "-outform", "DER", "-out", request).returncode == 0
    encoded = env.pem("dev-3.b64", run("openssl", "base64", "-in", request).stdout.encode())
    _, bundle = ca_files(env)
    answer = run("curl", "-sS", "--cacert", bundle, "--cert", cert, "--key",
                 env.keys / "dev-3.key", "--data-binary", f"@{encoded}", "-H",
                 "Content-Type: application/pkcs10", "-o", "/dev/null", "-w", "%{http_code}",
                 f"https://127.0.0.1:{https}/.well-known/est/simplereenroll")
    assert answer.stdout == "403", answer.stderr

    linted = run(*FLEETPKI, "lint", env.repo, "--state-dir", env.state.path, "-o", "json",
                 "--fail-on", "critical")
    assert linted.returncode == 1, linted.stderr  # a critical finding
    found = [f for f in json.loads(linted.stdout)["findings"]
             if f["code"] == "revoked-certificate-in-use"]
    assert [(f["device"], f["severity"], f["object"]) for f in found] == \
        [("dev-3", "critical", "DeviceFleet/sensors")]
    assert latest.serial in found[0]["message"] and "est, 1 time(s)" in found[0]["message"]

    _, samples = scrape(http)
    assert value(samples, "fleetpki_lint_findings", code="revoked-certificate-in-use",
                 severity="critical") == 1
    assert value(samples, "fleetpki_server_refusals_total", endpoint="est-simplereenroll",
                 reason="forbidden") == 1
    assert value(samples, "fleetpki_revocations", fleet="sensors", reason="keyCompromise") == 1
