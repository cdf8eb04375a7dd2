"""The audit events of the job layer, built from a plan and the inventory (no writing here)."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import git

from controller.audit.records import Event
from controller.discovery.classify import Finding as Discovered
from controller.plan.model import Action, Plan
from controller.stores.inventory import Inventory
from controller.stores.releases import Releases

_DONE = {"create-ca": "ca.created", "renew-ca": "ca.renewed", "issue": "certificate.issued",
         "renew": "certificate.renewed", "rekey": "certificate.rekeyed"}
MAX_REASON = 4000  # characters of a refusal kept in its record


def local_actor() -> dict[str, str]:
    """Who runs this process: the Kubernetes pod (POD_NAME, its namespace, SERVICE_ACCOUNT:
    the operator's Deployment sets them from the downward API) when set, else the user; and
    the host."""
    actor = {"host": socket.gethostname()}
    for variable, name in (("POD_NAME", "pod"), ("FLEETPKI_OPERATOR_NAMESPACE", "namespace"),
                           ("SERVICE_ACCOUNT", "serviceAccount")):
        if os.environ.get(variable):
            actor[name] = os.environ[variable]
    if "pod" not in actor:
        with contextlib.suppress(KeyError, OSError):
            actor["user"] = getpass.getuser()
    return actor


def commit_actor(root: Path | None, commit: str | None, signer: str | None) -> dict[str, str]:
    """The applied commit, its author and (when verified) its signer, with the local actor."""
    actor = local_actor()
    if root is None or commit is None:
        return actor
    actor["commit"] = commit
    try:
        author = git.Repo(root).commit(commit.removesuffix("-dirty")).author
        actor["author"] = f"{author.name} <{author.email}>"
    except (ValueError, git.GitError):
        pass
    if signer:
        actor["signer"] = signer
    return actor


def denials(the_plan: Plan, actor: Mapping[str, str]) -> Iterator[Event]:
    """One `policy.denied` event per deny finding of a plan."""
    for finding in the_plan.findings:
        if finding.action == "deny":
            fields = {"policy": finding.policy, "rule": finding.rule,
                      "reason": finding.message}
            if finding.device:
                fields["device"] = finding.device
            yield Event("policy.denied", "denied", finding.object, actor, fields)


def refusal(what: str, reason: str, actor: Mapping[str, str]) -> Event:
    return Event("apply.refused", "refused", what, actor, {"reason": reason[:MAX_REASON]})


def executed(the_plan: Plan, inventory: Inventory, at: int,
             actor: Mapping[str, str]) -> Iterator[Event]:
    """What a run did, from the inventory (so a run that failed half-way reports what it
    committed): one event per certificate issued, renewed, re-keyed or revoked (replacements
    name the serial they supersede), per CA created or renewed, per CRL published at `at`.
    Another run may have changed certificates in the same second: only this run's actions
    count, and a run with nothing to do reads nothing (that may be a million rows)."""
    if not the_plan.actions:
        return
    planned: dict[str, dict[str, Action]] = {}  # fleet or CA -> device -> action
    for step in the_plan.actions:
        if step.action in _DONE:
            planned.setdefault(step.name, {})[step.device or ""] = step
    revoking = {(a.name, a.device or "") for a in the_plan.actions if a.action == "revoke"}
    for kind, owner, device, serial, fingerprint, issued, revoked, reason in \
            inventory.changed_at(at):
        fields: dict[str, str] = {"serial": serial, "fingerprint": fingerprint}
        if device:
            fields["device"] = device
        target = f"CertificateAuthority/{owner}" if kind == "ca" else f"DeviceFleet/{owner}"
        if revoked == at and (owner, device) in revoking:  # not replacements: their own event
            yield Event("certificate.revoked", "success", target, actor,
                        fields | {"reason": reason or "unspecified"})
        if issued == at:
            action = planned.get(owner, {}).get(device)
            if action is None or action.serial == serial:
                continue  # another run's, or the one replaced (issued in the same second)
            if action.serial:
                fields["replaces"] = action.serial
            yield Event(_DONE[action.action], "success", target, actor, fields)
    for record in Releases(inventory).signed_at(at):
        target = f"Release/{record.release}" if record.release else \
            f"SigningProfile/{record.profile}"
        fields = {"serial": record.serial, "profile": record.profile, "usage": record.usage}
        if record.revoked_at == at:
            yield Event("signature.revoked" if record.release else "certificate.revoked",
                        "success", target, actor, fields | {"reason": record.reason or ""})
        if record.issued_at == at:
            yield Event("release.signed" if record.release else "certificate.issued",
                        "success", target, actor,
                        fields | ({"manifestSha256": record.digest} if record.release else {}))
    for action in the_plan.actions:
        if action.action != "publish-crl":
            continue
        for generation in inventory.ca_generations(action.name):
            crl = inventory.crl(generation.serial)
            if crl is not None and crl.this_update == at:
                yield Event("crl.published", "success", f"CertificateAuthority/{action.name}",
                            actor, {"issuerSerial": generation.serial, "crlNumber": crl.number,
                                    "entries": crl.entries})


def discovered(findings: Sequence[Discovered], actor: Mapping[str, str]) -> Iterator[Event]:
    """One `certificate.discovered` event per certificate that is not managed (rogue, revoked
    but in use, wrong chain, expired, expiring, weak, unreadable), then the run's counts."""
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.state] = counts.get(finding.state, 0) + 1
        if finding.state == "managed":
            continue
        fields = {"state": finding.state, "states": list(finding.states),
                  "serial": finding.serial, "fingerprint": finding.fingerprint,
                  "subject": finding.subject, "issuer": finding.issuer,
                  "problems": list(finding.problems)}
        if finding.owner:
            fields["owner"] = finding.owner
        if finding.device:
            fields["device"] = finding.device
        yield Event("certificate.discovered", "success", finding.source, actor, fields)
    yield Event("discovery.finished", "success", "", actor, {"counts": counts})
