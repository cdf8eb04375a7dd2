"""EST over HTTPS with curl and openssl: cacerts, simpleenroll with one-time secrets,
simplereenroll with the device's TLS client certificate."""

from __future__ import annotations

import base64
import re
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from controller import jobs
from controller.api.desired import Desired
from controller.pki import keys
from controller.plan.intents import device_intent
from controller.servers import est
from controller.servers.throttle import Backoff
from tests.servers.conftest import Env, Running, ca_files, fleetpki_command, run

EST = "/.well-known/est"


def fleetpki(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(*fleetpki_command(), *args)


def secret(env: Env, device: str, fleet: str = "sensors") -> str:
    result = fleetpki("enroll-secret", env.repo, "--fleet", fleet, "--device", device,
                      "--state-dir", env.state.path)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def csr(env: Env, device: str, subject: str, key: str | None = None) -> Path:
    der = env.work / f"{device}-{subject.strip('/').replace('=', '_')}.der"
    made = run("openssl", "req", "-new", "-key", env.keys / f"{key or device}.key", "-subj",
               subject, "-outform", "DER", "-out", der)
    assert made.returncode == 0, made.stderr
    encoded = der.with_suffix(".b64")
    assert run("openssl", "base64", "-in", der, "-out", encoded).returncode == 0
    return encoded


def post(server: Running, env: Env, path: str, body: Path, *auth: str | Path,
         name: str = "reply") -> tuple[str, Path, str]:
    """(HTTP status, response body file, response headers)."""
    _, bundle = ca_files(env)
    out, headers = env.work / f"{name}.b64", env.work / f"{name}.headers"
    result = run("curl", "-sS", "--cacert", bundle, *auth, "--data-binary", f"@{body}",
                 "-H", "Content-Type: application/pkcs10", "-o", out, "-D", headers,
                 "-w", "%{http_code}", f"{server.https}{EST}{path}")
    assert result.returncode == 0, result.stderr
    return result.stdout, out, headers.read_text()


def certificate_from(env: Env, body: Path, name: str) -> Path:
    der, pem = env.work / f"{name}.p7", env.work / f"{name}.pem"
    assert run("openssl", "base64", "-d", "-in", body, "-out", der).returncode == 0
    printed = run("openssl", "pkcs7", "-inform", "DER", "-in", der, "-print_certs", "-out", pem)
    assert printed.returncode == 0, printed.stderr
    return pem


def verify(env: Env, pem: Path) -> None:
    issuer, bundle = ca_files(env)
    root = env.pem("root.pem", bundle.read_bytes()[len(issuer.read_bytes()):])
    result = run("openssl", "verify", "-x509_strict", "-CAfile", root, "-untrusted", issuer, pem)
    assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr


def test_cacerts(server: Running, env: Env) -> None:
    _, bundle = ca_files(env)
    for path in ("/cacerts", "/sensors/cacerts"):
        body = env.work / "cacerts.b64"
        result = run("curl", "-sSf", "--cacert", bundle, "-o", body, f"{server.https}{EST}{path}")
        assert result.returncode == 0, result.stderr
        pem = certificate_from(env, body, "cacerts")
        assert pem.read_text().count("BEGIN CERTIFICATE") == 2
        assert "subject=CN = Test Issuing" in pem.read_text()


def test_csrattrs(server: Running, env: Env) -> None:
    _, bundle = ca_files(env)
    body = env.work / "attrs.b64"
    result = run("curl", "-sSf", "--cacert", bundle, "-o", body,
                 f"{server.https}{EST}/sensors/csrattrs")
    assert result.returncode == 0, result.stderr
    parsed = run("openssl", "asn1parse", "-in", body)
    assert "id-ecPublicKey" in parsed.stdout and "prime256v1" in parsed.stdout


def test_simpleenroll_with_one_time_secret(server: Running, env: Env) -> None:
    with env.state.inventory() as inventory:
        before = inventory.active_device("sensors", "dev-3")
    assert before is not None
    request = csr(env, "dev-3", "/CN=dev-3")

    status, _, headers = post(server, env, "/simpleenroll", request, name="noauth")
    assert status == "401" and "WWW-Authenticate: Basic" in headers
    status, _, _ = post(server, env, "/simpleenroll", request, "--user", "dev-3:guess")
    assert status == "401"  # no secret issued yet

    token = secret(env, "dev-3")
    status, _, _ = post(server, env, "/simpleenroll", request, "--user", "dev-3:wrong")
    assert status == "401"
    status, body, headers = post(server, env, "/simpleenroll", request, "--user",
                                 f"dev-3:{token}", name="enrolled")
    assert status == "200", body.read_text()
    assert "application/pkcs7-mime; smime-type=certs-only" in headers
    pem = certificate_from(env, body, "dev-3-est")
    verify(env, pem)
    text = run("openssl", "x509", "-in", pem, "-noout", "-subject", "-ext", "subjectAltName")
    assert "CN = dev-3" in text.stdout and "URI:urn:dev:dev-3" in text.stdout

    status, _, _ = post(server, env, "/simpleenroll", request, "--user", f"dev-3:{token}")
    assert status == "401"  # the secret was consumed

    with env.state.inventory() as inventory:
        after = inventory.active_device("sensors", "dev-3")
        old = inventory.get(before.serial)
    assert after is not None and old is not None
    assert after.serial != before.serial and (old.state, old.reason) == ("revoked", "superseded")
    # Recorded exactly as apply records it: the next plan has nothing to do for the device.
    declaration = jobs.load(env.repo)
    decl = declaration.desired.fleets["sensors"]
    device = next(d for d in decl.device_set.parsed[0] if d.id == "dev-3")
    profile = declaration.desired.profile("sensor")
    assert after.intent == device_intent(decl.fleet, profile, device).digest
    planned = jobs.plan(env.repo, env.state, jobs.now_utc())
    assert not [a for a in planned.actions if a.device == "dev-3"]


def test_enrollment_fleet_device_enrolls_a_key_that_is_not_in_git(server: Running,
                                                                   env: Env) -> None:
    planned = jobs.plan(env.repo, env.state, jobs.now_utc())
    assert not [a for a in planned.actions if a.name == "enrollees"]  # awaiting enrollment
    with env.state.inventory() as inventory:
        assert inventory.active_device("enrollees", "new-1") is None
    key = env.keys / "new-1.key"  # made on the device; never declared anywhere
    made = run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-out", key)
    assert made.returncode == 0, made.stderr
    request = csr(env, "new-1", "/CN=new-1")
    token = secret(env, "new-1", fleet="enrollees")
    status, body, _ = post(server, env, "/simpleenroll", request, "--user", f"new-1:{token}",
                           name="new-1")
    assert status == "200", body.read_text()
    pem = certificate_from(env, body, "new-1-est")
    verify(env, pem)
    certified = run("openssl", "x509", "-in", pem, "-noout", "-pubkey").stdout
    own = run("openssl", "pkey", "-in", key, "-pubout").stdout
    assert certified == own != ""  # the device's own key, certified
    planned = jobs.plan(env.repo, env.state, jobs.now_utc())
    assert not [a for a in planned.actions if a.name == "enrollees"]  # recorded as converged


def test_simpleenroll_refusals(server: Running, env: Env) -> None:
    token = secret(env, "dev-4")
    other = csr(env, "dev-4", "/CN=dev-3", key="dev-4")
    status, _, _ = post(server, env, "/simpleenroll", other, "--user", f"dev-4:{token}")
    assert status == "403"  # the CSR names another device
    foreign_key = csr(env, "dev-4", "/CN=dev-4", key="dev-2")
    status, _, _ = post(server, env, "/simpleenroll", foreign_key, "--user", f"dev-4:{token}")
    assert status == "403"  # not the key declared in git
    garbage = env.pem("garbage.b64", b"bm90IGEgY3Ny\n")
    status, _, _ = post(server, env, "/simpleenroll", garbage, "--user", f"dev-4:{token}")
    assert status == "400"
    status, _, _ = post(server, env, "/simpleenroll", csr(env, "dev-4", "/CN=dev-4"),
                        "--user", f"dev-4:{token}", name="dev-4")
    assert status == "200"  # refusals did not consume the secret
    status, _, _ = post(server, env, "/nope/simpleenroll", other, "--user", f"dev-4:{token}")
    assert status == "404"


def test_simplereenroll_with_client_certificate(server: Running, env: Env) -> None:
    with env.state.inventory() as inventory:
        current = inventory.active_device("sensors", "dev-2")
    assert current is not None
    cert = env.pem("dev-2-current.pem",
                   x509.load_der_x509_certificate(current.der).public_bytes(Encoding.PEM))
    request = csr(env, "dev-2", "/CN=dev-2")
    status, _, _ = post(server, env, "/simplereenroll", request, name="nocert")
    assert status == "401"
    client = ("--cert", cert, "--key", env.keys / "dev-2.key")
    status, body, _ = post(server, env, "/simplereenroll", request, *client, name="re")
    assert status == "200", body.read_text()
    renewed = certificate_from(env, body, "dev-2-renewed")
    verify(env, renewed)
    with env.state.inventory() as inventory:
        old = inventory.get(current.serial)
        new = inventory.active_device("sensors", "dev-2")
    assert old is not None and old.state == "revoked" and new is not None
    assert new.serial != current.serial
    status, _, _ = post(server, env, "/simplereenroll", request, *client, name="again")
    assert status == "403"  # the superseded certificate no longer authenticates
    stolen = csr(env, "dev-2", "/CN=dev-1")
    status, _, _ = post(server, env, "/simplereenroll", stolen, "--cert", renewed, "--key",
                        env.keys / "dev-2.key", name="stolen")
    assert status == "403"


def _multipart(body: bytes, headers: str) -> dict[str, bytes]:
    boundary = re.search(r"boundary=([^\s;]+)", headers)
    assert boundary is not None, headers
    parts: dict[str, bytes] = {}
    for chunk in body.split(f"--{boundary.group(1)}".encode())[1:-1]:
        head, _, content = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        kind = re.search(rb"Content-Type: ([^;\r\n]+)", head)
        assert kind is not None
        parts[kind.group(1).decode()] = base64.b64decode(content)
    return parts


def test_serverkeygen(server: Running, env: Env) -> None:
    """keyGeneration: server fleets: the server makes the key and returns it with the cert."""
    request = csr(env, "gw-1", "/CN=gw-1", key="dev-1")  # the CSR key is ignored
    status, _, _ = post(server, env, "/serverkeygen", request, "--user",
                        f"gw-1:{secret(env, 'gw-1', 'gateways')}", name="keygen")
    assert status == "200"
    body = (env.work / "keygen.b64").read_bytes()
    parts = _multipart(body, (env.work / "keygen.headers").read_text())
    key = keys.private_key_from_der(parts["application/pkcs8"])
    (env.work / "gw-1.key").write_bytes(keys.private_key_to_pem(key))
    cert_file = env.pem("gw-1.b64", base64.encodebytes(parts["application/pkcs7-mime"]))
    cert = certificate_from(env, cert_file, "gw-1")
    verify(env, cert)
    issued = x509.load_pem_x509_certificate(cert.read_bytes())
    assert keys.public_key_fingerprint(issued.public_key()) == keys.public_key_fingerprint(
        key.public_key())
    planned = jobs.plan(env.repo, env.state, jobs.now_utc())
    assert not [a for a in planned.actions if a.device == "gw-1"]
    # Again with the new certificate as TLS client credential: a new key each time.
    status, _, _ = post(server, env, "/serverkeygen", request, "--cert", cert, "--key",
                        env.work / "gw-1.key", name="keygen2")
    assert status == "200"
    again = _multipart((env.work / "keygen2.b64").read_bytes(),
                       (env.work / "keygen2.headers").read_text())
    assert again["application/pkcs8"] != parts["application/pkcs8"]
    # simpleenroll is for device-generated keys only
    status, _, _ = post(server, env, "/simpleenroll", request, "--user",
                        f"gw-1:{secret(env, 'gw-1', 'gateways')}", name="wrongkind")
    assert status == "403"


def test_simplereenroll_refused_after_revocation_in_git(server: Running, env: Env) -> None:
    with env.state.inventory() as inventory:
        latest = inventory.device_history("sensors", "dev-1")[-1]
    env.write({"dev-1": "keyCompromise"})  # as test_distribution does; idempotent
    env.apply()
    with env.state.inventory() as inventory:
        record = inventory.get(latest.serial)
    assert record is not None and (record.state, record.reason) == ("revoked", "keyCompromise")
    cert = env.pem("dev-1-revoked.pem",
                   x509.load_der_x509_certificate(latest.der).public_bytes(Encoding.PEM))
    status, body, _ = post(server, env, "/simplereenroll", csr(env, "dev-1", "/CN=dev-1"),
                           "--cert", cert, "--key", env.keys / "dev-1.key", name="revoked")
    assert status == "403", body.read_text()


def test_new_secrets_use_hmac_and_old_scrypt_records_still_verify() -> None:
    """A 144-bit random token needs no slow KDF; records made with scrypt keep working."""
    import os

    from controller.servers.est import hash_secret, matching_secret, new_secret
    from controller.stores.inventory import EnrollmentSecret

    secret, record = new_secret("fleet", "dev-1", jobs.now_utc())
    assert record.kdf == "hmac-sha256" and len(secret) >= 24  # 18 random bytes, base64url
    assert matching_secret([record], secret) == record
    assert matching_secret([record], secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert matching_secret([], secret) is None
    salt, kdf = os.urandom(16), "scrypt:1024:8:1"
    old = EnrollmentSecret("other", "dev-1", kdf, salt, hash_secret("s3cret", salt, kdf), 0)
    assert matching_secret([record, old], "s3cret") == old  # the fleet whose secret it is
    assert matching_secret([record, old], "s3cret!") is None


def test_a_slow_device_look_up_leaves_the_server_answering(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first EST look-up in a large fleet reads its rows (tens of seconds at a million
    devices). It runs in a thread: until it returns, OCSP, CRLs and CA certificates are still
    answered and other connections still read, where a blocked event loop would let their
    header timers expire unread."""
    entered, release = threading.Event(), threading.Event()
    real = est.declared_device

    def slow(*args: object) -> object:
        entered.set()
        assert release.wait(30)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(est, "declared_device", slow)
    running = Running(env, backoff=Backoff(allowed=1000))
    try:
        token = secret(env, "dev-4")  # the device is looked up once its secret matches
        request = csr(env, "dev-4", "/CN=dev-3", key="dev-4")  # refused after the look-up
        outcome: list[str] = []
        enrolling = threading.Thread(target=lambda: outcome.append(post(
            running, env, "/simpleenroll", request, "--user", f"dev-4:{token}",
            name="slow")[0]))
        enrolling.start()
        assert entered.wait(30)
        with urllib.request.urlopen(f"{running.http}/ca/issuing.pem", timeout=20) as reply:
            assert reply.status == 200 and b"BEGIN CERTIFICATE" in reply.read()
        assert enrolling.is_alive() and not outcome  # still waiting for its look-up
        release.set()
        enrolling.join(30)
        assert outcome == ["403"]  # the CSR names another device: refused after the look-up
    finally:
        release.set()
        running.stop()


def test_a_device_is_looked_up_in_the_fleet_whose_secret_it_presents(
        server: Running, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never in every fleet's rows: a wrong secret or an undeclared device looks up nothing,
    a matching secret looks up its fleet alone."""
    asked: list[tuple[str, str | None]] = []
    real = est.declared_device

    def recorded(desired: Desired, device_id: str, fleet: str | None) -> est.Target | None:
        asked.append((device_id, fleet))
        return real(desired, device_id, fleet)

    monkeypatch.setattr(est, "declared_device", recorded)
    token = secret(env, "dev-4")
    request = csr(env, "dev-4", "/CN=dev-3", key="dev-4")
    for user in ("nobody:secret", "dev-4:wrong"):  # two failures: far from the throttle's 5
        status, _, _ = post(server, env, "/simpleenroll", request, "--user", user)
        assert status == "401"
    assert asked == []
    status, _, _ = post(server, env, "/simpleenroll", request, "--user", f"dev-4:{token}")
    assert status == "403"  # the CSR names another device
    assert asked == [("dev-4", "sensors")]
