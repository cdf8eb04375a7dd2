"""The policy gate: which actions a deny removes, and what it never touches."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import jobs
from controller.api.desired import Desired
from controller.api.problems import Finding
from controller.plan.baseline import AsApplied
from controller.plan.model import Action, Plan
from controller.policy.gate import gate

from .support import NOW, FleetRepo, actions, ca_doc, devices, fleet_doc, policy, rule

CA = "CertificateAuthority"
FLEET = "DeviceFleet"


@pytest.fixture(scope="module")
def desired(tmp_path_factory: pytest.TempPathFactory) -> Desired:
    """CAs root -> issuing (fleets sensors, gateways) and root -> other (fleet meters)."""
    repo = FleetRepo()
    repo.authorities["other"] = ca_doc("other", parent="root")
    repo.fleets = {"sensors": fleet_doc("sensors", devices("s-1", "s-2", "s-3")),
                   "gateways": fleet_doc("gateways", devices("g-1")),
                   "meters": fleet_doc("meters", devices("m-1"), issuer="other")}
    return jobs.load(repo.write(tmp_path_factory.mktemp("gate") / "repo")).desired


def everything() -> Plan:
    """One of every action kind, for every object."""
    steps = [Action("renew-ca", CA, "issuing", "CA spec changed", serial="c1"),
             Action("create-ca", CA, "other", "CA not yet created"),
             Action("revoke", FLEET, "sensors", "device marked revoked", "s-3", "03",
                    "keyCompromise"),
             Action("issue", FLEET, "sensors", "no certificate yet", "s-1"),
             Action("renew", FLEET, "sensors", "due for renewal", "s-2", "02"),
             Action("rekey", FLEET, "gateways", "key changed", "g-1", "11"),
             Action("issue", FLEET, "meters", "no certificate yet", "m-1"),
             Action("revoke", FLEET, "meters", "device removed from fleet", "m-9", "19",
                    "cessationOfOperation")]
    steps += [Action("publish-crl", CA, name, "new revocations")
              for name in ("root", "issuing", "other")]
    completed = {"sensors": "h1", "gateways": "h2", "meters": "h3"}
    return Plan(tuple(steps), completed_fleets=completed)


def deny(target: str, device: str | None = None, action: str = "deny") -> Finding:
    return Finding("p", "r", action, "no", target, device)


def blocked(plan: Plan) -> set[tuple[str, str, str | None]]:
    return actions(plan.denied)


def test_without_denials_nothing_is_removed(desired: Desired) -> None:
    plan = everything()
    gated = gate(plan, desired, [])
    assert gated.actions == plan.actions
    assert gated.denied == ()
    assert gated.completed_fleets == plan.completed_fleets


def test_a_denied_ca_blocks_its_renewal_and_its_fleets_issuance(desired: Desired) -> None:
    gated = gate(everything(), desired, [deny(f"{CA}/issuing")])
    assert blocked(gated) == {("renew-ca", "issuing", None), ("issue", "sensors", "s-1"),
                              ("renew", "sensors", "s-2"), ("rekey", "gateways", "g-1")}
    kept = actions(gated)
    assert ("revoke", "sensors", "s-3") in kept
    assert ("publish-crl", "issuing", None) in kept
    assert {("create-ca", "other", None), ("issue", "meters", "m-1")} <= kept
    assert gated.completed_fleets == {"meters": "h3"}


def test_a_denied_ca_blocks_its_creation(desired: Desired) -> None:
    gated = gate(everything(), desired, [deny(f"{CA}/other")])
    assert blocked(gated) == {("create-ca", "other", None), ("issue", "meters", "m-1")}
    assert {("revoke", "meters", "m-9"), ("publish-crl", "other", None)} <= actions(gated)


def test_a_fleet_deny_blocks_all_of_that_fleets_issuance(desired: Desired) -> None:
    gated = gate(everything(), desired, [deny(f"{FLEET}/sensors")])
    assert blocked(gated) == {("issue", "sensors", "s-1"), ("renew", "sensors", "s-2")}
    assert ("revoke", "sensors", "s-3") in actions(gated)
    assert ("rekey", "gateways", "g-1") in actions(gated)
    assert ("renew-ca", "issuing", None) in actions(gated)
    assert gated.completed_fleets == {"gateways": "h2", "meters": "h3"}


def test_a_device_deny_blocks_only_that_device(desired: Desired) -> None:
    gated = gate(everything(), desired, [deny(f"{FLEET}/sensors", "s-2")])
    assert blocked(gated) == {("renew", "sensors", "s-2")}
    assert ("issue", "sensors", "s-1") in actions(gated)
    assert gated.completed_fleets == {"gateways": "h2", "meters": "h3"}


def test_a_deny_for_the_same_device_name_in_another_fleet_does_not_leak(
        desired: Desired) -> None:
    gated = gate(everything(), desired, [deny(f"{FLEET}/gateways", "s-1")])
    assert gated.denied == ()


def test_warnings_block_nothing_but_are_kept(desired: Desired) -> None:
    warnings = [deny(f"{CA}/issuing", action="warn"), deny(f"{FLEET}/sensors", action="warn"),
                deny(f"{FLEET}/meters", "m-1", action="warn")]
    plan = everything()
    gated = gate(plan, desired, warnings)
    assert gated.actions == plan.actions
    assert gated.denied == ()
    assert gated.findings == tuple(warnings)
    assert gated.completed_fleets == plan.completed_fleets


def test_a_fleet_deny_without_issuance_leaves_the_fleet_completed(desired: Desired) -> None:
    plan = Plan((Action("revoke", FLEET, "meters", "device removed from fleet", "m-9", "19",
                        "cessationOfOperation"),), completed_fleets={"meters": "h3"})
    gated = gate(plan, desired, [deny(f"{FLEET}/meters")])
    assert gated.actions == plan.actions
    assert gated.completed_fleets == {"meters": "h3"}


def test_declaration_plan_gates_a_change_to_a_frozen_ca(tmp_path: Path) -> None:
    """Through `Declaration.plan`: the CA's renewal and its new device are denied; the
    revocation and the CRL it needs still happen; the rule's findings are in the plan."""
    base = FleetRepo()
    head = base.copy()
    head.authorities["issuing"]["metadata"]["labels"] = {"fleetpki.io/frozen": "true"}
    head.authorities["issuing"]["spec"]["subject"]["organization"] = "ACME"
    head.fleets["sensors"]["spec"]["devices"][1]["revoked"] = {"reason": "keyCompromise"}
    head.fleets["sensors"]["spec"]["devices"] += devices("dev-4")
    head.add_policy(policy("change-freeze", rule(
        "not-frozen", '!("fleetpki.io/frozen" in authority.labels)',
        message="this CA is frozen")))
    before = jobs.load(base.write(tmp_path / "base")).desired
    declaration = jobs.load(head.write(tmp_path / "head"))
    plan = declaration.plan(AsApplied(before, NOW).observed(), NOW)
    assert actions(plan) == {("revoke", "sensors", "dev-2"), ("publish-crl", "issuing", None)}
    assert actions(plan.denied) == {("renew-ca", "issuing", None), ("issue", "sensors", "dev-4")}
    assert [str(f) for f in plan.denies] == [
        "deny: CertificateAuthority/issuing: change-freeze/not-frozen: this CA is frozen"]
    assert "sensors" not in plan.completed_fleets
    # the CA key is not replaced (its renewal was denied); only the revocation is flagged
    assert plan.dangers == ("revokes 1 of 3 active certificates (33%) of DeviceFleet/sensors",)
