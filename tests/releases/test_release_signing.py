"""Releases are signed once by apply, exported, and verified by fleetpki and by OpenSSL."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller import exports, jobs
from controller.apply.executor import execute, prepare
from controller.pki.keys import key_algorithm_of
from controller.signing import cms
from controller.signing.timestamp import tokens_of
from controller.signing.verify import VerifyError
from controller.stores.releases import Releases
from tests.releases.support import (
    ARTIFACT,
    OPENSSL,
    Setup,
    manifest,
    needs_openssl,
    openssl_cms_verify,
    release,
    signing_profile,
)


def test_apply_signs_once_and_records_it(setup: Setup) -> None:
    setup.declare(signing_profile(), release(
        artifacts=[{"path": "artifacts/firmware.bin"},
                   {"name": "bootloader.bin", "sha256": "ab" * 32, "size": 512}],
        firmwareVersions={"min": "0.9.0", "max": "0.9.9"}))
    first = setup.apply()
    assert first.result.done["sign-release"] == 1
    assert [a.name for a in first.plan.actions if a.action == "sign-release"] == ["fw-1"]
    again = setup.apply(setup.now + timedelta(hours=1))
    assert "sign-release" not in again.result.done  # unchanged: never signed again
    out = setup.export()
    data = manifest(out)
    assert data["release"] == "fw-1" and data["kind"] == "ReleaseManifest"
    assert data["artifacts"] == [
        {"name": "firmware.bin", "sha256": hashlib.sha256(ARTIFACT).hexdigest(),
         "size": len(ARTIFACT)},
        {"name": "bootloader.bin", "sha256": "ab" * 32, "size": 512}]
    assert data["targets"] == {"fleets": ["sensors"]}
    assert data["firmwareVersions"] == {"min": "0.9.0", "max": "0.9.9"}
    assert data["version"] == "1.0.0"
    result = setup.verify(out, fleet="sensors")
    assert result.release == "fw-1"
    assert result.signing_time is not None and result.timestamp is not None
    signer = x509.load_pem_x509_certificates((out / "chain.pem").read_bytes())[0]
    eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CODE_SIGNING]
    events = [json.loads(line) for line in
              (setup.state.path / "audit" / "audit.jsonl").read_text().splitlines()]
    signed = [e for e in events if e["action"] == "release.signed"]
    assert len(signed) == 1 and signed[0]["object"] == "Release/fw-1"


def test_a_changed_release_is_signed_again_and_the_old_signature_superseded(
        setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    old = setup.export(out="old")
    setup.declare(signing_profile(), release(version="1.0.1"))
    report = setup.apply(setup.now + timedelta(minutes=5))
    assert report.result.done["sign-release"] == 1
    assert any(a.action == "publish-crl" and a.name == "signing-ca"
               for a in report.plan.actions)
    new = setup.export(out="new")
    assert manifest(new)["version"] == "1.0.1"
    crl = setup.crl()
    later = setup.now + timedelta(minutes=6)
    setup.verify(new, crls=[crl], now=later)
    with pytest.raises(VerifyError, match=r"revoked \(superseded"):
        setup.verify(old, crls=[crl], now=later)


ALGORITHMS = [("ECDSA-P256", True), ("ECDSA-P384", True), ("RSA-3072", True),
              # Debian's OpenSSL 3.0 CMS has no Ed25519 ("no default digest") and no ML-DSA
              ("Ed25519", False), ("ML-DSA-65", False)]


@pytest.mark.parametrize(("algorithm", "openssl_knows"), ALGORITHMS)
def test_every_algorithm_signs_and_verifies(setup: Setup, algorithm: str,
                                            openssl_knows: bool) -> None:
    setup.declare(signing_profile(algorithm=algorithm), release())
    setup.apply()
    out = setup.export()
    crl = setup.crl()
    result = setup.verify(out, crls=[crl], fleet="sensors")
    assert key_algorithm_of(result.signer.public_key()) == algorithm
    signed = cms.verify((out / "manifest.p7s").read_bytes(), (out / "manifest.json").read_bytes())
    assert signed.signature_algorithm == {
        "ECDSA-P256": "sha256_ecdsa", "ECDSA-P384": "sha384_ecdsa",
        "RSA-3072": "rsassa_pkcs1v15", "Ed25519": "ed25519",
        "ML-DSA-65": "2.16.840.1.101.3.4.3.18"}[algorithm]
    if openssl_knows and OPENSSL is not None:
        run = openssl_cms_verify(out, out / "ca.pem", crl=crl)
        assert run.returncode == 0, run.stderr
        assert (out / "verified.json").read_bytes() == (out / "manifest.json").read_bytes()


@needs_openssl
def test_openssl_verifies_the_timestamp_token(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    out = setup.export()
    signed = cms.verify((out / "manifest.p7s").read_bytes(),
                        (out / "manifest.json").read_bytes())
    [token] = tokens_of(signed)
    (out / "token.der").write_bytes(token)
    (out / "signature.bin").write_bytes(signed.signature)
    assert OPENSSL is not None
    run = subprocess.run([OPENSSL, "ts", "-verify", "-token_in", "-in", str(out / "token.der"),
                          "-data", str(out / "signature.bin"), "-CAfile", str(out / "ca.pem"),
                          "-untrusted", str(out / "chain.pem")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "Verification: OK" in run.stdout, run.stderr
    (out / "signature.bin").write_bytes(signed.signature[:-1] + b"\0")
    tampered = subprocess.run([OPENSSL, "ts", "-verify", "-token_in", "-in",
                               str(out / "token.der"), "-data", str(out / "signature.bin"),
                               "-CAfile", str(out / "ca.pem"), "-untrusted",
                               str(out / "chain.pem")],
                              capture_output=True, text=True, check=False)
    assert tampered.returncode != 0


def test_label_selectors_resolve_to_fleets_in_the_manifest(setup: Setup) -> None:
    setup.declare(signing_profile(), release(targets={"selectors": [
        {"matchLabels": {"product": "gateway"}}]}))
    setup.apply()
    out = setup.export()
    assert manifest(out)["targets"]["fleets"] == ["gateways"]
    setup.verify(out, fleet="gateways")
    with pytest.raises(VerifyError, match="does not target fleet 'sensors'"):
        setup.verify(out, fleet="sensors")


def test_signing_keys_stay_in_the_keystore(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    out = setup.export()
    for path in out.iterdir():
        assert b"PRIVATE KEY" not in path.read_bytes()
    key_files = list((setup.state.path / "keys").rglob("signing.firmware.*"))
    assert len(key_files) == 1
    assert b"ENCRYPTED PRIVATE KEY" in key_files[0].read_bytes()
    assert key_files[0].stat().st_mode & 0o077 == 0
    tracked = subprocess.run(["git", "ls-files"], cwd=setup.repo, capture_output=True,
                             text=True, check=True).stdout
    assert tracked.split() == ["artifacts/firmware.bin", "pki.yaml", "signing.yaml"]
    assert not any(b"PRIVATE KEY" in (setup.repo / name).read_bytes() for name in tracked.split())


def test_raising_key_version_rotates_the_key_and_keeps_old_signatures_valid(
        setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    first = setup.export(out="first")
    setup.declare(signing_profile(keyVersion=2), release(), release("fw-2"))
    report = setup.apply(setup.now + timedelta(minutes=1))
    assert report.result.done["sign-release"] == 1  # fw-2 only: fw-1 is unchanged
    second = setup.export("fw-2", out="second")
    key_of = [x509.load_pem_x509_certificates((out / "chain.pem").read_bytes())[0]
              .public_key() for out in (first, second)]
    assert key_of[0] != key_of[1]
    assert sorted(p.name for p in (setup.state.path / "keys").rglob("signing.firmware.*")) == [
        "signing.firmware.ECDSA-P256.v1.pem", "signing.firmware.ECDSA-P256.v2.pem"]
    der_crl = setup.tmp / "signing-ca.crl"
    with setup.state.reader() as inventory:
        der_crl.write_bytes(exports.crl_bytes(inventory, "signing-ca", der=True))
    later = setup.now + timedelta(minutes=2)
    setup.verify(first, crls=[der_crl], now=later)
    setup.verify(second, crls=[der_crl], now=later)


def test_a_release_another_applier_signed_meanwhile_is_not_signed_again(setup: Setup) -> None:
    """Two appliers (shards, `apply --fleet`) plan the same release; the one that runs its
    release work second finds it signed, under the CA lock, and signs nothing."""
    setup.declare(signing_profile(), release())
    setup.apply()
    setup.declare(signing_profile(), release(version="1.0.1"))
    stale = jobs.plan(setup.repo, setup.state, setup.now)
    assert [a.action for a in stale.actions if a.kind == "Release"] == ["sign-release"]
    setup.apply()  # the other applier: re-signs, supersedes the first signature
    with setup.state.inventory() as inventory:
        declaration, _ = jobs.read_declaration(setup.repo, inventory=inventory)
        only_releases = replace(stale, actions=tuple(a for a in stale.actions
                                                     if a.kind == "Release"))
        runner = prepare(only_releases, declaration.desired, inventory, setup.state.keystore(),
                         setup.now)
        result = execute(runner, only_releases)
        history = Releases(inventory).history("fw-1")
    assert "sign-release" not in result.done
    assert sorted(r.state for r in history) == ["active", "revoked"], "signed once per change"
