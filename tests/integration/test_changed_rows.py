"""A fleet whose device file alone changed since the commit last applied: only the rows that
differ from that commit's file are read, validated and planned, and the plan, the problems and
the counts kept are those of reading every row (`DeviceSet.parse_changes`)."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from controller import jobs
from controller.api.problems import InvalidDeclaration
from controller.plan.model import Plan
from controller.sources.repo import committed_reader

from .support import (
    EXAMPLE,
    PASSPHRASE,
    Applied,
    Cli,
    commit_all,
    edit_csv,
    init_repo,
    openssl,
)
from .test_revocation import as_openssl, crl_entries

T = TypeVar("T")


def actions(plan: Plan) -> list[tuple[str | None, ...]]:
    return [(a.action, a.kind, a.name, a.device, a.reason, a.serial, a.revocation_reason)
            for a in plan.actions]


def every_row_read(monkeypatch: pytest.MonkeyPatch, read: Callable[[], T]) -> T:
    """`read()` with no commit known as last applied: every row of a changed file is read."""
    with monkeypatch.context() as patched:
        patched.setattr(jobs, "applied_files", lambda directory, branch: None)
        return read()


def test_a_few_changed_rows_are_all_that_is_read(
        applied_example: Applied, cli: Cli, parsed: list[str], validated: list[str],
        rendered: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    repo, state_dir = applied_example
    state = jobs.StateDir(state_dir)
    devices = repo / "fleets" / "sensors.csv"
    edit_csv(devices, revoke={"sensor-0042": "keyCompromise", "sensor-0100": "superseded"},
             delete=["sensor-0043"], add=["sensor-1001,TS-200,bremen,"])
    header, *rows = devices.read_text().splitlines()
    rows = [row.replace("TS-100", "TS-200") if row.startswith("sensor-0007,") else row
            for row in rows]
    rows.insert(500, rows.pop(10))  # a row moved, not changed
    devices.write_text("\n".join([header, *rows]) + "\n")
    commit_all(repo, "revoke two, retire one, add one, change one, move one")
    now = jobs.now_utc()

    planned = jobs.plan(repo, state, now)
    assert parsed == []  # the file is not read row by row
    assert sorted(validated) == ["sensor-0007", "sensor-0042", "sensor-0100", "sensor-1001"]
    assert sorted(rendered) == ["sensor-0007", "sensor-1001"]
    parsed.clear()
    full = every_row_read(monkeypatch, lambda: jobs.plan(repo, state, now))
    assert parsed == ["csv", "csv"]  # checked, then walked by the planner
    assert actions(planned) == actions(full)
    assert {(a.action, a.device) for a in planned.actions if a.name == "sensors"
            and a.action == "revoke"} == {("revoke", "sensor-0042"), ("revoke", "sensor-0100"),
                                          ("revoke", "sensor-0043")}
    assert {a.device for a in planned.actions if a.name == "sensors"} == {
        "sensor-0007", "sensor-0042", "sensor-0043", "sensor-0100", "sensor-1001"}

    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    revoked = {a.device: a.serial for a in planned.actions if a.action == "revoke"}
    applied = jobs.apply(repo, state, now)
    assert not applied.result.failed and actions(applied.plan) == actions(planned)
    crl = tmp_path / "devices-ca.crl.pem"
    cli("export", "crl", repo, "--state-dir", state_dir, "--ca", "devices-ca", "--out", crl)
    listed = crl_entries(openssl("crl", "-in", crl, "-noout", "-text").stdout)
    assert {as_openssl(serial) for serial in revoked.values() if serial} <= set(listed)
    assert listed[as_openssl(revoked["sensor-0042"] or "")] == "Key Compromise"

    read = [values for values in csv.reader(io.StringIO(devices.read_text()))][1:]
    with state.reader() as inventory:
        _, count, declared = inventory.applied_fleets()["sensors"]
        assert (count, declared) == (len(read), sum(1 for values in read if not values[3]))
        assert inventory.active_device("sensors", "sensor-1001") is not None
    parsed.clear()
    assert [a for a in jobs.plan(repo, state, now).actions if a.name == "sensors"] == []
    assert parsed == []


def test_bad_rows_are_reported_as_a_full_read_reports_them(
        applied_example: Applied, parsed: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo, state_dir = applied_example
    state = jobs.StateDir(state_dir)
    devices = repo / "fleets" / "sensors.csv"
    edit_csv(devices, add=["bad id!,TS-100,x,", f"sensor-1002,{'m' * 300},x,"])
    commit_all(repo, "two bad rows")
    now = jobs.now_utc()

    with pytest.raises(InvalidDeclaration) as changed:
        jobs.plan(repo, state, now)
    assert parsed == []
    with pytest.raises(InvalidDeclaration) as full:
        every_row_read(monkeypatch, lambda: jobs.plan(repo, state, now))
    assert parsed == ["csv", "csv"]  # checked, then read again to be kept: invalid
    assert changed.value.problems == full.value.problems
    assert {(p.file, p.line) for p in changed.value.problems} == {
        ("fleets/sensors.csv", 1002), ("fleets/sensors.csv", 1003)}

    parsed.clear()  # a doubled id: the rows are not compared one by one, but read whole
    edit_csv(devices, delete=["bad id!", "sensor-1002"], add=["sensor-0001,TS-100,x,"])
    commit_all(repo, "a doubled id")
    with pytest.raises(InvalidDeclaration) as doubled:
        jobs.plan(repo, state, now)
    assert parsed == ["csv", "csv"]  # checked, then read again to be kept: invalid
    assert [p.message for p in doubled.value.problems] == [
        "duplicate device id 'sensor-0001' (first at fleets/sensors.csv:2)"]


def test_a_commit_whose_file_was_not_the_one_applied_is_not_compared(
        applied_example: Applied, parsed: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo, state_dir = applied_example
    state = jobs.StateDir(state_dir)
    devices = repo / "fleets" / "sensors.csv"
    edit_csv(devices, delete=["sensor-0005"])
    unapplied = commit_all(repo, "retire one, not applied")
    edit_csv(devices, delete=["sensor-0006"])
    commit_all(repo, "retire another")
    now = jobs.now_utc()
    with monkeypatch.context() as patched:  # as if the first edit had been applied
        patched.setattr(jobs, "applied_files",
                        lambda directory, branch: committed_reader(repo, unapplied))
        planned = jobs.plan(repo, state, now)
    assert parsed == ["csv", "csv"]  # not the hash applied: every row read (checked, walked)
    assert {a.device for a in planned.actions if a.action == "revoke"} == {
        "sensor-0005", "sensor-0006"}


def test_renewals_fall_due_beside_the_changed_rows(
        applied_example: Applied, parsed: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo, state_dir = applied_example
    state = jobs.StateDir(state_dir)
    edit_csv(repo / "fleets" / "sensors.csv", revoke={"sensor-0042": "keyCompromise"},
             delete=["sensor-0043"])
    commit_all(repo, "revoke one, retire one")
    later = jobs.now_utc() + timedelta(days=350)

    planned = jobs.plan(repo, state, later)
    assert parsed == []  # the due rows are read alone
    full = every_row_read(monkeypatch, lambda: jobs.plan(repo, state, later))
    assert actions(planned) == actions(full)
    sensors = [(a.action, a.device) for a in planned.actions if a.name == "sensors"]
    assert ("revoke", "sensor-0042") in sensors and ("revoke", "sensor-0043") in sensors
    assert sum(1 for action, _ in sensors if action != "revoke") == 998  # every other one due


def test_a_fleet_directory_inside_a_larger_repository(
        tmp_path: Path, parsed: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The applied file is read from the commit by its path under the fleet's directory."""
    root = tmp_path / "platform"
    shutil.copytree(EXAMPLE, root / "pki" / "fleet")
    (root / "README").write_text("other things\n")
    init_repo(root)
    repo, state = root / "pki" / "fleet", jobs.StateDir(tmp_path / "state")
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    now = jobs.now_utc()
    jobs.apply(repo, state, now)
    edit_csv(repo / "fleets" / "sensors.csv", revoke={"sensor-0042": "keyCompromise"})
    commit_all(root, "revoke one")
    parsed.clear()
    planned = jobs.plan(repo, state, now)
    assert parsed == []
    assert [(a.action, a.device) for a in planned.actions if a.name == "sensors"] == [
        ("revoke", "sensor-0042")]


def test_a_file_with_windows_line_breaks_is_compared_record_by_record(
        applied_example: Applied, parsed: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit keeps a file's line breaks as written, and a file is read with each `\\r\\n` a
    `\\n`; the applied file read from its commit is read the same way, so it is the text applied
    (the same content hash) and its records are compared one by one."""
    repo, state_dir = applied_example
    devices = repo / "fleets" / "sensors.csv"
    devices.write_bytes(devices.read_bytes().replace(b"\n", b"\r\n"))
    windows = commit_all(repo, "saved on Windows: the same rows")
    edit_csv(devices, revoke={"sensor-0042": "keyCompromise"})
    commit_all(repo, "revoke one")
    with monkeypatch.context() as patched:  # as if the Windows commit had been applied
        patched.setattr(jobs, "applied_files",
                        lambda directory, branch: committed_reader(repo, windows))
        planned = jobs.plan(repo, jobs.StateDir(state_dir), jobs.now_utc())
    assert parsed == []
    assert [(a.action, a.device) for a in planned.actions if a.name == "sensors"] == [
        ("revoke", "sensor-0042")]
