"""EST enrollments in the audit log: refused ones with why, accepted ones with the certificate
issued, both naming the client (address, claimed device, TLS client certificate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.servers.conftest import Env, Running
from tests.servers.test_est import csr, fleetpki, post, secret


def records(env: Env) -> list[dict[str, Any]]:
    text = (env.state.path / "audit" / "audit.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_enrollments_accepted_and_refused_are_audited(server: Running, env: Env) -> None:
    request = csr(env, "dev-3", "/CN=dev-3")
    token = secret(env, "dev-3")
    assert post(server, env, "/simpleenroll", request, "--user", "dev-3:wrong")[0] == "401"
    assert post(server, env, "/sensors/simpleenroll", csr(env, "dev-3", "/CN=dev-1"),
                "--user", f"dev-3:{token}")[0] == "403"
    assert post(server, env, "/simpleenroll", request, "--user", f"dev-3:{token}",
                name="enrolled")[0] == "200"
    with env.state.inventory() as inventory:
        current = inventory.active_device("sensors", "dev-3")
    assert current is not None
    cert = env.pem("dev-3.pem", x509.load_der_x509_certificate(current.der)
                   .public_bytes(Encoding.PEM))
    assert post(server, env, "/simplereenroll", request, "--cert", cert, "--key",
                env.keys / "dev-3.key", name="re")[0] == "200"

    assert [r["action"] for r in records(env) if r["action"] == "serve.started"] \
        == ["serve.started"]
    created = [r for r in records(env) if r["action"] == "enrollment.secret-created"]
    assert [(r["object"], r["device"]) for r in created] == [("DeviceFleet/sensors", "dev-3")]
    est = [r for r in records(env) if r["action"].startswith("est.")]
    assert [(r["action"], r["outcome"], r["endpoint"]) for r in est] == [
        ("est.refused", "refused", "simpleenroll"), ("est.refused", "refused", "simpleenroll"),
        ("est.enrolled", "success", "simpleenroll"), ("est.enrolled", "success", "simplereenroll")]
    wrong, foreign, enrolled, reenrolled = est
    assert wrong["status"] == 401 and "enrollment secret refused for 'dev-3'" in wrong["reason"]
    assert wrong["actor"]["address"] == "127.0.0.1" and wrong["actor"]["device"] == "dev-3"
    assert foreign["status"] == 403 and "names another device" in foreign["reason"]
    assert foreign["object"] == "DeviceFleet/sensors"
    assert (enrolled["serial"], enrolled["device"]) == (current.serial, "dev-3")
    assert enrolled["fingerprint"] == current.fingerprint
    assert reenrolled["actor"]["clientFingerprint"] == current.fingerprint
    assert "CN=dev-3" in reenrolled["actor"]["clientCertificate"]
    text = json.dumps(est)
    assert token not in text and "wrong" not in json.dumps([r["actor"] for r in est])
    verified = fleetpki("audit", "verify", "--state-dir", env.state.path)
    assert verified.returncode == 0, verified.stderr
    assert Path(env.state.path / "audit" / "audit-key.pub").exists()
