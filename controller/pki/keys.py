"""Key generation, identification and (de)serialisation."""

from __future__ import annotations

import base64
import binascii
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)

from .errors import PKIError

PrivateKey: TypeAlias = (
    ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | rsa.RSAPrivateKey
    | mldsa.MLDSA44PrivateKey
    | mldsa.MLDSA65PrivateKey
    | mldsa.MLDSA87PrivateKey
)
PublicKey: TypeAlias = (
    ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | rsa.RSAPublicKey
    | mldsa.MLDSA44PublicKey
    | mldsa.MLDSA65PublicKey
    | mldsa.MLDSA87PublicKey
)

_RSA_EXPONENT = 65537

_GENERATORS: dict[str, Callable[[], PrivateKey]] = {
    "ECDSA-P256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ECDSA-P384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
    "RSA-3072": lambda: rsa.generate_private_key(_RSA_EXPONENT, 3072),
    "RSA-4096": lambda: rsa.generate_private_key(_RSA_EXPONENT, 4096),
    "ML-DSA-44": mldsa.MLDSA44PrivateKey.generate,
    "ML-DSA-65": mldsa.MLDSA65PrivateKey.generate,
    "ML-DSA-87": mldsa.MLDSA87PrivateKey.generate,
}
KEY_ALGORITHMS: tuple[str, ...] = tuple(_GENERATORS)
_EC_CURVE_NAMES = {"secp256r1": "P256", "secp384r1": "P384"}


def generate_private_key(algorithm: str) -> PrivateKey:
    """Generate a fresh private key for one of KEY_ALGORITHMS."""
    try:
        generator = _GENERATORS[algorithm]
    except KeyError:
        allowed = ", ".join(KEY_ALGORITHMS)
        raise ValueError(f"unknown key algorithm {algorithm!r}; allowed: {allowed}") from None
    return generator()


def key_algorithm_of(public_key: PublicKey) -> str:
    """Name a public key's algorithm, e.g. "ECDSA-P256", "RSA-2048" or "ML-DSA-65"."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve.name
        return f"ECDSA-{_EC_CURVE_NAMES.get(curve, curve)}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, mldsa.MLDSA44PublicKey):
        return "ML-DSA-44"
    if isinstance(public_key, mldsa.MLDSA65PublicKey):
        return "ML-DSA-65"
    if isinstance(public_key, mldsa.MLDSA87PublicKey):
        return "ML-DSA-87"
    raise PKIError(f"unsupported public key type {type(public_key).__name__}")


def signature_hash(
    private_key: PrivateKey,
) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """Digest used when signing with private_key (None for Ed25519 and ML-DSA)."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        size = private_key.curve.key_size
        if size <= 256:
            return hashes.SHA256()
        return hashes.SHA384() if size <= 384 else hashes.SHA512()
    if isinstance(private_key, rsa.RSAPrivateKey):
        return hashes.SHA256() if private_key.key_size <= 3072 else hashes.SHA384()
    return None


def supported_private_key(key: PrivateKeyTypes) -> PrivateKey:
    if not isinstance(key, PrivateKey):
        raise PKIError(f"unsupported private key type {type(key).__name__}")
    return key


def supported_public_key(key: PublicKeyTypes) -> PublicKey:
    if not isinstance(key, PublicKey):
        raise PKIError(f"unsupported public key type {type(key).__name__}")
    return key


def private_key_to_der(key: PrivateKey) -> bytes:
    """Serialise key as unencrypted PKCS#8 DER."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_der(data: bytes) -> PrivateKey:
    """Load an unencrypted PKCS#8 DER private key."""
    try:
        key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PKIError("not an unencrypted PKCS#8 DER private key") from None
    return supported_private_key(key)


