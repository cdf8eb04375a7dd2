"""Device intents: the profile rendered for one device, its key checked, its digest."""

from __future__ import annotations

import base64
import random
import textwrap
from typing import Any
from urllib.parse import urlparse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.api.resources import CertificateProfile, Device, DeviceFleet
from controller.pki import keys
from controller.pki.keys import public_key_fingerprint
from controller.plan.intents import DeviceIntent, IntentError, _check_san, device_intent

from .support import PROFILE_SPEC, SITE_OID, public_key_pem

Key = ec.EllipticCurvePrivateKey


def profile(**changes: Any) -> CertificateProfile:
    return CertificateProfile.model_validate(
        {"metadata": {"name": "client"}, "spec": {**PROFILE_SPEC, **changes}})


def device_profile(**changes: Any) -> CertificateProfile:
    return profile(keyGeneration="device", **changes)


def fleet(issuer: str = "issuing") -> DeviceFleet:
    return DeviceFleet.model_validate({"metadata": {"name": "sensors"}, "spec": {
        "issuerRef": {"name": issuer}, "profileRef": {"name": "client"}}})


def dev(device_id: str = "dev-1", **fields: Any) -> Device:
    return Device.model_validate({"id": device_id, "labels": {"site": "berlin"}, **fields})


def intent(prof: CertificateProfile, device: Device, issuer: str = "issuing") -> DeviceIntent:
    return device_intent(fleet(issuer), prof, device)


