"""End-entity certificates from a precomputed DER template, signed with the key's raw sign().

`x509.CertificateBuilder` spends most of a device certificate's time in Python-side checks and
object building around one signature. A `LeafTemplate` does those once per issuer and profile:
the version, signature algorithm, issuer name and the extensions every device shares are DER
bytes, and each certificate splices in its serial, validity, subject, key, key identifier, SANs
and custom extensions (each encoded by `cryptography` itself), then signs the TBSCertificate.

The result is byte-identical to `certificates.build_leaf_certificate` for the same inputs apart
from the (randomised) ECDSA signature; tests/pki/test_template.py checks this over thousands of
random devices and every profile feature. It covers ECDSA issuers (P-256, P-384); `for_issuer`
returns None for any other issuer key, and `covers` is False for extension lists the builder
would refuse, so callers use the builder there (and get its errors).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from .certificates import (
    Signed,
    _revocation_extensions,
    _validity,
    authority_key_identifier,
    check_issuer,
)
from .der import der_integer, der_oid, der_time, der_tlv, public_key_bits
from .errors import PKIError
from .keys import PrivateKey
from .usages import parse_usages

_ECDSA_OIDS = {256: "1.2.840.10045.4.3.2", 384: "1.2.840.10045.4.3.3"}  # with SHA-256/SHA-384
_HASHES = {256: hashes.SHA256, 384: hashes.SHA384}
_STANDARD = {ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.BASIC_CONSTRAINTS,
             ExtensionOID.KEY_USAGE, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
             ExtensionOID.EXTENDED_KEY_USAGE, ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
             ExtensionOID.CRL_DISTRIBUTION_POINTS, ExtensionOID.AUTHORITY_INFORMATION_ACCESS}


def _extension(oid: x509.ObjectIdentifier | bytes, critical: bool, value: bytes) -> bytes:
    """An Extension; `oid` may be given already encoded."""
    encoded = oid if isinstance(oid, bytes) else der_oid(oid.dotted_string)
    return der_tlv(0x30, encoded + (b"\x01\x01\xff" if critical else b"") + der_tlv(0x04, value))


_SKI = der_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string)
_SAN = der_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string)


def _key_identifier(spki: bytes) -> bytes:
    """RFC 5280 method 1, as `SubjectKeyIdentifier.from_public_key`."""
    return hashlib.sha1(public_key_bits(spki)).digest()  # RFC 5280 method 1 is SHA-1


class LeafTemplate:
    """What every end-entity certificate of one issuer and profile shares, as DER."""

    def __init__(self, issuer_certificate: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey,
                 usages: Sequence[str], crl_distribution_point: str | None,
                 ocsp_url: str | None) -> None:
        check_issuer(issuer_certificate, issuer_key)
        key_usage, extended = parse_usages(usages)
        if key_usage.key_cert_sign:
            raise PKIError('"cert sign" is not allowed on a non-CA certificate')
        size = issuer_key.curve.key_size
        self._key = issuer_key
        self._hash = _HASHES[size]()
        self._issuer = issuer_certificate
        self._algorithm = der_tlv(0x30, der_oid(_ECDSA_OIDS[size]))
        self._head = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT version v3
        self._issuer_name = issuer_certificate.subject.public_bytes()
        self._usages = (
            _extension(ExtensionOID.BASIC_CONSTRAINTS, True,
                       x509.BasicConstraints(ca=False, path_length=None).public_bytes())
            + _extension(ExtensionOID.KEY_USAGE, True, key_usage.public_bytes())
            + _extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False,
                         authority_key_identifier(issuer_certificate).public_bytes()))
        self._extended = _extension(ExtensionOID.EXTENDED_KEY_USAGE, False,
                                    x509.ExtendedKeyUsage(extended).public_bytes()) \
            if extended else b""
        self._revocation = b"".join(
            _extension(extension.oid, False, extension.public_bytes())
            for extension in _revocation_extensions(crl_distribution_point, ocsp_url))
        self._custom: dict[str, bytes] = {}
        # the times asked for, the times certified (clamped to the issuer's), their DER
        self._validity: tuple[datetime, datetime, datetime, datetime, bytes] | None = None

    @classmethod
    def for_issuer(cls, issuer_certificate: x509.Certificate, issuer_key: PrivateKey,
                   usages: Sequence[str], crl_distribution_point: str | None = None,
                   ocsp_url: str | None = None) -> LeafTemplate | None:
        """The template, or None when the issuer key is not covered (not ECDSA P-256/P-384)."""
        if not isinstance(issuer_key, ec.EllipticCurvePrivateKey) \
                or issuer_key.curve.key_size not in _ECDSA_OIDS:
            return None
        return cls(issuer_certificate, issuer_key, usages, crl_distribution_point, ocsp_url)

    def covers(self, extra_extensions: Sequence[tuple[str, bytes]]) -> bool:
        """Whether the custom extensions are ones the builder accepts (valid OIDs, no repeat of
        each other or of the standard ones); else use the builder, which says what is wrong."""
        oids = []
        for dotted, _ in extra_extensions:
            try:
                oids.append(x509.ObjectIdentifier(dotted))
            except ValueError:
                return False
        return len(set(oids)) == len(oids) and not set(oids) & _STANDARD

    def tbs(self, *, subject: x509.Name, subject_alt_names: Sequence[x509.GeneralName],
            spki: bytes, not_before: datetime, not_after: datetime, serial: int,
            extra_extensions: Sequence[tuple[str, bytes]] = ()) -> bytes:
        """The DER TBSCertificate `build_leaf_certificate` makes from the same inputs, the key
        given as its DER SubjectPublicKeyInfo (`spki`, as `DeviceKey.der`)."""
        if len(subject) == 0 and not subject_alt_names:
            raise PKIError("a certificate with an empty subject needs subject alternative names")
        if serial <= 0 or serial.bit_length() > 159:
            raise PKIError("serial must be positive and at most 159 bits")
        if self._validity is None or self._validity[:2] != (not_before, not_after):
            start, end = _validity(not_before, not_after, self._issuer)  # one apply: same times
            self._validity = (not_before, not_after, start.replace(microsecond=0),
                              end.replace(microsecond=0),
                              der_tlv(0x30, der_time(start) + der_time(end)))
        extensions = [_extension(_SKI, False, der_tlv(0x04, _key_identifier(spki))),
                      self._usages, self._extended]
        if subject_alt_names:
            extensions.append(_extension(
                _SAN, len(subject) == 0,
                x509.SubjectAlternativeName(list(subject_alt_names)).public_bytes()))
        extensions.append(self._revocation)
        for dotted, value in extra_extensions:
            if dotted not in self._custom:
                self._custom[dotted] = der_oid(x509.ObjectIdentifier(dotted).dotted_string)
            extensions.append(der_tlv(0x30, self._custom[dotted] + der_tlv(0x04, value)))
        return der_tlv(0x30, self._head + der_integer(serial) + self._algorithm + self._issuer_name
                    + self._validity[4] + subject.public_bytes() + spki
                    + der_tlv(0xA3, der_tlv(0x30, b"".join(extensions))))

    def certificate(self, *, subject: x509.Name, subject_alt_names: Sequence[x509.GeneralName],
                    spki: bytes, not_before: datetime, not_after: datetime, serial: int,
                    extra_extensions: Sequence[tuple[str, bytes]] = ()) -> Signed:
        """The certificate of `tbs`'s inputs, signed, with its serial and validity as encoded
        (whole seconds, clamped to the issuer's): what parsing it would give, without parsing."""
        der = self.sign(self.tbs(subject=subject, subject_alt_names=subject_alt_names, spki=spki,
                                 not_before=not_before, not_after=not_after, serial=serial,
                                 extra_extensions=extra_extensions))
        assert self._validity is not None
        return Signed(der, serial, self._validity[2], self._validity[3])

    def sign(self, tbs: bytes) -> bytes:
        """The DER certificate: `tbs` signed with the issuer key."""
        signature = self._key.sign(tbs, ec.ECDSA(self._hash))
        return der_tlv(0x30, tbs + self._algorithm + der_tlv(0x03, b"\x00" + signature))

