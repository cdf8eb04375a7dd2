"""The state a declaration would leave once applied: the baseline for reviewing a change.

A pull request's CI usually has no inventory. Planning the head revision against the base
revision "as if applied" shows exactly what the change does: new devices, re-issues forced by
a profile change, revocations, CA changes — and none of the routine renewals or CRL refreshes.
"""

from __future__ import annotations

from datetime import datetime

from controller.api.desired import Desired, source_context, source_digest
from controller.clock import epoch
from controller.plan.intents import IntentError, device_intent
from controller.plan.model import ActiveDevice, CAObserved, CRLObserved, FleetObserved, Observed
from controller.plan.planner import ca_intent
from controller.signing.manifest import manifest_digest

FAR_FUTURE = 2**62  # "never due" in epoch seconds


def as_if_applied(base: Desired, now: datetime) -> Observed:
    """Every base CA current, every base device holding a certificate for its base intent,
    issued from its base row (its source digest)."""
    now_s = epoch(now)
    authorities = {
        name: CAObserved(f"base:{name}", ca_intent(base.authority(name)), FAR_FUTURE, FAR_FUTURE)
        for name in base.authorities}
    crls = {name: CRLObserved(now_s, FAR_FUTURE) for name in base.authorities}
    fleets: dict[str, FleetObserved] = {}
    for name, decl in base.fleets.items():
        profile = base.profile(decl.fleet.spec.profileRef.name)
        active: dict[str, ActiveDevice] = {}
        if not decl.fleet.spec.decommissioned:
            devices, _, rows = decl.device_set.parsed
            context = source_context(decl.fleet, profile)
            for device in devices:
                if device.revoked is not None:
                    continue
                try:
                    intent = device_intent(decl.fleet, profile, device)
                except IntentError:
                    continue  # never issued at base: the head plan shows it as new
                active[device.id] = (f"base:{name}:{device.id}", intent.digest, FAR_FUTURE,
                                     source_digest(context, rows[device.id]))
        fleets[name] = FleetObserved(None, active, active_count=len(active))
    releases = {name: (f"base:{name}", manifest_digest(decl))
                for name, decl in base.releases.items() if decl.release.spec.revoked is None
                and base.signing_profile(decl.release.spec.signingProfileRef.name).spec.revoked
                is None}
    signers: dict[str, tuple[str, ...]] = {name: (f"base:{name}",) for name in base.signing_profiles
               if base.signing_profile(name).spec.revoked is None}
    return Observed(authorities, crls, fleets, frozenset(base.authorities), releases, signers)
