"""The example fleet repository end to end, as a user drives it: validate, plan, apply, status."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .support import Cli, branch_sha, copy_example, git, one_line, status_files

STATUS_BRANCH = "fleetpki/status"
ORDER = {"create-ca": 0, "renew-ca": 0, "revoke": 1, "issue": 2, "renew": 2, "rekey": 2,
         "sign-release": 3, "publish-crl": 4}


def index_digest(repo: Path) -> str:
    return hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest()


def test_example_validate_plan_apply_status(cli_process: Cli, tmp_path: Path) -> None:
    cli = cli_process  # the real command, in a subprocess
    repo = copy_example(tmp_path / "repo")
    state = tmp_path / "state"

    validated = cli("validate", repo)
    assert "valid" in validated.stdout

    # Plan against an empty state: CAs first, then devices, then CRLs.
    plan = json.loads(cli("plan", repo, "--state-dir", state, "-o", "json").stdout)
    summary = plan["summary"]
    assert (summary["create-ca"], summary["issue"], summary["publish-crl"]) == (2, 1002, 2)
    assert summary["sign-release"] == 1  # examples/fleet-repo/releases
    assert summary["total"] == 1007 and summary["problems"] == 0
    actions = plan["actions"]
    ranks = [ORDER[a["action"]] for a in actions]
    assert ranks == sorted(ranks), "CA actions, then device actions, then CRLs"
    assert [a["name"] for a in actions if a["action"] == "create-ca"] == \
        ["acme-root", "devices-ca"], "the root CA is created before its intermediate"
    issued = {(a["name"], a["device"]) for a in actions if a["action"] == "issue"}
    assert ("gateways", "gw-berlin-01") in issued and ("sensors", "sensor-1000") in issued
    assert ("gateways", "gw-hamburg-01") not in issued, "a device declared revoked gets nothing"
    assert not state.exists() or not (state / "inventory.db").exists(), "plan is read-only"

    cli("plan", repo, "--state-dir", state, "--detailed-exitcode", rc=2)

    # Dirty the checkout (a tracked file edited, another change staged): apply (told to take
    # the working tree) must not touch it.
    (repo / "authorities.yaml").write_text((repo / "authorities.yaml").read_text() + "# local\n")
    (repo / "NOTES.txt").write_text("staged, not committed\n")
    git(repo, "add", "NOTES.txt")
    head = git(repo, "rev-parse", "HEAD").strip()
    porcelain = git(repo, "status", "--porcelain")
    index = index_digest(repo)
    staged = git(repo, "ls-files", "--stage")
    assert porcelain.strip(), "the working tree is dirty before apply"

    first = cli("apply", repo, "--state-dir", state, "--allow-uncommitted")
    assert "2 create-ca" in first.stdout and "1002 issue" in first.stdout
    assert "2 publish-crl" in first.stdout
    status_tip = branch_sha(repo, STATUS_BRANCH)
    assert status_tip is not None and status_tip[:12] in first.stdout

    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert index_digest(repo) == index
    assert git(repo, "ls-files", "--stage") == staged
    assert git(repo, "status", "--porcelain") == porcelain
    assert "# local" in (repo / "authorities.yaml").read_text()

    second = cli("apply", repo, "--state-dir", state, "--allow-uncommitted")
    assert "no changes" in second.stdout
    assert branch_sha(repo, STATUS_BRANCH) == status_tip, "a no-op apply commits nothing"
    cli("plan", repo, "--state-dir", state, "--detailed-exitcode", rc=0)
    assert git(repo, "rev-parse", "HEAD").strip() == head

    # The status branch: one file per object, public data only, observedCommit = HEAD, marked
    # dirty since the working tree was applied.
    files = status_files(repo)
    assert set(files) == {
        "status/CertificateAuthority/acme-root.yaml", "status/CertificateAuthority/devices-ca.yaml",
        "status/DeviceFleet/gateways.yaml", "status/DeviceFleet/sensors.yaml",
        "status/CertificateProfile/mqtt-client.yaml", "status/CertificateProfile/gateway-csr.yaml",
        "status/SigningProfile/firmware.yaml", "status/SigningProfile/acme-tsa.yaml",
        "status/Release/sensor-fw-1.4.2.yaml"}
    for path, document in files.items():
        conditions = {c["type"]: c["status"] for c in document["status"]["conditions"]}
        assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}, path
        assert document["status"]["observedCommit"] == f"{head}-dirty"
    sensors = files["status/DeviceFleet/sensors.yaml"]["status"]["devices"]
    assert sensors == {"declared": 1000, "active": 1000, "revoked": 0, "due": 0, "expired": 0,
                       "failed": 0}
    gateways = files["status/DeviceFleet/gateways.yaml"]["status"]["devices"]
    assert (gateways["declared"], gateways["active"]) == (2, 2)
    devices_ca = files["status/CertificateAuthority/devices-ca.yaml"]["status"]
    assert devices_ca["crl"]["number"] == 1 and devices_ca["crl"]["entries"] == 0
    assert git(repo, "log", "--format=%an <%ae>", STATUS_BRANCH).split("\n")[0] == \
        "fleetpki <fleetpki@localhost>"

    # `status` from the inventory.
    overview = json.loads(cli("status", repo, "--state-dir", state, "-o", "json").stdout)
    cas = {ca["ca"]: ca for ca in overview["authorities"]}
    assert set(cas) == {"acme-root", "devices-ca"}
    assert cas["devices-ca"]["serial"] == devices_ca["certificate"]["serial"]
    assert all(ca["crlNumber"] == 1 for ca in cas.values())
    fleets = {f["fleet"]: f for f in overview["fleets"]}
    assert fleets["sensors"] == {"fleet": "sensors", "active": 1000, "revoked": 0, "due": 0,
                                 "expired": 0}
    assert fleets["gateways"]["active"] == 2

    rows = json.loads(cli("status", repo, "--state-dir", state, "--fleet", "sensors",
                          "--devices", "-o", "json").stdout)
    assert len(rows) == 1000
    assert {r["state"] for r in rows} == {"active"}
    assert len({r["serial"] for r in rows}) == 1000, "every certificate has its own serial"
    assert rows[0]["device"] == "sensor-0001" and rows[-1]["device"] == "sensor-1000"
    assert all(r["renewAt"] < r["notAfter"] for r in rows)
    text = cli("status", repo, "--state-dir", state).stdout
    assert "devices-ca" in text and "sensors" in text


def test_status_without_inventory_is_a_clear_error(cli_process: Cli, tmp_path: Path) -> None:
    cli = cli_process  # the real command, in a subprocess
    repo = copy_example(tmp_path / "repo")
    failed = cli("status", repo, "--state-dir", tmp_path / "nothing", rc=1)
    assert "run `fleetpki apply` first" in one_line(failed.stderr)
