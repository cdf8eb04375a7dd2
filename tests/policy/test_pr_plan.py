"""`fleetpki plan --base REF`: what a pull request changes, as if the base were applied.

Each test copies `examples/fleet-repo` into a fresh git repository (base committed on main),
changes it on a branch and reads `plan --base main -o json`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import jobs

from .support import EXAMPLE, NOW, commit_all, git, init_repo, invoke, one_line

CSV = "fleets/sensors.csv"
HEADER = "id,labels.model,labels.site,revoked"


@pytest.fixture
def fleet(tmp_path: Path, fixed_now: None) -> Path:
    """The example on main; the work tree is on branch `change`."""
    root = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, root)
    init_repo(root)
    git(root, "checkout", "-q", "-b", "change")
    return root


def plan_json(root: Path, *args: str, rc: int = 0) -> dict[str, Any]:
    result = invoke("plan", root, "--base", "main", "-o", "json", *args, rc=rc)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def steps(data: dict[str, Any]) -> set[tuple[str, str, str | None, str | None]]:
    """(action, name, device, revocation reason) of every planned action."""
    return {(a["action"], a["name"], a.get("device"), a.get("revocationReason"))
            for a in data["actions"]}


def edit_csv(root: Path, change: Callable[[list[list[str]]], list[list[str]]]) -> None:
    path = root / CSV
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER
    rows = change([line.split(",") for line in lines[1:]])
    path.write_text("\n".join([HEADER, *(",".join(row) for row in rows)]) + "\n",
                    encoding="utf-8")


def revoke_rows(ids: set[str], reason: str) -> Callable[[list[list[str]]], list[list[str]]]:
    def change(rows: list[list[str]]) -> list[list[str]]:
        return [[*row[:3], reason] if row[0] in ids else row for row in rows]

    return change


def edit_yaml(root: Path, file: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = root / file
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    found = [d for d in documents if d["metadata"]["name"] == name]
    assert len(found) == 1
    change(found[0])
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")


def sensor(number: int) -> str:
    return f"sensor-{number:04d}"


def test_an_unchanged_declaration_plans_nothing_however_late_it_is(
        fleet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As if applied, the base has nothing due: no routine renewals, no CRL refreshes."""
    commit_all(fleet, "no change")
    for moment in (NOW, NOW + timedelta(days=3 * 365)):
        monkeypatch.setattr(jobs, "now_utc", lambda moment=moment: moment)
        data = plan_json(fleet)
        assert data["actions"] == []
        assert data["summary"]["total"] == 0
        assert (data["dangers"], data["policy"], data["problems"], data["warnings"]) == (
            [], [], [], [])
        text = invoke("plan", fleet, "--base", "main").stdout
        assert text.strip() == "Plan: no changes."


def test_added_devices_are_exactly_the_issues(fleet: Path) -> None:
    edit_csv(fleet, lambda rows: [*rows, *([sensor(n), "TS-300", "berlin", ""]
                                           for n in (1001, 1002, 1003))])
    commit_all(fleet, "three new sensors")
    data = plan_json(fleet)
    assert steps(data) == {("issue", "sensors", sensor(n), None) for n in (1001, 1002, 1003)}
    assert data["dangers"] == [] and data["policy"] == []


def test_rows_the_base_declares_alike_are_not_read_again(
        fleet: Path, parsed: list[str], validated: list[str], rendered: list[str]) -> None:
    """The head reads only the records of the file that differ from the base's (the base's
    file is counted for the policies, its rows not validated): the others are the base's rows
    of the same devices, judged with the base (as an applied fleet's rows are, `plan`)."""
    edit_csv(fleet, lambda rows: [[*row[:2], "berlin", ""] if row[0] == sensor(42) else row
                                  for row in rows] + [[sensor(1001), "TS-300", "berlin", ""]])
    commit_all(fleet, "sensor 42 moves to berlin, and a new one")
    data = plan_json(fleet)
    assert {step for step in steps(data) if step[2]} == {
        ("rekey", "sensors", sensor(42), None), ("issue", "sensors", sensor(1001), None)}
    assert sorted(rendered) == [sensor(42), sensor(1001)]
    assert parsed == []  # the base's file, counted as it is read
    assert sorted(validated) == [sensor(42), sensor(42), sensor(1001)]  # head's, base's 42


