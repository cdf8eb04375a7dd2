"""Verify a release: what a gateway or a device does before installing an artifact.

Order of checks (docs/signing.md describes the same for a C device):
1. the manifest is a JSON ReleaseManifest;
2. the CMS signature: one signer, its certificate carried, contentType data, messageDigest
   equal to the digest of the manifest's exact bytes, the signature over the signed
   attributes; a signingTime attribute;
3. the signer certificate: codeSigning in ExtendedKeyUsage, digitalSignature, not a CA;
4. the timestamp token (id-aa-timeStampToken), when present: its signature, that it stamps
   this signature, the TSA certificate (timeStamping, the only and critical EKU) chaining to
   the trust anchors now;
5. the time: the signer's chain is checked now, or at the token's genTime when the signer
   has expired (refused without a token: expired signer, no timestamp);
6. the chain from the signer to a trust anchor (names, signatures, CA constraints, validity);
7. revocation, with CRLs: the signer (and each intermediate with a CRL given) must not be
   listed by a current CRL of its issuer; with CRLs given, one from the signer's issuer is
   required;
8. the artifact: its SHA-256 and size are listed in the manifest;
9. the fleet (if given) is one of the manifest's target fleets.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.signing.cms import SignatureError, Signed, verify
from controller.signing.manifest import MANIFEST_KIND
from controller.signing.timestamp import Timestamp, check_token, tokens_of

MAX_CHAIN = 8


class VerifyError(Exception):
    """Verification failed; the message is the reason."""


@dataclass(frozen=True)
class Verified:
    release: str
    signer: x509.Certificate
    signing_time: datetime | None
    timestamp: datetime | None
    checked_at: datetime
    manifest: dict[str, Any]


def _name(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()


def _usage_error(certificate: x509.Certificate, purpose: x509.ObjectIdentifier,
                 only_critical: bool) -> str | None:
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return "has no ExtendedKeyUsage"
    if purpose not in eku.value:
        return f"is not for {purpose._name}"
    if only_critical and (not eku.critical or list(eku.value) != [purpose]):
        return f"must have {purpose._name} as its only, critical, extended key usage"
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            return "has no digitalSignature key usage"
    except x509.ExtensionNotFound:
        pass
    try:
        if certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "is a CA certificate"
    except x509.ExtensionNotFound:
        pass
    return None


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints)
                    .value.ca)
    except x509.ExtensionNotFound:
        return False


def _valid_at(certificate: x509.Certificate, at: datetime, what: str) -> None:
    if at < certificate.not_valid_before_utc:
        raise VerifyError(f"{what} {_name(certificate)} is not valid before "
                          f"{certificate.not_valid_before_utc.isoformat()}")
    if at > certificate.not_valid_after_utc:
        raise VerifyError(f"{what} {_name(certificate)} expired at "
                          f"{certificate.not_valid_after_utc.isoformat()}")


def chain_to_trust(leaf: x509.Certificate, untrusted: Sequence[x509.Certificate],
                   trust: Sequence[x509.Certificate], at: datetime,
                   what: str) -> list[x509.Certificate]:
    """[leaf, ..., anchor], every certificate valid at `at`; VerifyError if there is none."""
    chain = [leaf]
    _valid_at(leaf, at, what)
    while len(chain) <= MAX_CHAIN:
        current = chain[-1]
        anchor = next((t for t in trust if _issued_by(current, t)), None)
        if anchor is not None:
            if not _is_ca(anchor) and anchor != current:
                raise VerifyError(f"trust anchor {_name(anchor)} is not a CA")
            _valid_at(anchor, at, "the trust anchor")
            return chain if anchor == current else [*chain, anchor]
        if current in trust:
            return chain
        issuer = next((c for c in untrusted if c not in chain and _issued_by(current, c)), None)
        if issuer is None:
            raise VerifyError(f"{what} {_name(leaf)} does not chain to the trust anchors "
                              f"(no trusted issuer for {_name(current)})")
        if not _is_ca(issuer):
            raise VerifyError(f"{_name(issuer)} issued {_name(current)} but is not a CA")
        _valid_at(issuer, at, "the intermediate CA")
        chain.append(issuer)
    raise VerifyError(f"{what}: the chain is longer than {MAX_CHAIN}")


def _check_revocation(chain: Sequence[x509.Certificate],
                      crls: Sequence[x509.CertificateRevocationList], now: datetime,
                      what: str) -> None:
    if not crls:
        return
    for position, certificate in enumerate(chain[:-1]):
        issuer = chain[position + 1]
        matching = [c for c in crls if c.issuer == issuer.subject
                    and c.is_signature_valid(issuer.public_key())]  # type: ignore[arg-type]
        if not matching:
            if position == 0:
                raise VerifyError(f"no CRL from {_name(issuer)}, the issuer of {what} "
                                  f"{_name(certificate)}")
            continue
        for crl in matching:
            if crl.next_update_utc is not None and crl.next_update_utc < now:
                raise VerifyError(f"the CRL of {_name(issuer)} is out of date (nextUpdate "
                                  f"{crl.next_update_utc.isoformat()})")
            entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if entry is not None:
                reason = "unspecified"
                with contextlib.suppress(x509.ExtensionNotFound):
                    reason = entry.extensions.get_extension_for_class(
                        x509.CRLReason).value.reason.name
                raise VerifyError(f"{what} {_name(certificate)} is revoked ({reason}, "
                                  f"{entry.revocation_date_utc.isoformat()}): the release was "
                                  "withdrawn or its signer revoked")


def _timestamp(signed: Signed, trust: Sequence[x509.Certificate],
               crls: Sequence[x509.CertificateRevocationList], now: datetime) -> Timestamp | None:
    tokens = tokens_of(signed)
    if not tokens:
        return None
    if len(tokens) > 1:
        raise VerifyError("the signature carries more than one timestamp token")
    try:
        stamp = check_token(tokens[0], signed.signature)
    except SignatureError as exc:
        raise VerifyError(f"timestamp token: {exc}") from None
    tsa = stamp.signed.signer
    problem = _usage_error(tsa, ExtendedKeyUsageOID.TIME_STAMPING, only_critical=True)
    if problem:
        raise VerifyError(f"the timestamp authority certificate {_name(tsa)} {problem}")
    chain = chain_to_trust(tsa, stamp.signed.certificates, trust, now,
                           "the timestamp authority certificate")
    _check_revocation(chain, crls, now, "the timestamp authority certificate")
    _valid_at(tsa, stamp.gen_time, "the timestamp authority certificate")
    return stamp


def parse_manifest(manifest: bytes) -> dict[str, Any]:
    try:
        data = json.loads(manifest.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyError(f"the manifest is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != MANIFEST_KIND:
        raise VerifyError(f"the manifest is not a {MANIFEST_KIND}")
    if not isinstance(data.get("artifacts"), list) or \
            not isinstance(data.get("targets"), dict):
        raise VerifyError("the manifest has no artifacts or targets")
    return data


def verify_release(manifest: bytes, signature: bytes, trust: Sequence[x509.Certificate],
                   now: datetime, *, artifact: tuple[str, int] | None = None,
                   crls: Sequence[x509.CertificateRevocationList] = (),
                   fleet: str | None = None) -> Verified:
    """Every check in the module's order; VerifyError with the reason on the first failure.
    `artifact` is (SHA-256 hex, size) of the file to install."""
    if not trust:
        raise VerifyError("no trust anchor given")
    data = parse_manifest(manifest)
    try:
        signed = verify(signature, manifest)
    except SignatureError as exc:
        raise VerifyError(f"signature: {exc}") from None
    if signed.signing_time is None:
        raise VerifyError("the signature has no signingTime attribute")
    problem = _usage_error(signed.signer, ExtendedKeyUsageOID.CODE_SIGNING, only_critical=False)
    if problem:
        raise VerifyError(f"the signing certificate {_name(signed.signer)} {problem}")
    stamp = _timestamp(signed, trust, crls, now)
    at = now
    if now > signed.signer.not_valid_after_utc:
        if stamp is None:
            raise VerifyError(f"the signing certificate {_name(signed.signer)} expired at "
                              f"{signed.signer.not_valid_after_utc.isoformat()} and the "
                              "signature has no timestamp")
        at = stamp.gen_time
    chain = chain_to_trust(signed.signer, signed.certificates, trust, at,
                           "the signing certificate")
    _check_revocation(chain, crls, now, "the signing certificate")
    if artifact is not None:
        digest, size = artifact
        listed = [a for a in data["artifacts"] if isinstance(a, dict)
                  and a.get("sha256") == digest]
        if not listed:
            raise VerifyError("the artifact's SHA-256 is not in the manifest (a different or "
                              "tampered file)")
        if all(a.get("size") != size for a in listed):
            raise VerifyError("the artifact's size does not match the manifest")
    if fleet is not None:
        fleets = data["targets"].get("fleets") or []
        if fleet not in fleets:
            raise VerifyError(f"the release does not target fleet {fleet!r} (targets: "
                              f"{', '.join(map(str, fleets)) or 'none'})")
    return Verified(str(data.get("release")), signed.signer, signed.signing_time,
                    stamp.gen_time if stamp else None, at, data)
