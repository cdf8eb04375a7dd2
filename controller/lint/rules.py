"""The fleet lint rules: plain rows in, findings out (no I/O).

Per-device checks over a fleet of a million certificates are narrowed in SQL (the store selects
the rows of one check by the `Window` computed here); these rules name, grade and word what the
rows mean, and judge the few CAs and CRLs themselves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

SEVERITIES = ("info", "warning", "critical")  # ascending
# The default policy set's strong key algorithms (policies/key-algorithms.yaml).
STRONG_KEY_ALGORITHMS = ("ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-3072", "RSA-4096",
                         "ML-DSA-44", "ML-DSA-65", "ML-DSA-87")
SHARED_NAMED = 5  # other holders named in a shared-key message


@dataclass(frozen=True)
class Check:
    code: str
    severity: str


CHECKS = {check.code: check for check in (
    Check("certificate-expired", "critical"),  # an active device certificate past notAfter
    Check("certificate-expiring", "warning"),  # ... expiring within `expiring_within`
    Check("certificate-too-old", "info"),  # ... issued more than `max_age` ago
    Check("weak-key", "critical"),  # ... with a key algorithm not allowed
    Check("shared-public-key", "critical"),  # one key in the certificates of several devices
    Check("revoked-certificate-in-use", "critical"),  # presented after its revocation
    Check("ca-expired", "critical"),  # a CA's active certificate past notAfter
    Check("ca-expiring", "warning"),  # ... expiring within `ca_expiring_within`
    Check("crl-expired", "critical"),  # the CRL of a CA's active certificate past nextUpdate
    Check("crl-near-next-update", "warning"),  # ... with less than `crl_fraction` left
)}


@dataclass(frozen=True)
class Thresholds:
    """What `soon` and `old` mean; `crl_fraction` is the share of a CRL's validity left at
    which it counts as near its nextUpdate."""

    expiring_within: timedelta = timedelta(days=30)
    max_age: timedelta = timedelta(days=400)
    ca_expiring_within: timedelta = timedelta(days=90)
    crl_fraction: float = 0.25
    allowed_key_algorithms: tuple[str, ...] = STRONG_KEY_ALGORITHMS


@dataclass(frozen=True)
class Window:
    """Epoch-second cut-offs of the per-device checks."""

    now: int
    expires_before: int  # expiring: not_after <= this
    issued_before: int  # too old: not_before <= this


def window(now: int, thresholds: Thresholds) -> Window:
    return Window(now, now + int(thresholds.expiring_within.total_seconds()),
                  now - int(thresholds.max_age.total_seconds()))


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    object: str
    message: str
    device: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"code": self.code, "severity": self.severity, "object": self.object,
                "device": self.device, "message": self.message}


@dataclass(frozen=True)
class DeviceRow:
    """A device certificate a check selected; `detail` is what the check adds (the key
    algorithm, or where a revoked certificate was seen)."""

    fleet: str
    device: str
    serial: str
    not_before: int
    not_after: int
    detail: str = ""


@dataclass(frozen=True)
class CARow:
    name: str
    serial: str
    not_after: int


@dataclass(frozen=True)
class CRLRow:
    ca: str
    number: int
    this_update: int
    next_update: int


@dataclass
class Report:
    """Findings, plus the number per check (a check may count more than it lists)."""

    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.findings.append(finding)
            self.counts[finding.code] = self.counts.get(finding.code, 0) + 1

    def sorted(self) -> list[Finding]:
        """Most severe first, then by code, object and device."""
        return sorted(self.findings, key=lambda f: (-SEVERITIES.index(f.severity), f.code,
                                                    f.object, f.device or ""))

    def worst(self) -> str | None:
        levels = [SEVERITIES.index(CHECKS[code].severity) for code, n in self.counts.items() if n]
        return SEVERITIES[max(levels)] if levels else None


def fails(report: Report, fail_on: str | None) -> bool:
    """Whether a finding is at least as severe as `fail_on` (never without one)."""
    worst = report.worst()
    return (fail_on is not None and worst is not None
            and SEVERITIES.index(worst) >= SEVERITIES.index(fail_on))


def _days(seconds: int) -> str:
    days = abs(seconds) / 86400
    return f"{days:.0f} day(s)" if days >= 1 else f"{abs(seconds) / 3600:.1f} hour(s)"


def _finding(code: str, obj: str, message: str, device: str | None = None) -> Finding:
    return Finding(code, CHECKS[code].severity, obj, message, device)


def device_findings(code: str, rows: Iterable[DeviceRow], now: int) -> Iterator[Finding]:
    """Findings of a per-device check (expired, expiring, too old, revoked in use), over the
    rows the store selected for it."""
    for row in rows:
        if code == "certificate-expired":
            text = f"certificate {row.serial} expired {_days(now - row.not_after)} ago"
        elif code == "certificate-expiring":
            text = f"certificate {row.serial} expires in {_days(row.not_after - now)}"
        elif code == "certificate-too-old":
            text = f"certificate {row.serial} was issued {_days(now - row.not_before)} ago"
        else:
            text = f"revoked certificate {row.serial} was presented again ({row.detail})"
        yield _finding(code, f"DeviceFleet/{row.fleet}", text, row.device)


def weak_key(algorithm: str, thresholds: Thresholds) -> bool:
    return algorithm not in thresholds.allowed_key_algorithms


def weak_key_findings(rows: Iterable[DeviceRow], thresholds: Thresholds) -> Iterator[Finding]:
    """Rows whose `detail` (the key algorithm) the thresholds do not allow."""
    allowed = ", ".join(thresholds.allowed_key_algorithms)
    for row in rows:
        if weak_key(row.detail, thresholds):
            yield _finding("weak-key", f"DeviceFleet/{row.fleet}",
                           f"certificate {row.serial} has a {row.detail} key (allowed: "
                           f"{allowed})", row.device)


def shared_key_findings(rows: Iterable[tuple[str, DeviceRow]]) -> Iterator[Finding]:
    """One finding per device holding a key (fingerprint, row) that another device holds."""
    holders: dict[str, list[DeviceRow]] = defaultdict(list)
    for fingerprint, row in rows:
        holders[fingerprint].append(row)
    for fingerprint, group in sorted(holders.items()):
        if len(group) < 2:
            continue
        for row in group:
            others = [f"{o.fleet}/{o.device}" for o in group if o is not row]
            named = ", ".join(others[:SHARED_NAMED])
            more = f" and {len(others) - SHARED_NAMED} more" if len(others) > SHARED_NAMED else ""
            yield _finding("shared-public-key", f"DeviceFleet/{row.fleet}",
                           f"certificate {row.serial} has the public key (SHA-256 "
                           f"{fingerprint[:16]}...) of {named}{more}", row.device)


def ca_findings(cas: Iterable[CARow], now: int, thresholds: Thresholds) -> Iterator[Finding]:
    soon = now + int(thresholds.ca_expiring_within.total_seconds())
    for ca in cas:
        if ca.not_after <= now:
            yield _finding("ca-expired", f"CertificateAuthority/{ca.name}",
                           f"CA certificate {ca.serial} expired {_days(now - ca.not_after)} "
                           "ago")
        elif ca.not_after <= soon:
            yield _finding("ca-expiring", f"CertificateAuthority/{ca.name}",
                           f"CA certificate {ca.serial} expires in {_days(ca.not_after - now)}")


def crl_findings(crls: Iterable[CRLRow], now: int, thresholds: Thresholds) -> Iterator[Finding]:
    for crl in crls:
        left = crl.next_update - now
        if left <= 0:
            yield _finding("crl-expired", f"CertificateAuthority/{crl.ca}",
                           f"CRL {crl.number} passed its nextUpdate {_days(left)} ago: "
                           "relying parties reject it (run fleetpki apply)")
        elif left <= thresholds.crl_fraction * (crl.next_update - crl.this_update):
            yield _finding("crl-near-next-update", f"CertificateAuthority/{crl.ca}",
                           f"CRL {crl.number} reaches its nextUpdate in {_days(left)} "
                           "(is apply or reconcile running?)")