def test_a_row_failing_in_the_base_is_reported_when_the_change_touches_it(fleet: Path) -> None:
    """A base row that could never be issued gives the baseline no certificate. The plan reads
    only the rows the change touches (those that differ from the base's file), as an applied
    fleet's: a failing row left alone is `validate`'s to report (CI runs it too), and one the
    change touches is rendered, with its problem."""
    git(fleet, "checkout", "-q", "main")
    edit_csv(fleet, lambda rows: [*rows, [sensor(1001), "", "berlin", ""]])  # no model label
    commit_all(fleet, "a sensor without a model")
    git(fleet, "checkout", "-q", "-B", "change")
    edit_csv(fleet, lambda rows: [*rows, [sensor(1002), "TS-300", "berlin", ""]])
    commit_all(fleet, "another sensor")
    data = plan_json(fleet)
    assert data["problems"] == [] and steps(data) == {("issue", "sensors", sensor(1002), None)}
    assert "sensor-1001" in invoke("validate", fleet, rc=1).stderr
    edit_csv(fleet, lambda rows: [[*row[:2], "hamburg", ""] if row[0] == sensor(1001) else row
                                  for row in rows])
    commit_all(fleet, "the sensor without a model moves")
    data = plan_json(fleet, rc=1)
    assert [(p["device"], p["field"]) for p in data["problems"]] == [(sensor(1001), "labels")]


def test_a_fleet_the_change_leaves_alone_is_not_parsed(
        fleet: Path, parsed: list[str], validated: list[str], rendered: list[str]) -> None:
    """Neither the base's rows nor the head's are parsed for a fleet whose declaration, file
    and profile are the same on both sides; the change itself is planned as ever."""
    edit_yaml(fleet, "authorities.yaml", "devices-ca",
              lambda ca: ca["spec"].update(keyAlgorithm="ECDSA-P384"))
    commit_all(fleet, "a P-384 issuing CA")
    data = plan_json(fleet)
    assert ("renew-ca", "devices-ca", None, None) in steps(data)
    assert not {step for step in steps(data) if step[2]}  # no device certificate changes
    assert parsed == []  # the head's rows counted for the policies as read, none kept
    assert validated == [] and rendered == []


def test_deleted_rows_are_revoked_for_cessation_of_operation(fleet: Path) -> None:
    gone = {sensor(n) for n in (7, 500, 1000)}
    edit_csv(fleet, lambda rows: [row for row in rows if row[0] not in gone])
    commit_all(fleet, "three sensors decommissioned")
    data = plan_json(fleet)
    assert steps(data) == {("revoke", "sensors", d, "cessationOfOperation") for d in gone} | {
        ("publish-crl", "devices-ca", None, None)}
    assert {a["reason"] for a in data["actions"] if a["action"] == "revoke"} == {
        "device removed from fleet"}


@pytest.mark.parametrize("reason", ["keyCompromise", "superseded", "affiliationChanged"])
def test_rows_marked_revoked_show_their_reason(fleet: Path, reason: str) -> None:
    edit_csv(fleet, revoke_rows({sensor(5)}, reason))
    commit_all(fleet, "revoke one")
    data = plan_json(fleet)
    assert steps(data) == {("revoke", "sensors", sensor(5), reason),
                           ("publish-crl", "devices-ca", None, None)}
    assert data["dangers"] == []


def test_a_profile_subject_change_reissues_the_whole_fleet_and_is_a_danger(fleet: Path) -> None:
    edit_yaml(fleet, "profiles.yaml", "mqtt-client",
              lambda d: d["spec"]["subject"].update(organization="ACME Inc"))
    edit_yaml(fleet, "profiles.yaml", "gateway-csr",
              lambda d: d["spec"]["subject"].update(organizationalUnit="edge"))
    commit_all(fleet, "rename the organisation")
    data = plan_json(fleet)
    rekeyed = {(a["action"], a["name"], a["device"]) for a in data["actions"]
               if a["kind"] == "DeviceFleet"}
    assert rekeyed == {("rekey", "sensors", sensor(n)) for n in range(1, 1001)} | {
        ("renew", "gateways", "gw-berlin-01"), ("renew", "gateways", "gw-berlin-02")}
    assert {a["reason"] for a in data["actions"] if a["kind"] == "DeviceFleet"} == {
        "declaration changed (profile, labels or issuer)"}
    assert data["dangers"] == [
        "re-issues 2 of 2 certificates (100%) of DeviceFleet/gateways at once",
        "re-issues 1000 of 1000 certificates (100%) of DeviceFleet/sensors at once"]


