"""`DeviceKey.from_pem` (the P-256 fast path) against the general way, `DeviceKey.of` of the
loaded key: the same DeviceKey, or the same refusal, over random keys and PEM forms."""

from __future__ import annotations

import base64
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from controller.pki import keys
from controller.pki.errors import PKIError

SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
KEYS = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(8)] + [
    ec.generate_private_key(ec.SECP384R1()).public_key(),
    ed25519.Ed25519PrivateKey.generate().public_key(),
    rsa.generate_private_key(65537, 2048).public_key()]


def reference(pem: bytes) -> keys.DeviceKey | str:
    try:
        return keys.DeviceKey.of(keys.load_public_key_pem(pem))
    except PKIError as exc:
        return f"refused: {exc}"


def fast(pem: bytes) -> keys.DeviceKey | str:
    try:
        return keys.DeviceKey.from_pem(pem)
    except PKIError as exc:
        return f"refused: {exc}"


def pem_of(der: bytes, chance: random.Random) -> bytes:
    """`der` as PEM, written in one of the ways people write it."""
    body = base64.b64encode(der)
    width = chance.choice([64, 76, 40, len(body) or 64])
    lines = [body[i:i + width] for i in range(0, len(body), width)]
    newline = chance.choice([b"\n", b"\r\n"])
    text = newline.join([b"-----BEGIN PUBLIC KEY-----", *lines, b"-----END PUBLIC KEY-----"])
    return chance.choice([b"", b"\n", b"  "]) + text + chance.choice([b"", b"\n", b"\n\n"])


def variant(der: bytes, chance: random.Random) -> bytes:
    """The key's DER as is, or spoilt: a compressed point, a changed byte, cut short."""
    choice = chance.randrange(6)
    if choice == 0 and len(der) == 91:  # the same P-256 key with a compressed point
        key = serialization.load_der_public_key(der)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key.public_bytes(serialization.Encoding.DER, SPKI) if chance.random() < 0.5 \
            else _compressed(key)
    if choice == 1:
        index = chance.randrange(len(der))
        return der[:index] + bytes([der[index] ^ (1 << chance.randrange(8))]) + der[index + 1:]
    if choice == 2:
        return der[:chance.randrange(len(der))]
    return der


def _compressed(key: ec.EllipticCurvePublicKey) -> bytes:
    point = key.public_bytes(serialization.Encoding.X962,
                             serialization.PublicFormat.CompressedPoint)
    prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    return prefix + point


@pytest.mark.parametrize("seed", range(300))
def test_the_fast_path_reads_what_the_general_way_reads(seed: int) -> None:
    chance = random.Random(seed)
    der = chance.choice(KEYS).public_bytes(serialization.Encoding.DER, SPKI)
    pem = pem_of(variant(der, chance), chance)
    if chance.random() < 0.1:
        pem = chance.choice([b"text before\n", b""]) + pem + chance.choice([b"", b"\nafter"])
    assert fast(pem) == reference(pem), pem


def test_a_p256_key_keeps_its_canonical_der(monkeypatch: pytest.MonkeyPatch) -> None:
    key = KEYS[0]
    der = key.public_bytes(serialization.Encoding.DER, SPKI)
    compressed = pem_of(_compressed(key), random.Random(0))
    assert keys.DeviceKey.from_pem(compressed) == keys.DeviceKey(
        "ECDSA-P256", der)  # the general way: re-encoded, as the certificate builder would
    monkeypatch.setattr(keys, "load_public_key_pem", None)  # not taken by the fast path
    found = keys.DeviceKey.from_pem(key.public_bytes(serialization.Encoding.PEM, SPKI))
    assert found == keys.DeviceKey("ECDSA-P256", der)
    assert found.fingerprint == keys.public_key_fingerprint(key)


@pytest.mark.parametrize("seed", range(40))
def test_a_point_is_on_p256_where_openssl_loads_it(seed: int) -> None:
    """`on_p256` against OpenSSL (`from_encoded_point`) over points of random keys and spoilt
    ones: a coordinate plus p (equal modulo p, out of range), y one off or negated, a bit
    flipped, random bytes, zeros. It must never accept what OpenSSL refuses."""
    chance = random.Random(seed)
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    x, y = int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big")
    field = keys._P256_P

    def of(x: int, y: int) -> bytes:
        return b"\x04" + (x % 2**256).to_bytes(32, "big") + (y % 2**256).to_bytes(32, "big")

    small_x = next((x, y) for x in range(100) if (y := pow(
        (x**3 - 3 * x + keys._P256_B) % field, (field + 1) // 4, field)) ** 2 % field
        == (x**3 - 3 * x + keys._P256_B) % field)  # a point whose x + p has 32 bytes
    flipped = bytearray(point)
    flipped[chance.randrange(1, 65)] ^= 1 << chance.randrange(8)
    for candidate in (point, of(x, field - y), of(x, y + 1), of(x + field, y), of(x, y + field),
                      bytes(flipped), b"\x04" + chance.randbytes(64), of(0, 0),
                      b"\x04" + point[1:33], b"\x02" + point[1:], of(*small_x),
                      of(small_x[0] + field, small_x[1])):
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), candidate)
            loads = len(candidate) == 65 and candidate[0] == 4
        except ValueError:
            loads = False
        assert keys.on_p256(candidate) == loads, candidate.hex()
