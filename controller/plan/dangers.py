"""Changes a reviewer must not miss: mass revocation, CA key replacement, fleet-wide re-keys."""

from __future__ import annotations

from collections import Counter

from controller.plan.model import Plan

REKEY_FRACTION = 0.5


def dangers(plan: Plan, revocation_fraction: float = 0.1) -> list[str]:
    """Human-readable flags, most severe first."""
    flags: list[str] = []
    revokes = Counter(a.name for a in plan.actions if a.action == "revoke")
    rekeys = Counter(a.name for a in plan.actions if a.action in ("rekey", "renew")
                     and not a.reason.startswith("due for renewal"))
    for action in plan.actions:
        if action.action == "renew-ca":
            flags.append(f"replaces the key of CertificateAuthority/{action.name} "
                         f"({action.reason}); certificates below it move at their renewal")
    for fleet, count in sorted(revokes.items()):
        size = plan.fleet_sizes.get(fleet, 0)
        if size and count / size > revocation_fraction:
            flags.append(f"revokes {count} of {size} active certificates "
                         f"({count / size:.0%}) of DeviceFleet/{fleet}")
    for fleet, count in sorted(rekeys.items()):
        size = plan.fleet_sizes.get(fleet, 0)
        if size and count / size >= REKEY_FRACTION:
            flags.append(f"re-issues {count} of {size} certificates ({count / size:.0%}) of "
                         f"DeviceFleet/{fleet} at once")
    return flags
