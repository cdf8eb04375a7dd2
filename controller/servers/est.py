"""EST (RFC 7030) logic without a web framework: secrets, identity checks, issuance, encodings.

Enrollment identity: the device is the one named by its credential (HTTP Basic user with a
one-time secret for `simpleenroll`, or in a `bootstrap: idevid` fleet the manufacturer's
certificate (IDevID) as TLS client certificate; the current certificate for
`simplereenroll`). The CSR only proves possession of the key; its subject and SANs are
ignored (the certificate is built from the fleet's profile), but a CSR whose commonName
names another device is refused.

The issued certificate is recorded exactly as `fleetpki apply` records one, with the intent
digest the planner computes for the device (`<content digest>:<key fingerprint>`), so the next
plan does not re-issue it. A device that declares `publicKey`/`csr` in git must enroll with
that key (another is refused: update the declaration first). In a fleet with
`spec.enrollment`, a device that declares no key enrolls with a key of its own; the planner
then keeps certifying that enrolled key at renewals. Every issuance first evaluates the
declaration's policies over the device, as `plan` does: a failed deny rule refuses it (403).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import pkcs7

from controller.api.desired import Desired, FleetDecl
from controller.api.resources import CertificateProfile, Device
from controller.apply.executor import Executor, serial_hex
from controller.clock import epoch
from controller.pki import keys
from controller.pki.csr import verify_csr
from controller.pki.der import der_oid, der_tlv
from controller.pki.errors import PKIError
from controller.plan.intents import ENROLLED, DeviceIntent, IntentError, device_intent
from controller.plan.model import Action, ActionName
from controller.policy.engine import CompiledRule, PolicyMemo, evaluate
from controller.policy.tenancy import NO_TENANTS, Tenancy
from controller.stores.inventory import CertRecord, EnrollmentSecret, Inventory
from controller.stores.keystore import KeyStore

log = logging.getLogger(__name__)

# A one-time secret is a server-generated random token of 144 bits (`new_secret`): guessing it
# is out of reach whatever the hash, so a slow KDF (as for a passphrase) adds only cost. New
# secrets are stored as HMAC-SHA256(salt, secret); scrypt records made before still verify.
KDF = "hmac-sha256"
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
IDENTITY_OIDS = {"commonName": x509.NameOID.COMMON_NAME,
                 "serialNumber": x509.NameOID.SERIAL_NUMBER}


class ESTError(Exception):
    """A refusal with its HTTP status and extra response headers; the message is safe to log
    and to return, `detail` (if any) is logged instead of it."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 detail: str | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self.detail = detail
        super().__init__(message)


# --- one-time secrets -----------------------------------------------------------------------
def hash_secret(secret: str, salt: bytes, kdf: str = KDF) -> bytes:
    if kdf == "hmac-sha256":
        return hmac.new(salt, secret.encode(), "sha256").digest()
    name, n, r, p = kdf.split(":")
    if name != "scrypt":
        raise ValueError(f"unsupported secret KDF {name!r}")
    return Scrypt(salt=salt, length=32, n=int(n), r=int(r), p=int(p)).derive(secret.encode())


def new_secret(fleet: str, device: str, now: datetime) -> tuple[str, EnrollmentSecret]:
    """A fresh random secret (shown once) and the record to store (salted HMAC-SHA256)."""
    secret = secrets.token_urlsafe(18)
    salt = os.urandom(16)
    return secret, EnrollmentSecret(fleet, device, KDF, salt, hash_secret(secret, salt),
                                    epoch(now))


_NO_SECRET = EnrollmentSecret("", "", KDF, bytes(16), bytes(32), 0)