def private_key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """Serialise key as PKCS#8 PEM, encrypted with the best available cipher if passphrase."""
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase is not None:
        if not passphrase:
            raise PKIError("passphrase must not be empty")
        encryption = serialization.BestAvailableEncryption(passphrase)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key_pem(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM private key, decrypting it with passphrase when encrypted."""
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        problem = "it is encrypted but no" if passphrase is None else "it is not encrypted but a"
        raise PKIError(f"cannot load private key: {problem} passphrase was given") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PKIError("cannot load private key: invalid PEM or wrong passphrase") from None
    return supported_private_key(key)


def public_key_to_pem(public_key: PublicKey) -> bytes:
    """Serialise public_key as a PEM SubjectPublicKeyInfo."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_pem(data: bytes) -> PublicKey:
    """Load a PEM SubjectPublicKeyInfo public key."""
    try:
        key = serialization.load_pem_public_key(data)
    except UnsupportedAlgorithm:
        raise PKIError("unsupported public key algorithm") from None
    except ValueError:
        raise PKIError("not a PEM public key (expected -----BEGIN PUBLIC KEY----- with valid "
                       "base64 DER inside)") from None
    return supported_public_key(key)


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A device's public key as its certificate carries it: the algorithm and the DER
    SubjectPublicKeyInfo. Plans hold these, not key objects: a loaded P-256 key costs about
    2 KB of memory, 15 times its DER (2 GB at a million devices)."""

    algorithm: str
    der: bytes

    @classmethod
    def of(cls, public_key: PublicKey) -> DeviceKey:
        return cls(sys.intern(key_algorithm_of(public_key)), public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))

    @classmethod
    def from_pem(cls, data: bytes) -> DeviceKey:
        """`of(load_public_key_pem(data))`, at a fraction of the cost for a P-256 key in the
        usual PEM form (uncompressed point, named curve): its point is checked (`on_p256`) and
        its DER kept as given, neither loaded nor encoded again."""
        der = _p256_der(data)
        if der is not None and on_p256(der[len(_P256_SPKI):]):
            return cls(P256, der)
        return cls.of(load_public_key_pem(data))  # refused there if it is no key

    @property
    def fingerprint(self) -> str:
        """As `public_key_fingerprint`."""
        return hashlib.sha256(self.der).hexdigest()

    def load(self) -> PublicKey:
        return supported_public_key(serialization.load_der_public_key(self.der))


P256 = sys.intern("ECDSA-P256")
# SubjectPublicKeyInfo of a P-256 key with an uncompressed point: this prefix, then the point
_P256_SPKI = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_PEM_BEGIN, _PEM_END = b"-----BEGIN PUBLIC KEY-----", b"-----END PUBLIC KEY-----"


# P-256's field prime and coefficient b (FIPS 186-4 D.1.2.3; a = -3)
_P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def on_p256(point: bytes) -> bool:
    """Whether an uncompressed point (04, x, y) is a P-256 public key: x and y below p and
    y² = x³ - 3x + b (mod p), what OpenSSL checks when it loads one (the point at infinity has
    no such encoding, and the cofactor is 1: SP 800-56A 5.6.2.3.3). A quarter of the cost of
    loading the key with OpenSSL, which a plan of a million devices paid for each; what this
    does not accept is loaded the general way."""
    if len(point) != 65 or point[0] != 4:
        return False
    x, y = int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big")
    return x < _P256_P and y < _P256_P and (y * y - x * (x * x - 3) - _P256_B) % _P256_P == 0


def _p256_der(pem: bytes) -> bytes | None:
    """The DER of a PEM that is one SubjectPublicKeyInfo block (surrounding whitespace aside,
    base64 lines ending in LF or CRLF) of canonical P-256 form; None for anything else (read
    the general way)."""
    text = pem.strip()
    body = text[len(_PEM_BEGIN):-len(_PEM_END)]
    if not text.startswith(_PEM_BEGIN) or not text.endswith(_PEM_END) \
            or body[:1] not in (b"\n", b"\r") or body[-1:] != b"\n":
        return None
    try:
        der = base64.b64decode(body.replace(b"\r\n", b"").replace(b"\n", b""), validate=True)
    except binascii.Error:
        return None
    if len(der) != len(_P256_SPKI) + 65 or not der.startswith(_P256_SPKI) \
            or der[len(_P256_SPKI)] != 4:
        return None
    return der


def public_key_fingerprint(public_key: CertificatePublicKeyTypes) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()
