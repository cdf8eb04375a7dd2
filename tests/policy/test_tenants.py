"""Tenants by location and trusted policies (`--policies DIR`), on the two-tenant example.

`examples/tenants/platform-policies` is the platform team's (trusted) directory with tenants
platform (platform/**), sensors (teams/sensors/**) and meters (teams/meters/**);
`examples/tenants/fleet-repo` is the repository they share.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller import jobs
from controller.plan.intents import device_intent
from controller.plan.model import Observed
from controller.policy.tenancy import path_matches
from controller.servers import est

from .support import NOW, PROJECT, commit_all, git, init_repo, invoke, one_line, show

EXAMPLE = PROJECT / "examples" / "tenants"
SENSORS = "teams/sensors/fleet.yaml"
METERS = "teams/meters/fleet.yaml"


@pytest.fixture
def example(tmp_path: Path) -> tuple[Path, Path]:
    """(fleet repository, trusted policy directory), copied."""
    shutil.copytree(EXAMPLE, tmp_path / "tenants")
    return tmp_path / "tenants" / "fleet-repo", tmp_path / "tenants" / "platform-policies"


def edit(path: Path, kind: str, change: Any) -> None:
    """Apply `change(doc)` to the document of `kind` in a YAML file."""
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    for doc in docs:
        if doc["kind"] == kind:
            change(doc)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")


def validate(repo: Path, policies: Path | None, rc: int) -> dict[str, Any]:
    extra = ("--policies", policies) if policies is not None else ()
    result = invoke("validate", repo, *extra, "-o", "json", rc=rc)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def denials(data: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    return {(f"{f['policy']}/{f['rule']}", f["object"], f.get("device"))
            for f in data["policy"] if f["action"] == "deny"}


def problems(data: dict[str, Any]) -> list[tuple[str, int | None, str | None, str]]:
    return [(p["file"], p["line"], p["object"], p["message"]) for p in data["problems"]]


# --- path globs ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("teams/sensors/**", "teams/sensors/fleet.yaml", True),
    ("teams/sensors/**", "teams/sensors/a/b/devices.csv", True),
    ("teams/sensors/**", "teams/sensors-old/fleet.yaml", False),
    ("teams/sensors", "teams/sensors/fleet.yaml", True),  # a directory covers what is in it
    ("teams/*/fleet.yaml", "teams/meters/fleet.yaml", True),
    ("teams/*/fleet.yaml", "teams/meters/x/fleet.yaml", False),
    ("**/cas.yaml", "platform/prod/cas.yaml", True),
    ("**/cas.yaml", "cas.yaml", True),
    ("fleet-?.yaml", "fleet-a.yaml", True),
    ("fleet-?.yaml", "fleet-ab.yaml", False),
    ("platform/**", "platformX/cas.yaml", False),
])
def test_tenant_paths_are_globs_relative_to_the_fleet_directory(pattern: str, path: str,
                                                                matches: bool) -> None:
    assert path_matches(pattern, path) is matches


# --- tenants by location -------------------------------------------------------------------------
def test_the_example_is_valid_under_its_trusted_policies(example: tuple[Path, Path]) -> None:
    repo, policies = example
    assert validate(repo, policies, rc=0) == {"valid": True, "problems": [], "policy": []}


def test_a_self_labelled_fleet_may_not_use_another_tenants_ca(
        example: tuple[Path, Path]) -> None:
    """Bypass 2 of the issue: the fleet's author writes `team: platform` and points at the
    sensors' CA. Labels do not make a tenant; the fleet's location does."""
    repo, policies = example

    def steal(doc: dict[str, Any]) -> None:
        doc["metadata"]["labels"] = {"team": "platform"}
        doc["spec"]["issuerRef"]["name"] = "sensors-ca"
    edit(repo / METERS, "DeviceFleet", steal)
    assert denials(validate(repo, policies, rc=1)) == {
        ("ca-access/tenant-ca", "DeviceFleet/meters", None)}


def test_a_tenant_may_use_a_ca_of_another_tenant_it_is_allowed(
        example: tuple[Path, Path]) -> None:
    """sensors-ca is declared by tenant platform; tenant sensors lists it in
    allowed.authorities. Without that grant, the same fleet is denied."""
    repo, policies = example
    edit(policies / "tenants.yaml", "Tenant",
         lambda doc: doc["spec"].get("allowed", {}).pop("authorities", None))
    assert denials(validate(repo, policies, rc=1)) == {
        ("ca-access/tenant-ca", "DeviceFleet/sensors", None),
        ("ca-access/tenant-ca", "DeviceFleet/meters", None)}


def test_an_object_outside_every_tenants_paths_is_refused(example: tuple[Path, Path]) -> None:
    repo, policies = example
    (repo / "misc").mkdir()
    shutil.copy(repo / METERS, repo / "misc" / "fleet.yaml")
    edit(repo / "misc" / "fleet.yaml", "DeviceFleet",
         lambda doc: doc["metadata"].update(name="stray"))
    assert problems(validate(repo, policies, rc=1)) == [
        ("misc/fleet.yaml", 1, "DeviceFleet/stray", "misc/fleet.yaml is in no tenant's paths "
         "(meters, platform, sensors); declare it where a tenant owns it")]


def test_overlapping_tenants_are_refused_where_they_meet(example: tuple[Path, Path]) -> None:
    repo, policies = example
    edit(policies / "tenants.yaml", "Tenant", lambda doc: doc["spec"].update(
        paths=["teams/**"]) if doc["metadata"]["name"] == "meters" else None)
    found = problems(validate(repo, policies, rc=1))
    assert [(file, obj) for file, _, obj, _ in found] == [
        ("teams/sensors/profile.yaml", "CertificateProfile/sensor-client"),
        ("teams/sensors/fleet.yaml", "DeviceFleet/sensors")]
    assert "owned by several tenants (meters, sensors)" in found[0][3]


def test_a_device_file_of_another_tenant_is_refused(example: tuple[Path, Path]) -> None:
    repo, policies = example
    (repo / "teams" / "meters" / "devices.csv").write_text("id\nsensor-0003\n",
                                                           encoding="utf-8")
    edit(repo / SENSORS, "DeviceFleet", lambda doc: doc["spec"].update(
        deviceSource={"path": "teams/meters/devices.csv"}))
    assert problems(validate(repo, policies, rc=1)) == [
        (SENSORS, 13, "DeviceFleet/sensors",
         "device file teams/meters/devices.csv is outside the paths of tenant 'sensors'")]


def test_tenant_allowances_bind_its_fleets(example: tuple[Path, Path]) -> None:
    """Key algorithms, maximum validity, device-id patterns and profiles of other tenants."""
    repo, policies = example
    edit(repo / "teams/sensors/profile.yaml", "CertificateProfile",
         lambda doc: doc["spec"].update(keyAlgorithm="ML-DSA-44", duration="9000h"))
    edit(repo / SENSORS, "DeviceFleet",
         lambda doc: doc["spec"]["devices"].append({"id": "sensor-12"}))
    edit(repo / METERS, "DeviceFleet", lambda doc: doc["spec"].update(
        profileRef={"name": "sensor-client"}))
    assert denials(validate(repo, policies, rc=1)) == {
        ("tenants/profile-key-algorithm", "DeviceFleet/sensors", None),
        ("tenants/max-validity", "DeviceFleet/sensors", None),
        ("tenants/device-id", "DeviceFleet/sensors", "sensor-12"),
        ("tenants/profile", "DeviceFleet/meters", None),
        ("tenants/max-validity", "DeviceFleet/meters", None),  # 9000h > meters' 8760h
        # the platform's own validity policy (one year), not the default's 398 days
        ("validity/device-max-validity", "DeviceFleet/sensors", None),
        ("validity/device-max-validity", "DeviceFleet/meters", None),
    }


def test_tenant_key_algorithms_bind_its_cas_and_the_keys_its_devices_bring(
        example: tuple[Path, Path]) -> None:
    """Device-supplied keys must be of the profile's algorithm, so the profile rule covers
    them: a P-384 key is refused both ways."""
    repo, policies = example
    (repo / "teams" / "sensors" / "ca.yaml").write_text(yaml.safe_dump({
        "apiVersion": "fleetpki.io/v1alpha1", "kind": "CertificateAuthority",
        "metadata": {"name": "sensors-own"},
        "spec": {"type": "root", "subject": {"commonName": "own"}, "pathLength": 0,
                 "keyAlgorithm": "ECDSA-P384"}}), encoding="utf-8")
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    edit(repo / SENSORS, "DeviceFleet", lambda doc: doc["spec"].update(
        devices=[{"id": "sensor-0001", "publicKey": p384}]))
    edit(repo / "teams/sensors/profile.yaml", "CertificateProfile",
         lambda doc: doc["spec"].update(keyGeneration="device"))
    assert [p for *_, p in problems(validate(repo, policies, rc=1))] == [
        "device 'sensor-0001': device key is ECDSA-P384; profile requires ECDSA-P256"]
    edit(repo / "teams/sensors/profile.yaml", "CertificateProfile",
         lambda doc: doc["spec"].update(keyAlgorithm="ECDSA-P384"))
    assert denials(validate(repo, policies, rc=1)) == {
        ("tenants/ca-key-algorithm", "CertificateAuthority/sensors-own", None),
        ("tenants/profile-key-algorithm", "DeviceFleet/sensors", None)}


def test_rules_see_the_derived_tenant(example: tuple[Path, Path]) -> None:
    repo, policies = example
    (policies / "names.yaml").write_text(yaml.safe_dump({
        "apiVersion": "fleetpki.io/v1alpha1", "kind": "CertificatePolicy",
        "metadata": {"name": "names"}, "spec": {"rules": [
            {"name": "fleet", "expression": 'fleet.name == "x" && fleet.tenant == "y"',
             "action": "warn", "message": "fleet {fleet}"},
            {"name": "ca", "expression": 'authority.tenant == "sensors"', "action": "warn",
             "message": "ca"},
            {"name": "tenant-only", "expression": 'tenant.name == "sensors"',
             "action": "warn", "message": "tenant"}]}}), encoding="utf-8")
    declaration = jobs.load(repo, jobs.PolicySource(directory=policies))
    assert declaration.tenancy.owners == {
        "CertificateAuthority/acme-root": "platform", "CertificateAuthority/sensors-ca":
        "platform", "CertificateAuthority/meters-ca": "platform",
        "CertificateProfile/sensor-client": "sensors", "CertificateProfile/meter-client":
        "meters", "DeviceFleet/sensors": "sensors", "DeviceFleet/meters": "meters"}
    warned = {(f.rule, f.object) for f in declaration.plan(Observed(), NOW).findings}
    assert warned == {("fleet", "DeviceFleet/sensors"), ("fleet", "DeviceFleet/meters"),
                      ("ca", "CertificateAuthority/acme-root"),
                      ("ca", "CertificateAuthority/sensors-ca"),
                      ("ca", "CertificateAuthority/meters-ca"),
                      ("tenant-only", "DeviceFleet/meters")}


# --- trusted policies ----------------------------------------------------------------------------
def test_tenants_come_only_from_the_trusted_directory(example: tuple[Path, Path]) -> None:
    repo, policies = example
    shutil.copy(policies / "tenants.yaml", repo / "teams" / "meters" / "tenants.yaml")
    found = problems(validate(repo, policies, rc=1))
    assert {(file, obj) for file, _, obj, _ in found} == {
        ("teams/meters/tenants.yaml", "Tenant/platform"),
        ("teams/meters/tenants.yaml", "Tenant/sensors"),
        ("teams/meters/tenants.yaml", "Tenant/meters")}
    assert all("accepted only from the trusted policy source" in m for *_, m in found)
    assert problems(validate(repo, None, rc=1)) == found  # not without --policies either


def test_the_trusted_directory_refuses_a_repositorys_own_weaker_policy(
        example: tuple[Path, Path]) -> None:
    """The repository replaces the default `identity` policy with a harmless rule and adds a
    device its fleet's pattern forbids: alone it passes; under --policies its policy is
    refused and the default one judges again."""
    repo, policies = example
    edit(repo / SENSORS, "DeviceFleet", lambda doc: (
        doc["metadata"].update(annotations={"fleetpki.io/device-id-pattern": "^sensor-0"}),
        doc["spec"]["devices"].append({"id": "sensor-1002"})))
    weak = {"apiVersion": "fleetpki.io/v1alpha1", "kind": "CertificatePolicy",
            "metadata": {"name": "identity"},
            "spec": {"rules": [{"name": "ok", "expression": "true", "message": "never"}]}}
    (repo / "teams" / "sensors" / "identity.yaml").write_text(yaml.safe_dump(weak),
                                                              encoding="utf-8")
    assert validate(repo, None, rc=0)["valid"] is True  # the bypass, without --policies
    found = problems(validate(repo, policies, rc=1))
    assert [(file, obj) for file, _, obj, _ in found] == [
        ("teams/sensors/identity.yaml", "CertificatePolicy/identity")]
    assert "refused: policies come from the trusted directory" in found[0][3]
    (repo / "teams" / "sensors" / "identity.yaml").unlink()
    assert denials(validate(repo, policies, rc=1)) == {
        ("identity/device-id-pattern", "DeviceFleet/sensors", "sensor-1002")}


def test_plan_of_a_pull_request_under_trusted_policies(example: tuple[Path, Path]) -> None:
    repo, policies = example
    init_repo(repo)
    git(repo, "checkout", "-q", "-b", "change")
    edit(repo / METERS, "DeviceFleet", lambda doc: doc["spec"].update(
        issuerRef={"name": "sensors-ca"}))
    commit_all(repo, "meters issue from the sensors CA")
    result = invoke("plan", repo, "--base", "main", "--policies", policies, "-o", "markdown",
                    rc=1)
    assert "ca-access/tenant-ca" in result.stdout
    assert "deny: DeviceFleet/meters: ca-access/tenant-ca" in one_line(result.stderr)


def test_apply_skips_what_the_tenant_may_not_do(example: tuple[Path, Path], tmp_path: Path,
                                                passphrase: str, fixed_now: None) -> None:
    repo, policies = example
    edit(repo / METERS, "DeviceFleet", lambda doc: doc["spec"].update(
        issuerRef={"name": "sensors-ca"}))
    init_repo(repo)
    state = tmp_path / "state"
    invoke("apply", repo, "--policies", policies, "--state-dir", state, rc=1)
    status = json.loads(invoke("status", repo, "--state-dir", state, "-o", "json").stdout)
    assert {f["fleet"]: f["active"] for f in status["fleets"]} == {"sensors": 2}
    meters = show(repo, jobs.STATUS_BRANCH, "status/DeviceFleet/meters.yaml")["status"]
    stalled = next(c for c in meters["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"
    assert "ca-access/tenant-ca" in stalled["message"]


def test_apply_with_an_object_outside_the_tenants_changes_nothing(
        example: tuple[Path, Path], tmp_path: Path, passphrase: str, fixed_now: None) -> None:
    repo, policies = example
    shutil.copy(repo / METERS, repo / "stray.yaml")
    edit(repo / "stray.yaml", "DeviceFleet", lambda doc: doc["metadata"].update(name="stray"))
    init_repo(repo)
    state = tmp_path / "state"
    result = invoke("apply", repo, "--policies", policies, "--state-dir", state, rc=1)
    assert "stray.yaml is in no tenant's paths" in one_line(result.stderr)
    status = json.loads(invoke("status", repo, "--state-dir", state, "-o", "json").stdout)
    assert status["authorities"] == []
    assert all(f["active"] == 0 for f in status["fleets"])


# --- CODEOWNERS ----------------------------------------------------------------------------------
def test_codeowners_from_the_tenants(example: tuple[Path, Path]) -> None:
    repo, policies = example
    init_repo(repo)
    assert "up to date" in invoke("codeowners", repo, "--policies", policies, "--default-owner",
                                  "@acme/pki-platform", "--check").stdout  # the example's
    (repo / "CODEOWNERS").unlink()
    invoke("codeowners", repo, "--policies", policies, "--default-owner", "@acme/pki-platform")
    lines = [line for line in (repo / "CODEOWNERS").read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")]
    assert lines == ["* @acme/pki-platform", "/teams/meters/** @acme/meters",
                     "/platform/** @acme/pki-platform", "/teams/sensors/** @acme/sensors",
                     "/.github/CODEOWNERS @acme/pki-platform", "/CODEOWNERS @acme/pki-platform",
                     "/docs/CODEOWNERS @acme/pki-platform"]
    assert "up to date" in invoke("codeowners", repo, "--policies", policies, "--default-owner",
                                  "@acme/pki-platform", "--check").stdout
    edit(policies / "tenants.yaml", "Tenant", lambda doc: doc["spec"].update(
        owners=["@acme/meters", "ops@acme.example"]) if doc["metadata"]["name"] == "meters"
        else None)
    stale = invoke("codeowners", repo, "--policies", policies, "--default-owner",
                   "@acme/pki-platform", "--check", rc=1)
    assert "+/teams/meters/** @acme/meters ops@acme.example" in stale.stderr
    assert "is stale" in one_line(stale.stderr)


def test_codeowners_of_a_fleet_directory_inside_a_repository(example: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    """Tenant paths are relative to the fleet directory; CODEOWNERS to the repository top,
    and an existing .github/CODEOWNERS is the one rewritten."""
    repo, policies = example
    top = tmp_path / "monorepo"
    shutil.copytree(repo, top / "pki" / "fleet")
    (top / ".github").mkdir()
    (top / ".github" / "CODEOWNERS").write_text("old\n", encoding="utf-8")
    init_repo(top)
    invoke("codeowners", top / "pki" / "fleet", "--policies", policies)
    text = (top / ".github" / "CODEOWNERS").read_text(encoding="utf-8")
    assert "/pki/fleet/teams/sensors/** @acme/sensors" in text.splitlines()
    assert not (top / "CODEOWNERS").exists()


def test_est_enrollment_is_judged_with_the_tenancy(example: tuple[Path, Path]) -> None:
    """`serve --policies DIR` gates an EST enrollment with the same tenants as apply."""
    repo, policies = example
    edit(repo / SENSORS, "DeviceFleet",
         lambda doc: doc["spec"]["devices"].append({"id": "sensor-12"}))
    declaration = jobs.load(repo, jobs.PolicySource(directory=policies))
    decl = declaration.desired.fleets["sensors"]
    profile = declaration.desired.profile("sensor-client")

    def enroll(device_id: str) -> None:
        device = next(d for d in decl.device_set.parsed[0] if d.id == device_id)
        est.check_policy(declaration.rules, declaration.desired, "sensors", device_id,
                         device_intent(decl.fleet, profile, device), NOW, declaration.tenancy)

    enroll("sensor-0001")
    with pytest.raises(est.ESTError, match="tenants/device-id") as refused:
        enroll("sensor-12")
    assert refused.value.status == 403


def test_the_trusted_directory_holds_policies_and_tenants_once(
        example: tuple[Path, Path]) -> None:
    repo, policies = example
    shutil.copy(policies / "tenants.yaml", policies / "again.yaml")
    shutil.copy(repo / "platform" / "authorities.yaml", policies / "cas.yaml")
    found = problems(validate(repo, policies, rc=1))
    duplicates = [(file, obj) for file, _, obj, message in found
                  if message.startswith("duplicate name; first declared at")]
    assert sorted(duplicates) == [(str(policies / "tenants.yaml"), f"Tenant/{name}")
                                  for name in ("meters", "platform", "sensors")]
    assert sum("does not belong in the trusted policy directory" in m for *_, m in found) == 3
