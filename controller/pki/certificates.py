"""Building, encoding and loading X.509 certificates."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from .errors import PKIError
from .keys import PrivateKey, PublicKey, public_key_fingerprint, signature_hash
from .usages import parse_usages


@dataclass(frozen=True, slots=True)
class Signed:
    """A certificate as issued: its DER and what an inventory records of it."""

    der: bytes
    serial: int
    not_before: datetime
    not_after: datetime

    @classmethod
    def of(cls, certificate: x509.Certificate) -> Signed:
        return cls(certificate.public_bytes(serialization.Encoding.DER),
                   certificate.serial_number, certificate.not_valid_before_utc,
                   certificate.not_valid_after_utc)


_NAME_ATTRIBUTES: dict[str, x509.ObjectIdentifier] = {
    "country": NameOID.COUNTRY_NAME,
    "province": NameOID.STATE_OR_PROVINCE_NAME,
    "locality": NameOID.LOCALITY_NAME,
    "organization": NameOID.ORGANIZATION_NAME,
    "organizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "commonName": NameOID.COMMON_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
}
_UTF8_STRING_TAG = 0x0C


SERIAL_RANDOM_BITS = 110
_SERIAL_TIME_BITS = 48


def random_serial() -> int:
    """A 159-bit serial number: bit 158 set, then the milliseconds since 1970 (48 bits), then
    110 bits from the CSPRNG.

    Every serial is positive, exactly 159 bits long and encodes in exactly 20 DER octets (the
    RFC 5280 maximum); 110 random bits are well over the 64 the CA/Browser Forum's Baseline
    Requirements (7.1) ask for. The time in front makes serials made later sort later (their
    hex is fixed-width), so the inventory's serial index grows at its end instead of at a
    random page per certificate; the time is the certificate's notBefore, public anyway.
    """
    millis = time.time_ns() // 1_000_000 % (1 << _SERIAL_TIME_BITS)
    return (1 << 158) | millis << SERIAL_RANDOM_BITS | secrets.randbits(SERIAL_RANDOM_BITS)


def build_name(attrs: Mapping[str, str]) -> x509.Name:
    """Build a distinguished name from camelCase attribute keys, in C/ST/L/O/OU/CN order."""
    unknown = sorted(set(attrs) - set(_NAME_ATTRIBUTES))
    if unknown:
        allowed = ", ".join(_NAME_ATTRIBUTES)
        raise PKIError(f"unknown name attribute(s) {', '.join(unknown)}; allowed: {allowed}")
    parts: list[x509.NameAttribute] = []
    for key, oid in _NAME_ATTRIBUTES.items():
        if key not in attrs:
            continue
        value = attrs[key]
        if not value.strip():
            raise PKIError(f"name attribute {key} must not be empty")
        if key == "country" and not (len(value) == 2 and value.isascii() and value.isalpha()):
            raise PKIError(f"country must be a two-letter code, got {value!r}")
        try:
            parts.append(x509.NameAttribute(oid, value))
        except ValueError as exc:
            raise PKIError(f"invalid name attribute {key}: {exc}") from None
    return x509.Name(parts)


def check_issuer(certificate: x509.Certificate, key: PrivateKey) -> None:
    """Raise PKIError unless certificate is a CA certificate whose public key matches key."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.value.ca:
        raise PKIError(f"issuer {certificate.subject.rfc4514_string()} is not a CA certificate")
    if public_key_fingerprint(key.public_key()) != public_key_fingerprint(certificate.public_key()):
        raise PKIError("issuer key does not match the issuer certificate")


def _validity(
    not_before: datetime, not_after: datetime, issuer: x509.Certificate | None
) -> tuple[datetime, datetime]:
    """Clamp not_after to the issuer's expiry and check the window is non-empty."""
    if not_before.tzinfo is None or not_after.tzinfo is None:
        raise PKIError("validity times must be timezone-aware")
    if issuer is not None:
        not_after = min(not_after, issuer.not_valid_after_utc)
    if not_before >= not_after:
        raise PKIError(f"empty validity window: not_before {not_before} >= not_after {not_after}")
    return not_before, not_after


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI matching the issuer's SKI (computed from its key when the SKI is absent)."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _revocation_extensions(
    crl_distribution_point: str | None, ocsp_url: str | None
) -> list[x509.ExtensionType]:
    """CRL distribution point and OCSP AIA extensions for the given issuer endpoints."""
    extensions: list[x509.ExtensionType] = []
    if crl_distribution_point:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_distribution_point)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        extensions.append(x509.CRLDistributionPoints([point]))
    if ocsp_url:
        access = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        extensions.append(x509.AuthorityInformationAccess([access]))
    return extensions


