"""The state a declaration would leave once applied: the baseline for reviewing a change.

A pull request's CI usually has no inventory. Planning the head revision against the base
revision "as if applied" shows exactly what the change does: new devices, re-issues forced by
a profile change, revocations, CA changes — and none of the routine renewals or CRL refreshes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from datetime import datetime

from controller.api.desired import Desired, FleetDecl, source_context, source_digest
from controller.api.resources import Device
from controller.clock import epoch
from controller.plan.intents import IntentError, device_intent
from controller.plan.model import ActiveDevice, CAObserved, CRLObserved, FleetObserved, Observed
from controller.plan.planner import ca_intent
from controller.signing.manifest import manifest_digest

FAR_FUTURE = 2**62  # "never due" in epoch seconds


class AsApplied:
    """A base declaration as if applied: every base CA current, every base device holding a
    certificate for its base intent, issued from its base row (its source digest). A fleet's
    devices are rendered when first asked for (`active`), once."""

    def __init__(self, base: Desired, now: datetime) -> None:
        self.base = base
        self.now = now
        self._active: dict[str, dict[str, ActiveDevice]] = {}

    def active(self, name: str) -> dict[str, ActiveDevice]:
        """Device id -> its certificate as if applied, in the base fleet `name` (none if the
        base has no such fleet)."""
        if name not in self._active:
            self._active[name] = self._render(name) if name in self.base.fleets else {}
        return self._active[name]

    def active_of(self, name: str, devices: Collection[str]) -> dict[str, ActiveDevice]:
        """Like `active`, of `devices` only (each declared in the base), their rows read alone
        where the base's device file is indexed."""
        decl = self.base.fleets[name]
        found = (decl.device_set.row(device_id) for device_id in devices)
        return self._certificates(decl, (row for row in found if row is not None))

    def _render(self, name: str) -> dict[str, ActiveDevice]:
        decl = self.base.fleets[name]
        return self._certificates(decl, _every_row(decl))

    def _certificates(self, decl: FleetDecl, rows: Iterable[tuple[Device, bytes]]
                      ) -> dict[str, ActiveDevice]:
        """Device id -> its certificate as if applied, of the devices (and row digests) given
        that the base could issue."""
        name = decl.fleet.name
        profile = self.base.profile(decl.fleet.spec.profileRef.name)
        active: dict[str, ActiveDevice] = {}
        if decl.fleet.spec.decommissioned:
            return active
        context = source_context(decl.fleet, profile)
        for device, row in rows:
            if device.revoked is not None:
                continue
            try:
                intent = device_intent(decl.fleet, profile, device)
            except IntentError:
                continue  # never issued at base: the head plan shows it as new
            active[device.id] = (f"base:{name}:{device.id}", intent.digest, FAR_FUTURE,
                                 source_digest(context, row))
        return active

    def observed(self, head: Desired | None = None) -> Observed:
        """The base as the inventory would show it. A fleet that `head` declares exactly as
        the base does (the same content hash) is unchanged, as an applied fleet is: nothing is
        due in it, so its devices are not read; of one whose file alone `head` changed
        (`DeviceSet.changes`), the devices of the changed rows only (its size: the base's
        devices not revoked)."""
        base = self.base
        now_s = epoch(self.now)
        authorities = {name: CAObserved(f"base:{name}", ca_intent(base.authority(name)),
                                        FAR_FUTURE, FAR_FUTURE) for name in base.authorities}
        crls = {name: CRLObserved(now_s, FAR_FUTURE) for name in base.authorities}
        fleets: dict[str, FleetObserved] = {}
        for name, decl in base.fleets.items():
            changes = head.fleets[name].device_set.changes \
                if head is not None and name in head.fleets else None
            if head is not None and name in head.fleets \
                    and head.fleets[name].content_hash == decl.content_hash:
                fleets[name] = FleetObserved(decl.content_hash, None)
            elif changes is not None:  # the head changed these rows of the base's file alone
                active = self.active_of(name, [i for i in changes.ids if i in changes.before])
                fleets[name] = FleetObserved(decl.content_hash, active,
                                             active_count=changes.applied.declared)
            else:
                active = self.active(name)
                fleets[name] = FleetObserved(None, active, active_count=len(active))
        releases = {name: (f"base:{name}", manifest_digest(decl))
                    for name, decl in base.releases.items()
                    if decl.release.spec.revoked is None and base.signing_profile(
                        decl.release.spec.signingProfileRef.name).spec.revoked is None}
        signers: dict[str, tuple[str, ...]] = {
            name: (f"base:{name}",) for name in base.signing_profiles
            if base.signing_profile(name).spec.revoked is None}
        return Observed(authorities, crls, fleets, frozenset(base.authorities), releases,
                        signers)


def _every_row(decl: FleetDecl) -> Iterator[tuple[Device, bytes]]:
    """Each device of the fleet and its row's digest, read one at a time."""
    for _, value, row in decl.device_set.walk():
        yield decl.device_set.device(value), row
