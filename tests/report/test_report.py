"""`fleetpki report` of a real apply: numbers against the inventory, rendered by Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from PIL import Image

from controller import jobs
from controller.pki.keys import key_algorithm_of
from tests.discovery.support import Applied, apply_and_revoke
from tests.policy.support import PASSPHRASE, commit_all, invoke

from .support import Page, browse

DAY = 86400


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    """`sensors` (3, dev-3 revoked) and `cameras` (2, 30-day certificates), applied twice."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
        yield apply_and_revoke(tmp_path_factory.mktemp("report"), export=())


def make_report(applied: Applied, out: Path, state: Path | None = None) -> dict[str, Any]:
    result = invoke("report", applied.repo, "--state-dir", state or applied.state, "--out", out)
    assert result.stderr == ""  # no progress bar outside a terminal
    assert {Path(line).name for line in result.stdout.split()} >= {
        "report.html", "report.json", "fleets.csv", "algorithms.csv", "authorities.csv"}
    return json.loads((out / "report.json").read_text())


def expected_from_inventory(state: Path, now: int) -> dict[str, Any]:
    """The numbers, straight from the inventory rows and the certificates' DER."""
    db = sqlite3.connect(state / "inventory.db")
    rows = db.execute("SELECT kind, owner, state, not_after, der, reason FROM certificates")
    per_fleet: dict[str, Counter[str]] = {}
    algorithms: Counter[str] = Counter()
    reasons: Counter[tuple[str, str]] = Counter()
    for kind, owner, state_, not_after, der, reason in rows:
        certificate = x509.load_der_x509_certificate(der)
        assert int(certificate.not_valid_after_utc.timestamp()) == not_after
        if state_ == "active":
            algorithms[key_algorithm_of(certificate.public_key())] += 1  # type: ignore[arg-type]
        if kind != "device":
            continue
        counts = per_fleet.setdefault(owner, Counter())
        counts[state_] += 1
        if state_ == "revoked":
            reasons[(owner, reason)] += 1
        if state_ == "active":
            counts["expired"] += not_after <= now
            for days in (7, 30, 90):
                counts[f"expiring{days}d"] += now < not_after <= now + days * DAY
    db.close()
    return {"fleets": per_fleet, "algorithms": dict(algorithms), "reasons": dict(reasons)}


def test_numbers_match_the_inventory(applied: Applied, tmp_path: Path) -> None:
    report = make_report(applied, tmp_path / "out")
    now = int(datetime.fromisoformat(report["generatedAt"]).timestamp())
    expected = expected_from_inventory(applied.state, now)
    fleets = {row["fleet"]: row for row in report["fleets"]}
    assert set(fleets) == {"sensors", "cameras"}
    for name, counts in expected["fleets"].items():
        row = fleets[name]
        assert row["ca"] == "issuing"
        for key in ("active", "retired", "revoked", "expired", "expiring7d", "expiring30d",
                    "expiring90d"):
            assert row[key] == counts[key], (name, key)
    assert (fleets["sensors"]["active"], fleets["sensors"]["revoked"]) == (2, 1)
    assert (fleets["cameras"]["expiring30d"], fleets["sensors"]["expiring90d"]) == (2, 0)
    assert report["byAlgorithm"] == expected["algorithms"] == {"ECDSA-P256": 4, "ECDSA-P384": 2}
    assert report["revocations"] == [{"owner": "sensors", "reason": "keyCompromise", "count": 1}]
    assert {c["ca"]: c["healthy"] for c in report["authorities"]} == {"root": True,
                                                                     "issuing": True}
    assert report["totals"]["active"] == 4
    assert sum(b["active"] for b in report["expiry"]) == 4
    # who changed what: both commits, and both apply runs with the commit each applied
    subjects = [c["subject"] for c in report["changes"]]
    assert subjects == ["revoke dev-3: stolen", "fleet declaration"]
    assert [r["appliedCommit"] for r in report["applied"]] == [c["commit"]
                                                               for c in report["changes"]]
    assert report["policy"] == [{"policy": "lab", "rule": "no-lab-devices", "action": "warn",
                                 "message": "cam-2 is a lab camera",
                                 "object": "DeviceFleet/cameras", "device": "cam-2"}]
    # the audit log of both applies, by who applied which commit, and the lint findings
    commits = {c["commit"][:12] for c in report["changes"]}
    actors = {name for name in report["audit"]["byActor"] if "(commit " in name}
    assert {name.split("(commit ")[1].rstrip(")") for name in actors} == commits
    assert report["audit"]["byAction"]["certificate.revoked"] == 1
    with jobs.StateDir(applied.state).reader() as inventory:
        linted = [f.to_json() for f in jobs.lint(inventory, now).sorted()]
    assert report["lint"] == linted and linted  # the cameras' short profile expires soon
    assert (tmp_path / "out" / "problems.csv").read_text() == (
        "file,line,object,field,message,device\n")  # a header also without rows
    with (tmp_path / "out" / "fleets.csv").open() as handle:
        assert {r["fleet"]: int(r["revoked"]) for r in csv.DictReader(handle)} == {
            "cameras": 0, "sensors": 1}


