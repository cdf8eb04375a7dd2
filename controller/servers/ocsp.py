"""OCSP responses (RFC 6960) from inventory lookups: bytes in, bytes out, no web framework.

Limits, by design:
- cryptography's `OCSPRequest` holds exactly one CertID, so a request naming several
  certificates is answered `malformedRequest` (clients such as OpenSSL send one per request).
- A CertID hashed with an algorithm other than SHA-1/SHA-2, or naming a negative serial number
  (which no certificate has, RFC 5280 4.1.2.2, and which a response cannot carry), is a
  `malformedRequest`; one whose issuer this responder does not hold is `unauthorized`.
- Responses are signed by the issuing CA itself (no delegated responder certificate).
- Nonce-less responses are cached by the request's exact bytes until `invalidate()` (called
  when the inventory changes) or until half their validity has passed, so a repeated request
  is answered without being parsed; a request with a nonce is always signed afresh, with the
  nonce echoed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from controller.pki.crl import REVOCATION_REASONS
from controller.pki.der import public_key_bits
from controller.pki.keys import PrivateKey, signature_hash

log = logging.getLogger(__name__)

DEFAULT_VALIDITY = timedelta(hours=1)
MAX_CACHE = 100_000
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
    "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}


@dataclass(frozen=True)
class Issuer:
    """A CA certificate generation that can answer for the certificates it issued."""

    serial: str  # inventory serial (hex) of the CA certificate
    certificate: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True)
class Status:
    """What the inventory says about one certificate."""

    state: str  # "good" | "revoked" | "unknown"
    revoked_at: datetime | None = None
    reason: str | None = None


Lookup = Callable[[Issuer, int], Status]  # (issuer, certificate serial number) -> status


def subject_public_key_bits(certificate: x509.Certificate) -> bytes:
    """The subjectPublicKey bits, which RFC 6960 hashes into a CertID's issuerKeyHash."""
    return public_key_bits(certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


class IssuerIndex:
    """Finds the CA generation a CertID names, by issuer key hash (then name hash)."""

    def __init__(self, issuers: list[Issuer]) -> None:
        self.issuers = issuers
        self._by_hash: dict[tuple[str, bytes], Issuer] = {}
        self._indexed: set[str] = set()

    def find(self, algorithm: hashes.HashAlgorithm, key_hash: bytes,
             name_hash: bytes) -> Issuer | None:
        if algorithm.name not in self._indexed:
            for issuer in self.issuers:
                bits = subject_public_key_bits(issuer.certificate)
                self._by_hash[(algorithm.name, _digest(algorithm, bits))] = issuer
            self._indexed.add(algorithm.name)
        found = self._by_hash.get((algorithm.name, key_hash))
        if found is None:
            return None
        subject = found.certificate.subject.public_bytes()
        return found if _digest(algorithm, subject) == name_hash else None


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER)


class Responder:
    """Answers DER OCSP requests; `invalidate()` when revocations or CA certificates change."""

    def __init__(self, index: IssuerIndex, lookup: Lookup,
                 validity: timedelta = DEFAULT_VALIDITY) -> None:
        self.index = index
        self.lookup = lookup
        self.validity = validity
        self._cache: dict[bytes, tuple[bytes, datetime]] = {}  # request DER -> response

    def invalidate(self, index: IssuerIndex | None = None) -> None:
        self._cache.clear()
        if index is not None:
            self.index = index

    def respond(self, request_der: bytes, now: datetime) -> bytes:
        """A DER OCSPResponse; never raises on bad input (malformedRequest instead)."""
        cached = self._cache.get(request_der)
        if cached is not None and now < cached[1]:
            return cached[0]
        try:
            request = ocsp.load_der_ocsp_request(request_der)
            algorithm = request.hash_algorithm
            serial = request.serial_number
            key_hash, name_hash = request.issuer_key_hash, request.issuer_name_hash
            nonce = self._nonce(request)
        except (ValueError, NotImplementedError, TypeError, UnsupportedAlgorithm) as exc:
            # also: more than one CertID in the request (cryptography supports exactly one)
            log.info("OCSP: malformed request (%s)", exc)
            return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if algorithm.name not in _HASHES or serial < 0:
            log.info("OCSP: malformed request (hash %s, serial %d)", algorithm.name, serial)
            return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        issuer = self.index.find(algorithm, key_hash, name_hash)
        if issuer is None:
            # RFC 6960 2.3: a responder that is not authoritative for the issuer
            log.info("OCSP: unknown issuer for serial %x", serial)
            return unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        status = self.lookup(issuer, serial)
        now = now.replace(microsecond=0)
        der = self._sign(issuer, algorithm, name_hash, key_hash, serial, status, now, nonce)
        if nonce is None:
            if len(self._cache) >= MAX_CACHE:
                self._cache.clear()
            self._cache[request_der] = (der, now + self.validity / 2)
        return der

    @staticmethod
    def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
        try:
            return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            return None

    def _sign(self, issuer: Issuer, algorithm: hashes.HashAlgorithm, name_hash: bytes,
              key_hash: bytes, serial: int, status: Status, now: datetime,
              nonce: bytes | None) -> bytes:
        cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                       "unknown": ocsp.OCSPCertStatus.UNKNOWN}[status.state]
        revoked = status.state == "revoked"
        reason = REVOCATION_REASONS.get(status.reason or "unspecified") if revoked else None
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=name_hash, issuer_key_hash=key_hash, serial_number=serial,
            algorithm=algorithm, cert_status=cert_status, this_update=now,
            next_update=now + self.validity,
            revocation_time=(status.revoked_at or now) if revoked else None,
            revocation_reason=reason,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.certificate)
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        response = builder.sign(issuer.key, signature_hash(issuer.key))
        return response.public_bytes(serialization.Encoding.DER)
