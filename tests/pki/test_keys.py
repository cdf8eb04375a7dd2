"""Key generation, algorithm naming and (de)serialisation."""

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from controller.pki import (
    KEY_ALGORITHMS,
    PKIError,
    generate_private_key,
    key_algorithm_of,
    load_private_key_pem,
    load_public_key_pem,
    private_key_from_der,
    private_key_to_der,
    private_key_to_pem,
    public_key_fingerprint,
    public_key_to_pem,
    signature_hash,
)

from .support import KeyFor, Openssl, Writer

PASSPHRASE = b"fleet-secret-passphrase"


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_generate_and_name_round_trip(algorithm: str, key_for: KeyFor) -> None:
    key = key_for(algorithm)
    assert key_algorithm_of(key.public_key()) == algorithm


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_der_and_encrypted_pem_round_trip(algorithm: str, key_for: KeyFor) -> None:
    key = key_for(algorithm)
    der = private_key_to_der(key)
    assert private_key_to_der(private_key_from_der(der)) == der
    pem = private_key_to_pem(key, PASSPHRASE)
    assert b"ENCRYPTED PRIVATE KEY" in pem
    assert private_key_to_der(load_private_key_pem(pem, PASSPHRASE)) == der
    plain = private_key_to_pem(key)
    assert b"-----BEGIN PRIVATE KEY-----" in plain
    assert private_key_to_der(load_private_key_pem(plain, None)) == der
    public_pem = public_key_to_pem(key.public_key())
    assert public_key_to_pem(load_public_key_pem(public_pem)) == public_pem


def test_unknown_algorithm_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="DSA-1024") as info:
        generate_private_key("DSA-1024")
    assert "ECDSA-P256" in str(info.value) and "ML-DSA-87" in str(info.value)


def test_non_standard_sizes_and_curves_are_named_for_policy() -> None:
    assert key_algorithm_of(rsa.generate_private_key(65537, 2048).public_key()) == "RSA-2048"
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    assert key_algorithm_of(p521) == "ECDSA-secp521r1"


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        ("ECDSA-P256", hashes.SHA256),
        ("ECDSA-P384", hashes.SHA384),
        ("RSA-3072", hashes.SHA256),
        ("RSA-4096", hashes.SHA384),
        ("Ed25519", None),
        ("ML-DSA-44", None),
        ("ML-DSA-87", None),
    ],
)
def test_signature_hash(
    algorithm: str, digest: type[hashes.HashAlgorithm] | None, key_for: KeyFor
) -> None:
    chosen = signature_hash(key_for(algorithm))
    if digest is None:
        assert chosen is None
    else:
        assert isinstance(chosen, digest)


def test_wrong_or_missing_passphrase_is_a_clean_pki_error() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key_to_pem(key, PASSPHRASE)
    secret = key.private_numbers().private_value
    for passphrase in (b"wrong", None):
        with pytest.raises(PKIError) as info:
            load_private_key_pem(pem, passphrase)
        assert str(secret) not in str(info.value) and hex(secret)[2:] not in str(info.value)
    with pytest.raises(PKIError, match="not encrypted"):
        load_private_key_pem(private_key_to_pem(key), PASSPHRASE)
    with pytest.raises(PKIError, match="empty"):
        private_key_to_pem(key, b"")


@pytest.mark.parametrize("loader", [load_public_key_pem, private_key_from_der])
def test_garbage_keys_raise_pki_error(loader: Callable[[bytes], object]) -> None:
    with pytest.raises(PKIError):
        loader(b"-----BEGIN PUBLIC KEY-----\nbm9wZQ==\n-----END PUBLIC KEY-----\n")


def test_openssl_reads_encrypted_pem_and_agrees_on_fingerprint(
    openssl: Openssl, write: Writer, tmp_path: Path, key_for: KeyFor
) -> None:
    key = key_for("ECDSA-P384")
    name = write("key.pem", private_key_to_pem(key, PASSPHRASE))
    result = openssl(
        "pkey",
        "-in",
        name,
        "-passin",
        f"pass:{PASSPHRASE.decode()}",
        "-pubout",
        "-outform",
        "DER",
        "-out",
        "pub.der",
    )
    assert result.returncode == 0, result.stdout
    spki = (tmp_path / "pub.der").read_bytes()
    assert public_key_fingerprint(key.public_key()) == hashlib.sha256(spki).hexdigest()
