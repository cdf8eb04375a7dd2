"""The DER template (controller/pki/template.py) against x509.CertificateBuilder.

Property: for thousands of random devices over every profile feature (every SAN kind, custom
extensions with short and long values, every usage, subject and device key algorithms
including Ed25519, RSA and ML-DSA, long and non-ASCII names, empty subjects, validity clamped
to the issuer and past 2049), the template's TBSCertificate is byte-identical to the one
`build_leaf_certificate` makes from the same inputs, and its certificates verify. What it does
not cover (non-ECDSA issuers, extensions the builder refuses) it declines.
"""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from controller.pki import certificates as certs
from controller.pki import keys
from controller.pki.errors import PKIError
from controller.pki.template import LeafTemplate
from controller.pki.usages import USAGE_NAMES, parse_usages

ALPHABETS = ("abcdefghijklmnopqrstuvwxyz0123456789 -", "äöüßéèçñ Zürich Straße", "東京都センサー",
             "Ωμέγα ☃ 🚀", "'\"\\,+;<>=#")
NAME_KEYS = ("country", "province", "locality", "organization", "organizationalUnit",
             "commonName", "serialNumber")
DEVICE_ALGORITHMS = ("ECDSA-P256", "ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-3072",
                     "ML-DSA-44", "ML-DSA-65", "ML-DSA-87")


def text(rng: random.Random, longest: int) -> str:
    alphabet = rng.choice(ALPHABETS)
    value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, longest)))
    return value if value.strip() else "x" + value


def random_name(rng: random.Random) -> x509.Name:
    attributes: dict[str, str] = {}
    for key in rng.sample(NAME_KEYS, rng.randint(0, len(NAME_KEYS))):
        if key == "country":
            attributes[key] = rng.choice(["DE", "JP", "us"])
        elif key == "serialNumber":  # a PrintableString
            attributes[key] = f"SN-{rng.getrandbits(64):X}"
        else:  # at most the 64 UTF-8 octets cryptography allows for CN
            value = text(rng, 64)
            while len(value.encode()) > 64:
                value = value[:-1].strip() or "x"
            attributes[key] = value
    return certs.build_name(attributes)


def random_sans(rng: random.Random, required: bool) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for _ in range(rng.randint(1 if required else 0, 5)):
        label = f"d{rng.getrandbits(40):x}"
        kind = rng.choice(("dns", "uri", "ip4", "ip6", "email"))
        if kind == "dns":
            sans.append(x509.DNSName(f"{label}.{'x' * rng.randint(1, 60)}.example"))
        elif kind == "uri":
            path = "p" * rng.randint(0, 300)
            sans.append(x509.UniformResourceIdentifier(f"urn:fleet:{label}/{path}"))
        elif kind == "ip4":
            sans.append(x509.IPAddress(ipaddress.IPv4Address(rng.getrandbits(32))))
        elif kind == "ip6":
            sans.append(x509.IPAddress(ipaddress.IPv6Address(rng.getrandbits(128))))
        else:
            sans.append(x509.RFC822Name(f"{label}@devices.example"))
    return sans


def random_usages(rng: random.Random) -> list[str]:
    while True:
        usages = rng.sample(sorted(USAGE_NAMES - {"cert sign"}), rng.randint(1, 6))
        try:
            parse_usages(usages)
            return usages
        except PKIError:
            continue


@pytest.fixture(scope="module")
def device_keys() -> dict[str, list[keys.PublicKey]]:
    return {algorithm: [keys.generate_private_key(algorithm).public_key() for _ in range(3)]
            for algorithm in set(DEVICE_ALGORITHMS)}


@pytest.fixture(scope="module")
def issuers() -> list[tuple[x509.Certificate, keys.PrivateKey]]:
    """ECDSA intermediates (P-256, P-384), one valid past 2050, under a P-256 root."""
    now = datetime.now(UTC)
    root_key = keys.generate_private_key("ECDSA-P256")
    root = certs.build_ca_certificate(
        subject=certs.build_name({"commonName": "Template Root", "organization": "Tëst"}),
        public_key=root_key.public_key(), issuer_key=root_key, issuer_certificate=None,
        not_before=now - timedelta(days=1), not_after=now + timedelta(days=365 * 60),
        path_length=1)
    made = []
    for algorithm, years in (("ECDSA-P256", 2), ("ECDSA-P384", 2), ("ECDSA-P256", 50)):
        key = keys.generate_private_key(algorithm)
        made.append((certs.build_ca_certificate(
            subject=certs.build_name({"commonName": f"Issuing {algorithm} {years}y",
                                      "organizationalUnit": "Geräte"}),
            public_key=key.public_key(), issuer_key=root_key, issuer_certificate=root,
            not_before=now - timedelta(hours=1), not_after=now + timedelta(days=365 * years),
            path_length=0), key))
    return made


