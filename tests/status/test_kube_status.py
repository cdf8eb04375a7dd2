"""Kubernetes `.status` from status documents: kstatus fields, backoff, events, timers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from controller.api.problems import Finding
from controller.operator.due import is_due
from controller.plan.model import Action, Plan
from controller.status.kube import REQUESTED_AT, _patch, backoff, events_of, kube_status
from controller.status.report import Outcome
from controller.status.store import StatusUpdate

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def conditions(ready: str, stalled: str, message: str = "") -> list[dict[str, Any]]:
    return [{"type": "Ready", "status": ready, "reason": "X", "message": message,
             "lastTransitionTime": "2026-11-29T00:00:00Z"},
            {"type": "Reconciling", "status": "False", "reason": "Idle", "message": "",
             "lastTransitionTime": "2026-11-29T00:00:00Z"},
            {"type": "Stalled", "status": stalled, "reason": "X", "message": message,
             "lastTransitionTime": "2026-11-29T00:00:00Z"}]


def body(generation: int = 3, status: dict[str, Any] | None = None,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "fleetpki.io/v1alpha1", "kind": "DeviceFleet",
            "metadata": {"name": "sensors", "generation": generation,
                         "annotations": annotations or {}},
            "status": status or {}}


def test_backoff_doubles_from_one_hour_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [timedelta(hours=1), timedelta(hours=2),
                                               timedelta(hours=4)]
    assert backoff(30) == timedelta(hours=32)


def test_ready_status_gets_observed_generation_everywhere_and_echoes_the_request() -> None:
    document = {"status": {"observedCommit": "abc", "devices": {"active": 2},
                           "conditions": conditions("True", "False")}}
    status = kube_status(document, body(annotations={REQUESTED_AT: "now-1"}), NOW)
    assert "observedCommit" not in status
    assert status["observedGeneration"] == 3
    assert {c["observedGeneration"] for c in status["conditions"]} == {3}
    assert status["lastHandledReconcileAt"] == "now-1"
    assert "failedAttempts" not in status and "nextAttemptAt" not in status


def test_a_failing_object_backs_off_and_a_spec_change_resets_it() -> None:
    failing = {"status": {"conditions": conditions("False", "True", "issuer missing")}}
    first = kube_status(failing, body(), NOW)
    assert first["failedAttempts"] == 1 and first["nextAttemptAt"] == "2026-11-29T13:00:00Z"
    stalled = next(c for c in first["conditions"] if c["type"] == "Stalled")
    assert stalled["message"].startswith("issuer missing (attempt 1; next automatic retry at "
                                         "2026-11-29T13:00:00Z")
    second = kube_status(failing, body(status=first), NOW)
    assert second["failedAttempts"] == 2 and second["nextAttemptAt"] == "2026-11-29T14:00:00Z"
    changed = kube_status(failing, body(generation=4, status=second), NOW)
    assert changed["failedAttempts"] == 1


def test_patch_removes_every_other_status_field_but_kopfs() -> None:
    old = {"attention": [{"device": "a"}], "kopf": {"progress": {}}, "devices": {}, "x": 1}
    patch = _patch("DeviceFleet", {"devices": {"active": 1}}, old)["status"]
    assert patch["devices"] == {"active": 1} and "kopf" not in patch
    assert patch["attention"] is None and patch["x"] is None
    assert patch["failedAttempts"] is None  # even when the object as read did not show it


def test_events_are_one_per_fleet_and_action_and_one_warning_per_new_stall() -> None:
    actions = tuple(Action("issue", "DeviceFleet", "sensors", "new", f"d{i}") for i in range(5))
    actions += (Action("revoke", "DeviceFleet", "sensors", "gone", "d9", "01"),
                Action("create-ca", "CertificateAuthority", "root", "new"))
    outcome = Outcome(findings=[Finding("p", "r", "deny", "no", "DeviceFleet/other")])
    update = StatusUpdate({}, "issue 5", Plan(actions), outcome, NOW, {"issue": 5})
    bodies = [{"kind": "DeviceFleet", "metadata": {"name": n}} for n in ("sensors", "other")]
    events = events_of(update, bodies, {"DeviceFleet/other": None},
                       {"DeviceFleet/other": "1 policy denial(s); first: p/r: no"})
    assert ("DeviceFleet/sensors", "Normal", "Issued", "5 device certificate(s) issued") in events
    assert ("DeviceFleet/sensors", "Normal", "Revoked", "1 device certificate(s) revoked") \
        in events
    assert ("CertificateAuthority/root", "Normal", "Created", "CA certificate created") in events
    assert ("DeviceFleet/other", "Warning", "Denied", "1 policy denial(s); first: p/r: no") \
        in events
    assert len(events) == 4
    again = events_of(update, bodies, {"DeviceFleet/other": "1 policy denial(s); first: p/r: no"},
                      {"DeviceFleet/other": "1 policy denial(s); first: p/r: no"})
    assert all(kind == "Normal" for _, kind, _, _ in again)  # the same stall is told once


def test_timer_reconciles_what_is_due_and_respects_backoff() -> None:
    ready = {"observedGeneration": 3, "conditions": conditions("True", "False"),
             "nextRenewalAt": "2026-12-31T00:00:00Z"}
    assert not is_due(body(status=ready), NOW, timedelta(minutes=5))
    assert is_due(body(status={**ready, "nextRenewalAt": "2026-11-29T12:03:00Z"}), NOW,
                  timedelta(minutes=5))
    assert is_due(body(generation=4, status=ready), NOW, timedelta(minutes=5))
    assert is_due(body(), NOW, timedelta(minutes=5))  # never reconciled
    crl = {**ready, "crl": {"thisUpdate": "2026-11-29T00:00:00Z",
                            "nextUpdate": "2026-11-30T00:00:00Z"}}
    assert is_due(body(status=crl), NOW, timedelta(minutes=5))  # half-way to nextUpdate
    stalled = {"conditions": conditions("False", "True"), "nextAttemptAt": "2026-11-29T13:00:00Z"}
    assert not is_due(body(status=stalled), NOW, timedelta(minutes=5))
    assert is_due(body(status=stalled), NOW + timedelta(hours=1), timedelta(minutes=5))
