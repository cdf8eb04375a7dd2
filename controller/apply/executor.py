"""Execute a Plan against the inventory and keystore, crash-safely.

Steps run in plan order: CAs, revocations, issuance, CRLs. Crash safety comes from three rules:
- a new certificate and the revocation (reason `superseded`) of the one it replaces commit in one
  SQLite transaction, and the partial unique index forbids two active certificates per device;
- a certificate exists for the outside world only once committed (exports read the inventory),
  so a batch lost in a crash was never seen by anyone and is simply planned again;
- a CA key is journalled before it is written and the journal entry is closed in the transaction
  that records its certificate; leftover entries name keys that never signed anything kept.
Before the first change, `prepare` refuses an unsafe plan and loads every CA key the plan signs
with, so a wrong passphrase or a missing key changes nothing. Public files (CA certificates,
CRLs) are derived from the inventory afterwards (`stores.publish.sync_public`).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509

from controller.api.desired import Desired
from controller.api.problems import InvalidDeclaration
from controller.api.resources import Authority
from controller.apply import signing
from controller.apply.releases import execute_releases
from controller.clock import epoch, from_epoch
from controller.pki import certificates as certs
from controller.pki import keys
from controller.pki.crl import RevokedEntry, build_crl, crl_to_der
from controller.pki.template import LeafTemplate
from controller.plan.intents import ENROLLED, DeviceIntent
from controller.plan.model import RELEASE_ACTION_NAMES, Action, Plan
from controller.plan.planner import DeclaredIntents, ca_intent
from controller.plan.schedule import renew_before, renewal_time
from controller.stores.inventory import CertRecord, CRLRecord, Inventory
from controller.stores.keystore import KeyStore
from controller.stores.releases import Releases

BACKDATE = timedelta(minutes=1)  # tolerate device clock skew, as step-ca does
BATCH = 2_000
# batches recorded per transaction, at most: a commit writes every page it changed, and a large
# inventory's device-key index changes at random pages (a first issuance of a million wrote
# 18.8 GB with a batch a transaction, 9.0 GB with 10, 6.1 GB with 25); a transaction of 50,000
# holds the write lock a few seconds (an EST enrollment waits that long)
BATCHES_PER_TRANSACTION = 25
_Batch = TypeVar("_Batch")
Progress = Callable[[int], None]
CALock = Callable[[], AbstractContextManager[object]]  # see Executor


class ApplyRefused(Exception):
    """The plan must not be executed as it stands (e.g. mass revocation); nothing was done."""


@dataclass
class ApplyResult:
    done: dict[str, int] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)  # fleet -> messages

    def count(self, action: str, number: int = 1) -> None:
        self.done[action] = self.done.get(action, 0) + number


def serial_hex(serial: int) -> str:
    return format(serial, "040x")


def _general_name(kind: str, value: str) -> x509.GeneralName:
    if kind == "dns":
        return x509.DNSName(value)
    if kind == "uri":
        return x509.UniformResourceIdentifier(value)
    if kind == "ip":
        return x509.IPAddress(ipaddress.ip_address(value))
    return x509.RFC822Name(value)


class Executor:
    """Carries the stores and the clock through one apply."""

    def __init__(self, desired: Desired, inventory: Inventory, keystore: KeyStore,
                 now: datetime, ca_lock: CALock = contextlib.nullcontext,
                 elsewhere: Sequence[Inventory] = ()) -> None:
        """`ca_lock()` is held around the work on CAs and the crash journal (recovery, CA
        creation, CRLs) when other appliers, of other fleets, share the inventory. The CRLs
        list the revocations under our CAs recorded `elsewhere` too."""
        self.desired = desired
        self.inventory = inventory
        self.elsewhere = elsewhere
        self.keystore = keystore
        self.now = now
        self.ca_lock = ca_lock
        self._signers: dict[str, tuple[CertRecord, x509.Certificate, keys.PrivateKey]] = {}
        self._keys: dict[str, keys.PrivateKey] = {}
        self._templates: dict[tuple[str, str], LeafTemplate | None] = {}
        self._intents = DeclaredIntents(desired)
        self.result = ApplyResult()

    def preload(self, plan: Plan) -> None:
        """Unlock the keystore and load every existing CA key the plan signs with, so that a
        wrong passphrase or a missing or damaged key stops the run before its first change."""
        self.keystore.unlock()
        issuers: set[str] = set()
        for action in plan.actions:
            if action.action in ("issue", "renew", "rekey"):
                issuers.add(self.desired.fleets[action.name].fleet.spec.issuerRef.name)
            elif action.action in ("create-ca", "renew-ca"):
                parent = self.desired.authority(action.name).spec.parentRef
                issuers.update([parent.name] if parent else [])
            elif action.action == "sign-release":
                decl = self.desired.releases[action.name]
                profile = self.desired.signing_profile(decl.release.spec.signingProfileRef.name)
                issuers.add(profile.spec.issuerRef.name)
                tsa = profile.spec.timestampAuthorityRef
                if tsa is not None:
                    issuers.add(self.desired.signing_profile(tsa.name).spec.issuerRef.name)
            elif action.action == "publish-crl":
                for generation in self.inventory.crl_generations(action.name, epoch(self.now)):
                    self._ca_key(generation.key_id or "")
        for issuer in sorted(issuers):
            if self.inventory.active_ca(issuer) is not None:  # else created in this run
                self.signer(issuer)

    def _ca_key(self, key_id: str) -> keys.PrivateKey:
        if key_id not in self._keys:
            self._keys[key_id] = self.keystore.get_ca_key(key_id)
        return self._keys[key_id]

    # --- CAs ---------------------------------------------------------------------------------
    def signer(self, ca_name: str) -> tuple[CertRecord, x509.Certificate, keys.PrivateKey]:
        """The active certificate and key of a CA; a missing key is an error, never a new CA."""
        if ca_name not in self._signers:
            record = self.inventory.active_ca(ca_name)
            if record is None:
                raise ApplyRefused(f"CertificateAuthority/{ca_name} has no active certificate")
            key = self._ca_key(record.key_id or "")
            self._signers[ca_name] = (record, x509.load_der_x509_certificate(record.der), key)
        return self._signers[ca_name]

    def create_ca(self, action: Action) -> None:
        ca = self.desired.authority(action.name)
        spec = ca.spec
        parent = None
        if spec.parentRef is not None:
            parent = self.signer(spec.parentRef.name)
        key = keys.generate_private_key(spec.keyAlgorithm)
        serial = certs.random_serial()
        key_id = f"{ca.name}-{serial_hex(serial)[:16]}"
        with self.inventory.transaction():
            entry = self.inventory.journal_begin("ca-key", ca.name, key_id, epoch(self.now))
        self.keystore.put_ca_key(key_id, key)
        parent_spec = self.desired.authority(spec.parentRef.name).spec if spec.parentRef else None
        certificate = certs.build_ca_certificate(
            subject=certs.build_name(spec.subject.attributes()),
            public_key=key.public_key(),
            issuer_key=parent[2] if parent else key,
            issuer_certificate=parent[1] if parent else None,
            not_before=self.now - BACKDATE,
            not_after=self.now + spec.duration,
            path_length=spec.pathLength,
            serial=serial,
            crl_distribution_point=parent_spec.crl.distributionPoint if parent_spec else None,
            ocsp_url=parent_spec.ocsp.url if parent_spec and parent_spec.ocsp else None,
            permitted_dns_domains=spec.nameConstraints.permittedDNSDomains
            if spec.nameConstraints else (),
        )
        record = self._record(certs.Signed.of(certificate), "ca", ca.name, "",
                              parent[0].serial if parent else None, ca_intent(ca),
                              self._ca_window(ca), key_id=key_id)
        with self.inventory.transaction():
            if action.serial:
                self.inventory.retire(action.serial)
            self.inventory.insert(record)
            self.inventory.journal_end(entry)
        self._signers.pop(ca.name, None)
        self.result.count(action.action)

    @staticmethod
    def _ca_window(ca: Authority) -> timedelta:
        return renew_before(ca.spec.duration, ca.spec.renewBefore)

    def _record(self, signed: certs.Signed, kind: str, owner: str, device: str,
                issuer_serial: str | None, intent: str, window: timedelta,
                key_id: str | None = None, key_blob: bytes | None = None,
                source: str | None = None) -> CertRecord:
        not_after = epoch(signed.not_after)
        return CertRecord(
            serial=serial_hex(signed.serial), kind=kind, owner=owner, device=device,
            issuer_serial=issuer_serial, state="active",
            not_before=epoch(signed.not_before), not_after=not_after,
            renew_at=renewal_time(not_after, window, f"{owner}/{device}"), intent=intent,
            fingerprint=hashlib.sha256(signed.der).hexdigest(), key_id=key_id,
            key_blob=key_blob, der=signed.der, issued_at=epoch(self.now), source=source,
        )

    # --- devices -----------------------------------------------------------------------------
    def revoke(self, actions: list[Action], progress: Progress) -> None:
        for chunk in self._committed(_chunks(actions), self._record_revoked):
            self.result.count("revoke", len(chunk))
            progress(len(chunk))

    def _record_revoked(self, chunk: list[Action]) -> list[Action]:
        revocations = []
        for action in chunk:
            assert action.serial is not None
            revocations.append((action.serial, action.revocation_reason or "unspecified"))
        self.inventory.revoke_all(revocations, epoch(self.now))
        return chunk

    def issue(self, actions: list[Action], progress: Progress) -> None:
        """Sign the certificates of `actions`, each from its device's intent rendered again
        where it is signed (on the workers), and record each batch as it comes, several to a
        transaction (`_committed`)."""
        for issuer in sorted({self.desired.fleets[a.name].fleet.spec.issuerRef.name
                              for a in actions}):
            self.signer(issuer)  # loaded once, before any worker is forked
        signed = zip(_chunks(actions), signing.records(self, actions, BATCH), strict=True)
        for chunk in self._committed(signed, self._record_issued):
            for action in chunk:
                self.result.count(action.action)
            progress(len(chunk))

    def _record_issued(self, signed: tuple[list[Action], list[CertRecord]]) -> list[Action]:
        chunk, records = signed
        assert len(records) == len(chunk)
        # the replaced ones first: one active each
        self.inventory.revoke_all([(action.serial, "superseded") for action in chunk
                                   if action.serial], epoch(self.now))
        self.inventory.insert_all(records)
        return chunk

    def _committed(self, batches: Iterable[_Batch], record: Callable[[_Batch], list[Action]]
                   ) -> Iterator[list[Action]]:
        """`record` each of `batches` in the inventory, in transactions of one batch, then
        twice as many each time up to BATCHES_PER_TRANSACTION (what a few batches do is
        committed as soon); yields the actions `record` returns for each batch once its
        transaction is committed (not the batch: a batch of records is let go once written)."""
        pending, size = iter(batches), 1
        for first in pending:  # taken before the transaction begins: no lock held waiting
            with self.inventory.transaction():
                recorded = [record(first)]
                recorded += (record(batch) for batch in itertools.islice(pending, size - 1))
            size = min(2 * size, BATCHES_PER_TRANSACTION)
            yield from recorded

    def _declared_certificate(self, action: Action) -> CertRecord:
        return self._device_certificate(action, self._intents(action.name, action.device or ""))

    def _device_certificate(self, action: Action, intent: DeviceIntent) -> CertRecord:
        fleet = self.desired.fleets[action.name].fleet
        profile = self.desired.profile(fleet.spec.profileRef.name)
        issuer = self.desired.authority(fleet.spec.issuerRef.name)
        ca_record, ca_cert, ca_key = self.signer(issuer.name)
        serial = certs.random_serial()
        key_blob = None
        enrolled = intent.key_fingerprint == ENROLLED
        if intent.device_key is not None:
            device_key = intent.device_key
        elif enrolled:  # renew with the key the device enrolled
            device_key = keys.DeviceKey.of(self._enrolled_key(action))
        else:
            private_key = self._server_key(action, profile.spec.keyAlgorithm)
            device_key = keys.DeviceKey.of(private_key.public_key())
            key_blob = self.keystore.wrap_device_key(serial_hex(serial), private_key)
        # the content digest is hashed when asked for: once
        digest = f"{intent.content_digest}:{device_key.fingerprint}" if enrolled \
            else intent.digest
        ocsp_url = issuer.spec.ocsp.url if issuer.spec.ocsp else None
        if (ca_record.serial, profile.name) not in self._templates:
            self._templates[(ca_record.serial, profile.name)] = LeafTemplate.for_issuer(
                ca_cert, ca_key, profile.spec.usages, issuer.spec.crl.distributionPoint,
                ocsp_url)
        template = self._templates[(ca_record.serial, profile.name)]
        subject = certs.build_name(dict(intent.subject))
        sans = [_general_name(k, v) for k, v in intent.sans]
        not_before, not_after = self.now - BACKDATE, self.now + profile.spec.duration
        extra = [(oid, certs.der_utf8_string(v)) for oid, v in intent.extensions]
        if template is not None and template.covers(extra):
            signed = template.certificate(
                subject=subject, subject_alt_names=sans, spki=device_key.der,
                not_before=not_before, not_after=not_after, serial=serial,
                extra_extensions=extra)
        else:  # what the template does not cover: the same certificate, built more slowly
            signed = certs.Signed.of(certs.build_leaf_certificate(
                subject=subject, subject_alt_names=sans, public_key=device_key.load(),
                issuer_key=ca_key, issuer_certificate=ca_cert, not_before=not_before,
                not_after=not_after, usages=profile.spec.usages, extra_extensions=extra,
                crl_distribution_point=issuer.spec.crl.distributionPoint, ocsp_url=ocsp_url,
                serial=serial))
        window = renew_before(profile.spec.duration, profile.spec.renewBefore)
        return self._record(signed, "device", fleet.name, intent.device_id,
                            ca_record.serial, digest, window, key_blob=key_blob,
                            source=intent.source)

    def _enrolled_key(self, action: Action) -> keys.PublicKey:
        previous = self.inventory.get(action.serial or "")
        if previous is None:
            raise ApplyRefused(f"device {action.device!r} of DeviceFleet/{action.name} has no "
                               "enrolled key to renew")
        certificate = x509.load_der_x509_certificate(previous.der)
        return keys.supported_public_key(certificate.public_key())

    def _server_key(self, action: Action, algorithm: str) -> keys.PrivateKey:
        """A new key, except on `renew` of a server-generated key (rotationPolicy: Never)."""
        if action.action == "renew" and action.serial:
            previous = self.inventory.get(action.serial)
            if previous is not None and previous.key_blob is not None:
                return self.keystore.unwrap_device_key(previous.serial, previous.key_blob)
        return keys.generate_private_key(algorithm)

    # --- CRLs --------------------------------------------------------------------------------
    def publish_crl(self, action: Action) -> None:
        """A fresh CRL for every unexpired certificate of the CA (old generations included)."""
        ca = self.desired.authority(action.name)
        now_s = epoch(self.now)
        generations = self.inventory.crl_generations(ca.name, now_s)
        for generation in generations:
            key = self._ca_key(generation.key_id or "")
            ca_cert = x509.load_der_x509_certificate(generation.der)
            entries = [RevokedEntry(int(serial, 16), from_epoch(at), reason)
                       for serial, at, reason in self.inventory.revoked_by_issuer(
                           generation.serial, now_s)]
            number = self.inventory.next_crl_number(ca.name)
            signing = Releases(self.inventory)
            entries += [RevokedEntry(int(serial, 16), from_epoch(at), reason)
                        for serial, at, reason in signing.revoked_by_issuer(generation.serial)]
            for other in self.elsewhere:
                entries += [RevokedEntry(int(serial, 16), from_epoch(at), reason)
                            for serial, at, reason in other.revoked_by_issuer(generation.serial,
                                                                              now_s)]
            revoked_total = self.inventory.revoked_total(generation.serial) + \
                signing.revoked_total(generation.serial) + \
                sum(other.revoked_total(generation.serial) for other in self.elsewhere)
            crl = build_crl(issuer_certificate=ca_cert, issuer_key=key, entries=entries,
                            crl_number=number, this_update=self.now,
                            next_update=self.now + ca.spec.crl.duration)
            with self.inventory.transaction():
                self.inventory.put_crl(CRLRecord(generation.serial, ca.name, number, now_s,
                                                 epoch(self.now + ca.spec.crl.duration),
                                                 len(entries), revoked_total, crl_to_der(crl)))
        if generations:  # none: the CA was not made (e.g. a policy denied it)
            self.result.count("publish-crl")


def _chunks(actions: list[Action]) -> Iterator[list[Action]]:
    for start in range(0, len(actions), BATCH):
        yield actions[start:start + BATCH]


def recover(inventory: Inventory, keystore: KeyStore) -> list[str]:
    """Close journal entries left by a crash; returns the quarantined CA key ids.

    An open `ca-key` entry whose key id no inventory certificate uses means the process died
    between writing the key and recording its certificate: that key signed nothing kept.
    """
    quarantined = []
    for entry, operation, _subject, key_id in inventory.journal_entries():
        if operation == "ca-key" and not inventory.uses_key(key_id):
            keystore.quarantine_ca_key(key_id)
            quarantined.append(key_id)
        with inventory.transaction():
            inventory.journal_end(entry)
    return quarantined


def prepare(plan: Plan, desired: Desired, inventory: Inventory, keystore: KeyStore,
            now: datetime, *, allow_mass_revocation: bool = False,
            ca_lock: CALock = contextlib.nullcontext,
            elsewhere: Sequence[Inventory] = ()) -> Executor:
    """Refuse an unsafe plan and unlock what it needs; nothing is changed."""
    if plan.problems:
        raise InvalidDeclaration(list(plan.problems))
    if plan.mass_revocations and not allow_mass_revocation:
        worst = plan.mass_revocations[0]
        raise ApplyRefused(
            f"refusing to revoke {worst.count} certificates of DeviceFleet/{worst.fleet} "
            f"(limit {worst.limit}); check the change, then pass --allow-mass-revocation or "
            "--max-revocations N; nothing applied")
    runner = Executor(desired, inventory, keystore, now, ca_lock, elsewhere)
    runner.preload(plan)
    return runner


def _still_due(runner: Executor, action: Action) -> bool:
    """Whether a planned CA creation or renewal was not done meanwhile by another applier."""
    current = runner.inventory.active_ca(action.name)
    return (current.serial if current else None) == action.serial


def execute(runner: Executor, plan: Plan, progress: Progress = lambda n: None) -> ApplyResult:
    """Run a prepared plan's steps in order: CAs, revocations, issuance, CRLs."""
    with runner.ca_lock():
        recover(runner.inventory, runner.keystore)
        for action in plan.actions:
            if action.action in ("create-ca", "renew-ca") and _still_due(runner, action):
                runner.create_ca(action)
    runner.revoke([a for a in plan.actions if a.action == "revoke"], progress)
    runner.issue([a for a in plan.actions if a.action in ("issue", "renew", "rekey")], progress)
    with runner.ca_lock():
        execute_releases(runner, [a for a in plan.actions if a.action in RELEASE_ACTION_NAMES])
        for action in plan.actions:
            if action.action == "publish-crl":
                runner.publish_crl(action)
    with runner.inventory.transaction():
        runner.inventory.note_sources(plan.source_notes)
        for name, digest in plan.completed_fleets.items():
            decl = runner.desired.fleets[name]
            runner.inventory.set_fleet(name, digest, decl.fleet.spec.decommissioned,
                                       epoch(runner.now), decl.summary.count,
                                       decl.summary.declared)
    return runner.result
