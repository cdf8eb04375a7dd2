"""Policies judge releases: a rule reading `release` or `signingProfile` runs once per release
and target fleet; a deny keeps the release unsigned. Declarations are checked with file:line."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controller import exports, jobs
from controller.api.problems import InvalidDeclaration
from tests.releases.support import Setup, release, signing_profile

TEAM_RULE = {
    "apiVersion": "fleetpki.io/v1alpha1", "kind": "CertificatePolicy",
    "metadata": {"name": "release-targets"},
    "spec": {"rules": [{
        "name": "production-firmware-team",
        "expression": '!("environment" in signingProfile.labels) || '
                      'signingProfile.labels["environment"] != "production" || '
                      '("team" in fleet.labels && fleet.labels["team"] == "firmware")',
        "message": "a release signed with a production profile may target only the firmware "
                   "team's fleets"}]}}



def production(name: str = "firmware") -> dict[str, Any]:
    profile = signing_profile(name)
    profile["metadata"]["labels"] = {"environment": "production"}
    return profile


def test_a_production_release_may_target_only_the_firmware_team(setup: Setup) -> None:
    setup.declare(production(), TEAM_RULE, release(),
                  release("fw-gw", targets={"fleets": ["sensors", "gateways"]}))
    report = setup.apply()
    assert report.result.done["sign-release"] == 1  # fw-1 only
    assert [a.name for a in report.plan.denied] == ["fw-gw"]
    [deny] = report.plan.denies
    assert deny.object == "Release/fw-gw" and "target fleet gateways" in deny.message
    assert deny.rule == "production-firmware-team"
    setup.export("fw-1")
    with setup.state.reader() as inventory, \
            pytest.raises(exports.ExportError, match="no signed Release"):
        exports.release_files(inventory, "fw-gw")


def test_a_test_profile_may_target_any_fleet(setup: Setup) -> None:
    setup.declare(signing_profile("testing"), TEAM_RULE,
                  release("fw-gw", profile="testing", targets={"fleets": ["gateways"]}))
    report = setup.apply()
    assert report.result.done["sign-release"] == 1 and not report.plan.denies


def test_validate_reports_release_problems_with_file_and_line(setup: Setup) -> None:
    bad_release = release(profile="missing", targets={"fleets": ["nowhere"]},
                          artifacts=[{"path": "artifacts/absent.bin"}])
    tsa_as_signer = release("fw-2", profile="tsa")
    (setup.repo / "signing.yaml").write_text(yaml.safe_dump_all(
        [signing_profile(), bad_release, tsa_as_signer], sort_keys=False))
    problems, _ = jobs.validate(setup.repo, setup.now)
    text = [str(p) for p in problems]
    assert any(t.startswith("signing.yaml:") and "Release/fw-1: spec.signingProfileRef.name: "
               "no SigningProfile named 'missing'" in t for t in text), text
    assert any("spec.targets.fleets[0]: no DeviceFleet named 'nowhere'" in t for t in text)
    assert any("spec.artifacts[0].path: cannot read artifacts/absent.bin" in t for t in text)
    assert any("Release/fw-2: spec.signingProfileRef.name: no SigningProfile named 'tsa' "
               "with usage: codeSigning" in t for t in text)
    with pytest.raises(InvalidDeclaration):
        jobs.apply(setup.repo, setup.state, setup.now, write_status=False)


def test_schema_errors_name_the_field(setup: Setup) -> None:
    setup.declare(signing_profile(algorithm="RSA-1024"),
                  release(artifacts=[{"name": "x.bin", "sha256": "00"}]))
    problems, _ = jobs.validate(setup.repo, setup.now)
    text = [str(p) for p in problems]
    assert any("SigningProfile/firmware: spec.keyAlgorithm" in t for t in text), text
    assert any("Release/fw-1: spec.artifacts[0].sha256" in t for t in text), text


def test_a_pull_request_plan_shows_only_the_releases_it_changes(setup: Setup) -> None:
    setup.declare(signing_profile(), release(), release("fw-2"))
    with jobs.checkout_of(setup.repo, "HEAD") as base:
        setup.declare(signing_profile(), release(), release("fw-2", version="2.0.0"),
                      release("fw-3", revoked={"reason": "superseded"}))
        planned = jobs.plan_change(setup.repo, base, setup.now)
    assert [(a.action, a.name) for a in planned.actions
            if a.kind == "Release"] == [("sign-release", "fw-2")]
