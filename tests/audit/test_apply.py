"""What `fleetpki apply` writes to the audit log: who (commit, author), what (CAs, every
certificate with its serial and fingerprint, revocations, CRLs), denials and refusals."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from controller import jobs
from controller.audit.events import local_actor
from controller.audit.log import LOG
from tests.policy.support import (
    NOW,
    FleetRepo,
    commit_all,
    fleet_doc,
    git,
    init_repo,
    invoke,
    policy,
    profile_doc,
    rule,
)

PASSPHRASE = "audit-tests-passphrase"


@pytest.fixture(autouse=True)
def passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("FLEETPKI_AUDIT_SYSLOG", raising=False)


def records(state: Path) -> list[dict[str, Any]]:
    text = (state / "audit" / LOG).read_text(encoding="utf-8")
    assert "PRIVATE" not in text and PASSPHRASE not in text
    return [json.loads(line) for line in text.splitlines()]


def of(found: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [r for r in found if r["action"] == action]


def devices(repo: Path, state: Path) -> dict[str, dict[str, str]]:
    rows = json.loads(invoke("status", repo, "--state-dir", state, "--fleet", "sensors",
                             "--devices", "-o", "json").stdout)
    return {row["device"]: row for row in rows}


def test_an_apply_records_its_commit_author_and_every_certificate(tmp_path: Path) -> None:
    repo, state = FleetRepo().write(tmp_path / "repo"), tmp_path / "state"
    head = init_repo(repo)
    invoke("apply", repo, "--state-dir", state)
    found = records(state)
    assert [r["action"] for r in found[:3]] == ["apply.started", "keystore.unlocked",
                                                "audit.sealed"]
    started = found[0]
    assert started["actor"]["commit"] == head
    assert started["actor"]["author"] == "policy tests <policy-tests@example.invalid>"
    assert started["object"] == str(repo.resolve())
    assert {r["object"] for r in of(found, "ca.created")} == {
        "CertificateAuthority/root", "CertificateAuthority/issuing"}
    issued = {r["device"]: r for r in of(found, "certificate.issued")}
    inventory = devices(repo, state)
    assert set(issued) == set(inventory) == {"dev-1", "dev-2", "dev-3"}
    for device, record in issued.items():
        assert record["serial"] == inventory[device]["serial"]
        assert record["object"] == "DeviceFleet/sensors" and record["outcome"] == "success"
        assert len(record["fingerprint"]) == 64
    assert {r["object"] for r in of(found, "crl.published")} == {
        "CertificateAuthority/root", "CertificateAuthority/issuing"}
    assert of(found, "apply.finished")[0]["done"] == {"create-ca": 2, "issue": 3,
                                                      "publish-crl": 2}
    assert found[-1]["action"] == "audit.sealed"
    assert "intact" in invoke("audit", "verify", "--state-dir", state).stdout


def test_revocations_denials_and_refusals_are_recorded(tmp_path: Path) -> None:
    declaration = FleetRepo()
    repo, state = declaration.write(tmp_path / "repo"), tmp_path / "state"
    init_repo(repo)
    invoke("apply", repo, "--state-dir", state)
    serial = devices(repo, state)["dev-3"]["serial"]
    fleet = declaration.fleets["sensors"]["spec"]
    fleet["devices"][2]["revoked"] = {"reason": "keyCompromise"}
    fleet["devices"].append({"id": "dev-4", "labels": {"site": "paris"}})
    declaration.add_policy(policy("sites", rule(
        "berlin-only", "device.labels.site == 'berlin'", message="only Berlin devices")))
    declaration.write(repo)
    commit_all(repo, "revoke dev-3, add dev-4 (denied)")
    invoke("apply", repo, "--state-dir", state, rc=1)  # a denial exits 1
    found = records(state)
    revoked = of(found, "certificate.revoked")
    assert [(r["device"], r["serial"], r["reason"]) for r in revoked] == [
        ("dev-3", serial, "keyCompromise")]
    denied = of(found, "policy.denied")
    assert [(r["device"], r["outcome"], r["policy"], r["reason"]) for r in denied] == [
        ("dev-4", "denied", "sites", "only Berlin devices")]

    (repo / "profiles.yaml").write_text("not: [valid", encoding="utf-8")
    commit_all(repo, "broken")
    invoke("apply", repo, "--state-dir", state, rc=1)
    refusal = of(records(state), "apply.refused")[-1]
    assert refusal["outcome"] == "refused" and "profiles.yaml" in refusal["reason"]
    assert invoke("audit", "verify", "--state-dir", state).exit_code == 0


def test_a_run_refused_for_a_wrong_passphrase_is_recorded_unsealed_then_sealed_late(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, state = FleetRepo().write(tmp_path / "repo"), tmp_path / "state"
    init_repo(repo)
    invoke("apply", repo, "--state-dir", state)
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", "a-wrong-passphrase")
    invoke("apply", repo, "--state-dir", state, rc=1)
    refusal = of(records(state), "apply.refused")
    assert len(refusal) == 1 and "wrong FLEETPKI_PASSPHRASE" in refusal[0]["reason"]
    unsealed = invoke("audit", "verify", "--state-dir", state, rc=1)
    assert "unsealed tail" in unsealed.stderr
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    invoke("apply", repo, "--state-dir", state)
    verified = invoke("audit", "verify", "--state-dir", state)
    assert "were written without a seal" in verified.stderr
    assert git(repo, "rev-parse", "HEAD").strip() == of(records(state), "apply.started")[-1][
        "actor"]["commit"]


def test_in_kubernetes_the_actor_is_the_operators_pod_and_service_account(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "fleetpki-operator-5d9c7")
    monkeypatch.setenv("FLEETPKI_OPERATOR_NAMESPACE", "fleetpki-system")
    monkeypatch.setenv("SERVICE_ACCOUNT", "fleetpki-operator")
    actor = local_actor()
    assert {k: actor[k] for k in ("pod", "namespace", "serviceAccount")} == {
        "pod": "fleetpki-operator-5d9c7", "namespace": "fleetpki-system",
        "serviceAccount": "fleetpki-operator"}
    assert "user" not in actor and actor["host"]


def test_renewals_and_rekeys_name_the_serial_they_replace(tmp_path: Path) -> None:
    declaration = FleetRepo()
    declaration.profiles["client"] = profile_doc("client", rotationPolicy="Never")
    declaration.profiles["rotating"] = profile_doc("rotating", rotationPolicy="Always")
    declaration.fleets["meters"] = fleet_doc("meters", [{"id": "m-1"}], profile="rotating")
    repo, state = declaration.write(tmp_path / "repo"), jobs.StateDir(tmp_path / "state")
    init_repo(repo)
    jobs.apply(repo, state, NOW, write_status=False)
    before = {(r["object"], r["device"]): r["serial"]
              for r in of(records(state.path), "certificate.issued")}
    jobs.apply(repo, state, NOW + timedelta(days=360), write_status=False)  # all are due
    found = records(state.path)
    renewed = {(r["object"], r["device"]): r for r in of(found, "certificate.renewed")}
    rekeyed = {(r["object"], r["device"]): r for r in of(found, "certificate.rekeyed")}
    assert set(renewed) == {("DeviceFleet/sensors", f"dev-{n}") for n in (1, 2, 3)}
    assert set(rekeyed) == {("DeviceFleet/meters", "m-1")}
    for key, record in (renewed | rekeyed).items():
        assert record["replaces"] == before[key] != record["serial"]
    assert not of(found, "certificate.revoked")  # superseded ones are in `replaces`


def test_a_renewal_in_the_second_of_the_issuance_is_recorded_once(tmp_path: Path) -> None:
    """Both certificates of a device renewed in the second it was first issued were issued at
    the run's clock: the one replaced is not recorded as this run's."""
    declaration = FleetRepo()
    repo, state = declaration.write(tmp_path / "repo"), jobs.StateDir(tmp_path / "state")
    init_repo(repo)
    jobs.apply(repo, state, NOW, write_status=False)
    issued = {r["device"]: r["serial"] for r in of(records(state.path), "certificate.issued")}
    declaration.profiles["client"] = profile_doc(
        "client", subject={"commonName": "{{ device.id }}", "organization": "Example"})
    declaration.write(repo)
    commit_all(repo, "an organization in the subject")
    assert jobs.apply(repo, state, NOW, write_status=False).result.done["rekey"] == 3
    renewed = of(records(state.path), "certificate.rekeyed")  # server keys rotate: new keys
    assert sorted((r["device"], r["replaces"]) for r in renewed) == sorted(issued.items())
    assert not {r["serial"] for r in renewed} & set(issued.values())


def test_a_run_records_its_own_revocations_only(tmp_path: Path) -> None:
    """Not those of a run in the same second: what a run did is read from the inventory by the
    run's clock, so only this run's actions count, and a run with no action did nothing."""
    declaration = FleetRepo()
    repo, state = declaration.write(tmp_path / "repo"), jobs.StateDir(tmp_path / "state")
    init_repo(repo)
    jobs.apply(repo, state, NOW)
    declaration.fleets["sensors"]["spec"]["devices"][2]["revoked"] = {"reason": "keyCompromise"}
    declaration.write(repo)
    commit_all(repo, "revoke dev-3")
    later = NOW + timedelta(hours=1)
    assert jobs.apply(repo, state, later).result.done["revoke"] == 1
    assert not jobs.apply(repo, state, later).result.done  # nothing to do, the same clock
    declaration.fleets["sensors"]["spec"]["devices"][1]["revoked"] = {"reason": "superseded"}
    declaration.write(repo)
    commit_all(repo, "revoke dev-2")
    assert jobs.apply(repo, state, later).result.done["revoke"] == 1  # the same clock again
    revoked = of(records(state.path), "certificate.revoked")
    assert [(r["device"], r["reason"]) for r in revoked] == [("dev-3", "keyCompromise"),
                                                             ("dev-2", "superseded")]
