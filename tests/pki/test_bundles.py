"""PKCS#12 bundles, read back by the independent `openssl` CLI."""

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from controller.pki import PKIError, private_key_to_der, to_pkcs12

from .support import ChainFor, KeyFor, Openssl, Writer


def test_openssl_reads_encrypted_ecdsa_bundle(
    chain_for: ChainFor, openssl: Openssl, write: Writer
) -> None:
    chain = chain_for("ECDSA-P256")
    data = to_pkcs12(
        name="device-1",
        key=chain.leaf_key,
        certificate=chain.leaf,
        chain=[chain.inter, chain.root],
        passphrase=b"x",
    )
    name = write("bundle.p12", data)
    info = openssl("pkcs12", "-info", "-nokeys", "-in", name, "-passin", "pass:x")
    assert info.returncode == 0, info.stdout
    # kdf_rounds governs PBES2 only; cryptography keeps the MAC's own iteration count at 2048.
    assert "MAC: sha256," in info.stdout
    pbes2 = "PBES2, PBKDF2, AES-256-CBC, Iteration 50000, PRF hmacWithSHA256"
    assert f"PKCS7 Encrypted data: {pbes2}" in info.stdout
    assert f"Shrouded Keybag: {pbes2}" in info.stdout
    assert info.stdout.count("BEGIN CERTIFICATE") == 3
    assert "friendlyName: device-1" in info.stdout
    wrong = openssl("pkcs12", "-info", "-nokeys", "-in", name, "-passin", "pass:y")
    assert wrong.returncode != 0
    key, cert, extra = pkcs12.load_key_and_certificates(data, b"x")
    assert key is not None and private_key_to_der(key) == private_key_to_der(chain.leaf_key)  # type: ignore[arg-type]
    assert cert == chain.leaf and extra == [chain.inter, chain.root]


def test_unencrypted_bundle_without_key(
    chain_for: ChainFor, openssl: Openssl, write: Writer
) -> None:
    chain = chain_for("Ed25519")
    data = to_pkcs12(
        name="trust", key=None, certificate=chain.inter, chain=[chain.root], passphrase=None
    )
    info = openssl("pkcs12", "-info", "-nokeys", "-in", write("b.p12", data), "-passin", "pass:")
    assert info.returncode == 0, info.stdout
    assert info.stdout.count("BEGIN CERTIFICATE") == 2


def test_mldsa_private_key_is_rejected_clearly(chain_for: ChainFor) -> None:
    chain = chain_for("ML-DSA-44")
    with pytest.raises(PKIError, match="ML-DSA-44"):
        to_pkcs12(name="pq", key=chain.leaf_key, certificate=chain.leaf, chain=[], passphrase=b"x")
    # The certificates alone can still be bundled.
    assert to_pkcs12(name="pq", key=None, certificate=chain.leaf, chain=[], passphrase=b"x")


def test_mismatched_key_and_empty_passphrase_are_rejected(
    chain_for: ChainFor, key_for: KeyFor
) -> None:
    chain = chain_for("ECDSA-P256")
    with pytest.raises(PKIError, match="does not match"):
        to_pkcs12(
            name="x", key=key_for("ECDSA-P256"), certificate=chain.leaf, chain=[], passphrase=None
        )
    with pytest.raises(PKIError, match="empty"):
        to_pkcs12(name="x", key=chain.leaf_key, certificate=chain.leaf, chain=[], passphrase=b"")
