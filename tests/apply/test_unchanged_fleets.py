"""A fleet declared exactly as it was last applied costs a hash, not a parse of its rows.

The planner needs nothing of such a fleet's devices unless a renewal falls due; the policies
and the status need only its counts, kept with the content hash in the inventory. A changed file
is parsed on first use; a due renewal reads its own rows alone (`controller/api/csvindex.py`).
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller import jobs
from controller.api.problems import InvalidDeclaration
from controller.cli import app
from controller.clock import epoch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet-repo"


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", "test-passphrase")


def test_unchanged_fleet_is_not_parsed_until_its_devices_are_needed(
        parsed: list[str], tmp_path: Path) -> None:
    repo, state = tmp_path / "repo", jobs.StateDir(tmp_path / "state")
    shutil.copytree(EXAMPLE, repo)
    csv = repo / "fleets" / "sensors.csv"
    now = jobs.now_utc()
    jobs.apply(repo, state, now, write_status=False)
    assert parsed == ["csv", "csv"]  # checked, then walked by the planner (no row kept)
    with state.reader() as inventory:
        (digest, count, declared) = inventory.applied_fleets()["sensors"]
    rows = csv.read_text().splitlines()[1:]
    assert count == len(rows) and declared == sum(1 for r in rows if r.endswith(","))

    parsed.clear()
    again = jobs.apply(repo, state, now + timedelta(minutes=5), write_status=False)
    assert again.result.done == {} and again.plan.actions == ()
    assert jobs.plan(repo, state, now).actions == ()
    assert parsed == []  # neither the no-op apply nor the plan read a row

    # a new row: the file's hash changes, the fleet is parsed and planned as before
    csv.write_text(csv.read_text() + "sensor-9999,TS-100,hamburg,\n")
    changed = jobs.apply(repo, state, now + timedelta(minutes=10), write_status=False)
    assert parsed == ["csv", "csv"] and changed.result.done.get("issue") == 1
    with state.reader() as inventory:
        assert inventory.applied_fleets()["sensors"][0] != digest
        assert inventory.active_device("sensors", "sensor-9999") is not None

    # renewals due in an unchanged fleet: the due rows are read alone (the file's records are
    # indexed, none parsed whole), and every due one renewed
    parsed.clear()
    later = now + timedelta(days=350)
    with state.reader() as inventory:
        due = inventory.due_devices("sensors", epoch(later))
    assert len(due) > 0
    renewed = jobs.apply(repo, state, later, write_status=False)
    assert parsed == []
    assert {a.device for a in renewed.plan.actions if a.name == "sensors"} == set(due)
    with state.reader() as inventory:
        assert inventory.due_devices("sensors", epoch(later)) == {}

    # the renewed certificates carry their rows' sources, though those rows were digested
    # only when they fell due: a change elsewhere in the file renders the new row alone
    csv.write_text(csv.read_text() + "sensor-9998,TS-100,hamburg,\n")
    after = jobs.plan(repo, state, later)
    assert [(a.action, a.device) for a in after.actions if a.name == "sensors"] == [
        ("issue", "sensor-9998")]
    assert dict(after.source_notes) == {}


def test_an_inventory_from_before_the_summary_columns_parses_once_then_skips(
        parsed: list[str], tmp_path: Path) -> None:
    repo, state = tmp_path / "repo", jobs.StateDir(tmp_path / "state")
    shutil.copytree(EXAMPLE, repo)
    now = jobs.now_utc()
    jobs.apply(repo, state, now, write_status=False)
    with state.inventory() as inventory, inventory.transaction():
        inventory.db.execute("UPDATE fleets SET devices = NULL, declared = NULL")
    parsed.clear()
    assert jobs.apply(repo, state, now, write_status=False).plan.actions == ()
    assert parsed == ["csv"]  # no summary: parsed, nothing to do, summary recorded
    parsed.clear()
    jobs.apply(repo, state, now, write_status=False)
    assert parsed == []


def test_a_changed_fleet_validates_only_its_changed_rows(
        parsed: list[str], validated: list[str], tmp_path: Path) -> None:
    """Rows their active certificates were issued from are not validated again; a changed row
    that is invalid is refused at its line, and nothing is applied."""
    repo, state = tmp_path / "repo", jobs.StateDir(tmp_path / "state")
    shutil.copytree(EXAMPLE, repo)
    csv = repo / "fleets" / "sensors.csv"
    now = jobs.now_utc()
    jobs.apply(repo, state, now, write_status=False)
    assert len(set(validated)) == 1000  # checked, rendered, rendered again where signed
    lines = csv.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(",munich,", ",bremen,")
    lines[3] = lines[3].rstrip("\n") + "keyCompromise\n"
    csv.write_text("".join(lines))
    validated.clear()
    report = jobs.apply(repo, state, now, write_status=False)
    assert set(validated) == {"sensor-0002", "sensor-0003"}  # checked, then rendered: no other
    assert {(a.action, a.device) for a in report.plan.actions if a.device} == {
        ("rekey", "sensor-0002"), ("revoke", "sensor-0003")}  # server keys: rekeyed

    lines[5] = "Not A Valid Id!" + lines[5][len("sensor-0005"):]
    lines[6] = lines[6].replace("sensor-0006", "sensor-0007")  # a duplicate of an unchanged row
    csv.write_text("".join(lines))
    validated.clear()
    with pytest.raises(InvalidDeclaration) as refused:
        jobs.apply(repo, state, now, write_status=False)
    assert [(p.file, p.line) for p in refused.value.problems] == [
        ("fleets/sensors.csv", 6), ("fleets/sensors.csv", 8)]
    assert "duplicate device id 'sensor-0007'" in refused.value.problems[1].message
    # 3: revoked; checked, then read again to be kept (invalid): no other row
    assert set(validated) == {"Not A Valid Id!", "sensor-0003", "sensor-0007"}


def test_an_enrollment_secret_reads_its_device_alone(parsed: list[str], tmp_path: Path) -> None:
    """`enroll-secret` for one device of an applied fleet reads that row, not the file: a
    million-device fleet answers in about a second, not after validating every row."""
    repo, state = tmp_path / "repo", tmp_path / "state"
    shutil.copytree(EXAMPLE, repo)
    jobs.apply(repo, jobs.StateDir(state), jobs.now_utc(), write_status=False)
    parsed.clear()
    made = CliRunner().invoke(app, ["enroll-secret", str(repo), "--fleet", "sensors",
                                    "--device", "sensor-0002", "--state-dir", str(state)])
    assert made.exit_code == 0, made.output
    assert len(made.stdout.strip()) >= 22  # the secret, printed once
    with jobs.StateDir(state).reader() as inventory:
        assert [s.device for s in inventory.enrollment_secrets("sensor-0002", ["sensors"])] == [
            "sensor-0002"]
    refused = CliRunner().invoke(app, ["enroll-secret", str(repo), "--fleet", "sensors",
                                       "--device", "sensor-9999", "--state-dir", str(state)])
    assert refused.exit_code == 1
    assert "device 'sensor-9999' is not declared in fleet 'sensors'" in refused.output
    assert parsed == []  # absent proven by the index holding every row the inventory counts
