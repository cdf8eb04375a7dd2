"""Naming key algorithms by the shape of the public key, as the report does for every row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.x509.oid import NameOID

from controller.pki.keys import PublicKey
from controller.report.job import KeyAlgorithmNames

SIGNER = ec.generate_private_key(ec.SECP256R1())
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])


def der_for(public_key: PublicKey, serial: int) -> bytes:
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME)
                   .public_key(public_key).serial_number(serial)
                   .not_valid_before(now).not_valid_after(now + timedelta(days=1))
                   .sign(SIGNER, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.DER)


def test_each_shape_is_named_like_a_full_parse() -> None:
    keys = {"RSA-2048": rsa.generate_private_key(65537, 2048),
            "RSA-3072": rsa.generate_private_key(65537, 3072),
            "ECDSA-P256": ec.generate_private_key(ec.SECP256R1()),
            "ECDSA-P384": ec.generate_private_key(ec.SECP384R1()),
            "ECDSA-secp224r1": ec.generate_private_key(ec.SECP224R1()),
            "Ed25519": ed25519.Ed25519PrivateKey.generate(),
            "ML-DSA-44": mldsa.MLDSA44PrivateKey.generate()}
    names = KeyAlgorithmNames()
    for round_ in range(2):  # the second round is answered from the shapes already seen
        for serial, (expected, key) in enumerate(keys.items(), start=1):
            assert names(der_for(key.public_key(), serial + 100 * round_)) == expected
    assert len(names.known) == len(keys)


def test_a_second_key_of_the_same_algorithm_is_not_parsed_again() -> None:
    names = KeyAlgorithmNames()
    first = der_for(ec.generate_private_key(ec.SECP256R1()).public_key(), 1)
    assert names(first) == "ECDSA-P256"
    names.known = {shape: "marker" for shape in names.known}
    assert names(der_for(ec.generate_private_key(ec.SECP256R1()).public_key(), 2)) == "marker"