def test_a_ca_key_algorithm_change_renews_the_ca_and_is_a_danger(fleet: Path) -> None:
    edit_yaml(fleet, "authorities.yaml", "devices-ca",
              lambda d: d["spec"].update(keyAlgorithm="ECDSA-P384"))
    commit_all(fleet, "P-384 issuing CA")
    data = plan_json(fleet)
    assert steps(data) == {("renew-ca", "devices-ca", None, None),
                           ("publish-crl", "devices-ca", None, None)}
    assert data["dangers"] == [
        "replaces the key of CertificateAuthority/devices-ca (CA spec changed (new key and "
        "certificate)); certificates below it move at their renewal"]


def test_revoking_more_than_the_danger_fraction_is_a_danger(fleet: Path) -> None:
    edit_csv(fleet, revoke_rows({sensor(n) for n in range(1, 21)}, "keyCompromise"))
    commit_all(fleet, "a batch was stolen")
    assert plan_json(fleet)["dangers"] == []  # 2% of the fleet, default fraction 10%
    data = plan_json(fleet, "--danger-fraction", "0.01")
    assert data["dangers"] == [
        "revokes 20 of 1000 active certificates (2%) of DeviceFleet/sensors"]
    assert data["summary"]["revoke"] == 20


def test_max_revocations_below_the_count_fails_the_plan(fleet: Path) -> None:
    gone = {sensor(n) for n in range(1, 6)}
    edit_csv(fleet, lambda rows: [row for row in rows if row[0] not in gone])
    commit_all(fleet, "five fewer")
    data = plan_json(fleet, "--max-revocations", "4", rc=1)
    assert data["summary"]["revoke"] == 5
    assert data["warnings"] == [
        "DeviceFleet/sensors: 5 revocations exceed the limit of 4 (--max-revocations / "
        "--allow-mass-revocation)"]
    assert plan_json(fleet, "--max-revocations", "5")["warnings"] == []
    assert plan_json(fleet)["summary"]["revoke"] == 5  # no flag: the default limit is 100


def make_a_mixed_change(root: Path) -> None:
    edit_csv(root, lambda rows: [*revoke_rows({sensor(3)}, "keyCompromise")(rows[:-2]),
                                 [sensor(2001), "TS-100", "berlin", ""]])
    edit_yaml(root, "authorities.yaml", "devices-ca",
              lambda d: d["spec"]["subject"].update(commonName="ACME Devices Issuing CA 2"))
    edit_yaml(root, "profiles.yaml", "gateway-csr",
              lambda d: d["spec"].update(renewBefore="12h"))


def test_base_dir_gives_the_same_plan_as_base(fleet: Path, tmp_path: Path) -> None:
    make_a_mixed_change(fleet)
    commit_all(fleet, "mixed change")
    by_ref = invoke("plan", fleet, "--base", "main", "-o", "json").stdout
    by_dir = invoke("plan", fleet, "--base-dir", EXAMPLE, "-o", "json").stdout
    assert by_ref == by_dir
    data = json.loads(by_ref)
    assert steps(data) == {
        ("renew-ca", "devices-ca", None, None), ("revoke", "sensors", sensor(3), "keyCompromise"),
        ("revoke", "sensors", sensor(999), "cessationOfOperation"),
        ("revoke", "sensors", sensor(1000), "cessationOfOperation"),
        ("issue", "sensors", sensor(2001), None), ("publish-crl", "devices-ca", None, None)}
    assert [(f["action"], f["rule"], f["object"]) for f in data["policy"]] == [
        ("warn", "renewal-window", "DeviceFleet/gateways")]
    markdown = invoke("plan", fleet, "--base", "main", "-o", "markdown").stdout
    assert markdown == invoke("plan", fleet, "--base-dir", EXAMPLE, "-o", "markdown").stdout


