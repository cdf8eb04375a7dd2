"""Changed rows only: a device whose certificate was issued from the very row, fleet and profile
declared now is not rendered again; every plan is the one rendering every device would give."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import pytest

from controller import parallel
from controller.api import desired as desired_module
from controller.api.desired import Desired, cross_check
from controller.api.devices import DeviceText, read_fleet_devices
from controller.api.loading import Located
from controller.api.problems import Problem
from controller.api.resources import CertificateProfile, DeviceFleet
from controller.plan.intents import DeviceIntent
from controller.plan.model import FleetObserved, Observed, Plan
from controller.plan.planner import DeclaredIntents, plan

from .support import (
    DAY,
    ISSUING,
    NOW,
    NOW_S,
    PROFILE_SPEC,
    authorities,
    converged,
    device,
    make_desired,
    planned,
    with_fleet,
)

SITES = ("berlin", "paris", "rome")


def rendered_again(desired: Desired, made: dict[tuple[str, str], DeviceIntent]
                   ) -> dict[tuple[str, str], DeviceIntent]:
    """What apply signs: each intent the planner made, rendered again from the declaration."""
    again = DeclaredIntents(desired)
    return {key: again(*key) for key in made}


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
    (short, made), (full, made_full) = planned(desired, changed), planned(
        desired, without_sources(changed))
    assert summary(short) == summary(full)
    assert made == made_full == rendered_again(desired, made)


# Rows already judged: a changed fleet read from its CSV validates only the rows that no active
# certificate was issued from; the plan and the problems are those of validating every row.

BAD_ROWS = ({"id": "Bad Id!"}, {"labels.site": "x" * 300}, {"publicKey": "k", "csr": "c"})


def csv_text(rows: list[dict[str, str]]) -> str:
    lines = ["id,labels.site,publicKey,csr,revoked"]
    lines += [",".join(row.get(c, "") for c in ("id", "labels.site", "publicKey", "csr",
                                                "revoked")) for row in rows]
    return "\n".join(lines) + "\n"


def row(number: int, site: str = "berlin") -> dict[str, str]:
    return {"id": f"dev-{number:03d}", "labels.site": site}


def load(rows: list[dict[str, str]], issued: Observed | None = None,
         profile: dict[str, Any] | None = None, fleet: dict[str, Any] | None = None,
         ) -> tuple[Desired, list[Problem]]:
    """The fleet `sensors` with its devices in `fleets/sensors.csv`, checked as the loader does;
    with `issued`, the sources of its active certificates are those `issued` observes."""
    located = authorities()
    located.append(Located(CertificateProfile.model_validate(
        {"metadata": {"name": "client"}, "spec": {**PROFILE_SPEC, **(profile or {})}}),
        "profiles.yaml", 1))
    item = Located(DeviceFleet.model_validate({"metadata": {"name": "sensors"}, "spec": {
        "issuerRef": {"name": ISSUING}, "profileRef": {"name": "client"},
        "deviceSource": {"path": "sensors.csv"}, **(fleet or {})}}), "fleets/sensors.yaml", 1)
    located.append(item)
    problems: list[Problem] = []
    text = csv_text(rows)
    devices = read_fleet_devices(item, problems,
                                 lambda _: [DeviceText("fleets/sensors.csv", text, "csv")])

    def sources(name: str) -> set[str]:
        seen = issued.fleets.get(name) if issued is not None else None
        return {c[3] for c in (seen.active or {}).values() if c[3]} if seen else set()

    desired, found = cross_check(located, {"sensors": devices},
                                 issued=sources if issued is not None else None)
    return desired, problems + found


def changed(observed: Observed) -> Observed:
    """The same certificates, the fleet's declaration no longer the one applied."""
    seen = observed.fleets["sensors"]
    return with_fleet(observed, "sensors", FleetObserved(None, seen.active,
                                                         active_count=seen.active_count))


