"""`plan(desired, observed, now, max_revocations)` against hand-built observed states."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controller.plan.model import (
    Action,
    ActiveDevice,
    CAObserved,
    CRLObserved,
    FleetObserved,
    Observed,
    Plan,
)
from controller.plan.planner import ca_intent, plan, revocation_limit

from .support import (
    DAY,
    HOUR,
    ISSUING,
    NOW,
    NOW_S,
    ROOT,
    converged,
    device,
    make_desired,
    planned,
    public_key_pem,
    with_fleet,
)

FAR = NOW_S + 300 * DAY


def steps(result: Plan) -> list[tuple[str, str, str | None]]:
    return [(a.action, a.name, a.device) for a in result.actions]


def device_actions(result: Plan) -> list[Action]:
    return [a for a in result.actions if a.device is not None]


def only_device_action(result: Plan) -> Action:
    (action,) = device_actions(result)
    return action


def crl_reasons(result: Plan) -> dict[str, str]:
    return {a.name: a.reason for a in result.actions if a.action == "publish-crl"}


def gone(count: int, prefix: str = "gone") -> dict[str, ActiveDevice]:
    """Active certificates of devices no longer declared."""
    return {f"{prefix}-{i:04d}": (f"s-{prefix}-{i}", "c:server-ECDSA-P256", FAR, None)
            for i in range(count)}


# --- from nothing, and nothing to do ------------------------------------------------------------


def test_empty_observed_creates_everything_in_order() -> None:
    desired = make_desired()
    result, intents = planned(desired, Observed())
    assert steps(result) == [
        ("create-ca", ROOT, None),
        ("create-ca", ISSUING, None),
        ("issue", "sensors", "dev-1"),
        ("issue", "sensors", "dev-2"),
        ("publish-crl", ROOT, None),
        ("publish-crl", ISSUING, None),
    ]
    assert [a.kind for a in result.actions] == ["CertificateAuthority"] * 2 + ["DeviceFleet"] * 2 \
        + ["CertificateAuthority"] * 2
    assert result.actions[0].reason == "CA not yet created"
    assert result.actions[2].reason == "no certificate yet"
    assert set(intents) == {("sensors", "dev-1"), ("sensors", "dev-2")}
    assert result.completed_fleets == {"sensors": desired.fleets["sensors"].content_hash}
    assert result.problems == () and result.warnings == () and result.mass_revocations == ()
    assert result.has_changes


def test_plan_is_deterministic() -> None:
    desired = make_desired([device(f"d-{i:03d}") for i in range(50, 0, -1)])
    first, second = plan(desired, Observed(), NOW), plan(desired, Observed(), NOW)
    assert first.actions == second.actions
    issued = [a.device or "" for a in first.actions if a.action == "issue"]
    assert issued == sorted(issued)


def test_converged_state_plans_nothing() -> None:
    desired = make_desired()
    result = plan(desired, converged(desired), NOW)
    assert result.actions == ()
    assert not result.has_changes
    assert result.warnings == ()
    assert result.completed_fleets == {"sensors": desired.fleets["sensors"].content_hash}


def test_fleets_are_planned_in_name_order() -> None:
    desired = make_desired(more_fleets={"alpha": [device("a-1")], "zulu": [device("z-1")]})
    result = plan(desired, Observed(), NOW)
    assert [a.name for a in device_actions(result)] == ["alpha", "sensors", "sensors", "zulu"]


# --- renewals and rekeys -------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "expected"), [
    ({}, "rekey"),  # server keygen, rotationPolicy Always (the default)
    ({"rotationPolicy": "Always"}, "rekey"),
    ({"rotationPolicy": "Never"}, "renew"),
])
def test_due_certificate_is_renewed_per_rotation_policy(profile: dict[str, str],
                                                        expected: str) -> None:
    desired = make_desired(profile=profile)
    observed = converged(desired)
    seen = observed.fleets["sensors"]
    assert seen.active is not None
    serial, digest, _, source = seen.active["dev-1"]
    active = {**seen.active, "dev-1": (serial, digest, NOW_S, source)}  # renew_at == now
    result, intents = planned(desired, with_fleet(observed, "sensors",
                                                  replace(seen, active=active)))
    action = only_device_action(result)
    assert (action.action, action.device, action.reason) == (expected, "dev-1", "due for renewal")
    assert action.serial == "serial-dev-1"
    assert ("sensors", "dev-1") in intents
    assert ("sensors", "dev-2") not in intents


def test_not_yet_due_certificate_is_left_alone() -> None:
    desired = make_desired()
    result = plan(desired, converged(desired, renew_at=NOW_S + 1), NOW)
    assert result.actions == ()


def test_device_keygen_renews_keeping_the_device_key(p256_key: ec.EllipticCurvePrivateKey) -> None:
    desired = make_desired([device("dev-1", publicKey=public_key_pem(p256_key))],
                           profile={"keyGeneration": "device", "rotationPolicy": "Always"})
    result = plan(desired, converged(desired, renew_at=NOW_S - 1), NOW)
    assert only_device_action(result).action == "renew"


def test_device_key_change_is_a_rekey(p256_key: ec.EllipticCurvePrivateKey,
                                      other_p256_key: ec.EllipticCurvePrivateKey) -> None:
    profile = {"keyGeneration": "device"}
    old = make_desired([device("dev-1", publicKey=public_key_pem(p256_key))], profile=profile)
    new = make_desired([device("dev-1", publicKey=public_key_pem(other_p256_key))],
                       profile=profile)
    action = only_device_action(plan(new, converged(old), NOW))
    assert action.action == "rekey"
    assert action.reason.startswith("key changed")
    assert action.serial == "serial-dev-1"


def test_profile_key_algorithm_change_is_a_rekey() -> None:
    old = make_desired()
    new = make_desired(profile={"keyAlgorithm": "ECDSA-P384", "rotationPolicy": "Never"})
    actions = device_actions(plan(new, converged(old), NOW))
    assert {(a.action, a.device) for a in actions} == {("rekey", "dev-1"), ("rekey", "dev-2")}


@pytest.mark.parametrize(("profile", "expected"), [
    ({}, "rekey"),
    ({"rotationPolicy": "Never"}, "renew"),
])
def test_label_change_reissues_with_reason(profile: dict[str, str], expected: str) -> None:
    old = make_desired(profile=profile)
    new = make_desired([device("dev-1", site="hamburg"), device("dev-2")], profile=profile)
    action = only_device_action(plan(new, converged(old), NOW))
    assert (action.action, action.device) == (expected, "dev-1")
    assert action.reason.startswith("declaration changed")
    assert action.serial == "serial-dev-1"


def test_replacing_a_certificate_republishes_the_crl() -> None:
    old = make_desired()
    new = make_desired([device("dev-1", site="hamburg"), device("dev-2")])
    result = plan(new, converged(old), NOW)
    assert only_device_action(result).serial == "serial-dev-1"  # revoked as superseded
    assert list(crl_reasons(result)) == [ISSUING]


def test_duration_change_alone_reissues_nothing() -> None:
    old = make_desired()
    new = make_desired(profile={"duration": "2160h"})
    observed = converged(old)
    assert old.fleets["sensors"].content_hash != new.fleets["sensors"].content_hash
    result = plan(new, observed, NOW)
    assert result.actions == ()
    assert result.completed_fleets == {"sensors": new.fleets["sensors"].content_hash}


# --- revocations ---------------------------------------------------------------------------------


def test_device_marked_revoked_is_revoked_with_its_reason() -> None:
    old = make_desired()
    new = make_desired([device("dev-1", revoked={"reason": "keyCompromise"}), device("dev-2")])
    result, intents = planned(new, converged(old))
    action = only_device_action(result)
    assert (action.action, action.device, action.serial) == ("revoke", "dev-1", "serial-dev-1")
    assert action.revocation_reason == "keyCompromise"
    assert action.reason == "device marked revoked"
    assert ("sensors", "dev-1") not in intents
    assert crl_reasons(result) == {ISSUING: "new revocations"}


def test_revoked_device_without_certificate_is_not_issued() -> None:
    desired = make_desired([device("dev-1", revoked={"reason": "keyCompromise"}),
                            device("dev-2")])
    result = plan(desired, Observed(), NOW)
    assert [(a.action, a.device) for a in device_actions(result)] == [("issue", "dev-2")]


def test_removed_device_is_revoked_with_deletion_policy_revoke() -> None:
    old = make_desired()
    new = make_desired([device("dev-2")], fleet={"deletionPolicy": "Revoke"})
    result = plan(new, converged(old), NOW)
    action = only_device_action(result)
    assert (action.action, action.device, action.serial) == ("revoke", "dev-1", "serial-dev-1")
    assert action.revocation_reason == "cessationOfOperation"
    assert action.reason == "device removed from fleet"


def test_removed_device_is_kept_with_deletion_policy_orphan() -> None:
    old = make_desired()
    new = make_desired([device("dev-2")], fleet={"deletionPolicy": "Orphan"})
    result = plan(new, converged(old), NOW)
    assert result.actions == ()


def test_revocations_come_before_issues_within_a_fleet() -> None:
    old = make_desired([device("b"), device("d")])
    new = make_desired([device("a"), device("c")])
    result = plan(new, converged(old), NOW)
    assert [(a.action, a.device) for a in device_actions(result)] == [
        ("revoke", "b"), ("revoke", "d"), ("issue", "a"), ("issue", "c")]


def test_suspended_fleet_plans_nothing_and_warns() -> None:
    old = make_desired()
    new = make_desired([device("dev-1", site="x"), device("dev-3")], fleet={"suspend": True})
    result = plan(new, converged(old), NOW)
    assert result.actions == ()
    assert len(result.warnings) == 1
    assert "DeviceFleet/sensors" in result.warnings[0] and "suspended" in result.warnings[0]
    assert "sensors" not in result.completed_fleets


def test_decommissioned_fleet_revokes_everything() -> None:
    old = make_desired()
    new = make_desired(fleet={"decommissioned": True})
    result, intents = planned(new, converged(old))
    actions = device_actions(result)
    assert [(a.action, a.device, a.serial) for a in actions] == [
        ("revoke", "dev-1", "serial-dev-1"), ("revoke", "dev-2", "serial-dev-2")]
    assert {a.revocation_reason for a in actions} == {"cessationOfOperation"}
    assert {a.reason for a in actions} == {"fleet decommissioned"}
    assert intents == {}


def test_fleet_vanished_from_the_repository_is_not_revoked() -> None:
    desired = make_desired()
    observed = with_fleet(converged(desired), "old-fleet",
                          FleetObserved("h", gone(3), active_count=3))
    result = plan(desired, observed, NOW)
    assert result.actions == ()
    (warning,) = result.warnings
    assert "DeviceFleet/old-fleet" in warning
    assert "3 active" in warning and "nothing is revoked" in warning


# --- mass revocation -----------------------------------------------------------------------------


def test_revocation_limit_is_ten_percent_or_a_hundred() -> None:
    assert revocation_limit(0, None) == 100
    assert revocation_limit(1000, None) == 100
    assert revocation_limit(5000, None) == 500
    assert revocation_limit(5000, 3) == 3
    assert revocation_limit(10, 0) == 0


@pytest.mark.parametrize(("removed", "active_count", "override", "limit"), [
    (101, 101, None, 100),
    (501, 5000, None, 500),
    (6, 100, 5, 5),
])
def test_mass_revocation_is_flagged(removed: int, active_count: int, override: int | None,
                                    limit: int) -> None:
    desired = make_desired([])
    observed = with_fleet(converged(desired), "sensors",
                          FleetObserved("old", gone(removed), active_count=active_count))
    result = plan(desired, observed, NOW, max_revocations=override)
    assert len(device_actions(result)) == removed  # still planned; apply refuses
    (mass,) = result.mass_revocations
    assert (mass.fleet, mass.count, mass.limit) == ("sensors", removed, limit)
    assert any("revocations exceed the limit" in w for w in result.warnings)


@pytest.mark.parametrize(("removed", "active_count", "override"), [
    (100, 100, None),
    (500, 5000, None),
    (150, 150, 150),
    (5, 5, None),
])
def test_revocations_within_the_limit_are_not_flagged(removed: int, active_count: int,
                                                      override: int | None) -> None:
    desired = make_desired([])
    observed = with_fleet(converged(desired), "sensors",
                          FleetObserved("old", gone(removed), active_count=active_count))
    result = plan(desired, observed, NOW, max_revocations=override)
    assert len(device_actions(result)) == removed
    assert result.mass_revocations == ()
    assert result.warnings == ()


def test_decommissioning_is_explicit_so_not_held_back_as_a_mass_revocation() -> None:
    desired = make_desired([], fleet={"decommissioned": True})
    observed = with_fleet(converged(desired), "sensors",
                          FleetObserved("old", gone(1000), active_count=1000))
    result = plan(desired, observed, NOW)
    assert result.mass_revocations == ()
    assert sum(a.action == "revoke" for a in result.actions) == 1000


# --- the unchanged-fleet fast path --------------------------------------------------------------


def test_unchanged_fleet_only_renews_due_devices() -> None:
    desired = make_desired([device("dev-1"), device("dev-2"), device("dev-3")])
    full = converged(desired)
    assert full.fleets["sensors"].active is not None
    active = full.fleets["sensors"].active
    due = {"dev-2": (active["dev-2"][0], active["dev-2"][1], NOW_S - DAY, active["dev-2"][3]),
           "undeclared": ("s-x", "c:k", NOW_S - DAY, None)}
    seen = FleetObserved(desired.fleets["sensors"].content_hash, None, due, active_count=3)
    result, intents = planned(desired, with_fleet(full, "sensors", seen))
    assert [(a.action, a.device, a.reason) for a in result.actions] == [
        ("rekey", "dev-2", "due for renewal"), ("publish-crl", None, "new revocations")]
    assert list(intents) == [("sensors", "dev-2")]


def test_unchanged_fleet_with_nothing_due_is_not_rendered() -> None:
    # A device that could not be rendered proves its intent is never computed on this path.
    desired = make_desired([device("dev-1"), {"id": "no-labels"}])
    seen = FleetObserved(desired.fleets["sensors"].content_hash, None, {}, active_count=2)
    result = plan(desired, with_fleet(converged(desired), "sensors", seen), NOW)
    assert result.actions == () and result.problems == ()


# --- problems ------------------------------------------------------------------------------------


def test_undeliverable_device_is_a_problem_and_the_rest_proceeds() -> None:
    desired = make_desired([device("dev-1"), {"id": "dev-2"}])
    result = plan(desired, Observed(), NOW)
    assert [a.device for a in device_actions(result)] == ["dev-1"]
    (problem,) = result.problems
    assert problem.device == "dev-2"
    assert (problem.file, problem.line) == ("fleets/sensors.csv", 3)
    assert problem.object == "DeviceFleet/sensors" and problem.field == "labels"
    assert "'site'" in problem.message
    assert "sensors" not in result.completed_fleets


# --- CAs and CRLs --------------------------------------------------------------------------------


def test_ca_spec_change_renews_the_ca() -> None:
    desired = make_desired()
    observed = converged(desired)
    changed = make_desired(ca_changes={ISSUING: {"subject": {"commonName": "Issuing 2"}}})
    assert ca_intent(changed.authority(ISSUING)) != observed.authorities[ISSUING].intent
    result = plan(changed, observed, NOW)
    assert [(a.action, a.name) for a in result.actions] == [
        ("renew-ca", ISSUING), ("publish-crl", ISSUING)]
    assert result.actions[0].reason.startswith("CA spec changed")
    assert result.actions[0].serial == f"ca-{ISSUING}"


def test_ca_lifetime_change_alone_does_not_renew_the_ca() -> None:
    desired = make_desired()
    changed = make_desired(ca_changes={ROOT: {"duration": "100000h"}})
    assert plan(changed, converged(desired), NOW).actions == ()


def test_due_ca_is_renewed() -> None:
    desired = make_desired()
    observed = converged(desired)
    root = observed.authorities[ROOT]
    due = replace(observed, authorities={**observed.authorities,
                                         ROOT: replace(root, renew_at=NOW_S)})
    result = plan(desired, due, NOW)
    assert [(a.action, a.name) for a in result.actions] == [
        ("renew-ca", ROOT), ("publish-crl", ROOT)]
    assert result.actions[0].reason.startswith("due for renewal")
    assert result.actions[0].serial == f"ca-{ROOT}"


def test_known_ca_without_active_certificate_is_renewed_not_created() -> None:
    desired = make_desired()
    observed = converged(desired)
    authorities = {ISSUING: observed.authorities[ISSUING]}
    result = plan(desired, replace(observed, authorities=authorities), NOW)
    assert result.actions[0] == Action("renew-ca", "CertificateAuthority", ROOT,
                                       "CA has no active certificate")


@pytest.mark.parametrize(("crl", "reason"), [
    (CRLObserved(NOW_S - 4 * DAY, NOW_S + 3 * DAY), "CRL half-way to nextUpdate"),
    (CRLObserved(NOW_S - 3 * DAY - 12 * HOUR, NOW_S + 3 * DAY + 12 * HOUR),
     "CRL half-way to nextUpdate"),
    (CRLObserved(NOW_S - HOUR, NOW_S + 7 * DAY, 1), "1 revocation(s) not yet published"),
    (CRLObserved(NOW_S - HOUR, NOW_S + 7 * DAY, 250), "250 revocation(s) not yet published"),
])
def test_crl_is_republished(crl: CRLObserved, reason: str) -> None:
    desired = make_desired()
    observed = converged(desired)
    result = plan(desired, replace(observed, crls={**observed.crls, ISSUING: crl}), NOW)
    assert list(crl_reasons(result)) == [ISSUING]
    assert crl_reasons(result)[ISSUING].startswith(reason)


@pytest.mark.parametrize("crl", [
    CRLObserved(NOW_S - 3 * DAY, NOW_S + 4 * DAY, 0),
    CRLObserved(NOW_S - HOUR, NOW_S + 7 * DAY),
])
def test_fresh_crl_is_not_republished(crl: CRLObserved) -> None:
    desired = make_desired()
    observed = converged(desired)
    assert plan(desired, replace(observed, crls={**observed.crls, ISSUING: crl}), NOW).actions == ()


def test_missing_crl_is_published() -> None:
    desired = make_desired()
    observed = converged(desired)
    result = plan(desired, replace(observed, crls={ROOT: observed.crls[ROOT]}), NOW)
    assert crl_reasons(result) == {ISSUING: "no current CRL for the CA certificate"}


def test_observed_ca_state_is_only_compared_by_intent() -> None:
    desired = make_desired()
    cas = {name: CAObserved("s", ca_intent(desired.authority(name)), FAR, FAR)
           for name in desired.authorities}
    observed = replace(converged(desired), authorities=cas)
    assert plan(desired, observed, NOW).actions == ()
