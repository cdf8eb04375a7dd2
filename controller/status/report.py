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
from controller.api.resources import API_VERSION, KINDS
from controller.clock import epoch, rfc3339
from controller.pki.certificates import certificate_fingerprint
from controller.signing.manifest import manifest_digest
from controller.status import fleetlint
from controller.status.conditions import summarize
from controller.stores.inventory import Inventory
from controller.stores.releases import Releases, SigningRecord

ATTENTION_LIMIT = 50
LIST_LIMIT = 50


@dataclass
class Outcome:
    """What happened in this run, for status: problems per object, a refusal, counts."""

    problems: list[Problem] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    blocked_fleets: dict[str, str] = field(default_factory=dict)  # fleet -> denied CA
    refusal: str | None = None
    failed_devices: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    applied_nothing: bool = False  # refused before any change: keep the last known status


def status_path(kind: str, name: str) -> str:
    return f"status/{kind}/{name}.yaml"


def _object_of(path: str) -> str | None:
    """"Kind/name" of a status file path."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != "status" or not parts[2].endswith(".yaml"):
        return None
    return f"{parts[1]}/{parts[2].removesuffix('.yaml')}"


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
    """Every status file for the status branch.

    An object removed from the declaration loses its file once a run applies; a run refused
    before any change (an invalid declaration among others) keeps every object's last known
    status, and those the error concerns (or that could not be loaded) become Stalled with the
    error and its field path.
    """
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
        elif record is None and (before.get("status") or {}).get("certificate"):
            # never forget a CA this run cannot see (wrong or lost state directory): it is
            # the evidence that stops a second PKI
            status = {k: v for k, v in before["status"].items() if k in ("certificate", "crl")}
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
                               reason=_reason(stalled, pending, bool(problems)), now=stamp)
        files[path] = _document("CertificateAuthority", name, {**status, "conditions": conditions},
                                before, commit)
    linted = fleetlint.attention(inventory, epoch(now),
                                 ATTENTION_LIMIT * max(len(desired.fleets), 1))
    for name, decl in sorted(desired.fleets.items()):
        path = status_path("DeviceFleet", name)
        before = _load(previous, path)
        counts = inventory.fleet_counts(name, epoch(now))
        problems = by_object.get(f"DeviceFleet/{name}", [])
        findings = [f for f in outcome.findings if f.object == f"DeviceFleet/{name}"]
        denies = [f for f in findings if f.action == "deny"]
        attention = ([{"device": p.device, "reason": p.message} for p in problems if p.device] +
                     [{"device": f.device, "reason": f"policy {f.policy}/{f.rule}: {f.message}"}
                      for f in findings if f.device] +
                     [{"device": f.device, "reason": f"lint {f.code}: {f.message}"}
                      for f in linted.get(name, [])])[:ATTENTION_LIMIT]
        declared = decl.summary.declared
        spec = decl.fleet.spec
        blocked_by = outcome.blocked_fleets.get(name)
        whole = [p for p in problems if p.device is None]  # the fleet's own spec (tlsSecrets)
        stalled = (f"{len(whole)} problem(s) in the declaration: {whole[0]}" if whole else
                   f"{len(problems)} device declaration(s) cannot be issued: "
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
        next_renewal = inventory.next_renewal(name)
        if next_renewal is not None:
            status["nextRenewalAt"] = rfc3339(next_renewal)
        if attention:
            status["attention"] = attention
        warnings = sorted({f"{f.policy}/{f.rule}: {f.message}" for f in findings
                           if f.action == "warn"})
        if warnings:
            status["policyWarnings"] = warnings[:ATTENTION_LIMIT]
        conditions = summarize((before.get("status") or {}).get("conditions", []),
                               stalled=stalled, reconciling=pending,
                               ready_message=f"{counts['active']} device certificate(s) current",
                               reason=_reason(stalled, pending, bool(problems)), now=stamp)
        files[path] = _document("DeviceFleet", name, {**status, "conditions": conditions},
                                before, commit)
    files.update(_validity(desired, by_object, previous, stamp, commit))
    files.update(_signing(desired, inventory, by_object, outcome, previous, stamp, commit))
    if outcome.applied_nothing:
        files.update(_kept(desired, previous, files, outcome, stamp, commit))
    return files


def _validity(desired: Desired, by_object: Mapping[str, list[Problem]],
              previous: Mapping[str, bytes], stamp: str,
              commit: str | None) -> dict[str, bytes]:
    """Profiles and policies: Ready when valid, Stalled (InvalidSpec) with their first
    problem."""
    files: dict[str, bytes] = {}
    for kind, names in (("CertificateProfile", desired.profiles),
                        ("CertificatePolicy", desired.policies)):
        for name in sorted(names):
            path = status_path(kind, name)
            before = _load(previous, path)
            problems = by_object.get(f"{kind}/{name}", [])
            stalled = f"{len(problems)} problem(s): {problems[0]}" if problems else None
            conditions = summarize((before.get("status") or {}).get("conditions", []),
                                   stalled=stalled, reconciling=None, ready_message="valid",
                                   reason=_reason(stalled, None, True), now=stamp)
            files[path] = _document(kind, name, {"conditions": conditions}, before, commit)
    return files


def _signature(record: SigningRecord) -> dict[str, Any]:
    """`status.signature` of a Release: public data of its signing record, never a key."""
    signature: dict[str, Any] = {
        "serial": record.serial, "profile": record.profile, "keyVersion": record.key_version,
        "signedAt": rfc3339(record.issued_at), "notAfter": rfc3339(record.not_after),
        "manifestSha256": record.digest, "state": record.state}
    if record.revoked_at is not None:
        signature["revokedAt"] = rfc3339(record.revoked_at)
    if record.reason:
        signature["reason"] = record.reason
    return signature


def _signing(desired: Desired, inventory: Inventory, by_object: Mapping[str, list[Problem]],
             outcome: Outcome, previous: Mapping[str, bytes], stamp: str,
             commit: str | None) -> dict[str, bytes]:
    """SigningProfiles (key version, current certificate, revocation) and Releases (state,
    signature), from the inventory's signing records."""
    store = Releases(inventory)
    files: dict[str, bytes] = {}
    for name in sorted(desired.signing_profiles):
        profile = desired.signing_profile(name)
        spec = profile.spec
        path = status_path("SigningProfile", name)
        before = _load(previous, path)
        records = store.of_profile(name)
        active = [r for r in records if r.state == "active"]
        status: dict[str, Any] = {"usage": spec.usage, "keyAlgorithm": spec.keyAlgorithm,
                                  "keyVersion": spec.keyVersion,
                                  "activeCertificates": len(active)}
        if active:
            newest = active[-1]
            status["certificate"] = {
                "serial": newest.serial, "notAfter": rfc3339(newest.not_after),
                "issuedAt": rfc3339(newest.issued_at), "keyVersion": newest.key_version,
                **({"release": newest.release} if newest.release else {})}
        pending = None
        if spec.revoked is not None:
            revoked = [r.revoked_at for r in records if r.revoked_at is not None
                       and r.reason == spec.revoked.reason]
            status["revoked"] = {"reason": spec.revoked.reason,
                                 **({"revokedAt": rfc3339(max(revoked))} if revoked else {})}
            if active:
                pending = f"{len(active)} certificate(s) to revoke"
            ready = f"revoked ({spec.revoked.reason}): its certificates are on the CRL of " \
                f"CertificateAuthority/{spec.issuerRef.name}"
        elif spec.usage == "timeStamping":
            ready = f"time-stamping authority, key version {spec.keyVersion}"
        else:
            ready = f"signs releases with key version {spec.keyVersion}"
        problems = by_object.get(f"SigningProfile/{name}", [])
        stalled = f"{len(problems)} problem(s): {problems[0]}" if problems else outcome.refusal
        conditions = summarize((before.get("status") or {}).get("conditions", []),
                               stalled=stalled, reconciling=pending, ready_message=ready,
                               reason=_reason(stalled, pending, bool(problems)) if
                               stalled or pending or spec.revoked is None else "Revoked",
                               now=stamp)
        files[path] = _document("SigningProfile", name, {**status, "conditions": conditions},
                                before, commit)
    for name, decl in sorted(desired.releases.items()):
        wanted = decl.release.spec
        profile = desired.signing_profile(wanted.signingProfileRef.name)
        tsa = profile.spec.timestampAuthorityRef
        path = status_path("Release", name)
        before = _load(previous, path)
        current = store.current(name)
        history = store.history(name)
        shown = current or (history[-1] if history else None)
        status = {"artifacts": len(decl.artifacts), "fleets": list(decl.fleets[:LIST_LIMIT])}
        if shown is not None:
            status["signature"] = _signature(shown)
        problems = by_object.get(f"Release/{name}", [])
        denies = [f for f in outcome.findings
                  if f.object == f"Release/{name}" and f.action == "deny"]
        stalled = (f"{len(problems)} problem(s): {problems[0]}" if problems else
                   _denied(denies) if denies else outcome.refusal)
        pending = None
        reason: str | None = None
        if wanted.revoked is not None:
            status["state"] = "Withdrawn"
            if current is not None:
                pending = "signature to revoke (release withdrawn)"
            ready = f"withdrawn ({wanted.revoked.reason}): " + (
                "its signature is revoked" if shown is not None else "never signed")
            reason = "Withdrawn"
        elif profile.spec.revoked is not None or (
                tsa is not None and desired.signing_profile(tsa.name).spec.revoked is not None):
            status["state"] = "SignerRevoked"
            revoked_profile = wanted.signingProfileRef.name if profile.spec.revoked is not None \
                else tsa.name if tsa is not None else ""
            stalled = stalled or f"SigningProfile/{revoked_profile} is revoked: the release " \
                "is not signed (name another profile, or declare the release revoked)"
            ready, reason = "", "SignerRevoked"
        elif current is not None and current.digest == manifest_digest(decl):
            status["state"] = "Signed"
            ready = f"signed by SigningProfile/{current.profile} (certificate {current.serial})"
        else:
            status["state"] = "Pending"
            pending = "not yet signed" if current is None else \
                "release changed: to be signed again"
            ready = ""
        conditions = summarize((before.get("status") or {}).get("conditions", []),
                               stalled=stalled, reconciling=pending, ready_message=ready,
                               reason=_reason(stalled, pending, bool(problems))
                               if problems or denies or outcome.refusal or pending or
                               reason is None else reason, now=stamp)
        files[path] = _document("Release", name, {**status, "conditions": conditions},
                                before, commit)
    return files


