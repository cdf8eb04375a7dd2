"""Plans: ordered, typed actions, and what was observed to compute them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from controller.api.problems import Finding, Problem

ActionName = Literal["create-ca", "renew-ca", "issue", "renew", "rekey", "revoke", "publish-crl",
                     "revoke-signer", "withdraw-release", "sign-release"]
ACTION_NAMES: tuple[ActionName, ...] = (
    "create-ca", "renew-ca", "revoke", "issue", "renew", "rekey", "publish-crl"
)
# releases (docs/signing.md): counted in the summary only when planned
RELEASE_ACTION_NAMES: tuple[ActionName, ...] = ("revoke-signer", "withdraw-release",
                                                "sign-release")
RELEASE_KIND = "Release"
SIGNING_PROFILE_KIND = "SigningProfile"
DEVICE_ACTIONS = frozenset({"issue", "renew", "rekey", "revoke"})


@dataclass(frozen=True, slots=True)
class Action:
    """One step. `serial` is the certificate revoked or replaced, if any."""

    action: ActionName
    kind: str
    name: str
    reason: str
    device: str | None = None
    serial: str | None = None
    revocation_reason: str | None = None

    def as_dict(self) -> dict[str, str]:
        data = {"action": self.action, "kind": self.kind, "name": self.name}
        if self.device is not None:
            data["device"] = self.device
        data["reason"] = self.reason
        if self.serial is not None:
            data["serial"] = self.serial
        if self.revocation_reason is not None:
            data["revocationReason"] = self.revocation_reason
        return data


@dataclass(frozen=True, slots=True)
class CAObserved:
    """The active certificate of a CA."""

    serial: str
    intent: str
    not_after: int
    renew_at: int


@dataclass(frozen=True, slots=True)
class CRLObserved:
    """The latest CRL of a CA's active certificate."""

    this_update: int
    next_update: int
    unpublished_revocations: int = 0  # revocations made since the CRL was built


ActiveDevice = tuple[str, str, int, str | None]  # serial, intent digest, renew_at, source


@dataclass(frozen=True)
class FleetObserved:
    """A fleet's certificates as the inventory knows them.

    `active` maps device id -> (serial, intent digest, renew_at, source digest or None); it is
    None when the fleet's content hash is unchanged since its last complete apply, in which case
    only `due` (devices whose renewal time has come, from an indexed query) needs looking at.
    Of a fleet whose changed rows are known (`DeviceSet.changes`), `active` holds only those
    devices' certificates, and `due` the renewals of the others.
    """

    content_hash: str | None
    active: dict[str, ActiveDevice] | None
    due: dict[str, ActiveDevice] = field(default_factory=dict)
    active_count: int = 0


@dataclass(frozen=True)
class Observed:
    authorities: dict[str, CAObserved] = field(default_factory=dict)
    crls: dict[str, CRLObserved] = field(default_factory=dict)
    fleets: dict[str, FleetObserved] = field(default_factory=dict)
    known_authorities: frozenset[str] = frozenset()  # CAs with any history in the inventory
    releases: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> (serial, digest)
    signers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # profile -> serials


@dataclass(frozen=True, slots=True)
class MassRevocation:
    fleet: str
    count: int
    limit: int


@dataclass(frozen=True)
class Plan:
    """What apply would do, in order; `problems` are device declarations that cannot be issued."""

    actions: tuple[Action, ...]
    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()
    mass_revocations: tuple[MassRevocation, ...] = ()
    completed_fleets: dict[str, str] = field(default_factory=dict)  # fleet -> content hash
    fleet_sizes: dict[str, int] = field(default_factory=dict)  # active certificates before
    findings: tuple[Finding, ...] = ()  # policy results (deny and warn)
    denied: tuple[Action, ...] = ()  # actions a deny finding removed
    blocked_fleets: dict[str, str] = field(default_factory=dict)  # fleet -> its denied CA
    # serial -> source digest of active certificates found unchanged from their row, to record
    source_notes: dict[str, str] = field(default_factory=dict, repr=False)
    dangers: tuple[str, ...] = ()  # what a reviewer must not miss (see plan/dangers.py)

    @property
    def denies(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.action == "deny")

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)

    def summary(self) -> dict[str, int]:
        counts = Counter(a.action for a in self.actions)
        summary: dict[str, int] = {name: counts.get(name, 0) for name in ACTION_NAMES}
        summary.update({name: counts[name] for name in RELEASE_ACTION_NAMES if counts[name]})
        summary["total"] = len(self.actions)
        summary["problems"] = len(self.problems)
        summary["warnings"] = len(self.warnings)
        summary["denied"] = len(self.denied)
        summary["policyDenies"] = len(self.denies)
        summary["policyWarnings"] = len(self.findings) - len(self.denies)
        return summary
