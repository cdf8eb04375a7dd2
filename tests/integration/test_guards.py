"""Guards against accidental revocation: mass revocation, missing device sources, deleted fleets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .support import (
    Applied,
    Cli,
    active_serials,
    commit_all,
    edit_csv,
    one_line,
    query,
    status_files,
)


def counts(cli: Cli, applied: Applied) -> dict[str, dict[str, Any]]:
    overview = json.loads(cli("status", applied.repo, "--state-dir", applied.state,
                              "-o", "json").stdout)
    return {f["fleet"]: f for f in overview["fleets"]}


def revoked_count(state: Path) -> int:
    return int(query(state, "SELECT count(*) FROM certificates WHERE state = 'revoked'")[0][0])


def crl_numbers(state: Path) -> list[tuple[Any, ...]]:
    return query(state, "SELECT ca_name, number FROM crls ORDER BY ca_name")


def conditions(repo: Path, path: str) -> dict[str, str]:
    document = status_files(repo)[path]
    return {c["type"]: c["status"] for c in document["status"]["conditions"]}


def test_mass_revocation_is_refused_until_allowed(applied_example: Applied, cli: Cli) -> None:
    repo, state = applied_example
    before = active_serials(state, "sensors")
    crls = crl_numbers(state)
    doomed = [f"sensor-{n:04d}" for n in range(801, 1001)]
    edit_csv(repo / "fleets" / "sensors.csv", delete=doomed)
    commit_all(repo, "oops: truncated the CSV")

    planned = cli("plan", repo, "--state-dir", state, "-o", "json").stdout
    plan = json.loads(planned)
    assert plan["summary"]["revoke"] == 200
    assert any("DeviceFleet/sensors" in w and "200 revocations" in w for w in plan["warnings"])

    for extra in ([], ["--max-revocations", "150"]):
        refused = cli("apply", repo, "--state-dir", state, *extra, rc=1)
        message = one_line(refused.stderr)
        assert "DeviceFleet/sensors" in message and "--allow-mass-revocation" in message
        assert "refusing to revoke 200" in message
        assert active_serials(state, "sensors") == before, "nothing revoked"
        assert revoked_count(state) == 0
        assert crl_numbers(state) == crls, "no CRL published"
    assert counts(cli, applied_example)["sensors"]["active"] == 1000
    assert counts(cli, applied_example)["sensors"]["revoked"] == 0
    stalled = status_files(repo)["status/DeviceFleet/sensors.yaml"]["status"]["conditions"]
    assert {c["type"]: c["status"] for c in stalled}["Stalled"] == "True"
    assert "--allow-mass-revocation" in next(c["message"] for c in stalled
                                             if c["type"] == "Stalled")

    done = cli("apply", repo, "--state-dir", state, "--allow-mass-revocation").stdout
    assert "200 revoke" in done
    after = counts(cli, applied_example)["sensors"]
    assert (after["active"], after["revoked"]) == (800, 200)
    assert set(active_serials(state, "sensors")) == set(before) - set(doomed)
    reasons = query(state, "SELECT DISTINCT reason FROM certificates WHERE state = 'revoked'")
    assert reasons == [("cessationOfOperation",)]
    assert conditions(repo, "status/DeviceFleet/sensors.yaml")["Ready"] == "True"


def test_raised_limit_allows_a_large_revocation(applied_example: Applied, cli: Cli) -> None:
    repo, state = applied_example
    edit_csv(repo / "fleets" / "sensors.csv", delete=[f"sensor-{n:04d}" for n in range(1, 151)])
    commit_all(repo, "retire 150 sensors")
    cli("apply", repo, "--state-dir", state, "--max-revocations", "149", rc=1)
    assert revoked_count(state) == 0
    cli("apply", repo, "--state-dir", state, "--max-revocations", "150")
    assert revoked_count(state) == 150


def test_missing_device_source_revokes_nothing(applied_example: Applied, cli: Cli) -> None:
    repo, state = applied_example
    crls = crl_numbers(state)
    (repo / "fleets" / "sensors.csv").rename(repo / "sensors.csv.bak")
    commit_all(repo, "moved the CSV by mistake")

    commands: list[tuple[str | Path, ...]] = [
        ("validate", repo), ("plan", repo, "--state-dir", state),
        ("apply", repo, "--state-dir", state)]
    for command in commands:
        failed = cli(*command, rc=1)
        message = one_line(failed.stderr)
        assert "fleets/sensors.csv" in message, command
        assert "cannot read device source" in message, command
    assert revoked_count(state) == 0
    assert len(active_serials(state, "sensors")) == 1000
    assert crl_numbers(state) == crls
    assert conditions(repo, "status/DeviceFleet/sensors.yaml")["Stalled"] == "True"


def set_spec(path: Path, **spec: Any) -> None:
    document = yaml.safe_load(path.read_text())
    document["spec"].update(spec)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_deleted_fleet_is_not_revoked_but_decommissioned_is(applied_example: Applied,
                                                             cli: Cli) -> None:
    repo, state = applied_example
    sensors_before = active_serials(state, "sensors")
    (repo / "fleets" / "sensors.yaml").unlink()
    (repo / "releases" / "sensor-fw.yaml").unlink()  # it targets the sensors
    commit_all(repo, "remove the sensors fleet")

    plan = cli("plan", repo, "--state-dir", state).stdout
    assert "DeviceFleet/sensors is no longer declared but holds 1000 active certificates" in \
        one_line(plan)
    assert "decommissioned: true" in plan
    applied = cli("apply", repo, "--state-dir", state)
    assert "no longer declared" in one_line(applied.stderr)
    assert "no changes" in applied.stdout
    assert active_serials(state, "sensors") == sensors_before
    assert revoked_count(state) == 0
    assert "status/DeviceFleet/sensors.yaml" not in status_files(repo)

    # Decommissioning first is how a fleet is retired: everything is revoked.
    gateways = active_serials(state, "gateways")
    set_spec(repo / "fleets" / "gateways.yaml", decommissioned=True)
    commit_all(repo, "decommission the gateways")
    plan_json = json.loads(cli("plan", repo, "--state-dir", state, "-o", "json").stdout)
    revokes = {(a["device"], a["serial"], a["revocationReason"]) for a in plan_json["actions"]
               if a["action"] == "revoke"}
    assert revokes == {(d, s, "cessationOfOperation") for d, s in gateways.items()}
    cli("apply", repo, "--state-dir", state)
    assert active_serials(state, "gateways") == {}
    assert revoked_count(state) == 2
    # Deleting the decommissioned fleet afterwards is quiet.
    (repo / "fleets" / "gateways.yaml").unlink()
    commit_all(repo, "remove the gateways fleet")
    assert "gateways" not in cli("plan", repo, "--state-dir", state).stdout


def test_decommissioning_a_large_fleet_is_explicit_and_needs_no_flag(
        applied_example: Applied, cli: Cli) -> None:
    """`decommissioned: true` states the intent in the declaration itself, so the mass
    revocation guard (meant for accidental deletions) does not apply; the plan flags it."""
    repo, state = applied_example
    set_spec(repo / "fleets" / "sensors.yaml", decommissioned=True)
    commit_all(repo, "decommission the sensors")
    planned = cli("plan", repo, "--state-dir", state)
    assert "danger: revokes 1000 of 1000 active certificates" in planned.stdout
    cli("apply", repo, "--state-dir", state)
    assert active_serials(state, "sensors") == {}
    assert revoked_count(state) == 1000
    fleet_status = status_files(repo)["status/DeviceFleet/sensors.yaml"]["status"]
    assert fleet_status["devices"]["revoked"] == 1000