def test_base_and_base_dir_are_exclusive(fleet: Path) -> None:
    result = invoke("plan", fleet, "--base", "main", "--base-dir", EXAMPLE, rc=2)
    assert "give --base or --base-dir, not both" in one_line(result.stderr)


def test_an_unknown_base_revision_is_a_clear_error(fleet: Path) -> None:
    result = invoke("plan", fleet, "--base", "no-such-branch", rc=1)
    assert result.stdout == ""
    assert f"error: {fleet}: --base: unknown git revision 'no-such-branch'" in one_line(
        result.stderr)
    assert "Traceback" not in result.stderr


def test_an_unknown_full_commit_id_is_a_clear_error(fleet: Path) -> None:
    missing = "0123456789abcdef0123456789abcdef01234567"
    result = invoke("plan", fleet, "--base", missing, rc=1)
    assert f"--base: unknown git revision '{missing}'" in one_line(result.stderr)


def test_the_null_commit_id_is_a_clear_error(fleet: Path) -> None:
    null = "0" * 40
    result = invoke("plan", fleet, "--base", null, rc=None)
    assert result.exit_code == 1
    assert f"--base: unknown git revision '{null}'" in one_line(result.stderr)


def test_base_outside_a_git_repository_is_a_clear_error(tmp_path: Path,
                                                        fixed_now: None) -> None:
    root = shutil.copytree(EXAMPLE, tmp_path / "not-git")
    result = invoke("plan", root, "--base", "main", rc=1)
    assert "--base needs DIR inside a git repository (or use --base-dir)" in one_line(
        result.stderr)


def snapshot(root: Path) -> tuple[str, str, str, str, str, str]:
    index = hashlib.sha256((root / ".git" / "index").read_bytes()).hexdigest()
    return (index, git(root, "rev-parse", "HEAD"), git(root, "symbolic-ref", "HEAD"),
            git(root, "stash", "list"), git(root, "worktree", "list", "--porcelain"),
            git(root, "for-each-ref"))


def test_base_leaves_work_tree_index_and_head_alone(fleet: Path) -> None:
    """The base comes from `git archive`; the head is the work tree, uncommitted edits too."""
    edit_yaml(fleet, "authorities.yaml", "devices-ca",
              lambda d: d["spec"].update(keyAlgorithm="ECDSA-P384"))
    git(fleet, "add", "authorities.yaml")  # staged
    edit_csv(fleet, lambda rows: [*rows, [sensor(1001), "TS-100", "berlin", ""]])  # unstaged
    (fleet / "notes.txt").write_text("untracked\n", encoding="utf-8")
    status = git(fleet, "status", "--porcelain")
    files = {p: p.read_bytes() for p in fleet.rglob("*") if p.is_file() and ".git" not in p.parts}
    before = snapshot(fleet)

    data = plan_json(fleet)

    assert snapshot(fleet) == before
    assert {p: p.read_bytes() for p in fleet.rglob("*")
            if p.is_file() and ".git" not in p.parts} == files
    assert git(fleet, "status", "--porcelain") == status
    assert steps(data) == {("renew-ca", "devices-ca", None, None),
                           ("issue", "sensors", sensor(1001), None),
                           ("publish-crl", "devices-ca", None, None)}


def test_base_works_for_a_fleet_directory_inside_a_larger_repository(tmp_path: Path,
                                                                     fixed_now: None) -> None:
    repo = tmp_path / "monorepo"
    root = shutil.copytree(EXAMPLE, repo / "infra" / "pki")
    (repo / "README.md").write_text("other things\n", encoding="utf-8")
    init_repo(repo)
    edit_csv(root, lambda rows: rows[1:])
    data = plan_json(root)
    assert steps(data) == {("revoke", "sensors", sensor(1), "cessationOfOperation"),
                           ("publish-crl", "devices-ca", None, None)}


