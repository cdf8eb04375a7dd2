"""CSR loading and proof-of-possession checks."""

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller.pki import (
    KEY_ALGORITHMS,
    PKIError,
    build_name,
    csr_public_key,
    load_csr,
    public_key_fingerprint,
    signature_hash,
    verify_csr,
)

from .support import KeyFor, Openssl, Writer

# Keep RSA-4096 out to keep the suite fast; RSA-3072 covers RSA.
ALGORITHMS = [algorithm for algorithm in KEY_ALGORITHMS if algorithm != "RSA-4096"]


def _csr_pem(algorithm: str, key_for: KeyFor) -> bytes:
    key = key_for(algorithm)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(build_name({"commonName": f"device-{algorithm}"}))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("device.fleet.example")]), critical=False
        )
        .sign(key, signature_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _pem(der: bytes) -> bytes:
    """Wrap DER in PEM armour without parsing it."""
    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"


def _tampered(pem: bytes, index: int = -1) -> bytes:
    """Flip one octet of the CSR DER; the last octet lies inside the signature BIT STRING."""
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[index] ^= 0x01
    return _pem(bytes(der))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_good_csr_verifies_and_exposes_its_key(algorithm: str, key_for: KeyFor) -> None:
    csr = load_csr(_csr_pem(algorithm, key_for).decode())
    verify_csr(csr)
    assert public_key_fingerprint(csr_public_key(csr)) == public_key_fingerprint(
        key_for(algorithm).public_key()
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tampered_signature_is_rejected(algorithm: str, key_for: KeyFor) -> None:
    tampered = load_csr(_tampered(_csr_pem(algorithm, key_for)))
    with pytest.raises(PKIError, match="CSR signature is invalid"):
        verify_csr(tampered)


def test_tampered_csr_is_a_pki_error_even_if_unparseable(key_for: KeyFor) -> None:
    pem = _tampered(_csr_pem("ECDSA-P256", key_for), index=0)  # breaks the outer SEQUENCE tag
    with pytest.raises(PKIError, match="not a PEM certificate signing request"):
        load_csr(pem)


def test_garbage_is_not_a_csr() -> None:
    with pytest.raises(PKIError, match="not a PEM certificate signing request"):
        load_csr("hello")


def test_openssl_agrees_on_good_and_tampered_csr(
    key_for: KeyFor, openssl: Openssl, write: Writer
) -> None:
    pem = _csr_pem("ECDSA-P256", key_for)
    good = openssl("req", "-verify", "-noout", "-in", write("good.csr", pem))
    assert good.returncode == 0 and "verify OK" in good.stdout, good.stdout
    bad = openssl("req", "-verify", "-noout", "-in", write("bad.csr", _tampered(pem)))
    assert "verify OK" not in bad.stdout
