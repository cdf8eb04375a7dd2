"""Changed rows only: a device whose certificate was issued from the very row, fleet and profile
declared now is not rendered again; every plan is the one rendering every device would give."""

from __future__ import annotations

import random
from typing import Any

import pytest

from controller.plan import planner
from controller.plan.model import FleetObserved, Observed, Plan
from controller.plan.planner import plan

from .support import NOW, NOW_S, converged, device, make_desired, with_fleet

SITES = ("berlin", "paris", "rome")


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the devices the planner renders (calls `device_intent` for)."""
    calls: list[str] = []
    real = planner.device_intent

    def counting(fleet: Any, profile: Any, dev: Any, source: str | None = None) -> Any:
        calls.append(dev.id)
        return real(fleet, profile, dev, source)

    monkeypatch.setattr(planner, "device_intent", counting)
    return calls


def without_sources(observed: Observed) -> Observed:
    """The same certificates, none recording the row it came from (an inventory from before
    source digests)."""
    fleets = {name: FleetObserved(seen.content_hash, None if seen.active is None else
                                  {d: (*cert[:3], None) for d, cert in seen.active.items()},
                                  seen.due, seen.active_count)
              for name, seen in observed.fleets.items()}
    return Observed(observed.authorities, observed.crls, fleets, observed.known_authorities)


def summary(result: Plan) -> list[tuple[str, str | None, str, str | None]]:
    return [(a.action, a.device, a.reason, a.serial) for a in result.actions]


def fleet_of(count: int) -> list[dict[str, Any]]:
    return [device(f"dev-{i:03d}", SITES[i % 3]) for i in range(count)]


def test_only_changed_rows_are_rendered(rendered: list[str]) -> None:
    devices = fleet_of(50)
    observed = converged(make_desired(devices))
    rendered.clear()
    devices[3] = device("dev-003", "madrid")  # a label the profile's extension uses
    devices[7] = device("dev-007", revoked={"reason": "keyCompromise"})
    del devices[9]
    devices.append(device("dev-new"))
    seen = observed.fleets["sensors"]
    changed = with_fleet(observed, "sensors", FleetObserved(None, seen.active,
                                                           active_count=seen.active_count))
    result = plan(make_desired(devices), changed, NOW)
    assert sorted(rendered) == ["dev-003", "dev-new"]
    assert {(a.action, a.device) for a in result.actions if a.device} == {
        ("rekey", "dev-003"), ("revoke", "dev-007"), ("revoke", "dev-009"), ("issue", "dev-new")}
    assert result.source_notes == {}


def test_a_changed_profile_or_fleet_renders_every_row(rendered: list[str]) -> None:
    devices = fleet_of(5)
    observed = converged(make_desired(devices))
    seen = observed.fleets["sensors"]
    changed = with_fleet(observed, "sensors", FleetObserved(None, seen.active,
                                                           active_count=seen.active_count))
    rendered.clear()
    result = plan(make_desired(devices, profile={"usages": ["client auth"]}), changed, NOW)
    assert len(rendered) == 5
    assert {a.action for a in result.actions if a.device} == {"rekey"}  # server keys
    rendered.clear()
    result = plan(make_desired(devices, fleet={"deletionPolicy": "Orphan"}), changed, NOW)
    assert len(rendered) == 5 and not [a for a in result.actions if a.device]
    assert len(result.source_notes) == 5, "found unchanged under the new fleet: noted"


def test_certificates_without_a_source_are_rendered_once_and_noted(
        rendered: list[str]) -> None:
    devices = fleet_of(4)
    desired = make_desired(devices)
    full = converged(desired)
    seen = without_sources(full).fleets["sensors"]
    old = with_fleet(full, "sensors", FleetObserved(None, seen.active,
                                                   active_count=seen.active_count))
    rendered.clear()
    result = plan(desired, old, NOW)
    assert len(rendered) == 4 and summary(result) == []
    assert result.source_notes == {serial: source for serial, _, _, source in
                                   (full.fleets["sensors"].active or {}).values()}


def test_a_due_certificate_is_renewed_whatever_its_source(rendered: list[str]) -> None:
    desired = make_desired(fleet_of(3))
    observed = converged(desired, renew_at=NOW_S)
    seen = observed.fleets["sensors"]
    result = plan(desired, with_fleet(observed, "sensors", FleetObserved(
        None, seen.active, active_count=seen.active_count)), NOW)
    assert [a.action for a in result.actions if a.device] == ["rekey"] * 3


@pytest.mark.parametrize("seed", range(12))
def test_the_short_way_plans_what_rendering_every_device_plans(seed: int) -> None:
    """Random edits of a converged fleet: the plan with source digests equals the plan that
    renders every device (no digests), action for action and intent for intent."""
    chance = random.Random(seed)
    devices = fleet_of(40)
    observed = converged(make_desired(devices))
    for _ in range(chance.randint(1, 10)):
        index = chance.randrange(len(devices))
        edit = chance.choice(["site", "revoke", "delete", "add", "same"])
        if edit == "site":
            devices[index] = device(devices[index]["id"], chance.choice(SITES + ("oslo",)))
        elif edit == "revoke":
            devices[index] = {**devices[index], "revoked": {"reason": "superseded"}}
        elif edit == "delete":
            del devices[index]
        elif edit == "add":
            devices.append(device(f"new-{chance.randrange(10**6)}"))
    profile = chance.choice([None, {"usages": ["client auth"]}])
    desired = make_desired(devices, profile=profile, fleet={"deletionPolicy": "Orphan"}
                           if chance.random() < 0.5 else None)
    seen = observed.fleets["sensors"]
    changed = with_fleet(observed, "sensors", FleetObserved(None, seen.active,
                                                           active_count=seen.active_count))
    short, full = plan(desired, changed, NOW), plan(desired, without_sources(changed), NOW)
    assert summary(short) == summary(full)
    assert short.intents == full.intents