def test_chromium_renders_the_charts_offline(applied: Applied, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = make_report(applied, out)
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", html)  # nothing to fetch
    assert "<script" not in html
    dom = Page(browse(out / "report.html", tmp_path / "profile", "--dump-dom").stdout)
    assert dom.charts["chart-algorithms"] == report["byAlgorithm"]
    assert dom.charts["chart-states"] == report["byState"]
    assert dom.charts["chart-expiry"] == {b["window"]: b["active"] for b in report["expiry"]}
    rendered = {r["fleet"]: r for r in dom.records("fleets")}
    for row in report["fleets"]:
        assert {k: str(v) for k, v in row.items()} == rendered[row["fleet"]]
    assert sum(int(r["records"]) for r in dom.records("audit-actors")) == \
        report["audit"]["records"] > 0  # the applies' audit log
    assert [r["message"] for r in dom.records("policy")] == ["cam-2 is a lab camera"]
    shot = tmp_path / "report.png"
    browse(out / "report.html", tmp_path / "profile", f"--screenshot={shot}",
           "--window-size=1280,1600")
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        colors = {color for _, color in image.convert("RGB").getcolors(1 << 20) or []}
    assert len(colors) > 50  # text, tables and charts, not a blank page
    assert (0x2F, 0x6F, 0xB0) in colors  # the bars' colour: the charts were drawn


def test_audit_log_and_escaping(applied: Applied, tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(applied.state, state)
    shutil.rmtree(state / "audit")  # the applies' log, replaced by a hand-written one
    (state / "audit").mkdir()
    records = [{"time": "2030-01-01T00:00:00Z", "actor": "alice", "object": "DeviceFleet/x",
                "action": "apply", "outcome": "ok"},
               {"time": "2030-01-02T00:00:00Z", "actor": "<b>mallory</b>",
                "object": "=cmd|' /C calc'!A0", "action": "revoke", "outcome": "ok"}]
    (state / "audit" / "audit.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n{damaged\n")
    out = tmp_path / "out"
    report = make_report(applied, out, state)
    assert report["audit"]["records"] == 2 and report["audit"]["unreadableLines"] == 1
    assert report["audit"]["byActor"] == {"alice": 1, "<b>mallory</b>": 1}
    assert report["audit"]["recent"][0]["actor"] == "<b>mallory</b>"  # newest first
    html = (out / "report.html").read_text()
    assert "<b>mallory</b>" not in html and "&lt;b&gt;mallory&lt;/b&gt;" in html
    page = Page(html)
    assert [r["actor"] for r in page.records("audit")] == ["<b>mallory</b>", "alice"]
    with (out / "audit.csv").open() as handle:
        objects = [row["object"] for row in csv.DictReader(handle)]
    assert objects[0] == "'=cmd|' /C calc'!A0"  # no formula for a spreadsheet to run


def test_commit_subjects_are_escaped(applied: Applied, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(applied.repo, repo, symlinks=True)
    (repo / "notes.txt").write_text("x")
    commit_all(repo, "<script>alert(1)</script>")
    out = tmp_path / "out"
    report = make_report(Applied(repo, applied.state, {}), out)
    assert report["changes"][0]["subject"] == "<script>alert(1)</script>"
    html = (out / "report.html").read_text()
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_declaration_with_problems_says_so(applied: Applied, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(applied.repo, repo, symlinks=True)
    fleet = repo / "fleets" / "cameras.yaml"
    fleet.write_text(fleet.read_text().replace("name: p384", "name: no-such-profile"))
    commit_all(repo, "break the cameras")
    out = tmp_path / "out"
    report = make_report(Applied(repo, applied.state, {}), out)
    assert report["policy"] == []
    assert [p["object"] for p in report["problems"]] == ["DeviceFleet/cameras"]
    assert "no-such-profile" in report["problems"][0]["message"]
    page = Page((out / "report.html").read_text())
    assert [r["object"] for r in page.records("problems")] == ["DeviceFleet/cameras"]
    assert report["fleets"][0]["fleet"] == "cameras"  # the inventory is reported all the same