def test_markdown_has_dangers_changes_and_policy_tables(fleet: Path) -> None:
    edit_yaml(fleet, "authorities.yaml", "devices-ca",
              lambda d: d["spec"].update(keyAlgorithm="ECDSA-P384"))
    edit_csv(fleet, lambda rows: [*revoke_rows({sensor(5)}, "keyCompromise")(rows),
                                  [sensor(1001), "TS-100", "berlin", ""],
                                  ["sensor-x", "TS-100", "berlin", ""]])
    edit_yaml(fleet, "profiles.yaml", "gateway-csr",
              lambda d: d["spec"].update(renewBefore="12h"))
    commit_all(fleet, "a change with something of everything")
    markdown = invoke("plan", fleet, "--base", "main", "-o", "markdown", rc=1).stdout
    assert markdown.startswith("### fleetpki plan\n\n**Plan: 1 renew-ca, 1 revoke, 1 issue, "
                               "1 publish-crl. 1 denied by policy.** ❌ policy denies this "
                               "change\n")
    assert ("#### Dangers\n\n- 🚨 replaces the key of CertificateAuthority/devices-ca"
            in markdown)
    assert ("#### Changes\n\n| object | action | count | first devices |\n|---|---|---:|---|\n"
            in markdown)
    assert "| CertificateAuthority/devices-ca | renew-ca | 1 |  |" in markdown
    assert "| DeviceFleet/sensors | revoke (keyCompromise) | 1 | `sensor-0005` |" in markdown
    assert "| DeviceFleet/sensors | issue | 1 | `sensor-1001` |" in markdown
    assert ("#### Policy\n\n| result | rule | object | count | message | first devices |\n"
            in markdown)
    assert ("| ❌ deny | `identity/device-id-pattern` | DeviceFleet/sensors | 1 | device id does "
            "not match the fleet's fleetpki.io/device-id-pattern | `sensor-x` |") in markdown
    assert ("| ⚠️ warn | `validity/renewal-window` | DeviceFleet/gateways | 1 | a renewBefore "
            "under one day leaves devices little time to fetch a renewal |  |") in markdown
    sections = [line for line in markdown.splitlines() if line.startswith("#### ")]
    assert sections == ["#### Dangers", "#### Changes", "#### Policy"]


def test_a_change_cannot_weaken_the_policies_that_judge_it(fleet: Path) -> None:
    """Issue 9's bypass: the pull request replaces the `identity` policy with a harmless rule
    and adds a device that breaks the fleet's id pattern. The base's policies still deny it,
    the plan fails, and the policy change is a danger with its rule diff."""
    (fleet / "policies").mkdir()
    (fleet / "policies" / "identity.yaml").write_text(yaml.safe_dump({
        "apiVersion": "fleetpki.io/v1alpha1", "kind": "CertificatePolicy",
        "metadata": {"name": "identity"},
        "spec": {"rules": [{"name": "anything", "expression": "true",
                            "message": "always holds"}]}}), encoding="utf-8")
    with open(fleet / CSV, "a", encoding="utf-8") as rows:
        rows.write("sensor-10002,TS-100,berlin,\n")
    commit_all(fleet, "weaken identity, add a rogue device")
    data = plan_json(fleet, rc=1)
    judged = [f for f in data["policy"] if f.get("device") == "sensor-10002"]
    assert [(f["policy"], f["action"]) for f in judged] == [("identity (base)", "deny")]
    assert [d["device"] for d in data["denied"]] == ["sensor-10002"]
    assert ("issue", "sensors", "sensor-10002", None) not in steps(data)
    (flag,) = [d for d in data["dangers"] if "CertificatePolicy/identity" in d]
    assert "rule device-id-pattern removed (was deny `" in flag
    assert "rule anything added: deny `true`" in flag
    markdown = invoke("plan", fleet, "--base", "main", "-o", "markdown", rc=1).stdout
    assert "identity (base)" in markdown and "changes CertificatePolicy/identity" in markdown


def test_an_unchanged_policy_set_is_no_danger_and_judges_once(fleet: Path) -> None:
    with open(fleet / CSV, "a", encoding="utf-8") as rows:
        rows.write("sensor-10002,TS-100,berlin,\n")
    commit_all(fleet, "a rogue device")
    data = plan_json(fleet, rc=1)
    assert [f["policy"] for f in data["policy"] if f.get("device") == "sensor-10002"] == \
        ["identity"]  # the same rule in base and head: reported once
    assert not [d for d in data["dangers"] if "CertificatePolicy" in d]