def matching_secret(stored: Sequence[EnrollmentSecret], secret: str) -> EnrollmentSecret | None:
    """The stored secret (of the device, one per fleet holding one) that `secret` is, if any.
    Without a stored secret (no such device, none issued, used) the same work as for one is
    done before answering None: timing does not tell."""
    found = None
    for reference in stored or [_NO_SECRET]:
        if hmac.compare_digest(hash_secret(secret, reference.salt, reference.kdf),
                               reference.hash) and reference is not _NO_SECRET:
            found = found or reference
    return found


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an HTTP Basic Authorization header, or None."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


# --- encodings ------------------------------------------------------------------------------
def b64_body(body: bytes) -> bytes:
    """Decode an EST base64 body (RFC 7030 uses base64 with line breaks allowed)."""
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ESTError(400, "body is not base64") from None


def certs_only(certificates: list[x509.Certificate]) -> bytes:
    """Base64 (76-column lines) of a degenerate PKCS#7 SignedData holding the certificates."""
    der = pkcs7.serialize_certificates(certificates, serialization.Encoding.DER)
    return base64.encodebytes(der)


def load_csr_der(body: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_der_x509_csr(b64_body(body))
    except ValueError:
        raise ESTError(400, "body is not a DER PKCS#10 certificate request") from None
    try:
        verify_csr(csr)
    except PKIError as exc:
        raise ESTError(400, f"proof of possession failed: {exc}") from None
    return csr


_KEY_ATTRS: dict[str, tuple[str, str | None]] = {  # algorithm -> (key OID, curve OID)
    "ECDSA-P256": ("1.2.840.10045.2.1", "1.2.840.10045.3.1.7"),
    "ECDSA-P384": ("1.2.840.10045.2.1", "1.3.132.0.34"),
    "Ed25519": ("1.3.101.112", None),
    "RSA-3072": ("1.2.840.113549.1.1.1", None),
    "RSA-4096": ("1.2.840.113549.1.1.1", None),
}


def csr_attributes(key_algorithm: str) -> bytes:
    """Base64 DER CsrAttrs (RFC 7030 4.5.2) naming the key type the profile requires."""
    key_oid, curve = _KEY_ATTRS.get(key_algorithm, (None, None))
    items: list[bytes] = []
    if key_oid and curve:
        items.append(der_tlv(0x30, der_oid(key_oid) + der_tlv(0x31, der_oid(curve))))
    elif key_oid:
        items.append(der_oid(key_oid))
    return base64.encodebytes(der_tlv(0x30, b"".join(items)))


# --- enrollment -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A declared device that may enroll."""

    decl: FleetDecl
    device: Device


def declared_device(desired: Desired, device_id: str, fleet: str | None) -> Target | None:
    """The device declared with this id (in `fleet`, if given), or None."""
    found = [(decl, decl.device(device_id)) for name, decl in sorted(desired.fleets.items())
             if fleet is None or name == fleet]
    matches = [Target(decl, device) for decl, device in found if device is not None]
    if len(matches) > 1:
        raise ESTError(400, f"device {device_id!r} is declared in several fleets; use "
                       "/.well-known/est/<fleet>/")
    return matches[0] if matches else None


def find_device(desired: Desired, device_id: str, fleet: str | None) -> Target:
    target = declared_device(desired, device_id, fleet)
    if target is None:
        raise ESTError(403, f"device {device_id!r} is not declared"
                       + (f" in fleet {fleet!r}" if fleet else ""))
    return target


def check_csr_identity(csr: x509.CertificateSigningRequest, device_id: str) -> None:
    for attribute in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        if attribute.value != device_id:
            raise ESTError(403, f"CSR commonName {attribute.value!r} names another device "
                           f"than {device_id!r}")


def issue(executor: Executor, inventory: Inventory, target: Target,
          csr: x509.CertificateSigningRequest, now: datetime,
          consume: EnrollmentSecret | None = None, server_key: bool = False,
          rules: Sequence[CompiledRule] = (), tenancy: Tenancy = NO_TENANTS,
          memo: PolicyMemo | None = None) -> CertRecord:
    """Build the device certificate from its profile and record it as `apply` would: the new
    certificate active, the previous one revoked `superseded`, the secret consumed, in one
    transaction. `server_key` (serverkeygen): a new key generated here and kept wrapped in the
    inventory as for `keyGeneration: server`; the CSR's key is then ignored. The declaration's
    policy `rules` are evaluated over this one device first, as `plan` gates an issuance (with
    `memo`, what does not depend on the device is judged once a minute)."""
    fleet = target.decl.fleet
    profile = executor.desired.profile(fleet.spec.profileRef.name)
    device = target.device
    if fleet.spec.suspend or fleet.spec.decommissioned:
        raise ESTError(403, f"fleet {fleet.name!r} is suspended or decommissioned")
    if device.revoked is not None:
        raise ESTError(403, f"device {device.id!r} is declared revoked")
    wanted = "server" if server_key else "device"
    if profile.spec.keyGeneration != wanted:
        raise ESTError(403, f"fleet {fleet.name!r} uses keyGeneration: "
                       f"{profile.spec.keyGeneration}; use "
                       + ("simpleenroll" if server_key else "serverkeygen"))
    check_csr_identity(csr, device.id)
    try:
        if server_key:
            intent = device_intent(fleet, profile, device)
        else:
            intent = _device_key_intent(target, profile, csr)
    except IntentError as exc:
        raise ESTError(400, str(exc)) from None
    check_policy(rules, executor.desired, fleet.name, device.id, intent, now, tenancy, memo)
    current = inventory.active_device(fleet.name, device.id)
    name: ActionName = ("rekey" if server_key else "renew") if current else "issue"
    action = Action(name, "DeviceFleet", fleet.name, "EST enrollment",
                    device.id, current.serial if current else None)
    executor.now = now
    record = executor._device_certificate(action, intent)
    with inventory.transaction():
        if consume is not None and not inventory.consume_enrollment_secret(
                consume.fleet, consume.device, consume.hash):
            raise ESTError(401, "enrollment secret already used")
        now_active = inventory.active_device(fleet.name, device.id)
        if (now_active and now_active.serial) != (current and current.serial):
            raise ESTError(409, f"device {device.id!r} was enrolled meanwhile (another "
                           "request, worker or replica); retry with its new certificate")
        if current is not None:
            inventory.revoke(current.serial, "superseded", epoch(now))
        inventory.insert(record)
    log.info("EST: issued %s to %s/%s%s", record.serial, fleet.name, device.id,
             f" (superseding {current.serial})" if current else "")
    return record


def check_policy(rules: Sequence[CompiledRule], desired: Desired, fleet: str, device: str,
                 intent: DeviceIntent, now: datetime, tenancy: Tenancy = NO_TENANTS,
                 memo: PolicyMemo | None = None) -> None:
    """Refuse (403) when a deny rule fails for this device, its fleet or its issuing CA."""
    if not rules:
        return
    issuer = desired.fleets[fleet].fleet.spec.issuerRef.name
    findings = evaluate(list(rules), desired, {(fleet, device): intent}, now, tenancy, fleet,
                        memo)
    denies = [f for f in findings if f.action == "deny" and (
        (f.object == f"DeviceFleet/{fleet}" and f.device in (None, device))
        or f.object == f"CertificateAuthority/{issuer}")]
    if denies:
        raise ESTError(403, "denied by policy: " + "; ".join(
            f"{f.policy}/{f.rule}: {f.message}" for f in denies))


def idevid_identity(desired: Desired, peer_der: bytes, fleet: str | None,
                    now: datetime) -> Target:
    """The declared device named by an IDevID TLS client certificate: issued directly by the
    external CA of a `bootstrap: idevid` fleet, currently valid, its subject attribute
    (`identity`) a device id declared in that fleet."""
    certificate = x509.load_der_x509_certificate(peer_der)
    candidates = [decl for name, decl in sorted(desired.fleets.items())
                  if (fleet is None or name == fleet) and decl.fleet.spec.enrollment is not None
                  and decl.fleet.spec.enrollment.idevid is not None]
    if not candidates:
        raise ESTError(401, "no fleet accepts IDevID enrollment"
                       + (f" (fleet {fleet!r})" if fleet else "")
                       + "; use HTTP Basic authentication (device-id:secret)")
    issuers: list[str] = []
    for decl in candidates:
        enrollment = decl.fleet.spec.enrollment
        assert enrollment is not None and enrollment.idevid is not None
        idevid = enrollment.idevid
        external = desired.authority(idevid.issuerRef.name).spec.external_certificate()
        issuers.append(idevid.issuerRef.name)
        try:
            certificate.verify_directly_issued_by(external)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise ESTError(403, f"IDevID certificate {certificate.serial_number:x} is not valid "
                           "now")
        oid = IDENTITY_OIDS[idevid.identity]
        values = [str(a.value) for a in certificate.subject.get_attributes_for_oid(oid)]
        if len(values) != 1:
            raise ESTError(403, f"IDevID certificate has no single subject {idevid.identity}")
        device = decl.device(values[0])
        if device is None:
            raise ESTError(403, f"IDevID {idevid.identity} {values[0]!r} is not a device "
                           f"declared in fleet {decl.fleet.name!r}")
        return Target(decl, device)
    raise ESTError(403, "client certificate is not an IDevID issued by "
                   + ", ".join(repr(i) for i in sorted(set(issuers))))


def _device_key_intent(target: Target, profile: CertificateProfile,
                       csr: x509.CertificateSigningRequest) -> DeviceIntent:
    """The planner's intent for the device with the CSR's key, which must be the declared one."""
    fleet, device = target.decl.fleet, target.device
    try:
        public_key = keys.supported_public_key(csr.public_key())
    except PKIError as exc:
        raise ESTError(400, str(exc)) from None
    pem = keys.public_key_to_pem(public_key).decode()
    declared = device_intent(fleet, profile, device)
    intent = device_intent(fleet, profile,
                           device.model_copy(update={"publicKey": pem, "csr": None}))
    if declared.key_fingerprint not in (ENROLLED, intent.key_fingerprint):
        raise ESTError(403, f"the CSR key of {device.id!r} is not the key declared in git "
                       "(publicKey/csr); declare the new key and apply first")
    return intent


def server_key_response(keystore: KeyStore, record: CertRecord,
                        boundary: str = "fleetpki-est") -> tuple[bytes, str]:
    """RFC 7030 4.4.2 multipart/mixed body: the PKCS#8 key, then the certificate."""
    if record.key_blob is None:
        raise ESTError(500, "no server-generated key recorded")
    key = keystore.unwrap_device_key(record.serial, record.key_blob)
    parts = [("application/pkcs8", base64.encodebytes(keys.private_key_to_der(key))),
             (CERTS_ONLY, certs_only([x509.load_der_x509_certificate(record.der)]))]
    body = b"".join(f"--{boundary}\r\nContent-Type: {kind}\r\nContent-Transfer-Encoding: "
                    f"base64\r\n\r\n".encode() + content + b"\r\n" for kind, content in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/mixed; boundary={boundary}"


def reenroll_identity(inventory: Inventory, peer_der: bytes | None, now: int) -> CertRecord:
    """The device record of a TLS client certificate: known, active (not revoked), a device.
    A retired or revoked one is refused and recorded as seen (for `fleetpki lint`)."""
    if not peer_der:
        raise ESTError(401, "simplereenroll needs a TLS client certificate")
    certificate = x509.load_der_x509_certificate(peer_der)
    record = inventory.get(serial_hex(certificate.serial_number))
    if record is None or record.der != peer_der or record.kind != "device":
        raise ESTError(403, "client certificate unknown to this CA")
    if record.state != "active":
        with inventory.transaction():
            inventory.saw(record.serial, "est", now)
        raise ESTError(403, f"client certificate {record.serial} is {record.state}")
    return record
