"""Building certificate revocation lists."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .certificates import authority_key_identifier, check_issuer
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


def _revoked(entry: RevokedEntry) -> x509.RevokedCertificate:
    """One CRL entry; no CRLReason extension for "unspecified" (RFC 5280 5.3.1)."""
    try:
        reason = REVOCATION_REASONS[entry.reason]
    except KeyError:
        allowed = ", ".join(REVOCATION_REASONS)
        raise PKIError(f"unknown revocation reason {entry.reason!r}; allowed: {allowed}") from None
    try:
        builder = x509.RevokedCertificateBuilder().serial_number(entry.serial)
    except ValueError as exc:
        raise PKIError(f"invalid revoked serial {entry.serial}: {exc}") from None
    builder = builder.revocation_date(entry.revoked_at)
    if reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
    return builder.build()


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
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer_certificate.subject,
        last_update=this_update,
        next_update=next_update,
        revoked_certificates=[_revoked(entry) for entry in entries],
    )
    builder = builder.add_extension(x509.CRLNumber(crl_number), critical=False).add_extension(
        authority_key_identifier(issuer_certificate), critical=False
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))


def crl_to_pem(crl: x509.CertificateRevocationList) -> bytes:
    """PEM-encode a CRL."""
    return crl.public_bytes(serialization.Encoding.PEM)


def crl_to_der(crl: x509.CertificateRevocationList) -> bytes:
    """DER-encode a CRL."""
    return crl.public_bytes(serialization.Encoding.DER)
