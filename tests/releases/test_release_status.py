"""Per-object status of SigningProfiles and Releases (status/report.py): on the status branch in
git-only mode, and the same documents become `.status` in Kubernetes mode (status/kube.py)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
import yaml

from controller.api.problems import InvalidDeclaration
from controller.api.status import STATUS_KINDS
from controller.plan.model import Action, Plan
from controller.status.gitbranch import read_status_branch
from controller.status.kube import _patch, events_of, kube_status
from controller.status.report import Outcome
from controller.status.store import StatusUpdate
from controller.stores.releases import Releases
from tests.releases.support import Setup, release, signing_profile


def statuses(setup: Setup) -> dict[str, dict[str, Any]]:
    """"Kind/name" -> status, each validated against its kind's status model."""
    found = {}
    for data in read_status_branch(setup.repo, "fleetpki/status").values():
        document = yaml.safe_load(data)
        STATUS_KINDS[document["kind"]].model_validate(document["status"])
        found[f"{document['kind']}/{document['metadata']['name']}"] = document["status"]
    return found


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_signed_then_withdrawn_release_and_its_profile_on_the_status_branch(
        setup: Setup) -> None:
    setup.declare(signing_profile(), release(
        artifacts=[{"path": "artifacts/firmware.bin"},
                   {"name": "bootloader.bin", "sha256": "ab" * 32, "size": 512}]))
    setup.apply()
    found = statuses(setup)
    with setup.state.reader() as inventory:
        record = Releases(inventory).current("fw-1")
    assert record is not None
    out = setup.export()
    status = found["Release/fw-1"]
    assert status["state"] == "Signed" and status["artifacts"] == 2
    assert status["fleets"] == ["sensors"]
    signature = status["signature"]
    assert signature["serial"] == record.serial and signature["state"] == "active"
    assert signature["manifestSha256"] == hashlib.sha256(
        (out / "manifest.json").read_bytes()).hexdigest()
    assert signature["profile"] == "firmware" and signature["keyVersion"] == 1
    ready = condition(status, "Ready")
    assert ready["status"] == "True" and record.serial in ready["message"]
    profile = found["SigningProfile/firmware"]
    assert profile["keyVersion"] == 1 and profile["activeCertificates"] == 1
    assert profile["keyAlgorithm"] == "ECDSA-P256" and profile["usage"] == "codeSigning"
    assert profile["certificate"]["serial"] == record.serial
    assert profile["certificate"]["release"] == "fw-1"
    assert condition(profile, "Ready")["status"] == "True"
    tsa = found["SigningProfile/tsa"]
    assert tsa["certificate"]["serial"] != record.serial and "release" not in tsa["certificate"]
    assert "time-stamping" in condition(tsa, "Ready")["message"]
    assert "PRIVATE" not in str(found) and "BEGIN" not in str(found)

    setup.declare(signing_profile(), release(
        artifacts=[{"path": "artifacts/firmware.bin"}], revoked={"reason": "keyCompromise"}))
    setup.apply(setup.now + timedelta(minutes=5))
    status = statuses(setup)["Release/fw-1"]
    assert status["state"] == "Withdrawn"
    assert status["signature"]["serial"] == record.serial
    assert status["signature"]["state"] == "revoked"
    assert status["signature"]["reason"] == "keyCompromise" and status["signature"]["revokedAt"]
    ready = condition(status, "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Withdrawn"
    assert statuses(setup)["SigningProfile/firmware"]["activeCertificates"] == 0


def test_invalid_release_is_stalled_naming_the_field_and_keeps_its_signature(
        setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    signed = statuses(setup)["Release/fw-1"]["signature"]
    setup.declare(signing_profile(), release(signingProfileRef={"name": "nowhere"}))
    with pytest.raises(InvalidDeclaration):
        setup.apply(setup.now + timedelta(minutes=5))
    status = statuses(setup)["Release/fw-1"]
    stalled = condition(status, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
    assert "spec.signingProfileRef.name" in stalled["message"]
    assert "nowhere" in stalled["message"]
    assert status["signature"] == signed  # the last known signature is kept
    assert condition(statuses(setup)["SigningProfile/firmware"], "Ready")["status"] == "True"


def test_a_revoked_profile_stalls_its_releases(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    setup.declare(signing_profile(revoked={"reason": "keyCompromise"}), release())
    setup.apply(setup.now + timedelta(minutes=5))
    found = statuses(setup)
    profile = found["SigningProfile/firmware"]
    assert profile["revoked"]["reason"] == "keyCompromise" and profile["revoked"]["revokedAt"]
    assert profile["activeCertificates"] == 0 and "certificate" not in profile
    assert condition(profile, "Ready")["reason"] == "Revoked"
    status = found["Release/fw-1"]
    assert status["state"] == "SignerRevoked"
    assert status["signature"]["state"] == "revoked"
    stalled = condition(status, "Stalled")
    assert stalled["status"] == "True" and "SigningProfile/firmware is revoked" in \
        stalled["message"]


def test_release_documents_become_kubernetes_status_and_events(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    document = yaml.safe_load(read_status_branch(setup.repo, "fleetpki/status")[
        "status/Release/fw-1.yaml"])
    body = {"apiVersion": "fleetpki.io/v1alpha1", "kind": "Release",
            "metadata": {"name": "fw-1", "generation": 4},
            "status": {"state": "Pending", "kopf": {"progress": {}}}}
    status = kube_status(document, body, setup.now)
    assert status["observedGeneration"] == 4 and "observedCommit" not in status
    assert {c["observedGeneration"] for c in status["conditions"]} == {4}
    patch = _patch("Release", status, body["status"])["status"]
    assert patch["state"] == "Signed" and "kopf" not in patch
    assert patch["signature"]["state"] == "active"
    STATUS_KINDS["Release"].model_validate(status)
    plan = Plan((Action("sign-release", "Release", "fw-1", "not yet signed"),
                 Action("revoke-signer", "SigningProfile", "old", "signing profile revoked")))
    update = StatusUpdate({}, "done", plan, Outcome(), setup.now,
                          {"sign-release": 1, "revoke-signer": 1}, True)
    events = events_of(update, [body], {}, {})
    assert ("Release/fw-1", "Normal", "Signed", "release signature signed") in events
    assert ("SigningProfile/old", "Normal", "Revoked", "signing certificates revoked") in events
