"""The pure layer on its own: malformed or altered CMS structures are refused with a reason,
never accepted and never a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from controller.pki import certificates as certs
from controller.pki import keys
from controller.signing import cms
from controller.signing.verify import VerifyError, verify_release

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MANIFEST = (b'{\n  "artifacts": [],\n  "kind": "ReleaseManifest",\n'
            b'  "targets": {"fleets": ["a"]}\n}\n')


def pki(usage: str = "code signing") -> tuple[x509.Certificate, x509.Certificate,
                                               keys.PrivateKey]:
    root_key = keys.generate_private_key("ECDSA-P256")
    root = certs.build_ca_certificate(
        subject=certs.build_name({"commonName": "Unit Root"}), public_key=root_key.public_key(),
        issuer_key=root_key, issuer_certificate=None, not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30), path_length=0)
    key = keys.generate_private_key("ECDSA-P256")
    leaf = certs.build_leaf_certificate(
        subject=certs.build_name({"commonName": "Unit Signer"}), subject_alt_names=[],
        public_key=key.public_key(), issuer_key=root_key, issuer_certificate=root,
        not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=10),
        usages=["digital signature", usage])
    return root, leaf, key


def test_a_signature_verifies_and_a_flipped_signature_byte_does_not() -> None:
    root, leaf, key = pki()
    der = cms.sign(MANIFEST, key, leaf, [root], NOW)
    assert verify_release(MANIFEST, der, [root], NOW, fleet="a").signing_time == NOW
    signed = cms.verify(der, MANIFEST)
    position = der.rfind(signed.signature) + len(signed.signature) - 1
    broken = der[:position] + bytes([der[position] ^ 1]) + der[position + 1:]
    with pytest.raises(VerifyError, match="signature does not verify"):
        verify_release(MANIFEST, broken, [root], NOW)


@pytest.mark.parametrize("garbage", [b"", b"\x30\x03\x02\x01\x01", b"not der at all" * 10])
def test_garbage_is_refused_with_a_reason(garbage: bytes) -> None:
    root, _, _ = pki()
    with pytest.raises(VerifyError, match="signature: "):
        verify_release(MANIFEST, garbage, [root], NOW)


def test_a_certificate_without_code_signing_is_refused() -> None:
    root, leaf, key = pki(usage="client auth")
    der = cms.sign(MANIFEST, key, leaf, [root], NOW)
    with pytest.raises(VerifyError, match="is not for codeSigning"):
        verify_release(MANIFEST, der, [root], NOW)


def test_a_signature_without_signing_time_is_refused() -> None:
    root, leaf, key = pki()
    der = cms.sign(MANIFEST, key, leaf, [root], None)
    with pytest.raises(VerifyError, match="no signingTime"):
        verify_release(MANIFEST, der, [root], NOW)


def test_not_yet_valid_and_not_a_manifest_are_refused() -> None:
    root, leaf, key = pki()
    der = cms.sign(MANIFEST, key, leaf, [root], NOW)
    with pytest.raises(VerifyError, match="not valid before"):
        verify_release(MANIFEST, der, [root], NOW - timedelta(days=5))
    other = b'{"kind": "Something"}'
    with pytest.raises(VerifyError, match="not a ReleaseManifest"):
        verify_release(other, cms.sign(other, key, leaf, [root], NOW), [root], NOW)
