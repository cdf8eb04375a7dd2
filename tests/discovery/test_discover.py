"""`fleetpki discover` against real TLS servers on loopback and a real file tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.policy.support import PASSPHRASE, invoke

from .support import Applied, apply_and_revoke, self_signed, tls_server


@pytest.fixture
def applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Applied:
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    return apply_and_revoke(tmp_path)


def full_chain(directory: Path) -> Path:
    path = directory / "fullchain.pem"
    path.write_bytes((directory / "cert.pem").read_bytes() + (directory / "chain.pem").read_bytes())
    return path


def by_source(document: dict) -> dict[str, dict]:
    return {f["source"]: f for f in document["findings"]}


def test_tls_endpoints_are_classified(applied: Applied, tmp_path: Path) -> None:
    good, stolen, bare = (applied.exported[d] for d in ("dev-1", "dev-3", "dev-2"))
    rogue_cert, rogue_key = self_signed(tmp_path / "rogue")
    with tls_server(full_chain(good), good / "key.pem") as good_server, \
            tls_server(rogue_cert, rogue_key) as rogue_server, \
            tls_server(full_chain(stolen), stolen / "key.pem") as revoked_server, \
            tls_server(bare / "cert.pem", bare / "key.pem") as bare_server:
        good_at, rogue_at, revoked_at, bare_at = (
            s.address for s in (good_server, rogue_server, revoked_server, bare_server))
        named = bare_at.replace("127.0.0.1", "localhost")  # a host name: sent as SNI
        targets = [good_at, rogue_at, f"{revoked_at}=dev-3.example", named]
        args = ["discover", "--state-dir", applied.state, *(x for t in targets for x in
                                                             ("--tls", t))]
        result = invoke(*args, "-o", "json")
        failed = invoke(*args, "--fail-on", "unknown", rc=1)
    assert set(revoked_server.server_names) == {"dev-3.example"}
    assert set(bare_server.server_names) == {"localhost"}
    assert set(good_server.server_names) == {None}  # an address is not sent as SNI
    found = by_source(json.loads(result.stdout))
    assert set(found) == {f"tls:{good_at}", f"tls:{rogue_at}", f"tls:{revoked_at}=dev-3.example",
                          f"tls:{named}"}
    managed = found[f"tls:{good_at}"]
    assert (managed["state"], managed["owner"], managed["device"]) == ("managed", "sensors",
                                                                      "dev-1")
    assert managed["chainVerified"] is True and managed["problems"] == []
    leaf = x509.load_pem_x509_certificate((good / "cert.pem").read_bytes())
    assert managed["serial"] == format(leaf.serial_number, "040x")
    rogue = found[f"tls:{rogue_at}"]
    assert rogue["state"] == "unknown" and "rogue" in rogue["problems"][0]
    assert rogue["subject"] == "CN=rogue.example" and rogue["owner"] is None
    revoked = found[f"tls:{revoked_at}=dev-3.example"]
    assert (revoked["state"], revoked["device"]) == ("revoked", "dev-3")
    assert "keyCompromise" in revoked["problems"][0]
    wrong = found[f"tls:{named}"]
    assert (wrong["state"], wrong["device"], wrong["chainVerified"]) == ("wrong-chain", "dev-2",
                                                                         False)
    assert json.loads(result.stdout)["summary"] == {
        "unreadable": 0, "revoked": 1, "unknown": 1, "wrong-chain": 1, "expired": 0, "weak": 0,
        "expiring": 0, "managed": 1}
    assert "rogue" in failed.stdout and "1 unknown" in failed.stdout
    # what is not managed goes to the audit log, which stays intact (two runs: two of each)
    records = [json.loads(line) for line in
               (applied.state / "audit" / "audit.jsonl").read_text().splitlines()]
    discovered = [r for r in records if r["action"] == "certificate.discovered"]
    assert sorted((r["object"], r["state"]) for r in discovered) == sorted(2 * [
        (f"tls:{rogue_at}", "unknown"), (f"tls:{revoked_at}=dev-3.example", "revoked"),
        (f"tls:{named}", "wrong-chain")])
    assert [r["counts"]["managed"] for r in records if r["action"] == "discovery.finished"] \
        == [1, 1]
    invoke("audit", "verify", "--state-dir", applied.state)
    # the revoked certificate seen in use is a lint finding, with where it was seen
    linted = json.loads(invoke("lint", applied.repo, "--state-dir", applied.state, "-o",
                               "json").stdout)
    seen = [f for f in linted["findings"] if f["code"] == "revoked-certificate-in-use"]
    assert [(f["device"], f"tls:{revoked_at}=dev-3.example" in f["message"]) for f in seen] == [
        ("dev-3", True)]


def test_an_unreachable_endpoint_is_reported_not_fatal(applied: Applied, tmp_path: Path,
                                                        unused_port: int) -> None:
    result = invoke("discover", "--state-dir", applied.state, "--tls",
                    f"127.0.0.1:{unused_port}", "-o", "json")
    (finding,) = json.loads(result.stdout)["findings"]
    assert finding["state"] == "unreadable" and "no certificate presented" in finding["problems"][0]
    invoke("discover", "--state-dir", applied.state, "--tls", f"127.0.0.1:{unused_port}",
           "--fail-on", "unreadable", rc=1)


def test_file_tree_pem_der_and_pkcs12(applied: Applied, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc" / "ssl").mkdir(parents=True)
    good = applied.exported["dev-1"]
    (tree / "etc" / "ssl" / "bundle.pem").write_bytes(full_chain(good).read_bytes()
                                                      + (good / "ca.pem").read_bytes())
    rogue_cert, _ = self_signed(tmp_path / "rogue")
    rogue = x509.load_pem_x509_certificate(rogue_cert.read_bytes())
    (tree / "rogue.der").write_bytes(rogue.public_bytes(serialization.Encoding.DER))
    stolen = x509.load_pem_x509_certificate((applied.exported["dev-3"] / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((applied.exported["dev-3"] / "key.pem").read_bytes(),
                                             None)
    encrypt = serialization.BestAvailableEncryption(b"p12-secret")
    (tree / "dev-3.p12").write_bytes(pkcs12.serialize_key_and_certificates(
        b"dev-3", key, stolen, None, encrypt))  # type: ignore[arg-type]
    (tree / "other.pfx").write_bytes(pkcs12.serialize_key_and_certificates(
        b"x", key, stolen, None, serialization.BestAvailableEncryption(b"another")))  # type: ignore[arg-type]
    (tree / "notes.txt").write_text("not a certificate")
    (tree / "etc" / "loop").symlink_to(tree)  # a link back up: not followed
    result = invoke("discover", "--state-dir", applied.state, tree, "-o", "json",
                    "--p12-passphrase", "p12-secret")
    findings = json.loads(result.stdout)["findings"]
    states = sorted((Path(f["source"].removeprefix("file:")).name, f["state"], f["owner"])
                    for f in findings)
    assert states == [("bundle.pem", "managed", "issuing"), ("bundle.pem", "managed", "root"),
                      ("bundle.pem", "managed", "sensors"), ("dev-3.p12", "revoked", "sensors"),
                      ("other.pfx", "unreadable", None), ("rogue.der", "unknown", None)]
    assert all(f["chainVerified"] is None for f in findings)
    assert "PRIVATE" not in result.stdout
    table = invoke("discover", "--state-dir", applied.state, tree, tmp_path / "missing",
                   "--p12-passphrase", "p12-secret")
    assert "3 managed" in table.stdout and "2 unreadable" in table.stdout