def _base_builder(
    subject: x509.Name,
    issuer_name: x509.Name,
    public_key: PublicKey,
    serial: int | None,
    validity: tuple[datetime, datetime],
) -> x509.CertificateBuilder:
    """Builder with names, key, serial (random unless given), validity and SKI set."""
    serial = random_serial() if serial is None else serial
    if serial <= 0 or serial.bit_length() > 159:
        raise PKIError("serial must be positive and at most 159 bits")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def build_ca_certificate(
    *,
    subject: x509.Name,
    public_key: PublicKey,
    issuer_key: PrivateKey,
    issuer_certificate: x509.Certificate | None,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None,
    serial: int | None = None,
    crl_distribution_point: str | None = None,
    ocsp_url: str | None = None,
    permitted_dns_domains: Sequence[str] = (),
) -> x509.Certificate:
    """Build a self-signed root (issuer_certificate None) or an intermediate CA certificate.

    crl_distribution_point and ocsp_url are the issuer's endpoints (intermediates only).
    """
    if issuer_certificate is None:
        if public_key_fingerprint(issuer_key.public_key()) != public_key_fingerprint(public_key):
            raise PKIError("a self-signed root must be signed by its own key")
        if crl_distribution_point or ocsp_url:
            raise PKIError("a self-signed root has no issuer CRL or OCSP endpoint")
        issuer_name = subject
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    else:
        check_issuer(issuer_certificate, issuer_key)
        issuer_limit = issuer_certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value.path_length
        if issuer_limit == 0:
            raise PKIError("issuer path length 0 forbids subordinate CAs")
        issuer_name = issuer_certificate.subject
        aki = authority_key_identifier(issuer_certificate)
    if path_length is not None and path_length < 0:
        raise PKIError("path_length must be >= 0")
    validity = _validity(not_before, not_after, issuer_certificate)
    builder = (
        _base_builder(subject, issuer_name, public_key, serial, validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(aki, critical=False)
    )
    for extension in _revocation_extensions(crl_distribution_point, ocsp_url):
        builder = builder.add_extension(extension, critical=False)
    if permitted_dns_domains:
        if not all(domain.strip() for domain in permitted_dns_domains):
            raise PKIError("permitted DNS domains must not be empty")
        constraints = x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(domain) for domain in permitted_dns_domains],
            excluded_subtrees=None,
        )
        builder = builder.add_extension(constraints, critical=True)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def build_leaf_certificate(
    *,
    subject: x509.Name,
    subject_alt_names: Sequence[x509.GeneralName],
    public_key: PublicKey,
    issuer_key: PrivateKey,
    issuer_certificate: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
    usages: Sequence[str],
    extra_extensions: Sequence[tuple[str, bytes]] = (),
    crl_distribution_point: str | None = None,
    ocsp_url: str | None = None,
    serial: int | None = None,
    critical_extended_usage: bool = False,
) -> x509.Certificate:
    """Build an end-entity certificate; its validity is clamped to the issuer's expiry.

    extra_extensions are (dotted OID, DER value) pairs added as non-critical extensions.
    `critical_extended_usage` marks the ExtendedKeyUsage critical (RFC 3161: a TSA's).
    """
    check_issuer(issuer_certificate, issuer_key)
    key_usage, extended = parse_usages(usages)
    if key_usage.key_cert_sign:
        raise PKIError('"cert sign" is not allowed on a non-CA certificate')
    if len(subject) == 0 and not subject_alt_names:
        raise PKIError("a certificate with an empty subject needs subject alternative names")
    validity = _validity(not_before, not_after, issuer_certificate)
    builder = (
        _base_builder(subject, issuer_certificate.subject, public_key, serial, validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(authority_key_identifier(issuer_certificate), critical=False)
    )
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended),
                                        critical=critical_extended_usage)
    if subject_alt_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(subject_alt_names)), critical=len(subject) == 0
        )
    for extension in _revocation_extensions(crl_distribution_point, ocsp_url):
        builder = builder.add_extension(extension, critical=False)
    for dotted_oid, value in extra_extensions:
        try:
            custom = x509.UnrecognizedExtension(x509.ObjectIdentifier(dotted_oid), value)
            builder = builder.add_extension(custom, critical=False)
        except ValueError as exc:
            raise PKIError(f"invalid extra extension {dotted_oid!r}: {exc}") from None
    return builder.sign(issuer_key, signature_hash(issuer_key))


def der_utf8_string(value: str) -> bytes:
    """DER-encode value as an ASN.1 UTF8String."""
    content = value.encode("utf-8")
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([_UTF8_STRING_TAG]) + length + content


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's DER encoding."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_to_pem(certificate: x509.Certificate) -> bytes:
    """PEM-encode one certificate."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def certificates_to_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    """PEM-encode certificates, concatenated in order."""
    return b"".join(certificate_to_pem(certificate) for certificate in certificates)


def load_certificate_pem(data: bytes | str) -> x509.Certificate:
    """Load the first PEM certificate in data."""
    if isinstance(data, str):
        data = data.encode()
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate: {exc}") from None


def load_certificates_pem(data: bytes | str) -> list[x509.Certificate]:
    """Load every PEM certificate in data (at least one)."""
    if isinstance(data, str):
        data = data.encode()
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PKIError(f"not PEM certificates: {exc}") from None
