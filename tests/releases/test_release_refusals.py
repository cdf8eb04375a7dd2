"""Each way a release must be refused, by fleetpki's verifier and, where OpenSSL knows the
algorithm, by `openssl cms -verify` as the independent verifier."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from controller.signing.verify import VerifyError
from tests.releases.support import (
    OPENSSL,
    Setup,
    needs_openssl,
    openssl_cms_verify,
    release,
    signing_profile,
)


def test_a_tampered_artifact_is_refused(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    out = setup.export()
    setup.verify(out)
    tampered = setup.tmp / "firmware.bin"
    data = bytearray((setup.repo / "artifacts" / "firmware.bin").read_bytes())
    data[100] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="SHA-256 is not in the manifest"):
        setup.verify(out, artifact=tampered)


def test_a_tampered_manifest_is_refused(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    out = setup.export()
    data = json.loads((out / "manifest.json").read_bytes())
    data["targets"]["fleets"].append("gateways")
    (out / "manifest.json").write_text(json.dumps(data, sort_keys=True, indent=2) + "\n")
    with pytest.raises(VerifyError, match="content was changed after signing"):
        setup.verify(out, fleet="gateways")
    if OPENSSL is not None:
        run = openssl_cms_verify(out, out / "ca.pem")
        assert run.returncode != 0 and "content verify error" in run.stderr


def test_a_wrong_fleet_is_refused(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    out = setup.export()
    setup.verify(out, fleet="sensors")
    with pytest.raises(VerifyError, match="does not target fleet 'gateways'"):
        setup.verify(out, fleet="gateways")


def test_an_untrusted_root_is_refused(setup: Setup, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    out = setup.export()
    other = Setup(tmp_path / "other", monkeypatch)
    other.declare(signing_profile(), release())
    other.apply()
    foreign = other.export(out="other-out")
    (out / "ca.pem").write_bytes((foreign / "ca.pem").read_bytes())
    with pytest.raises(VerifyError, match="does not chain to the trust anchors"):
        setup.verify(out)


@pytest.mark.parametrize("algorithm", ["ECDSA-P256", "ML-DSA-65"])
def test_a_revoked_signer_is_refused_after_the_next_crl(setup: Setup, algorithm: str) -> None:
    setup.declare(signing_profile(algorithm=algorithm), release())
    setup.apply()
    out = setup.export()
    before = setup.crl()
    setup.verify(out, crls=[before])
    setup.declare(signing_profile(algorithm=algorithm, revoked={"reason": "keyCompromise"}),
                  release())
    report = setup.apply(setup.now + timedelta(minutes=1))
    assert report.result.done["revoke-signer"] == 1
    assert "sign-release" not in report.result.done
    assert any("SigningProfile/firmware is revoked" in w for w in report.plan.warnings)
    setup.verify(out, crls=[before], now=setup.now + timedelta(minutes=2))  # the old CRL
    after = setup.crl()
    with pytest.raises(VerifyError, match=r"revoked \(key_compromise"):
        setup.verify(out, crls=[after], now=setup.now + timedelta(minutes=2))
    if algorithm == "ECDSA-P256" and OPENSSL is not None:
        at = setup.now + timedelta(minutes=2)  # when the new CRL is current
        assert openssl_cms_verify(out, out / "ca.pem", crl=before, attime=at).returncode == 0
        run = openssl_cms_verify(out, out / "ca.pem", crl=after, attime=at)
        assert run.returncode != 0 and "certificate revoked" in run.stderr


def test_a_withdrawn_release_is_refused_after_the_next_crl(setup: Setup) -> None:
    setup.declare(signing_profile(), release(), release("fw-2"))
    setup.apply()
    out = setup.export()
    kept = setup.export("fw-2", out="kept")
    setup.declare(signing_profile(), release(revoked={"reason": "superseded"}),
                  release("fw-2"))
    report = setup.apply(setup.now + timedelta(minutes=1))
    assert report.result.done["withdraw-release"] == 1
    assert any(a.action == "publish-crl" and a.name == "signing-ca"
               for a in report.plan.actions)
    crl = setup.crl()
    later = setup.now + timedelta(minutes=2)
    with pytest.raises(VerifyError, match=r"revoked \(superseded.*withdrawn"):
        setup.verify(out, crls=[crl], now=later)
    setup.verify(kept, crls=[crl], now=later)  # only the withdrawn release
    assert setup.apply(setup.now + timedelta(minutes=3)).result.done.get(
        "sign-release") is None  # a withdrawn release is not signed again
    if OPENSSL is not None:
        run = openssl_cms_verify(out, out / "ca.pem", crl=crl, attime=later)
        assert run.returncode != 0 and "certificate revoked" in run.stderr
        assert openssl_cms_verify(kept, kept / "ca.pem", crl=crl, attime=later).returncode == 0


def test_an_expired_signer_without_a_timestamp_is_refused(setup: Setup) -> None:
    setup.declare(signing_profile(timestamps=False, duration="24h"), release())
    setup.apply()
    out = setup.export()
    setup.verify(out, now=setup.now + timedelta(hours=23))
    expired = setup.now + timedelta(days=2)
    with pytest.raises(VerifyError, match="expired .* and the signature has no timestamp"):
        setup.verify(out, now=expired)
    if OPENSSL is not None:
        run = openssl_cms_verify(out, out / "ca.pem", attime=expired)
        assert run.returncode != 0 and "certificate has expired" in run.stderr


def test_an_expired_signer_with_a_timestamp_is_accepted(setup: Setup) -> None:
    setup.declare(signing_profile(timestamps=True, duration="24h"), release())
    setup.apply()
    out = setup.export()
    expired = setup.now + timedelta(days=20)
    crl = setup.crl()
    result = setup.verify(out, now=expired, crls=[crl], fleet="sensors")
    assert result.timestamp is not None
    assert result.checked_at == result.timestamp  # the chain was judged at genTime
    assert abs(result.timestamp - setup.now) < timedelta(seconds=2)
    if OPENSSL is not None:  # OpenSSL agrees at the time the token attests
        assert openssl_cms_verify(out, out / "ca.pem", attime=result.timestamp).returncode == 0


def test_a_revoked_signer_stays_refused_after_it_expires(setup: Setup) -> None:
    """A timestamp does not rescue a revoked signer: revoked signing certificates stay on the
    CRL after they expire."""
    setup.declare(signing_profile(duration="24h"), release())
    setup.apply()
    out = setup.export()
    setup.declare(signing_profile(duration="24h", revoked={"reason": "keyCompromise"}),
                  release())
    setup.apply(setup.now + timedelta(hours=1))
    later = setup.now + timedelta(days=3)
    setup.apply(later)  # the CRL re-published after the signing certificate expired
    with pytest.raises(VerifyError, match="revoked"):
        setup.verify(out, crls=[setup.crl()], now=later)


@needs_openssl
def test_with_crls_one_from_the_signers_issuer_is_required(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    out = setup.export()
    with pytest.raises(VerifyError, match="no CRL from CN=Release Signing CA"):
        setup.verify(out, crls=[setup.crl("root")])
