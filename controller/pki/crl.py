"""Building certificate revocation lists.

`x509.CertificateRevocationListBuilder` makes a Python object per entry, which costs about
20 µs each (2 s for a CRL of 100,000). Here the builder makes the CRL with no entries (its
checks, issuer name, times and extensions), the entries are encoded as DER directly and spliced
into that TBSCertList, and the result is signed with the key's raw `sign()`, as the builder
would. tests/pki/test_crl.py checks the TBS bytes are the builder's for thousands of random
entries and every issuer key algorithm.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .certificates import authority_key_identifier, check_issuer
from .der import der_elements, der_time, der_tlv
from .errors import PKIError
from .keys import PrivateKey, signature_hash

REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "removeFromCRL": x509.ReasonFlags.remove_from_crl,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked certificate; reason is a key of REVOCATION_REASONS."""

    serial: int
    revoked_at: datetime
    reason: str


_CRL_REASON = b"\x06\x03\x55\x1d\x15"  # id-ce-cRLReasons
# per reason, the entry's crlEntryExtensions: one CRLReason, none for "unspecified"
_REASON_EXTENSIONS: dict[str, bytes] = {
    name: b"" if flag is x509.ReasonFlags.unspecified else der_tlv(0x30, der_tlv(
        0x30, _CRL_REASON + der_tlv(0x04, x509.CRLReason(flag).public_bytes())))
    for name, flag in REVOCATION_REASONS.items()
}


def _entries(entries: Iterable[RevokedEntry]) -> bytes:
    """The revokedCertificates entries as DER, as the builder writes them: no CRLReason
    extension for "unspecified" (RFC 5280 5.3.1). Every part is shorter than 128 octets, so
    each length is one octet; entries revoked in the same second share one encoded time."""
    times: dict[datetime, bytes] = {}
    encoded = []
    for entry in entries:
        try:
            extensions = _REASON_EXTENSIONS[entry.reason]
        except KeyError:
            allowed = ", ".join(REVOCATION_REASONS)
            raise PKIError(f"unknown revocation reason {entry.reason!r}; allowed: "
                           f"{allowed}") from None
        if not 0 < entry.serial.bit_length() <= 159:
            raise PKIError(f"invalid revoked serial {entry.serial}: a serial number is positive "
                           "and at most 20 octets")
        serial = entry.serial.to_bytes(entry.serial.bit_length() // 8 + 1, "big")
        when = times.get(entry.revoked_at)
        if when is None:
            when = times[entry.revoked_at] = der_time(entry.revoked_at)
        content = b"\x02" + bytes([len(serial)]) + serial + when + extensions
        encoded.append(b"\x30" + bytes([len(content)]) + content)
    return b"".join(encoded)


def _sign(key: PrivateKey, data: bytes) -> bytes:
    """`data` signed as the builder signs a CRL with `key`."""
    digest = signature_hash(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert digest is not None
        return key.sign(data, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        assert digest is not None
        return key.sign(data, padding.PKCS1v15(), digest)
    return key.sign(data)  # Ed25519, ML-DSA


def build_crl(
    *,
    issuer_certificate: x509.Certificate,
    issuer_key: PrivateKey,
    entries: Iterable[RevokedEntry],
    crl_number: int,
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """Build and sign a CRL; the CRLReason entry extension is omitted for "unspecified"."""
    check_issuer(issuer_certificate, issuer_key)
    if this_update >= next_update:
        raise PKIError("this_update must be before next_update")
    if crl_number < 0:
        raise PKIError("crl_number must be >= 0")
    revoked = _entries(entries)
    empty = x509.CertificateRevocationListBuilder(
        issuer_name=issuer_certificate.subject, last_update=this_update,
        next_update=next_update,
    ).add_extension(x509.CRLNumber(crl_number), critical=False).add_extension(
        authority_key_identifier(issuer_certificate), critical=False
    ).sign(issuer_key, signature_hash(issuer_key))
    if not revoked:
        return empty
    # TBSCertList: version, signature, issuer, thisUpdate, nextUpdate, [revoked], [0] extensions
    parts = der_elements(empty.tbs_certlist_bytes)
    tbs = der_tlv(0x30, b"".join(parts[:5]) + der_tlv(0x30, revoked) + b"".join(parts[5:]))
    algorithm = der_elements(empty.public_bytes(serialization.Encoding.DER))[1]
    signature = der_tlv(0x03, b"\x00" + _sign(issuer_key, tbs))
    return x509.load_der_x509_crl(der_tlv(0x30, tbs + algorithm + signature))


def crl_to_pem(crl: x509.CertificateRevocationList) -> bytes:
    """PEM-encode a CRL."""
    return crl.public_bytes(serialization.Encoding.PEM)


def crl_to_der(crl: x509.CertificateRevocationList) -> bytes:
    """DER-encode a CRL."""
    return crl.public_bytes(serialization.Encoding.DER)
