"""PR comments stay small: markdown of very large plans, built directly from plan objects."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from controller import jobs
from controller.api.problems import Finding
from controller.plan.dangers import dangers
from controller.plan.model import Action, Plan
from controller.plan.render import as_markdown, as_text

from .support import NOW, FleetRepo

LIMIT = 60_000  # bytes; GitHub refuses comments over 65,536 characters
FLEET = "DeviceFleet"


def with_dangers(plan: Plan) -> Plan:
    return replace(plan, dangers=tuple(dangers(plan)))


def new_devices(count: int, width: int) -> Plan:
    """`count` new devices in one fleet, ids `width` characters long, each with a warning."""
    ids = [f"sensor-{n:06d}".ljust(width, "x") for n in range(count)]
    issues = tuple(Action("issue", FLEET, "sensors", "no certificate yet", device)
                   for device in ids)
    findings = tuple(Finding("labels", "has-model", "warn", "devices should declare a model",
                             f"{FLEET}/sensors", device) for device in ids)
    publish = Action("publish-crl", "CertificateAuthority", "devices-ca", "new revocations")
    return with_dangers(Plan((*issues, publish), findings=findings,
                             fleet_sizes={"sensors": 0}))


@pytest.mark.parametrize("width", [13, 128])  # 128: the longest id the schema allows
def test_markdown_for_100000_new_devices_in_one_fleet_stays_small(width: int) -> None:
    plan = new_devices(100_000, width)
    markdown = as_markdown(plan)
    assert len(markdown.encode()) < LIMIT
    assert markdown.startswith("### fleetpki plan\n\n**Plan: 100000 issue, 1 publish-crl.**")
    rows = [line for line in markdown.splitlines() if "| DeviceFleet/sensors |" in line]
    assert len(rows) == 2  # one change row, one policy row
    assert rows[0].startswith("| DeviceFleet/sensors | issue | 100000 | `sensor-000000")
    assert rows[0].endswith(" … +99980 |")
    assert rows[0].count("`") == 2 * 20
    assert "| ⚠️ warn | `labels/has-model` | DeviceFleet/sensors | 100000 |" in markdown
    text = as_text(plan)
    assert len(text.encode()) < LIMIT
    assert "... and 99980 more" in text


def test_markdown_for_100000_denied_devices_and_revocations_stays_small() -> None:
    ids = [f"meter-{n:06d}" for n in range(100_000)]
    revokes = tuple(Action("revoke", FLEET, "meters", "device removed from fleet", d, f"{n:x}",
                           ("keyCompromise", "superseded", "cessationOfOperation")[n % 3])
                    for n, d in enumerate(ids))
    denied = tuple(Action("issue", FLEET, "sensors", "no certificate yet", f"s-{n}")
                   for n in range(100_000))
    denies = tuple(Finding("identity", "device-id-pattern", "deny", "device id does not match",
                           f"{FLEET}/sensors", f"s-{n}") for n in range(100_000))
    plan = with_dangers(Plan(revokes, denied=denied, findings=denies,
                             fleet_sizes={"meters": 100_000}))
    markdown = as_markdown(plan)
    assert len(markdown.encode()) < LIMIT
    assert "100000 denied by policy.** ❌ policy denies this change" in markdown
    assert "- 🚨 revokes 100000 of 100000 active certificates (100%) of DeviceFleet/meters" \
        in markdown
    for reason in ("keyCompromise", "superseded", "cessationOfOperation"):
        assert f"| DeviceFleet/meters | revoke ({reason}) | 3333" in markdown


def test_plan_change_on_a_generated_csv_renders_one_row_per_fleet_and_action(
        tmp_path: Path) -> None:
    repo = FleetRepo()
    sensors = repo.fleets["sensors"]
    del sensors["spec"]["devices"]
    sensors["spec"]["deviceSource"] = {"path": "fleets/sensors.csv"}
    sensors["metadata"]["annotations"] = {"fleetpki.io/device-id-pattern": "^s-[0-9]+$"}
    roots = {}
    for name, count in (("base", 10), ("head", 3000)):
        roots[name] = repo.write(tmp_path / name)
        rows = [f"s-{n}" if n != 2999 else "bad_id" for n in range(count)]
        (roots[name] / "fleets" / "sensors.csv").write_text(
            "id,labels.site\n" + "".join(f"{r},berlin\n" for r in rows), encoding="utf-8")
    plan = jobs.plan_change(roots["head"], roots["base"], NOW)
    assert plan.summary()["issue"] == 2989
    assert [(a.device, f.rule) for a, f in zip(plan.denied, plan.denies, strict=True)] == [
        ("bad_id", "device-id-pattern")]
    markdown = as_markdown(plan)
    assert len(markdown.encode()) < 10_000
    assert "| DeviceFleet/sensors | issue | 2989 | `s-10`, `s-100`, `s-1000`," in markdown
    assert "| ❌ deny | `identity/device-id-pattern` | DeviceFleet/sensors | 1 |" in markdown


def test_markdown_for_a_change_touching_300_fleets_stays_small() -> None:
    actions = tuple(
        Action("rekey", FLEET, f"site-{f:03d}-gateways", "declaration changed (profile, labels "
               "or issuer)", f"gw-{f:03d}-{d:04d}-hamburg-x", f"{f:03x}{d:04x}")
        for f in range(300) for d in range(20))
    plan = with_dangers(Plan(actions, fleet_sizes={f"site-{f:03d}-gateways": 20
                                                   for f in range(300)}))
    assert len(plan.dangers) == 300
    assert len(as_markdown(plan)) < LIMIT
