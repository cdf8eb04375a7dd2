"""The report's content, built from query results (pure: no I/O)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DAY = 86400
HORIZONS_DAYS = (7, 30, 90)
EXPIRY_BUCKET_DAYS = 30
EXPIRY_BUCKETS = 13  # 30-day windows up to 390 days (one-year certificates), then later
CA_WARN_DAYS = 90
RECENT_AUDIT = 50


@dataclass(frozen=True, slots=True)
class Change:
    """A commit that touched the fleet directory."""

    commit: str
    author: str
    date: str  # ISO 8601
    subject: str
    files: tuple[str, ...]
    more_files: int = 0


@dataclass(frozen=True, slots=True)
class AppliedRun:
    """A status-branch commit: one apply run, with the commit it applied (if it applied one)."""

    commit: str
    date: str
    summary: str
    applied_commit: str | None
    signer: str | None


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """Device certificates of one fleet under one issuing CA."""

    fleet: str
    ca: str
    active: int
    retired: int
    revoked: int
    expired: int  # active and past notAfter
    expiring: tuple[int, ...]  # active, expiring within each of HORIZONS_DAYS


@dataclass(frozen=True, slots=True)
class CAHealth:
    name: str
    serial: str | None
    not_after: int | None
    crl_number: int | None
    crl_next_update: int | None
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuditSummary:
    """What the audit log holds: counts per actor and action, and the newest records."""

    records: int
    unreadable_lines: int
    by_actor: dict[str, int]
    by_action: dict[str, int]
    recent: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: int
    fleets: list[FleetCounts]
    authorities: list[CAHealth]
    algorithms: list[tuple[str, str, str, int]]  # (kind, owner, algorithm, active certificates)
    expiry: list[tuple[str, int]]  # (bucket label, active device certificates)
    revocations: list[tuple[str, str, int]]  # (owner, reason, count)
    policy: list[dict[str, Any]]
    changes: list[Change]
    runs: list[AppliedRun]
    problems: list[dict[str, Any]] = field(default_factory=list)  # DIR does not validate
    audit: AuditSummary | None = None  # None: there is no audit log
    lint: list[dict[str, Any]] | None = None  # None: lint findings not available

    @property
    def totals(self) -> dict[str, int]:
        """Device certificates over every fleet: by state and expiring windows."""
        totals = {"active": sum(f.active for f in self.fleets),
                  "retired": sum(f.retired for f in self.fleets),
                  "revoked": sum(f.revoked for f in self.fleets),
                  "expired": sum(f.expired for f in self.fleets)}
        for i, days in enumerate(HORIZONS_DAYS):
            totals[f"expiring{days}d"] = sum(f.expiring[i] for f in self.fleets)
        return totals

    def by_algorithm(self) -> dict[str, int]:
        """Active certificates (devices and CAs) per key algorithm."""
        counts: Counter[str] = Counter()
        for _kind, _owner, algorithm, count in self.algorithms:
            counts[algorithm] += count
        return dict(sorted(counts.items()))

    def by_state(self) -> dict[str, int]:
        """Device certificates in the states the state chart shows (disjoint)."""
        totals = self.totals
        soon = totals[f"expiring{HORIZONS_DAYS[1]}d"]
        return {"valid": totals["active"] - totals["expired"] - soon,
                f"expiring ≤{HORIZONS_DAYS[1]}d": soon, "expired": totals["expired"],
                "revoked": totals["revoked"], "superseded": totals["retired"]}


def fleet_counts(rows: Iterable[Sequence[Any]], ca_names: Mapping[str, str]) -> list[FleetCounts]:
    """FleetCounts from `Inventory.state_counts` rows (device rows only)."""
    return [FleetCounts(owner, ca_names.get(issuer, issuer or "?"), active, retired, revoked,
                        expired, tuple(expiring))
            for kind, owner, issuer, active, retired, revoked, expired, *expiring in rows
            if kind == "device"]


def expiry_series(buckets: Mapping[int, int]) -> list[tuple[str, int]]:
    """Labelled bars from `Inventory.expiry_buckets(now, EXPIRY_BUCKET_DAYS days, ...)`."""
    series = [("expired", buckets.get(-1, 0))]
    for i in range(EXPIRY_BUCKETS):
        series.append((f"{i * EXPIRY_BUCKET_DAYS}–{(i + 1) * EXPIRY_BUCKET_DAYS}d",
                       buckets.get(i, 0)))
    series.append((f">{EXPIRY_BUCKETS * EXPIRY_BUCKET_DAYS}d", buckets.get(EXPIRY_BUCKETS, 0)))
    return series


def ca_health(name: str, serial: str | None, not_after: int | None, crl: tuple[int, int, int]
              | None, revoked_total: int, now: int) -> CAHealth:
    """A CA's health: `crl` is (number, next update, revocations it covers) or None."""
    problems = []
    if serial is None or not_after is None:
        problems.append("no active certificate")
    elif not_after <= now:
        problems.append("expired")
    elif not_after - now <= CA_WARN_DAYS * DAY:
        problems.append(f"expires in {(not_after - now) // DAY} days")
    if crl is None:
        problems.append("no CRL published")
    else:
        if crl[1] <= now:
            problems.append("CRL past its nextUpdate")
        if crl[2] < revoked_total:
            problems.append(f"CRL misses {revoked_total - crl[2]} revocation(s)")
    return CAHealth(name, serial, not_after, crl[0] if crl else None, crl[1] if crl else None,
                    tuple(problems))


def actor_name(actor: Any) -> str:
    """Who an audit record's actor is, in a few words: the signer or author of the applied
    commit, the device and address of an EST client, the pod, else user@host."""
    if not isinstance(actor, Mapping):
        return str(actor) if actor else "-"
    if actor.get("signer") or actor.get("author"):
        who = actor.get("signer") or actor.get("author")
        return f"{who} (commit {str(actor.get('commit', ''))[:12]})"
    if actor.get("address"):
        return f"{actor.get('device') or 'client'} from {actor['address']}"
    if actor.get("pod"):
        return f"pod {actor.get('namespace', '')}/{actor['pod']}".replace(" /", " ")
    if actor.get("user"):
        return f"{actor['user']}@{actor.get('host', '')}"
    return str(actor.get("host") or "-")


def audit_summary(records: Iterable[Mapping[str, Any]], unreadable_lines: int = 0
                  ) -> AuditSummary:
    """Counts and the newest RECENT_AUDIT records of the audit log (`records` oldest first,
    read once: a long log is never held in memory)."""
    actors: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    recent: deque[dict[str, Any]] = deque(maxlen=RECENT_AUDIT)
    for record in records:
        name = actor_name(record.get("actor"))
        actors[name] += 1
        actions[str(record.get("action", "?"))] += 1
        recent.append({**record, "actor": name})
    return AuditSummary(sum(actors.values()), unreadable_lines, dict(actors.most_common()),
                        dict(actions.most_common()), list(reversed(recent)))