def test_template_tbs_is_the_builders_for_thousands_of_random_devices(
        device_keys: dict[str, list[keys.PublicKey]],
        issuers: list[tuple[x509.Certificate, keys.PrivateKey]]) -> None:
    rng = random.Random(20261130)
    now = datetime.now(UTC)
    templates: dict[tuple[int, tuple[str, ...], str | None, str | None], LeafTemplate] = {}
    for number in range(3000):
        issuer, issuer_key = rng.choice(issuers)
        usages = tuple(rng.choice([["digital signature", "client auth"], random_usages(rng)]))
        crl = rng.choice([None, "http://crl.example/issuing.crl"])
        ocsp = rng.choice([None, "http://ocsp.example/ocsp"])
        key = (issuers.index((issuer, issuer_key)), usages, crl, ocsp)
        if key not in templates:
            template = LeafTemplate.for_issuer(issuer, issuer_key, usages, crl, ocsp)
            assert template is not None
            templates[key] = template
        template = templates[key]
        subject = random_name(rng)
        sans = random_sans(rng, required=len(subject) == 0)
        public_key = rng.choice(device_keys[rng.choice(DEVICE_ALGORITHMS)])
        extra = [(f"1.3.6.1.4.1.{rng.randint(1, 99999)}.{n}",
                  certs.der_utf8_string(text(rng, rng.choice([10, 200]))))
                 for n in range(rng.randint(0, 3))]
        not_before = now - timedelta(seconds=rng.randint(0, 10**6),
                                     microseconds=rng.randint(0, 999_999))
        not_after = now + timedelta(days=rng.choice([1, 397, 800, 365 * 30, 365 * 70]),
                                    microseconds=rng.randint(0, 999_999))
        serial = certs.random_serial() if number % 10 else \
            rng.randint(1, 2 ** rng.randint(1, 159) - 1)
        inputs = dict(subject=subject, subject_alt_names=sans, not_before=not_before,
                      not_after=not_after, serial=serial)
        assert template.covers(extra)
        built = certs.build_leaf_certificate(
            **inputs, public_key=public_key, issuer_key=issuer_key, issuer_certificate=issuer,
            usages=usages, extra_extensions=extra, crl_distribution_point=crl, ocsp_url=ocsp)
        spki = keys.DeviceKey.of(public_key).der
        assert template.tbs(**inputs, spki=spki, extra_extensions=extra) \
            == built.tbs_certificate_bytes, number
        if number % 10 == 0:  # signed, and recorded as parsing it would record it
            signed = template.certificate(**inputs, spki=spki, extra_extensions=extra)
            made = x509.load_der_x509_certificate(signed.der)
            made.verify_directly_issued_by(issuer)
            assert made.tbs_certificate_bytes == built.tbs_certificate_bytes
            assert signed == certs.Signed.of(made), number


def test_what_the_template_does_not_cover_is_declined(
        issuers: list[tuple[x509.Certificate, keys.PrivateKey]]) -> None:
    issuer, issuer_key = issuers[0]
    for algorithm in ("Ed25519", "RSA-3072", "ML-DSA-44"):
        assert LeafTemplate.for_issuer(issuer, keys.generate_private_key(algorithm),
                                       ["digital signature"]) is None
    template = LeafTemplate.for_issuer(issuer, issuer_key, ["digital signature"])
    assert template is not None
    value = certs.der_utf8_string("x")
    assert template.covers([("1.2.3.4", value), ("1.2.3.5", value)])
    assert not template.covers([("1.2.3.4", value), ("1.2.3.4", value)])  # repeated
    assert not template.covers([("2.5.29.17", value)])  # a standard one (SAN)
    assert not template.covers([("not an oid", value)])
    with pytest.raises(PKIError, match="cert sign"):
        LeafTemplate.for_issuer(issuer, issuer_key, ["cert sign"])
    with pytest.raises(PKIError, match="issuer key does not match"):
        LeafTemplate.for_issuer(issuer, issuers[1][1], ["digital signature"])
    with pytest.raises(PKIError, match="empty subject"):
        template.tbs(subject=x509.Name([]), subject_alt_names=[],
                     spki=keys.DeviceKey.of(issuer_key.public_key()).der,
                     not_before=datetime.now(UTC),
                     not_after=datetime.now(UTC) + timedelta(days=1), serial=1)
