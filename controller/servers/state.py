"""What the servers read: the inventory (re-checked per request), CA keys and the declaration.

One `ServerState` per process, used only from the event-loop thread (SQLite connections are
per thread). Each request starts with `refresh()`, one query for the database's version (SQLite's
`PRAGMA data_version`; PostgreSQL's change notifications): it changes when another connection
(a `fleetpki apply`, another worker or replica) committed. Then the cached OCSP answers are
dropped, so a revocation is served on the next request; the CA generations, their keys and the
declaration are reloaded only when an apply changed a CA or completed a fleet, so that the
enrollments of the other workers cost a query, not a reload.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from cryptography import x509

from controller import jobs
from controller.api.desired import Desired
from controller.apply.executor import Executor, serial_hex
from controller.apply.releases import ReleaseSigner
from controller.audit.events import local_actor
from controller.audit.records import Event
from controller.clock import epoch, from_epoch, now_utc
from controller.pki import certificates as certs
from controller.pki import keys
from controller.policy.engine import CompiledRule, PolicyMemo
from controller.policy.tenancy import Tenancy
from controller.servers import ocsp
from controller.servers.audit import GroupCommit
from controller.signing import timestamp

log = logging.getLogger(__name__)

Params = ParamSpec("Params")
Found = TypeVar("Found")
SERVE_OWNER = "_serve"
TLS_VALIDITY = timedelta(days=30)


class ServerState:
    def __init__(self, directory: Path | None, state: jobs.StateDir,
                 policies: jobs.PolicySource = jobs.DEFAULT_SOURCE) -> None:
        """Refuses (InventoryError) a state directory without an inventory: serving never
        creates one."""
        self.directory = directory
        self.policies = policies
        self.state = state
        self.inventory = state.inventory(create=False)
        self.keystore = state.keystore()
        self.audit = state.audit(lambda: self.keystore)
        self.enrollments = GroupCommit(self.audit)  # EST's records, appended from the loop
        self._keys: dict[str, keys.PrivateKey] = {}
        self._look_ups = asyncio.Lock()
        self._version: int | None = None
        self._marker: tuple[object, ...] = ()
        self.desired = Desired()
        self.rules: list[CompiledRule] = []
        self.policy_memo = PolicyMemo()  # the rules' verdicts on the current declaration
        self.tenancy = Tenancy()
        self._executor: Executor | None = None
        self.responder = ocsp.Responder(ocsp.IssuerIndex([]), self._lookup)
        self.refresh(force=True)  # unlocks the CA keys: a wrong passphrase stops here
        actor = local_actor()
        self.audit.record([Event("serve.started", "success", str(state.path), actor),
                           Event("keystore.unlocked", "success", state.keys.describe(""),
                                 actor)], now_utc())

    def close(self) -> None:
        self.inventory.close()

    async def look_up(self, find: Callable[Concatenate[Desired, Params], Found],
                      *args: Params.args, **kwargs: Params.kwargs) -> Found:
        """`find(self.desired, ...)` (an EST device look-up) in a thread, one at a time: the
        first look-up of a device in a large fleet reads that fleet's rows (tens of seconds at a
        million devices), and meanwhile the event loop goes on answering OCSP and reading other
        connections (whose header timers would expire unread on a blocked loop)."""
        async with self._look_ups:
            return await asyncio.to_thread(find, self.desired, *args, **kwargs)

    # --- refresh ------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Drop the cached OCSP answers when another connection committed; reload the CA
        generations and the declaration only when an apply changed what they are read from
        (`Inventory.applied_marker`): another worker's or replica's enrollments leave them."""
        version = self.inventory.db.version()
        if version == self._version and not force:
            return
        self._version = version
        marker = self.inventory.applied_marker()
        if marker == self._marker and not force:
            self.responder.invalidate()
            return
        self._marker = marker
        self.responder.invalidate(ocsp.IssuerIndex(self._issuers()))
        self._executor = None
        if self.directory is not None:
            try:
                declaration = jobs.load(self.directory, self.policies, self.inventory)
                self.desired, self.rules = declaration.desired, declaration.rules
                self.policy_memo = PolicyMemo()
                self.tenancy = declaration.tenancy
            except Exception as exc:  # keep serving the last good declaration
                log.warning("cannot reload the declaration from %s: %s", self.directory,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        log.debug("state reloaded (data_version %s)", version)

    def changed(self) -> None:
        """Our own writes (certificates, revocations) do not move data_version: drop the cached
        OCSP answers. The declaration and the CA generations did not change."""
        self.responder.invalidate()

    def _issuers(self) -> list[ocsp.Issuer]:
        """Every unexpired CA certificate generation with its key (unlocked once each)."""
        now = epoch(now_utc())
        issuers = []
        for name in self.inventory.ca_names():
            for generation in self.inventory.ca_generations(name):
                if generation.not_after <= now or not generation.key_id:
                    continue
                if generation.key_id not in self._keys:
                    self._keys[generation.key_id] = self.keystore.get_ca_key(generation.key_id)
                issuers.append(ocsp.Issuer(generation.serial,
                                           x509.load_der_x509_certificate(generation.der),
                                           self._keys[generation.key_id]))
        return issuers

    def _lookup(self, issuer: ocsp.Issuer, serial: int) -> ocsp.Status:
        record = self.inventory.get(serial_hex(serial))
        if record is None or record.issuer_serial != issuer.serial:
            return ocsp.Status("unknown")
        if record.state == "revoked":
            return ocsp.Status("revoked", from_epoch(record.revoked_at or record.issued_at),
                               record.reason)
        return ocsp.Status("good")

    # --- distribution -------------------------------------------------------------------------
    def ocsp_response(self, request_der: bytes) -> bytes:
        self.refresh()
        return self.responder.respond(request_der, now_utc())

    def crl_der(self, ca_name: str) -> bytes | None:
        self.refresh()
        record = self.inventory.active_ca(ca_name)
        crl = self.inventory.crl(record.serial) if record else None
        return crl.der if crl else None

    def ca_pem(self, ca_name: str) -> bytes | None:
        self.refresh()
        record = self.inventory.active_ca(ca_name)
        if record is None:
            return None
        return certs.certificate_to_pem(x509.load_der_x509_certificate(record.der))

    def ca_certificates(self, ca_name: str | None = None) -> list[x509.Certificate]:
        """The chain of one CA (issuing first), or every unexpired CA certificate."""
        self.refresh()
        if ca_name is not None:
            return [x509.load_der_x509_certificate(r.der)
                    for r in self.inventory.ca_chain(ca_name)]
        now = epoch(now_utc())
        return [x509.load_der_x509_certificate(g.der) for name in self.inventory.ca_names()
                for g in self.inventory.ca_generations(name) if g.not_after > now]

    def timestamp_reply(self, name: str, request: bytes) -> bytes | None:
        """The RFC 3161 TimeStampResp of the TSA profile `name` to `request`; None when no
        such time-stamping profile is declared (or it is revoked). Its certificate is the one
        apply uses, issued here (and recorded, audited) if there is none yet."""
        self.refresh()
        if name not in self.desired.signing_profiles:
            return None
        profile = self.desired.signing_profile(name)
        if profile.spec.usage != "timeStamping" or profile.spec.revoked is not None:
            return None
        now = now_utc().replace(microsecond=0)
        tsa, issued = ReleaseSigner(self.executor(now)).authority(name)
        if issued:
            self.audit.record([Event("certificate.issued", "success", f"SigningProfile/{name}",
                                     local_actor(), {"serial": serial_hex(
                                         tsa.certificate.serial_number), "profile": name,
                                                     "usage": "timeStamping"})], now)
        return timestamp.reply(request, tsa, now, certs.random_serial())

    def executor(self, now: datetime) -> Executor:
        """The apply executor over the current declaration (its CA signers stay unlocked until
        the next reload)."""
        if self._executor is None or self._executor.desired is not self.desired:
            self._executor = Executor(self.desired, self.inventory, self.keystore, now)
        self._executor.now = now
        return self._executor

    def external_certificates(self) -> list[x509.Certificate]:
        """The declared external CAs (IDevID issuers), trusted for TLS client certificates."""
        return [self.desired.authority(name).spec.external_certificate()
                for name in sorted(self.desired.authorities)
                if self.desired.authority(name).spec.type == "external"]

    # --- TLS ----------------------------------------------------------------------------------
    def default_tls_ca(self) -> str:
        """The CA for the HTTPS certificate when none is named: the one CA that issues the
        declared fleets, else the one CA of our own (not external) declared."""
        issuers = {decl.fleet.spec.issuerRef.name for decl in self.desired.fleets.values()}
        own = {name for name in self.desired.authorities
               if self.desired.authority(name).spec.type != "external"}
        for candidates in (issuers, own):
            if len(candidates) == 1:
                return candidates.pop()
        raise ValueError("--https needs --tls-ca NAME: the declared fleets are issued by "
                         + (", ".join(sorted(issuers)) or "no CA")
                         + "; name the CA that issues the server certificate")
    def server_certificate(self, ca_name: str, host: str,
                           now: datetime) -> tuple[x509.Certificate, keys.PrivateKey,
                                                   list[x509.Certificate]]:
        """A fresh TLS certificate for `host` from CA `ca_name`; the key never leaves memory.
        Recorded in the inventory (owner `_serve`), superseding the previous one."""
        runner = self.executor(now)
        ca_record, ca_cert, ca_key = runner.signer(ca_name)
        key = keys.generate_private_key("ECDSA-P256")
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        certificate = certs.build_leaf_certificate(
            subject=certs.build_name({"commonName": host}), subject_alt_names=[san],
            public_key=key.public_key(), issuer_key=ca_key, issuer_certificate=ca_cert,
            not_before=now - timedelta(minutes=1), not_after=now + TLS_VALIDITY,
            usages=["digital signature", "server auth"])
        record = runner._record(certs.Signed.of(certificate), "device", SERVE_OWNER, host,
                                ca_record.serial, "serve", TLS_VALIDITY / 3)
        previous = self.inventory.active_device(SERVE_OWNER, host)
        with self.inventory.transaction():
            if previous is not None:
                self.inventory.revoke(previous.serial, "superseded", epoch(now))
            self.inventory.insert(record)
        self.changed()
        log.info("TLS certificate %s for %s issued by %s", record.serial, host, ca_name)
        return certificate, key, self.ca_certificates(ca_name)
