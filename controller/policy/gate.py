"""Defence in depth: drop the actions a `deny` finding forbids; revocations always pass."""

from __future__ import annotations

from dataclasses import replace

from controller.api.desired import Desired
from controller.api.problems import Finding
from controller.plan.model import Action, Plan

ISSUING = frozenset({"create-ca", "renew-ca", "issue", "renew", "rekey"})


def gate(plan: Plan, desired: Desired, findings: list[Finding]) -> Plan:
    """The plan without denied actions; denied ones move to `plan.denied`.

    A denied CA blocks its own creation/renewal and issuance by its fleets (and, when the
    denied CA does not exist yet, everything below it); a denied fleet
    blocks all its issuance; a denied device only its own. Revoking and publishing CRLs is
    never blocked by policy.
    """
    denies = [f for f in findings if f.action == "deny"]
    cas = {f.object.split("/", 1)[1] for f in denies
           if f.object.startswith("CertificateAuthority/")}
    creating = {a.name for a in plan.actions if a.action == "create-ca"}
    for name in desired.authorities_in_order():  # parents first
        parent = desired.authority(name).spec.parentRef
        if parent is not None and parent.name in cas and parent.name in creating:
            cas.add(name)  # its parent will not exist, so neither can it
    by_ca = {name: decl.fleet.spec.issuerRef.name for name, decl in desired.fleets.items()
             if decl.fleet.spec.issuerRef.name in cas}
    fleets = {f.object.split("/", 1)[1] for f in denies
              if f.object.startswith("DeviceFleet/") and f.device is None} | set(by_ca)
    devices = {(f.object.split("/", 1)[1], f.device) for f in denies if f.device is not None}
    releases = {f.object.split("/", 1)[1] for f in denies if f.object.startswith("Release/")}

    def blocked(action: Action) -> bool:
        if action.action == "sign-release":
            return action.name in releases
        if action.action not in ISSUING:
            return False
        if action.kind == "CertificateAuthority":
            return action.name in cas
        return action.name in fleets or (action.name, action.device) in devices

    kept = tuple(a for a in plan.actions if not blocked(a))
    denied = tuple(a for a in plan.actions if blocked(a))
    touched = {a.name for a in denied if a.kind == "DeviceFleet"}
    completed = {k: v for k, v in plan.completed_fleets.items() if k not in touched}
    return replace(plan, actions=kept, denied=denied, findings=tuple(findings),
                   completed_fleets=completed, blocked_fleets=by_ca)