def csr_pem(key: Key, common_name: str | None) -> str:
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name(names))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def tampered_signature(pem: str) -> str:
    """The same CSR with one bit of its signature flipped (still well-formed DER)."""
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA `s` integer
    body = "\n".join(textwrap.wrap(base64.b64encode(bytes(der)).decode(), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"


# --- rendering -----------------------------------------------------------------------------


def test_server_keygen_intent_renders_the_profile() -> None:
    prof = profile(subjectAltNames={"dnsNames": ["{{ device.id }}.example.net"],
                                    "uris": ["urn:x:{{ fleet.name }}:{{ device.id }}"],
                                    "ipAddresses": ["10.0.0.1"],
                                    "emailAddresses": ["ops+{{ device.id }}@example.net"]})
    result = intent(prof, dev())
    assert result.device_id == "dev-1"
    assert result.subject == (("commonName", "dev-1"),)
    assert result.sans == (("dns", "dev-1.example.net"), ("uri", "urn:x:sensors:dev-1"),
                           ("ip", "10.0.0.1"), ("email", "ops+dev-1@example.net"))
    assert result.extensions == ((SITE_OID, "berlin"),)
    assert result.device_key is None
    assert result.key_fingerprint == "server-ECDSA-P256"
    assert result.digest == f"{result.content_digest}:server-ECDSA-P256"


def test_missing_label_names_the_device() -> None:
    device = Device.model_validate({"id": "dev-9"})
    with pytest.raises(IntentError, match=r"device 'dev-9' has no label 'site'") as caught:
        intent(profile(), device)
    assert caught.value.field == "labels"


@pytest.mark.parametrize(("sans", "site"), [
    ({"dnsNames": ["{{ device.labels.site }}.example.net"]}, "not a host"),
    ({"ipAddresses": ["{{ device.labels.site }}"]}, "10.0.0.300"),
    ({"uris": ["{{ device.labels.site }}"]}, "no-scheme"),
    ({"emailAddresses": ["{{ device.labels.site }}"]}, "nobody"),
])
def test_rendered_san_values_are_checked(sans: dict[str, list[str]], site: str) -> None:
    with pytest.raises(IntentError, match="SAN") as caught:
        intent(profile(subjectAltNames=sans), dev(labels={"site": site}))
    assert caught.value.field == "labels"


def test_uri_sans_are_checked_as_urlsplit_finds_a_scheme() -> None:
    """The check is a regular expression (urlparse cost a fifth of an intent); over random
    strings it accepts exactly what `urlparse(v).scheme` and no whitespace accepted, except
    that a leading control character (which urlparse strips) is refused."""
    rng = random.Random(7)
    alphabet = "aZ9+-.:/ @\t\u00a0\u2028%é1"
    for number in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        before = bool(urlparse(value).scheme) and not any(c.isspace() for c in value)
        try:
            _check_san("uri", value)
            now = True
        except ValueError:
            now = False
        assert now == before, (number, value)
    with pytest.raises(ValueError, match="absolute URI"):
        _check_san("uri", "\x01urn:x")


# --- device keys -----------------------------------------------------------------------------


def test_device_keygen_requires_public_key_or_csr() -> None:
    with pytest.raises(IntentError, match="give publicKey or csr") as caught:
        intent(device_profile(), dev())
    assert caught.value.field == "csr"


def test_server_keygen_refuses_a_device_public_key(p256_key: Key) -> None:
    with pytest.raises(IntentError, match="keyGeneration: server") as caught:
        intent(profile(), dev(publicKey=public_key_pem(p256_key)))
    assert caught.value.field == "publicKey"


def test_server_keygen_refuses_a_device_csr(p256_key: Key) -> None:
    with pytest.raises(IntentError, match="keyGeneration: server"):
        intent(profile(), dev(csr=csr_pem(p256_key, "dev-1")))


def test_device_public_key_is_used_and_fingerprinted(p256_key: Key) -> None:
    result = intent(device_profile(), dev(publicKey=public_key_pem(p256_key)))
    assert result.device_key == keys.DeviceKey("ECDSA-P256", p256_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert result.device_key.load() == p256_key.public_key()
    assert result.key_fingerprint == public_key_fingerprint(p256_key.public_key())
    assert result.digest.endswith(":" + result.key_fingerprint)


@pytest.mark.parametrize("common_name", ["dev-1", None])
def test_valid_csr_is_accepted(p256_key: Key, common_name: str | None) -> None:
    result = intent(device_profile(), dev(csr=csr_pem(p256_key, common_name)))
    assert result.key_fingerprint == public_key_fingerprint(p256_key.public_key())


def test_csr_with_bad_signature_is_refused(p256_key: Key) -> None:
    good = csr_pem(p256_key, "dev-1")
    bad = tampered_signature(good)
    assert bad != good
    assert x509.load_pem_x509_csr(bad.encode()).public_key() == p256_key.public_key()
    with pytest.raises(IntentError, match="signature") as caught:
        intent(device_profile(), dev(csr=bad))
    assert caught.value.field == "csr"


def test_csr_naming_another_device_is_refused(p256_key: Key) -> None:
    with pytest.raises(IntentError, match="'dev-2'.*'dev-1'") as caught:
        intent(device_profile(), dev("dev-1", csr=csr_pem(p256_key, "dev-2")))
    assert caught.value.field == "csr"


@pytest.mark.parametrize(("field", "value"), [
    ("csr", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
    ("publicKey", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
])
def test_unreadable_key_material_names_its_field(field: str, value: str) -> None:
    with pytest.raises(IntentError) as caught:
        intent(device_profile(), dev(**{field: value}))
    assert caught.value.field == field


def test_key_algorithm_mismatch_is_refused(p384_key: Key) -> None:
    with pytest.raises(IntentError, match="ECDSA-P384.*ECDSA-P256") as caught:
        intent(device_profile(), dev(publicKey=public_key_pem(p384_key)))
    assert caught.value.field == "publicKey"
    with pytest.raises(IntentError, match="ECDSA-P384.*ECDSA-P256") as caught:
        intent(device_profile(), dev(csr=csr_pem(p384_key, "dev-1")))
    assert caught.value.field == "csr"
    accepted = intent(device_profile(keyAlgorithm="ECDSA-P384"),
                      dev(publicKey=public_key_pem(p384_key)))
    assert accepted.device_key is not None and accepted.device_key.algorithm == "ECDSA-P384"
    assert accepted.device_key.load() == p384_key.public_key()


# --- digest ------------------------------------------------------------------------------------


def test_digest_is_deterministic() -> None:
    assert intent(profile(), dev()).digest == intent(profile(), dev()).digest


def test_digest_changes_when_a_label_used_in_a_template_changes() -> None:
    before = intent(profile(), dev(labels={"site": "berlin"}))
    after = intent(profile(), dev(labels={"site": "hamburg"}))
    assert before.content_digest != after.content_digest
    assert before.key_fingerprint == after.key_fingerprint


def test_digest_ignores_labels_no_template_uses() -> None:
    before = intent(profile(), dev(labels={"site": "berlin"}))
    after = intent(profile(), dev(labels={"site": "berlin", "colour": "blue"}))
    assert before.digest == after.digest


def test_digest_changes_with_the_device_key(p256_key: Key, other_p256_key: Key) -> None:
    first = intent(device_profile(), dev(publicKey=public_key_pem(p256_key)))
    second = intent(device_profile(), dev(publicKey=public_key_pem(other_p256_key)))
    assert first.content_digest == second.content_digest
    assert first.key_fingerprint != second.key_fingerprint
    assert first.digest != second.digest


@pytest.mark.parametrize("changes", [
    {"duration": "2160h"},
    {"renewBefore": "24h"},
    {"duration": "24000h", "renewBefore": "1000h"},
    {"rotationPolicy": "Never"},
])
def test_digest_ignores_lifetime_and_rotation_settings(changes: dict[str, str]) -> None:
    assert intent(profile(**changes), dev()).digest == intent(profile(), dev()).digest


@pytest.mark.parametrize("changes", [
    {"usages": ["digital signature", "server auth"]},
    {"subject": {"commonName": "{{ device.id }}", "organization": "ACME"}},
    {"extensions": []},
    {"subjectAltNames": {"dnsNames": ["{{ device.id }}.example.net"]}},
])
def test_digest_changes_with_certificate_content(changes: dict[str, Any]) -> None:
    changed = intent(profile(**changes), dev())
    assert changed.content_digest != intent(profile(), dev()).content_digest


def test_digest_changes_with_issuer_and_key_algorithm() -> None:
    base = intent(profile(), dev())
    assert intent(profile(), dev(), issuer="other-ca").content_digest != base.content_digest
    rsa = intent(profile(keyAlgorithm="RSA-3072"), dev())
    assert rsa.key_fingerprint == "server-RSA-3072" != base.key_fingerprint


def test_usage_order_does_not_matter() -> None:
    one = intent(profile(usages=["digital signature", "client auth"]), dev())
    other = intent(profile(usages=["client auth", "digital signature"]), dev())
    assert one.digest == other.digest


def test_the_digest_is_the_content_hash_of_the_rendered_certificate() -> None:
    """Stored in the inventory: computing it faster must not change it (else every device of
    an existing fleet would be re-issued)."""
    from controller.api.desired import content_hash
    for prof, issuer in ((profile(), "issuing"), (profile(usages=["server auth", "signing"]),
                                                  "other"), (profile(), "issuing")):
        for device_id in ("dev-1", "dev-2"):
            made = intent(prof, dev(device_id), issuer)
            spec = prof.spec
            assert made.content_digest == content_hash(
                issuer, spec.keyAlgorithm, spec.keyGeneration, sorted(spec.usages),
                made.subject, made.sans, made.extensions)