def test_only_changed_rows_are_validated(validated: list[str]) -> None:
    rows = [row(i) for i in range(30)]
    observed = changed(converged(load(rows)[0]))
    rows[4] = row(4, "madrid")
    rows[6] = {**row(6), "revoked": "keyCompromise"}
    rows.append(row(99))
    validated.clear()
    desired, problems = load(rows, observed)
    result = plan(desired, observed, NOW)
    # checked when read, validated again when rendered (no row is kept): no other row
    assert problems == [] and set(validated) == {"dev-004", "dev-006", "dev-099"}
    assert {(a.action, a.device) for a in result.actions if a.device} == {
        ("rekey", "dev-004"), ("revoke", "dev-006"), ("issue", "dev-099")}
    assert desired.fleets["sensors"].summary.count == 31
    assert desired.fleets["sensors"].summary.declared == 30


def test_an_invalid_changed_row_is_reported_at_its_line(validated: list[str]) -> None:
    rows = [row(i) for i in range(10)]
    observed = changed(converged(load(rows)[0]))
    rows[3] = {**row(3), "labels.site": "x" * 300}
    validated.clear()
    _, problems = load(rows, observed)
    assert set(validated) == {"dev-003"}  # read again to be kept as read: the set is invalid
    assert [(p.file, p.line, p.field) for p in problems] == [
        ("fleets/sensors.csv", 5, "labels.site")]


