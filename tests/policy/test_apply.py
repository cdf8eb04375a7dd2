"""Policies in `apply`: denied actions are skipped, their objects Stalled; the CLI's exit codes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from controller import jobs

from .support import (
    NOW,
    FleetRepo,
    actions,
    commit_all,
    devices,
    init_repo,
    invoke,
    one_line,
    show,
)

STATUS = "fleetpki/status"
PATTERN = "fleetpki.io/device-id-pattern"
DENIAL = ("identity/device-id-pattern: device id does not match the fleet's "
          "fleetpki.io/device-id-pattern")


def legacy_repo() -> FleetRepo:
    """dev-1, dev-2 and legacy-7, in a fleet whose id pattern only admits dev-N."""
    repo = FleetRepo()
    repo.fleets["sensors"]["spec"]["devices"] = devices("dev-1", "dev-2", "legacy-7")
    repo.fleets["sensors"]["metadata"]["annotations"] = {PATTERN: "^dev-[0-9]+$"}
    return repo


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["message"]) for c in status["status"]["conditions"]}


def active_devices(state: jobs.StateDir, fleet: str) -> set[str]:
    with state.inventory() as inventory:
        return set(inventory.active_devices(fleet))


def test_a_denied_device_is_skipped_and_stalled_until_the_declaration_is_fixed(
        tmp_path: Path, passphrase: str) -> None:
    repo = legacy_repo()
    root = repo.write(tmp_path / "repo")
    init_repo(root)
    state = jobs.StateDir(tmp_path / "state")

    report = jobs.apply(root, state, NOW)
    assert actions(report.plan.denied) == {("issue", "sensors", "legacy-7")}
    assert report.result.done["issue"] == 2
    assert active_devices(state, "sensors") == {"dev-1", "dev-2"}
    assert report.status_commit is not None
    fleet = show(root, STATUS, "status/DeviceFleet/sensors.yaml")
    assert conditions(fleet)["Stalled"] == (
        "True", f"1 policy denial(s); first: {DENIAL} (device legacy-7)")
    assert conditions(fleet)["Ready"][0] == "False"
    assert fleet["status"]["attention"] == [
        {"device": "legacy-7", "reason": f"policy {DENIAL}"}]
    assert fleet["status"]["devices"]["active"] == 2
    for ca in ("root", "issuing"):
        ca_status = show(root, STATUS, f"status/CertificateAuthority/{ca}.yaml")
        assert conditions(ca_status)["Ready"][0] == "True"

    repo.fleets["sensors"]["metadata"]["annotations"] = {PATTERN: "^(dev|legacy)-[0-9]+$"}
    repo.write(root)
    commit_all(root, "admit legacy ids")
    later = NOW + timedelta(hours=1)
    report = jobs.apply(root, state, later)
    assert report.plan.denied == ()
    assert report.plan.findings == ()
    assert actions(a for a in report.plan.actions if a.kind == "DeviceFleet") == {
        ("issue", "sensors", "legacy-7")}
    assert active_devices(state, "sensors") == {"dev-1", "dev-2", "legacy-7"}
    fleet = show(root, STATUS, "status/DeviceFleet/sensors.yaml")
    assert conditions(fleet)["Ready"] == ("True", "3 device certificate(s) current")
    assert conditions(fleet)["Stalled"][0] == "False"
    assert "attention" not in fleet["status"]

    assert jobs.apply(root, state, later).plan.actions == ()  # converged: nothing left


def test_a_denied_intermediate_is_not_created_and_its_fleets_wait(tmp_path: Path,
                                                                  passphrase: str) -> None:
    repo = FleetRepo()
    repo.authorities["root"]["spec"]["duration"] = "175200h"
    repo.authorities["issuing"]["spec"]["duration"] = "100000h"
    root = repo.write(tmp_path / "repo")
    init_repo(root)
    state = jobs.StateDir(tmp_path / "state")
    report = jobs.apply(root, state, NOW)
    assert actions(report.plan.denied) == {("create-ca", "issuing", None)} | {
        ("issue", "sensors", d) for d in ("dev-1", "dev-2", "dev-3")}
    assert report.result.done["create-ca"] == 1
    with state.inventory() as inventory:
        assert inventory.active_ca("root") is not None
        assert inventory.active_ca("issuing") is None
    ca = show(root, STATUS, "status/CertificateAuthority/issuing.yaml")
    assert conditions(ca)["Stalled"] == ("True", (
        "1 policy denial(s); first: validity/intermediate-max-validity: intermediate CAs may "
        "be valid for at most 10 years (87600h)"))
    assert conditions(show(root, STATUS, "status/CertificateAuthority/root.yaml"))["Ready"][0] \
        == "True"


def test_a_denied_root_blocks_what_depends_on_it_and_apply_still_completes(
        tmp_path: Path, passphrase: str) -> None:
    repo = FleetRepo()
    del repo.authorities["root"]["spec"]["pathLength"]  # root-declares-path-length denies
    root = repo.write(tmp_path / "repo")
    init_repo(root)
    state = jobs.StateDir(tmp_path / "state")
    report = jobs.apply(root, state, NOW)
    assert {("create-ca", "root", None), ("create-ca", "issuing", None)} | {
        ("issue", "sensors", d) for d in ("dev-1", "dev-2", "dev-3")} <= actions(
        report.plan.denied)
    assert report.result.done.get("issue", 0) == 0
    with state.inventory() as inventory:
        assert inventory.ca_names() == []
    ca = show(root, STATUS, "status/CertificateAuthority/root.yaml")
    assert conditions(ca)["Stalled"] == ("True", (
        "1 policy denial(s); first: path-length/root-declares-path-length: a root CA must "
        "declare pathLength so the depth of its hierarchy is bounded"))
    assert report.plan.blocked_fleets == {"sensors": "issuing"}  # issuing sits below root
    fleet = show(root, STATUS, "status/DeviceFleet/sensors.yaml")
    assert conditions(fleet)["Stalled"] == (
        "True", "issuance blocked: CertificateAuthority/issuing is denied by policy")


def test_cli_validate_plan_and_apply_on_a_deny(tmp_path: Path, passphrase: str,
                                                fixed_now: None) -> None:
    root = legacy_repo().write(tmp_path / "repo")
    init_repo(root)
    state = tmp_path / "state"
    line = f"deny: DeviceFleet/sensors device legacy-7: {DENIAL}"

    validate = invoke("validate", root, rc=1)
    assert f"policy: {line}" in one_line(validate.stderr)
    assert "0 problem(s), 1 policy denial(s)." in one_line(validate.stderr)

    plan = invoke("plan", root, "--state-dir", state, rc=1)
    assert f"x policy {line}" in plan.stdout  # the plan prints its findings on stdout
    assert "Plan: 2 create-ca, 2 issue, 2 publish-crl. 1 denied by policy." in plan.stdout
    assert not state.exists()  # plan is read-only

    apply = invoke("apply", root, "--state-dir", state, rc=1)
    assert f"policy: {line}" in one_line(apply.stderr)
    assert "1 action(s) denied by policy were not applied." in one_line(apply.stderr)
    assert "2 issue" in one_line(apply.stdout)
    assert active_devices(jobs.StateDir(state), "sensors") == {"dev-1", "dev-2"}

    warned = legacy_repo()
    warned.fleets["sensors"]["metadata"]["annotations"] = {}
    warned.profiles["client"]["spec"]["renewBefore"] = "12h"  # validity/renewal-window warns
    warned.write(root)
    commit_all(root, "warned, not denied")
    result = invoke("validate", root)
    assert "policy: warn: DeviceFleet/sensors: validity/renewal-window" in one_line(result.stderr)
    result = invoke("apply", root, "--state-dir", state)
    assert "policy: warn:" in result.stderr