def _references(desired: Desired, name: str) -> list[str]:
    """"Kind/name" of the objects an object depends on (a fleet's CA and profile, a CA's
    parent): a mistake in one of them concerns it too."""
    kind, object_name = name.split("/", 1)
    if kind == "DeviceFleet" and object_name in desired.fleets:
        spec = desired.fleets[object_name].fleet.spec
        return [f"CertificateAuthority/{spec.issuerRef.name}",
                f"CertificateProfile/{spec.profileRef.name}"]
    if kind == "CertificateAuthority" and object_name in desired.authorities:
        parent = desired.authority(object_name).spec.parentRef
        return [f"CertificateAuthority/{parent.name}"] if parent else []
    if kind == "SigningProfile" and object_name in desired.signing_profiles:
        signer = desired.signing_profile(object_name).spec
        tsa = signer.timestampAuthorityRef
        return [f"CertificateAuthority/{signer.issuerRef.name}",
                *([f"SigningProfile/{tsa.name}"] if tsa else [])]
    if kind == "Release" and object_name in desired.releases:
        release = desired.releases[object_name].release
        return [f"SigningProfile/{release.spec.signingProfileRef.name}"]
    return []


def _kept(desired: Desired, previous: Mapping[str, bytes], built: Mapping[str, bytes],
          outcome: Outcome, stamp: str, commit: str | None) -> dict[str, bytes]:
    """Last known status of objects this run did not converge, with Stalled conditions."""
    unloaded = [p for p in outcome.problems if p.object is None]
    kept: dict[str, bytes] = {}
    for path in previous:
        name = _object_of(path)
        before = _load(previous, path)
        if name is None or not before:
            continue
        concerned = {name, *_references(desired, name)}
        own = [p for p in outcome.problems if p.object in concerned]
        status = dict(before.get("status") or {})
        status.pop("observedCommit", None)
        reason = "InvalidSpec"
        if own:
            message: str | None = f"{len(own)} problem(s) in the declaration: {own[0]}"
        elif outcome.problems and path not in built:  # its file or a dependency is broken
            message = f"not loaded: {(unloaded or outcome.problems)[0]}"
        else:
            message, reason = outcome.refusal, "Failed"
        if message is not None:
            status["conditions"] = summarize(status.get("conditions", []), stalled=message,
                                             reconciling=None, ready_message="",
                                             reason=reason, now=stamp)
        kind, object_name = name.split("/", 1)
        kept[path] = _document(kind, object_name, status, before, commit)
    for name in sorted({p.object for p in outcome.problems if p.object and "/" in p.object}):
        kind, object_name = name.split("/", 1)
        path = status_path(kind, object_name)
        if path in kept or path in built or kind not in KINDS:
            continue
        own = [p for p in outcome.problems if p.object == name]  # new, and wrong from the start
        conditions = summarize([], stalled=f"{len(own)} problem(s) in the declaration: "
                               f"{own[0]}", reconciling=None, ready_message="",
                               reason="InvalidSpec", now=stamp)
        kept[path] = _document(kind, object_name, {"conditions": conditions}, {}, commit)
    return kept


def _denied(denies: list[Finding]) -> str:
    first = denies[0]
    return (f"{len(denies)} policy denial(s); first: {first.policy}/{first.rule}: "
            f"{first.message}" + (f" (device {first.device})" if first.device else ""))


def _reason(stalled: str | None, pending: str | None, invalid: bool = False) -> str:
    if stalled:
        return "InvalidSpec" if invalid else "Failed"
    if pending == "fleet is suspended":
        return "Suspended"
    return "Progressing" if pending else "Succeeded"
