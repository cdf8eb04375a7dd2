"""`plan(desired, observed, now) -> Plan`: pure, deterministic, ordered. A large fleet's rows
(or its renewals falling due) are planned in shares on forked workers (`controller.parallel`),
with the plan of planning them here."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from controller import parallel
from controller.api.desired import (
    Desired,
    FleetDecl,
    content_hash,
    source_context,
    source_digest,
)
from controller.api.devices import Row, Share, revoked
from controller.api.problems import Problem
from controller.api.resources import Authority, Device
from controller.clock import epoch, from_epoch
from controller.plan.intents import ENROLLED, DeviceIntent, IntentError, device_intent
from controller.plan.model import (
    Action,
    ActionName,
    ActiveDevice,
    CAObserved,
    FleetObserved,
    MassRevocation,
    Observed,
    Plan,
)
from controller.plan.releases import plan_releases
from controller.plan.schedule import crl_due

CA_KIND = "CertificateAuthority"
FLEET_KIND = "DeviceFleet"
MIN_MASS_REVOCATION_LIMIT = 100
SHARES_PER_WORKER = 4  # so that the parent takes in a share's actions as the others are walked


class IntentSink(Protocol):
    """Told of each intent a plan makes: its fleet, the intent and the device's labels. A fleet
    walked on several cores tells each worker's copy of the sink; `gathered` takes what a copy
    holds (forgetting it), and the parent's copy `add`s what each worker's gathered."""

    def __call__(self, fleet: str, intent: DeviceIntent, labels: Mapping[str, str]) -> None: ...

    def gathered(self) -> Any: ...

    def add(self, gathered: Any) -> None: ...


def ca_intent(ca: Authority) -> str:
    """Digest of everything that is baked into a CA certificate."""
    spec = ca.spec
    return content_hash(
        spec.type, spec.parentRef.name if spec.parentRef else None, spec.subject.attributes(),
        spec.keyAlgorithm, spec.pathLength,
        spec.nameConstraints.model_dump() if spec.nameConstraints else None,
    )


def revocation_limit(active_count: int, override: int | None) -> int:
    """Default: 10% of the fleet or 100, whichever is larger."""
    if override is not None:
        return override
    return max(MIN_MASS_REVOCATION_LIMIT, active_count // 10)


def _plan_authority(ca: Authority, seen: CAObserved | None, known: bool,
                    now: int) -> Action | None:
    if seen is None:
        reason = "CA not yet created" if not known else "CA has no active certificate"
        return Action("create-ca" if not known else "renew-ca", CA_KIND, ca.name, reason)
    if seen.intent != ca_intent(ca):
        return Action("renew-ca", CA_KIND, ca.name, "CA spec changed (new key and certificate)",
                      serial=seen.serial)
    if now >= seen.renew_at:
        expiry = from_epoch(seen.not_after).isoformat()
        return Action("renew-ca", CA_KIND, ca.name, f"due for renewal (expires {expiry})",
                      serial=seen.serial)
    return None


class _FleetPlanner:
    """Actions for one fleet; collects intents, problems, and the source digests to note.

    A device whose active certificate was issued from the very row, fleet and profile declared
    now (the same source digest) and is not due for renewal needs nothing: it is not rendered
    again. Any other device is rendered and compared by intent digest, as ever; one found
    unchanged gets its source digest noted, so the next plan takes the short way.

    Each intent of a device to certify is told to `made`, and not kept: a million of them are
    gigabytes, and apply renders each again where it signs it (`DeclaredIntents`)."""

    def __init__(self, decl: FleetDecl, desired: Desired, seen: FleetObserved, now: int,
                 made: IntentSink | None = None) -> None:
        self.decl = decl
        self.fleet = decl.fleet
        self.profile = desired.profile(self.fleet.spec.profileRef.name)
        self.seen = seen
        self.now = now
        self.actions: list[Action] = []
        self.problems: list[Problem] = []
        self.source_notes: dict[str, str] = {}
        self._context = source_context(self.fleet, self.profile)
        self._made = made

    def _source(self, row: bytes) -> str:
        """The source digest of a device whose row has the digest `row`."""
        return source_digest(self._context, row)

    def _add(self, name: ActionName, device: str, reason: str, serial: str | None = None,
             revocation_reason: str | None = None) -> None:
        self.actions.append(Action(name, FLEET_KIND, self.fleet.name, reason, device, serial,
                                   revocation_reason))

    def run(self) -> None:
        spec = self.fleet.spec
        active = self.seen.active
        if active is None:  # unchanged since the last complete apply: only renewals are due
            self._due(())
            return
        if spec.decommissioned:
            for device_id, (serial, *_) in sorted(active.items()):
                self._add("revoke", device_id, "fleet decommissioned", serial,
                          "cessationOfOperation")
            return
        changes = self.decl.device_set.changes
        if changes is not None:  # these rows changed since the last complete apply, no other
            for device_id, (device, row) in sorted(changes.changed.items()):
                self._declared(device_id, device, row, active.get(device_id))
            self._removed(changes.removed, active)
            self._due(set(changes.ids))
            return
        workers = parallel.worker_count(self.decl.summary.count)
        shares = self.decl.device_set.shares(workers * SHARES_PER_WORKER)
        walk = functools.partial(self._walk, active=active)
        seen = self._spread(walk, shares, workers) if shares else walk(None)
        self._removed(set(active).difference(seen), active)

    def _walk(self, share: Share | None, active: dict[str, ActiveDevice]) -> list[str]:
        """Declare the devices of the share (all: None); the ids of those `active`."""
        seen = []
        for device_id, value, row in self.decl.device_set.walk(share):  # read one at a time
            if (current := active.get(device_id)) is not None:
                seen.append(device_id)
            self._declared(device_id, value, row, current)
        return seen

    def _spread(self, work: Callable[[Any], list[str]], shares: Sequence[Any],
                workers: int) -> list[str]:
        """`work` of each share on forked workers (copies of this planner, forked before it
        planned a device), what each made taken in, in order; the ids `work` returned."""
        seen: list[str] = []
        for actions, problems, notes, found, gathered in itertools.chain.from_iterable(
                parallel.mapped(functools.partial(self._apart, work), shares, 1,
                                self._forget_gathered, workers)):
            self.actions += [Action(name, FLEET_KIND, self.fleet.name, reason, device, serial,
                                    why) for name, reason, device, serial, why in actions]
            self.problems += problems
            self.source_notes.update(notes)
            seen += found
            if self._made is not None:
                self._made.add(gathered)
        return seen

    def _forget_gathered(self) -> None:
        """On a worker, before its first share: the sink's copy holds what the parent's does."""
        if self._made is not None:
            self._made.gathered()

    def _apart(self, work: Callable[[Any], list[str]], share: Any) -> tuple[
            list[tuple[ActionName, str, str | None, str | None, str | None]], list[Problem],
            dict[str, str], list[str], Any]:
        """`work` of a share on a worker, sending back what it made (actions as tuples: a
        tenth of the cost of pickling them)."""
        found = work(share)
        made = ([(a.action, a.reason, a.device, a.serial, a.revocation_reason)
                 for a in self.actions], self.problems, self.source_notes, found,
                self._made and self._made.gathered())
        self.actions, self.problems, self.source_notes = [], [], {}
        return made

    def _declared(self, device_id: str, value: Row, row: bytes,
                  current: ActiveDevice | None) -> None:
        """A device declared by a row of digest `row` (validated here if it must be rendered:
        a row judged when its active certificate `current` was issued from it is not), its
        active certificate `current`."""
        source = self._source(row)
        if revoked(value) is None:
            if current is None or current[3] != source or self.now >= current[2]:
                self._device(self.decl.device_set.device(value), current, source)
        elif current is not None:
            device = self.decl.device_set.device(value)
            assert device.revoked is not None
            self._add("revoke", device_id, "device marked revoked", current[0],
                      device.revoked.reason)

    def _removed(self, device_ids: Collection[str], active: dict[str, ActiveDevice]) -> None:
        if self.fleet.spec.deletionPolicy == "Revoke":
            for device_id in sorted(set(device_ids) & set(active)):
                self._add("revoke", device_id, "device removed from fleet", active[device_id][0],
                          "cessationOfOperation")

    def _due(self, planned: Collection[str]) -> None:
        """Renewals falling due of devices declared as last applied (not `planned` here); many
        on forked workers, where each device's row is read alone (`DeviceSet.indexed`)."""
        due = [(device_id, current) for device_id, current in sorted(self.seen.due.items())
               if device_id not in planned]
        workers = parallel.worker_count(len(due))
        if not workers or not self.decl.device_set.indexed():
            self._renew(due)
            return
        size = -(-len(due) // (workers * SHARES_PER_WORKER))
        self._spread(self._renew, [due[first:first + size]
                                   for first in range(0, len(due), size)], workers)

    def _renew(self, due: list[tuple[str, ActiveDevice]]) -> list[str]:
        """Plan the renewal of each device due, if still declared; no id to tell."""
        for device_id, current in due:
            if found := self.decl.device_set.row(device_id):
                self._device(found[0], current, self._source(found[1]))
        return []

    def _device(self, device: Device, current: ActiveDevice | None,
                source: str | None = None) -> None:
        try:
            intent = device_intent(self.fleet, self.profile, device, source)
        except IntentError as exc:
            file, line = self.decl.device_set.line_of(device.id) or (self.decl.located.file,
                                                                        None)
            self.problems.append(Problem(file, f"device {device.id!r}: {exc}", line,
                                         self.decl.located.ref, exc.field, device.id))
            return
        spec = self.profile.spec
        renewal: ActionName = (
            "rekey" if spec.keyGeneration == "server" and spec.rotationPolicy == "Always"
            else "renew")
        enrolled = intent.key_fingerprint == ENROLLED
        if current is None and enrolled:
            return  # awaiting its EST enrollment: there is no key to certify yet
        if current is None:
            self._add("issue", device.id, "no certificate yet")
        elif enrolled and current[1].split(":")[0] != intent.content_digest:
            self._add("renew", device.id, "declaration changed (profile, labels or issuer); "
                      "the enrolled key is kept", current[0])
        elif not enrolled and current[1].split(":")[-1] != intent.key_fingerprint:
            self._add("rekey", device.id, "key changed (device key or key algorithm)", current[0])
        elif not enrolled and current[1] != intent.digest:
            self._add(renewal, device.id, "declaration changed (profile, labels or issuer)",
                      current[0])
        elif self.now >= current[2]:
            self._add("renew" if enrolled else renewal, device.id, "due for renewal", current[0])
        else:
            if source is not None and current[3] != source:
                self.source_notes[current[0]] = source
            return
        if self._made is not None:
            self._made(self.fleet.name, intent, device.labels)


class DeclaredIntents:
    """The intent of a declared device to certify, rendered again as the planner rendered it
    (the same row, fleet, profile and source digest): what apply signs, one device at a time
    where it signs, after the plan judged them all without keeping them."""

    def __init__(self, desired: Desired) -> None:
        self._desired = desired
        self._contexts: dict[str, bytes] = {}  # fleet -> its source context

    def __call__(self, fleet: str, device_id: str) -> DeviceIntent:
        decl = self._desired.fleets[fleet]
        profile = self._desired.profile(decl.fleet.spec.profileRef.name)
        found = decl.device_set.row(device_id)
        if found is None:
            raise KeyError(f"DeviceFleet/{fleet} declares no device {device_id!r}")
        if fleet not in self._contexts:
            self._contexts[fleet] = source_context(decl.fleet, profile)
        return device_intent(decl.fleet, profile, found[0],
                             source_digest(self._contexts[fleet], found[1]))


def plan(desired: Desired, observed: Observed, now: datetime,
         max_revocations: int | None = None, made: IntentSink | None = None) -> Plan:
    """Ordered actions converging `observed` to `desired` at time `now`. The intent of every
    device to certify is told to `made` (the policies judge them as they come)."""
    now_s = epoch(now)
    ca_actions: list[Action] = []
    changed_cas: set[str] = set()
    for name in desired.authorities_in_order():
        ca = desired.authority(name)
        if not desired.held_here(name):
            continue  # external (trusted only) or cluster-wide (the cluster scope's work)
        action = _plan_authority(ca, observed.authorities.get(name),
                                 name in observed.known_authorities, now_s)
        if action is not None:
            ca_actions.append(action)
            changed_cas.add(name)

    device_actions: list[Action] = []
    problems: list[Problem] = []
    warnings: list[str] = []
    source_notes: dict[str, str] = {}
    mass: list[MassRevocation] = []
    completed: dict[str, str] = {}
    sizes: dict[str, int] = {}
    revoking_cas: set[str] = set()
    for name in sorted(desired.fleets):
        decl = desired.fleets[name]
        if decl.fleet.spec.tlsSecrets is not None:
            warnings.append(f"DeviceFleet/{name}: spec.tlsSecrets: only the Kubernetes operator "
                            "writes per-device Secrets; `fleetpki apply` writes none (use "
                            "`fleetpki export fleet` for files)")
        if decl.fleet.spec.suspend:
            warnings.append(f"DeviceFleet/{name} is suspended: no changes planned")
            continue
        issuer = decl.fleet.spec.issuerRef.name
        if not desired.held_here(issuer) and issuer not in observed.authorities:
            warnings.append(f"DeviceFleet/{name}: waiting for {desired.authorities[issuer].ref} "
                            "to have a certificate (the operator's cluster scope makes it)")
            continue
        seen = observed.fleets.get(name) or FleetObserved(None, {})
        sizes[name] = seen.active_count
        planner = _FleetPlanner(decl, desired, seen, now_s, made)
        planner.run()
        revocations = [a for a in planner.actions if a.action == "revoke"
                       and not decl.fleet.spec.decommissioned]  # explicit: no limit
        limit = revocation_limit(seen.active_count, max_revocations)
        if len(revocations) > limit:
            mass.append(MassRevocation(name, len(revocations), limit))
            warnings.append(f"DeviceFleet/{name}: {len(revocations)} revocations exceed the "
                            f"limit of {limit} (--max-revocations / --allow-mass-revocation)")
        if any(a.serial for a in planner.actions):  # revoke, or renew/rekey (superseded)
            revoking_cas.add(decl.fleet.spec.issuerRef.name)
        device_actions.extend(sorted(planner.actions, key=lambda a: (a.action != "revoke",
                                                                     a.device or "")))
        problems.extend(planner.problems)
        source_notes.update(planner.source_notes)
        if not planner.problems:
            completed[name] = decl.content_hash
    for name in sorted(set(observed.fleets) - set(desired.fleets)):
        seen = observed.fleets[name]
        if seen.active_count:
            warnings.append(
                f"DeviceFleet/{name} is no longer declared but holds {seen.active_count} active "
                "certificates: nothing is revoked; declare it with decommissioned: true to revoke")

    release_actions, release_cas, release_warnings = plan_releases(desired, observed)
    warnings.extend(release_warnings)
    crl_actions: list[Action] = []
    for name in desired.authorities_in_order():
        if not desired.held_here(name):
            continue
        crl = observed.crls.get(name)
        ca_seen = observed.authorities.get(name)
        reason = None
        if name in changed_cas or crl is None or ca_seen is None:
            reason = "no current CRL for the CA certificate"
        elif name in revoking_cas or name in release_cas:
            reason = "new revocations"
        elif crl.unpublished_revocations > 0:
            reason = f"{crl.unpublished_revocations} revocation(s) not yet published"
        elif crl_due(crl.this_update, crl.next_update, now_s):
            reason = f"CRL half-way to nextUpdate ({from_epoch(crl.next_update).isoformat()})"
        if reason:
            crl_actions.append(Action("publish-crl", CA_KIND, name, reason))

    return Plan(tuple(ca_actions + device_actions + release_actions + crl_actions),
                tuple(problems),
                tuple(warnings), tuple(mass), completed, sizes,
                source_notes=source_notes)
