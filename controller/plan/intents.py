"""What certificate a device should have: the profile rendered for that device.

An intent's `digest` changes exactly when the certificate content must change (identity, SANs,
extensions, usages, key algorithm, issuer, device key). Duration and renewBefore are not part of
it: they take effect at the next renewal, as in cert-manager.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from controller.api.desired import hash_parts
from controller.api.resources import CertificateProfile, Device, DeviceFleet
from controller.api.templates import TemplateError, render
from controller.pki import keys
from controller.pki.csr import load_csr, verify_csr
from controller.pki.errors import PKIError

_DNS = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                  r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # RFC 3986 scheme, as urlsplit finds it
_SPACE = re.compile(r"\s")  # as str.isspace


ENROLLED = "enrolled"  # key fingerprint of a device whose key comes from its EST enrollment


class IntentError(ValueError):
    """A device cannot get a certificate as declared; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class DeviceIntent:
    """The rendered certificate request for one device."""

    device_id: str
    subject: tuple[tuple[str, str], ...]
    sans: tuple[tuple[str, str], ...]  # ("dns" | "uri" | "ip" | "email", value)
    extensions: tuple[tuple[str, str], ...]  # (oid, UTF-8 value)
    device_key: keys.DeviceKey | None  # the device's own key; None for server keygen or EST
    shared: tuple[str, str, str, tuple[str, ...]]  # issuer, key algorithm, generation, usages
    key_fingerprint: str  # device key; "server-<algorithm>"; or ENROLLED (key from EST)
    source: str | None = None  # the row's source digest (the planner's), kept with the certificate

    @property
    def content_digest(self) -> str:
        """The digest of what the certificate says (issuer, key algorithm and generation,
        usages, subject, SANs, extensions), hashed when asked for: a device with no certificate
        yet is planned and judged without it."""
        return hash_parts(_profile_digest(*self.shared).copy(), self.subject, self.sans,
                          self.extensions).hexdigest()

    @property
    def digest(self) -> str:
        """What the inventory stores: `<content digest>:<key fingerprint>`."""
        return f"{self.content_digest}:{self.key_fingerprint}"


def _check_san(kind: str, value: str) -> None:
    if kind == "dns" and (len(value) > 253 or not _DNS.match(value)):
        raise ValueError(f"{value!r} is not a valid DNS name")
    if kind == "uri" and (not _SCHEME.match(value) or _SPACE.search(value)):
        raise ValueError(f"{value!r} is not an absolute URI")
    if kind == "ip":
        ipaddress.ip_address(value)
    if kind == "email" and not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an email address")


def device_public_key(device: Device, profile: CertificateProfile,
                      enrolls: bool = False) -> keys.DeviceKey | None:
    """The device's own key (from `publicKey` or a verified `csr`), or None for server keygen
    and for a device of an `enrollment` fleet that declares no key (it enrolls over EST)."""
    if profile.spec.keyGeneration == "server":
        if device.publicKey or device.csr:
            raise IntentError("csr" if device.csr else "publicKey", "profile uses "
                              "keyGeneration: server; the device must not supply publicKey or csr")
        return None
    if not (device.publicKey or device.csr):
        if enrolls:
            return None
        raise IntentError("csr", "profile uses keyGeneration: device; give publicKey or csr "
                          "(or set spec.enrollment on the fleet to let devices enroll over EST)")
    field = "csr" if device.csr else "publicKey"
    try:
        if device.csr:
            csr = load_csr(device.csr)
            verify_csr(csr)
            _check_csr_identity(csr, device)
            device_key = keys.DeviceKey.of(csr.public_key())  # type: ignore[arg-type]
        else:
            device_key = keys.DeviceKey.from_pem((device.publicKey or "").encode())
    except PKIError as exc:
        raise IntentError(field, str(exc)) from None
    if device_key.algorithm != profile.spec.keyAlgorithm:
        raise IntentError(field, f"device key is {device_key.algorithm}; profile requires "
                          f"{profile.spec.keyAlgorithm}")
    return device_key


def _check_csr_identity(csr: x509.CertificateSigningRequest, device: Device) -> None:
    """The CSR subject is ignored, but one naming another device is refused, not silently fixed."""
    for attribute in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if attribute.value != device.id:
            raise PKIError(f"CSR subject commonName {attribute.value!r} does not match "
                           f"device id {device.id!r}")


@functools.lru_cache(maxsize=256)
def _profile_digest(issuer: str, algorithm: str, generation: str, usages: tuple[str, ...]) -> Any:
    """The intent digest's parts that a fleet's devices share, hashed once."""
    return hash_parts(hashlib.sha256(), issuer, algorithm, generation, sorted(usages))


def device_intent(fleet: DeviceFleet, profile: CertificateProfile, device: Device,
                  source: str | None = None) -> DeviceIntent:
    """Render the profile for the device (from the row of digest `source`, when known); raise
    IntentError naming the field on any problem."""
    spec = profile.spec

    def fill(template: str) -> str:
        return render(template, device_id=device.id, labels=device.labels, fleet=fleet.name)

    try:
        subject = tuple((k, fill(t)) for k, t in spec.subject.items())
    except TemplateError as exc:
        raise IntentError("labels", f"profile {profile.name} subject: {exc}") from None
    sans: list[tuple[str, str]] = []
    groups = (("dns", spec.subjectAltNames.dnsNames), ("uri", spec.subjectAltNames.uris),
              ("ip", spec.subjectAltNames.ipAddresses),
              ("email", spec.subjectAltNames.emailAddresses))
    for kind, templates in groups:
        for template in templates:
            try:
                value = fill(template)
                _check_san(kind, value)
            except (TemplateError, ValueError) as exc:
                raise IntentError("labels", f"profile {profile.name} SAN: {exc}") from None
            sans.append((kind, value))
    try:
        extensions = tuple((e.oid, fill(e.value)) for e in spec.extensions)
    except TemplateError as exc:
        raise IntentError("labels", f"profile {profile.name} extension: {exc}") from None
    enrolls = fleet.spec.enrollment is not None and profile.spec.keyGeneration == "device"
    device_key = device_public_key(device, profile, enrolls)
    issuer = fleet.spec.issuerRef  # the kind only when cluster-wide: digests made before stay
    shared = (issuer.name if issuer.kind == "CertificateAuthority"
              else f"{issuer.kind}/{issuer.name}", spec.keyAlgorithm, spec.keyGeneration,
              tuple(spec.usages))
    if device_key is not None:
        fingerprint = device_key.fingerprint
    else:
        fingerprint = ENROLLED if enrolls else f"server-{spec.keyAlgorithm}"
    return DeviceIntent(device.id, subject, tuple(sans), extensions, device_key, shared,
                        fingerprint, source)