def test_new_row_rules_validate_every_row(validated: list[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows judged by other rules (another version of `Device`, fleet or profile) are judged
    again."""
    rows = [row(i) for i in range(6)]
    observed = changed(converged(load(rows)[0]))
    for variant in ({"profile": {"usages": ["client auth"]}},
                    {"fleet": {"deletionPolicy": "Orphan"}}):
        validated.clear()
        load(rows, observed, **variant)
        assert len(validated) == 6, variant
    monkeypatch.setattr(desired_module, "_row_rules", lambda: "a stricter Device")
    validated.clear()
    load(rows, observed)
    assert len(validated) == 6


def test_a_due_judged_row_is_validated_and_renewed(validated: list[str]) -> None:
    rows = [row(i) for i in range(4)]
    observed = changed(converged(load(rows)[0], renew_at=NOW_S))
    validated.clear()
    desired, _ = load(rows, observed)
    assert validated == []
    result = plan(desired, observed, NOW)
    assert sorted(validated) == [f"dev-{i:03d}" for i in range(4)]
    assert [a.action for a in result.actions if a.device] == ["rekey"] * 4


@pytest.mark.parametrize("seed", range(16))
def test_judged_rows_plan_what_validating_every_row_plans(seed: int) -> None:
    """Random edits of a converged CSV fleet (bad rows among them in odd seeds, every device
    due in every fourth, the rules unchanged in those): loading with the sources of the active
    certificates gives the problems, plan and intents of validating every row."""
    chance = random.Random(seed)
    rows = [row(i, chance.choice(SITES)) for i in range(40)]
    observed = converged(load(rows)[0], renew_at=NOW_S if seed % 4 == 0 else NOW_S + DAY)
    edits = ["site", "revoke", "delete", "add", "same"] + (["bad", "duplicate"] if seed % 2 else [])
    for _ in range(chance.randint(1, 12)):
        index = chance.randrange(len(rows))
        edit = chance.choice(edits)
        if edit == "site":
            rows[index] = {**rows[index], "labels.site": chance.choice(SITES + ("oslo",))}
        elif edit == "revoke":
            rows[index] = {**rows[index], "revoked": "superseded"}
        elif edit == "delete":
            del rows[index]
        elif edit == "add":
            rows.append(row(chance.randrange(100, 10**6)))
        elif edit == "bad":
            rows[index] = {**rows[index], **chance.choice(BAD_ROWS)}
        elif edit == "duplicate":
            rows.append(dict(rows[index]))
    variant = {} if seed % 4 == 0 else chance.choice([
        {}, {"profile": {"usages": ["client auth"]}}, {"fleet": {"deletionPolicy": "Orphan"}}])
    seen = changed(observed)
    judged, judged_problems = load(rows, seen, **variant)
    full, full_problems = load(rows, None, **variant)
    assert judged_problems == full_problems
    if judged_problems:
        return  # the loader refuses the declaration: nothing is planned
    (short, made), (every, made_every) = planned(judged, seen), planned(full, seen)
    assert summary(short) == summary(every) and short.problems == every.problems
    assert made == made_every == rendered_again(judged, made)
    assert short.source_notes == every.source_notes
    assert judged.fleets["sensors"].summary == full.fleets["sensors"].summary
    assert judged.fleets["sensors"].device_set.parsed == full.fleets["sensors"].device_set.parsed


class Told:
    """An `IntentSink` keeping each intent's device and digest, and the process told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str, int]] = []

    def __call__(self, fleet: str, intent: DeviceIntent, labels: Mapping[str, str]) -> None:
        self.told.append((intent.device_id, intent.digest, os.getpid()))

    def gathered(self) -> list[tuple[str, str, int]]:
        found, self.told = self.told, []
        return found

    def add(self, gathered: list[tuple[str, str, int]]) -> None:
        self.told += gathered


def planned_apart_as_here(desired: Desired, observed: Observed, monkeypatch: pytest.MonkeyPatch
                          ) -> tuple[Plan, list[tuple[str, str, int]]]:
    """The plan and the intents told (device, digest, process), planned here; planned again on
    two forked workers, the same plan, problems, notes and intents in order, some intents
    made in another process."""
    results = []
    for workers in (0, 2):
        monkeypatch.setattr(parallel, "worker_count", lambda items, count=workers: count)
        told = Told()
        results.append((plan(desired, observed, NOW, made=told), told.told))
    (here, told_here), (apart, told_apart) = results
    assert summary(apart) == summary(here) and apart.problems == here.problems
    assert apart.source_notes == here.source_notes
    assert [t[:2] for t in told_apart] == [t[:2] for t in told_here]
    assert {t[2] for t in told_here} <= {os.getpid()}
    assert not told_apart or {t[2] for t in told_apart} - {os.getpid()}
    return here, told_here


@pytest.mark.parametrize("seed", range(8))
def test_a_fleet_walked_on_workers_plans_as_one_walk(seed: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A checked fleet cut into shares, each walked on a forked worker (as a large fleet is):
    the plan, its problems at their lines, the source notes and the intents told, in order,
    are those of one walk here; some intents were made on the workers."""
    chance = random.Random(seed)
    rows = [row(i, chance.choice(SITES)) for i in range(chance.randint(2, 60))]
    observed = changed(converged(load(rows)[0], renew_at=NOW_S if seed % 3 == 0 else
                                 NOW_S + DAY))
    for _ in range(chance.randint(0, 12)):
        index = chance.randrange(len(rows))
        edit = chance.choice(["site", "revoke", "delete", "add", "key"])
        if edit == "site":
            rows[index] = {**rows[index], "labels.site": chance.choice(SITES + ("oslo",))}
        elif edit == "revoke":
            rows[index] = {**rows[index], "revoked": "superseded"}
        elif edit == "delete" and len(rows) > 2:
            del rows[index]
        elif edit == "add":
            rows.append(row(chance.randrange(100, 10**6)))
        elif edit == "key":  # refused when planned (server keygen): a problem at its line
            rows[index] = {**rows[index], "publicKey": "a key"}
    desired, problems = load(rows, observed if seed % 2 else None)
    assert problems == [] and len(desired.fleets["sensors"].device_set.shares(8)) > 1
    planned_apart_as_here(desired, observed, monkeypatch)


@pytest.mark.parametrize("seed", range(6))
def test_renewals_due_planned_on_workers_as_here(seed: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An unchanged fleet's renewals falling due, planned in slices on forked workers that
    read each due row alone: the plan, problems and intents are those of planning them here
    (due devices no longer declared are skipped, a row refused when rendered is a problem)."""
    chance = random.Random(seed)
    rows = [row(i, chance.choice(SITES)) for i in range(chance.randint(2, 60))]
    full = converged(load(rows)[0], renew_at=NOW_S)
    seen = full.fleets["sensors"]
    due = {device: current for device, current in (seen.active or {}).items()
           if chance.random() < 0.7}
    for index in chance.sample(range(len(rows)), min(3, len(rows))):
        rows[index] = chance.choice([{**rows[index], "publicKey": "a key"}, row(10**6 + index)])
    desired, problems = load(rows)
    observed = with_fleet(full, "sensors", FleetObserved(seen.content_hash, None, due,
                                                         seen.active_count))
    assert problems == [] and desired.fleets["sensors"].device_set.indexed()
    here, told = planned_apart_as_here(desired, observed, monkeypatch)
    assert {a.device for a in here.actions if a.action == "rekey"} == {t[0] for t in told} \
        <= set(due)
