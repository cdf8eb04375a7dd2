"""PKCS#12 bundles."""

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.serialization import pkcs12

from .errors import PKIError
from .keys import PrivateKey, key_algorithm_of, public_key_fingerprint

_KDF_ROUNDS = 50000
_MLDSA_KEYS = mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey


def to_pkcs12(
    *,
    name: str,
    key: PrivateKey | None,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    passphrase: bytes | None,
) -> bytes:
    """Bundle key, certificate and chain as PKCS#12 (PBES2/AES-256, HMAC-SHA256 if passphrase).

    ML-DSA private keys are rejected: cryptography cannot put them in PKCS#12.
    """
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase is not None:
        if not passphrase:
            raise PKIError("PKCS#12 passphrase must not be empty")
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(passphrase)
        )
    if key is not None:
        if public_key_fingerprint(key.public_key()) != public_key_fingerprint(
            certificate.public_key()
        ):
            raise PKIError("private key does not match the certificate")
        if isinstance(key, _MLDSA_KEYS):
            algorithm = key_algorithm_of(key.public_key())
            raise PKIError(f"PKCS#12 bundles do not support {algorithm} private keys")
    return pkcs12.serialize_key_and_certificates(
        name.encode(), key, certificate, list(chain), encryption
    )
