"""`DeviceFleet.spec.tlsSecrets`: valid only where fleetpki holds the keys and the fleet is small
enough for one Secret per device; git-only mode says it writes none."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller import jobs
from controller.api.resources import MAX_TLS_SECRETS, TLSSecrets
from controller.sources.repo import load_repository

from .support import FLEET, PROFILE, MakeRepo, line_of, only

NOW = datetime(2030, 1, 1, tzinfo=UTC)
FLEET_FILE = "fleets/sensors.yaml"


def fleet_with_tls(devices: int = 2, tls: str = "  tlsSecrets: {}\n") -> str:
    head = FLEET.split("  devices:\n")[0]
    return head + "  devices:\n" + "".join(f"    - id: dev-{i}\n" for i in range(devices)) + tls


def test_server_keygen_fleet_may_opt_in_and_plan_warns_git_mode_writes_none(
        make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({FLEET_FILE: fleet_with_tls(tls="  tlsSecrets:\n    namePrefix: s-\n")})
    desired, problems = load_repository(repo)
    assert problems == []
    tls = desired.fleets["sensors"].fleet.spec.tlsSecrets
    assert tls is not None and tls.prefix("sensors") == "s-"
    the_plan = jobs.plan(repo, jobs.StateDir(tmp_path / "state"), NOW)
    assert the_plan.problems == ()
    assert any("spec.tlsSecrets" in w and "only the Kubernetes operator" in w
               for w in the_plan.warnings)


def test_opting_in_does_not_change_the_fleet_hash(make_repo: MakeRepo) -> None:
    """The hash says when certificates may change; where the operator copies them is not it."""
    plain, _ = load_repository(make_repo({FLEET_FILE: fleet_with_tls(tls="")}))
    opted, _ = load_repository(make_repo({FLEET_FILE: fleet_with_tls()}))
    assert plain.fleets["sensors"].content_hash == opted.fleets["sensors"].content_hash


def test_device_keygen_profile_is_a_problem_on_the_field(make_repo: MakeRepo) -> None:
    profile = PROFILE.replace("  keyAlgorithm: ECDSA-P256\n",
                              "  keyAlgorithm: ECDSA-P256\n  keyGeneration: device\n")
    fleet = fleet_with_tls()
    _, problems = load_repository(make_repo({"profiles.yaml": profile, FLEET_FILE: fleet}))
    problem = only(problems, field="spec.tlsSecrets")
    assert problem.object == "DeviceFleet/sensors"
    assert problem.line == line_of(fleet, "tlsSecrets:")
    assert "keyGeneration: device" in problem.message and "server" in problem.message


def test_more_than_the_limit_is_a_problem_naming_est_and_export(make_repo: MakeRepo) -> None:
    fleet = fleet_with_tls(MAX_TLS_SECRETS + 1)
    _, problems = load_repository(make_repo({FLEET_FILE: fleet}))
    problem = only(problems, field="spec.tlsSecrets")
    assert f"{MAX_TLS_SECRETS + 1} devices" in problem.message
    assert str(MAX_TLS_SECRETS) in problem.message
    assert "EST" in problem.message and "fleetpki export fleet" in problem.message


def test_the_limit_counts_devices_that_may_hold_a_certificate(make_repo: MakeRepo) -> None:
    fleet = fleet_with_tls(MAX_TLS_SECRETS) + "    - id: gone\n      revoked: {}\n"
    fleet = fleet.replace("  tlsSecrets: {}\n", "") + "  tlsSecrets: {}\n"
    _, problems = load_repository(make_repo({FLEET_FILE: fleet}))
    assert problems == []


@pytest.mark.parametrize("prefix", ["", "sensors-", "tls.", "a"])
def test_name_prefixes(prefix: str) -> None:
    assert TLSSecrets(namePrefix=prefix).prefix("sensors") == prefix


@pytest.mark.parametrize("prefix", ["Sensors-", "-x", "a.-", "a..", "a_b", "x" * 101])
def test_bad_name_prefixes(prefix: str) -> None:
    with pytest.raises(ValidationError, match="namePrefix"):
        TLSSecrets(namePrefix=prefix)


def test_unknown_tls_secrets_field_is_reported(make_repo: MakeRepo) -> None:
    fleet = fleet_with_tls(tls="  tlsSecrets:\n    prefix: x-\n")
    _, problems = load_repository(make_repo({FLEET_FILE: fleet}))
    assert any(p.field and p.field.startswith("spec.tlsSecrets") for p in problems), problems
