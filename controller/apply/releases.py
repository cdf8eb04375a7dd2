"""Apply release actions: sign a release, withdraw it, revoke a signing profile.

A release signature is made with the profile's key (kept in the keystore like a CA key,
`signing.<profile>.<algorithm>.v<keyVersion>`, so raising `keyVersion` rotates it) and a new
code-signing certificate for that key, issued by the profile's CA for this release only. The
manifest, the signature and the certificate are recorded together in one transaction; a
changed release's previous certificate is revoked (superseded) in the same transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from controller.api.resources import SigningProfile
from controller.clock import epoch
from controller.pki import certificates as certs
from controller.pki import keys
from controller.plan.model import Action
from controller.signing import cms, timestamp
from controller.signing.manifest import manifest_bytes, manifest_digest
from controller.stores.releases import Releases, SigningRecord

if TYPE_CHECKING:
    from controller.apply.executor import Executor

BACKDATE = timedelta(minutes=1)
TSA_RENEW_BEFORE = timedelta(days=1)  # a TSA certificate closer to expiry is replaced
USAGES = {"codeSigning": ["digital signature", "code signing"],
          "timeStamping": ["digital signature", "timestamping"]}


def signing_key_id(profile: SigningProfile) -> str:
    spec = profile.spec
    return f"signing.{profile.name}.{spec.keyAlgorithm}.v{spec.keyVersion}"


def _serial_hex(serial: int) -> str:
    return format(serial, "040x")


class ReleaseSigner:
    """Release actions for one apply; shares the executor's stores, clock and CA keys."""

    def __init__(self, runner: Executor) -> None:
        self.runner = runner
        self.store = Releases(runner.inventory)
        self._keys: dict[str, keys.PrivateKey] = {}
        self.now = runner.now.replace(microsecond=0)

    def signing_key(self, profile: SigningProfile) -> tuple[str, keys.PrivateKey]:
        """The profile's current key, made and stored on first use."""
        key_id = signing_key_id(profile)
        if key_id not in self._keys:
            keystore = self.runner.keystore
            if keystore.has_ca_key(key_id):
                self._keys[key_id] = keystore.get_ca_key(key_id)
            else:
                key = keys.generate_private_key(profile.spec.keyAlgorithm)
                keystore.put_ca_key(key_id, key)
                self._keys[key_id] = key
        return key_id, self._keys[key_id]

    def chain(self, ca_name: str) -> list[x509.Certificate]:
        """The CA's active certificate and its issuers' certificates up to the root."""
        return [x509.load_der_x509_certificate(r.der)
                for r in self.runner.inventory.ca_chain(ca_name)]

    def _certificate(self, profile: SigningProfile, public_key: keys.PublicKey
                     ) -> tuple[x509.Certificate, str]:
        issuer = self.runner.desired.authority(profile.spec.issuerRef.name)
        ca_record, ca_cert, ca_key = self.runner.signer(issuer.name)
        certificate = certs.build_leaf_certificate(
            subject=certs.build_name(profile.spec.subject.attributes()), subject_alt_names=[],
            public_key=public_key, issuer_key=ca_key, issuer_certificate=ca_cert,
            not_before=self.now - BACKDATE, not_after=self.now + profile.spec.duration,
            usages=USAGES[profile.spec.usage],
            crl_distribution_point=issuer.spec.crl.distributionPoint,
            ocsp_url=issuer.spec.ocsp.url if issuer.spec.ocsp else None,
            critical_extended_usage=profile.spec.usage == "timeStamping")
        return certificate, ca_record.serial

    def _record(self, profile: SigningProfile, certificate: x509.Certificate,
                issuer_serial: str, key_id: str, release: str = "", digest: str = "",
                manifest: bytes | None = None, signature: bytes | None = None
                ) -> SigningRecord:
        return SigningRecord(
            _serial_hex(certificate.serial_number), profile.name, profile.spec.usage, release,
            digest, issuer_serial, key_id, "active", epoch(certificate.not_valid_after_utc),
            certificate.public_bytes(Encoding.DER), epoch(self.runner.now), manifest, signature)

    def authority(self, name: str) -> tuple[timestamp.Authority, bool]:
        """The TSA profile `name` as an authority, and whether its certificate was issued (and
        recorded) now: the current one is reused while it is valid for the current key."""
        profile = self.runner.desired.signing_profile(name)
        key_id, key = self.signing_key(profile)
        current = [r for r in self.store.active(name) if r.key_id == key_id
                   and r.not_after > epoch(self.now + TSA_RENEW_BEFORE)]
        if current:
            certificate = x509.load_der_x509_certificate(current[-1].der)
        else:
            certificate, issuer_serial = self._certificate(profile, key.public_key())
            with self.runner.inventory.transaction():
                self.store.insert(self._record(profile, certificate, issuer_serial, key_id))
        return (timestamp.Authority(key, certificate, self.chain(profile.spec.issuerRef.name)),
                not current)

    def timestamper(self, name: str) -> Callable[[bytes], asn1_cms.CMSAttribute]:
        """`countersign` for cms.sign: a token from the TSA profile `name`."""
        tsa, _ = self.authority(name)

        def stamp(signature: bytes) -> asn1_cms.CMSAttribute:
            token = timestamp.make_token(signature, tsa, self.now, certs.random_serial())
            return timestamp.token_attribute(token)

        return stamp

    def sign(self, action: Action) -> None:
        decl = self.runner.desired.releases[action.name]
        profile = self.runner.desired.signing_profile(decl.release.spec.signingProfileRef.name)
        key_id, key = self.signing_key(profile)
        certificate, issuer_serial = self._certificate(profile, key.public_key())
        manifest = manifest_bytes(decl)
        tsa = profile.spec.timestampAuthorityRef
        signature = cms.sign(manifest, key, certificate, self.chain(profile.spec.issuerRef.name),
                             self.now, countersign=self.timestamper(tsa.name) if tsa else None)
        record = self._record(profile, certificate, issuer_serial, key_id, decl.release.name,
                              manifest_digest(decl), manifest, signature)
        with self.runner.inventory.transaction():
            if action.serial:
                self.store.revoke(action.serial, "superseded", epoch(self.runner.now))
            self.store.insert(record)
        self.runner.result.count(action.action)

    def withdraw(self, action: Action) -> None:
        assert action.serial is not None
        with self.runner.inventory.transaction():
            self.store.revoke(action.serial, action.revocation_reason or "unspecified",
                              epoch(self.runner.now))
        self.runner.result.count(action.action)

    def revoke_profile(self, action: Action) -> None:
        with self.runner.inventory.transaction():
            for record in self.store.active(action.name):
                self.store.revoke(record.serial, action.revocation_reason or "unspecified",
                                  epoch(self.runner.now))
        self.runner.result.count(action.action)


def execute_releases(runner: Executor, actions: list[Action]) -> None:
    """The release actions of a plan, in plan order (under the CA lock), each skipped when
    another applier did it meanwhile: a release is signed once, whichever applier signs it."""
    if not actions:
        return
    signer = ReleaseSigner(runner)
    for action in actions:
        if action.action == "revoke-signer":
            signer.revoke_profile(action)
        elif action.action in ("withdraw-release", "sign-release") and \
                _signature_unchanged(signer.store, action):
            (signer.withdraw if action.action == "withdraw-release" else signer.sign)(action)


def _signature_unchanged(store: Releases, action: Action) -> bool:
    """Whether the release's active signature is still the one the plan saw (`action.serial`;
    none for a first signature)."""
    current = store.current(action.name)
    return (current.serial if current else None) == action.serial


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()
