"""Status documents per object: small at any fleet size, public data only."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from controller.api.desired import Desired
from controller.api.problems import Finding, Problem
from controller.api.resources import API_VERSION
from controller.clock import epoch, rfc3339
from controller.pki.certificates import certificate_fingerprint
from controller.status.conditions import summarize
from controller.stores.inventory import Inventory

ATTENTION_LIMIT = 50


@dataclass
class Outcome:
    """What happened in this run, for status: problems per object, a refusal, counts."""

    problems: list[Problem] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    blocked_fleets: dict[str, str] = field(default_factory=dict)  # fleet -> denied CA
    refusal: str | None = None
    failed_devices: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def status_path(kind: str, name: str) -> str:
    return f"status/{kind}/{name}.yaml"


def _load(previous: Mapping[str, bytes], path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(previous.get(path, b"")) or {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _document(kind: str, name: str, status: dict[str, Any], previous: dict[str, Any],
              commit: str | None) -> bytes:
    """Keep the previous `observedCommit` when nothing else changed: a no-op run commits nothing."""
    old_status = dict(previous.get("status") or {})
    old_commit = old_status.pop("observedCommit", None)
    observed = old_commit if old_status == status and old_commit else commit
    body = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name},
            "status": {"observedCommit": observed, **status}}
    return yaml.safe_dump(body, sort_keys=False).encode()


def build_status(desired: Desired, inventory: Inventory, outcome: Outcome,
                 previous: Mapping[str, bytes], now: datetime,
                 commit: str | None) -> dict[str, bytes]:
    """Every status file for the status branch (absent objects' files are dropped)."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    by_object: dict[str, list[Problem]] = defaultdict(list)
    for problem in outcome.problems:
        by_object[problem.object or ""].append(problem)
    files: dict[str, bytes] = {}
    for name in desired.authorities_in_order():
        path = status_path("CertificateAuthority", name)
        before = _load(previous, path)
        ca_spec = desired.authority(name).spec
        record = None if ca_spec.type == "external" else inventory.active_ca(name)
        status: dict[str, Any] = {}
        if ca_spec.type == "external":
            external = ca_spec.external_certificate()
            status["certificate"] = {
                "serial": format(external.serial_number, "x"),
                "fingerprint": certificate_fingerprint(external),
                "notBefore": rfc3339(epoch(external.not_valid_before_utc)),
                "notAfter": rfc3339(epoch(external.not_valid_after_utc)), "external": True,
            }
        elif record is not None:
            status["certificate"] = {
                "serial": record.serial, "fingerprint": record.fingerprint,
                "notBefore": rfc3339(record.not_before), "notAfter": rfc3339(record.not_after),
                "renewAt": rfc3339(record.renew_at),
            }
            crl = inventory.crl(record.serial)
            if crl is not None:
                status["crl"] = {"number": crl.number, "thisUpdate": rfc3339(crl.this_update),
                                 "nextUpdate": rfc3339(crl.next_update), "entries": crl.entries}
        problems = by_object.get(f"CertificateAuthority/{name}", [])
        denies = [f for f in outcome.findings
                  if f.object == f"CertificateAuthority/{name}" and f.action == "deny"]
        stalled = (problems[0].message if problems else
                   _denied(denies) if denies else outcome.refusal)
        pending = None if record is not None or ca_spec.type == "external" else \
            "CA not yet created"
        conditions = summarize((before.get("status") or {}).get("conditions", []),
                               stalled=stalled, reconciling=pending,
                               ready_message="external CA certificate declared (no key held)"
                               if ca_spec.type == "external" else "CA certificate is current",
                               reason=_reason(stalled, pending), now=stamp)
        files[path] = _document("CertificateAuthority", name, {**status, "conditions": conditions},
                                before, commit)
    for name, decl in sorted(desired.fleets.items()):
        path = status_path("DeviceFleet", name)
        before = _load(previous, path)
        counts = inventory.fleet_counts(name, epoch(now))
        problems = by_object.get(f"DeviceFleet/{name}", [])
        findings = [f for f in outcome.findings if f.object == f"DeviceFleet/{name}"]
        denies = [f for f in findings if f.action == "deny"]
        attention = ([{"device": p.device, "reason": p.message} for p in problems if p.device] +
                     [{"device": f.device, "reason": f"policy {f.policy}/{f.rule}: {f.message}"}
                      for f in findings if f.device])[:ATTENTION_LIMIT]
        declared = sum(1 for d in decl.devices if d.revoked is None)
        spec = decl.fleet.spec
        blocked_by = outcome.blocked_fleets.get(name)
        stalled = (f"{len(problems)} device declaration(s) cannot be issued: "
                   f"{problems[0].message}" if problems else
                   _denied(denies) if denies else
                   f"issuance blocked: CertificateAuthority/{blocked_by} is denied by policy"
                   if blocked_by else outcome.refusal)
        missing = max(declared - counts["active"], 0) if not spec.decommissioned else 0
        awaiting = 0
        if spec.enrollment is not None:  # devices without a declared key enroll over EST
            awaiting, missing = missing, 0
        pending = None
        if spec.suspend:
            pending = "fleet is suspended"
        elif missing or counts["due"]:
            pending = f"{missing} device(s) without certificate, {counts['due']} due for renewal"
        status = {
            "devices": {"declared": declared, "active": counts["active"],
                        "revoked": counts["revoked"], "due": counts["due"],
                        "expired": counts["expired"], "failed": len(problems)},
        }
        if awaiting:
            status["devices"]["awaitingEnrollment"] = awaiting
        if attention:
            status["attention"] = attention
        warnings = sorted({f"{f.policy}/{f.rule}: {f.message}" for f in findings
                           if f.action == "warn"})
        if warnings:
            status["policyWarnings"] = warnings[:ATTENTION_LIMIT]
        conditions = summarize((before.get("status") or {}).get("conditions", []),
                               stalled=stalled, reconciling=pending,
                               ready_message=f"{counts['active']} device certificate(s) current",
                               reason=_reason(stalled, pending), now=stamp)
        files[path] = _document("DeviceFleet", name, {**status, "conditions": conditions},
                                before, commit)
    return files


def _denied(denies: list[Finding]) -> str:
    first = denies[0]
    return (f"{len(denies)} policy denial(s); first: {first.policy}/{first.rule}: "
            f"{first.message}" + (f" (device {first.device})" if first.device else ""))


def _reason(stalled: str | None, pending: str | None) -> str:
    if stalled:
        return "Failed"
    if pending == "fleet is suspended":
        return "Suspended"
    return "Progressing" if pending else "Succeeded"
