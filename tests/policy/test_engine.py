"""The CEL engine: scope detection, selectors, replacing defaults, errors and the data it sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import jobs, parallel
from controller.policy.engine import scope_of

from .support import (
    NOW,
    FleetRepo,
    ca_doc,
    check,
    devices,
    findings_of,
    fleet_doc,
    invoke,
    keyed,
    one_line,
    policy,
    profile_doc,
    rule,
)


# --- scope ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("expression", "scope"), [
    ('device.id != ""', "device"),
    ('fleet.name != "device"', "fleet"),
    ("fleet.name != 'a device'", "fleet"),
    ('"device" in fleet.labels', "fleet"),
    (r'fleet.name != "say \"device\""', "fleet"),
    ("fleet.deviceCount > 0", "fleet"),
    ('profile.duration <= duration("9552h")', "fleet"),
    ('profile.name != "x" && authority.type == "root"', "fleet"),
    ('now > timestamp("2020-01-01T00:00:00Z")', "fleet"),
    ('authority.type == "root"', "authority"),
    ('authority.name != "device-ca" && authority.labels.fleet != "profile"', "authority"),
    ('authority.duration > duration("1h") && now < timestamp("2100-01-01T00:00:00Z")',
     "authority"),
])
def test_scope_follows_the_variables_used(expression: str, scope: str) -> None:
    assert scope_of(expression) == scope


@pytest.mark.parametrize("expression", [
    "fleet.name != '''it's a device'''",
    'fleet.name != "" // not a device rule',
    "fleet.name != r'device\\'",
])
def test_comments_and_other_string_literals_do_not_change_scope(expression: str) -> None:
    assert scope_of(expression) == "fleet"


def test_scope_decides_what_a_rule_is_evaluated_on(repo: FleetRepo, tmp_path: Path) -> None:
    repo.add_policy(policy(
        "scopes",
        rule("on-cas", 'authority.name == "device"'),
        rule("on-fleets-by-profile", 'profile.name == "device"'),
        rule("on-fleets-by-string", 'fleet.name == "device"'),
        rule("on-devices", 'device.id == "fleet"')))
    assert keyed(findings_of(repo, tmp_path)) == {
        ("deny", "scopes/on-cas", "CertificateAuthority/root", None),
        ("deny", "scopes/on-cas", "CertificateAuthority/issuing", None),
        ("deny", "scopes/on-fleets-by-profile", "DeviceFleet/sensors", None),
        ("deny", "scopes/on-fleets-by-string", "DeviceFleet/sensors", None),
        *{("deny", "scopes/on-devices", "DeviceFleet/sensors", d)
          for d in ("dev-1", "dev-2", "dev-3")},
    }


# --- selectors -----------------------------------------------------------------------------------
def selector_repo() -> FleetRepo:
    """CAs issuing (team a) and other under root; profiles client and gateway; fleets sensors
    (issuing, client, team a), gateways (issuing, gateway, team b), meters (other, client)."""
    repo = FleetRepo()
    repo.authorities["issuing"]["metadata"]["labels"] = {"team": "a"}
    repo.authorities["other"] = ca_doc("other", parent="root")
    repo.profiles["gateway"] = profile_doc("gateway")
    repo.fleets = {
        "sensors": fleet_doc("sensors", devices("s-1"), labels={"team": "a"}),
        "gateways": fleet_doc("gateways", devices("g-1"), profile="gateway",
                              labels={"team": "b"}),
        "meters": fleet_doc("meters", devices("m-1"), issuer="other"),
    }
    return repo


ALWAYS_FAILING = (rule("fleets", 'fleet.name == ""'), rule("devices", 'device.id == ""'),
                  rule("cas", 'authority.name == ""'))


def hit(findings_set: set[tuple[str, str, str, str | None]]) -> dict[str, set[str]]:
    """rule -> objects (with device) it failed on."""
    result: dict[str, set[str]] = {"fleets": set(), "devices": set(), "cas": set()}
    for _, ref, target, device in findings_set:
        result[ref.split("/")[1]].add(target.split("/")[1] + (f":{device}" if device else ""))
    return result


# CA-only rules under a fleets/profiles selector: see the next test (None: not checked here)
@pytest.mark.parametrize(("selector", "fleets", "cas"), [
    ({}, {"sensors", "gateways", "meters"}, {"root", "issuing", "other"}),
    ({"fleets": ["gateways"]}, {"gateways"}, None),
    ({"profiles": ["client"]}, {"sensors", "meters"}, None),
    ({"authorities": ["other"]}, {"meters"}, {"other"}),
    ({"matchLabels": {"team": "a"}}, {"sensors"}, {"issuing"}),
    ({"fleets": ["sensors", "gateways"], "profiles": ["client"]}, {"sensors"}, None),
    ({"authorities": ["issuing"], "matchLabels": {"team": "b"}}, {"gateways"}, set()),
])
def test_selector_picks_fleets_devices_and_cas(tmp_path: Path, selector: dict[str, object],
                                               fleets: set[str], cas: set[str] | None) -> None:
    repo = selector_repo().add_policy(policy("picky", *ALWAYS_FAILING, selector=selector))
    found = hit(keyed(findings_of(repo, tmp_path, defaults=False)))
    assert found["fleets"] == fleets
    device_of = {"sensors": "s-1", "gateways": "g-1", "meters": "m-1"}
    assert found["devices"] == {f"{name}:{device_of[name]}" for name in fleets}
    if cas is not None:
        assert found["cas"] == cas


def test_a_fleet_selector_limits_ca_rules_to_the_selected_fleets_issuers(
        tmp_path: Path) -> None:
    repo = selector_repo().add_policy(policy(
        "gateways-ca", rule("p384-only", 'authority.keyAlgorithm == "ECDSA-P384"'),
        selector={"fleets": ["gateways"]}))
    assert keyed(findings_of(repo, tmp_path, defaults=False)) == {
        ("deny", "gateways-ca/p384-only", "CertificateAuthority/issuing", None)}


def test_a_disabled_policy_is_not_evaluated_nor_compiled(repo: FleetRepo, tmp_path: Path) -> None:
    repo.add_policy(policy("off", rule("never", 'fleet.name == ""'),
                           rule("broken", "fleet.name =="), disabled=True))
    assert check(repo, tmp_path) == ([], [])


# --- the default set and the repository ----------------------------------------------------------
def test_a_repository_policy_replaces_the_default_of_the_same_name(repo: FleetRepo,
                                                                   tmp_path: Path) -> None:
    repo.profiles["client"]["spec"]["duration"] = "800d"
    repo.authorities["root"]["spec"]["duration"] = "262800h"  # 30 years
    assert keyed(findings_of(repo, tmp_path)) == {
        ("deny", "validity/device-max-validity", "DeviceFleet/sensors", None),
        ("deny", "validity/root-max-validity", "CertificateAuthority/root", None)}
    repo.add_policy(policy("validity", rule(
        "device-max-validity", 'profile.duration <= duration("19200h")',
        message="device certificates may be valid for at most 800 days")))
    assert findings_of(repo, tmp_path) == []  # the whole default policy is replaced
    repo.profiles["client"]["spec"]["duration"] = "801d"
    findings = findings_of(repo, tmp_path)
    assert keyed(findings) == {("deny", "validity/device-max-validity", "DeviceFleet/sensors",
                                None)}
    assert findings[0].message == "device certificates may be valid for at most 800 days"


def test_a_disabled_repository_policy_switches_a_default_off(repo: FleetRepo,
                                                             tmp_path: Path) -> None:
    del repo.authorities["root"]["spec"]["pathLength"]
    assert findings_of(repo, tmp_path) != []
    repo.add_policy(policy("path-length", disabled=True))
    assert findings_of(repo, tmp_path) == []


def test_without_default_policies_only_repository_policies_apply(repo: FleetRepo,
                                                                 tmp_path: Path) -> None:
    del repo.authorities["root"]["spec"]["pathLength"]
    repo.profiles["client"]["spec"]["duration"] = "800d"
    repo.add_policy(policy("own", rule("no-dev-3", 'device.id != "dev-3"')))
    assert keyed(findings_of(repo, tmp_path, defaults=False)) == {
        ("deny", "own/no-dev-3", "DeviceFleet/sensors", "dev-3")}
    assert len(findings_of(repo, tmp_path)) == 3


def test_cli_no_default_policies(repo: FleetRepo, tmp_path: Path) -> None:
    del repo.authorities["root"]["spec"]["pathLength"]
    root = repo.write(tmp_path / "repo")
    denied = invoke("validate", root, rc=1)
    assert ("policy: deny: CertificateAuthority/root: path-length/root-declares-path-length: "
            "a root CA must declare pathLength") in one_line(denied.stderr)
    assert "0 problem(s), 1 policy denial(s)." in one_line(denied.stderr)
    assert invoke("validate", root, "--no-default-policies").stderr == ""
    invoke("plan", root, "--state-dir", tmp_path / "state", rc=1)
    invoke("plan", root, "--state-dir", tmp_path / "state", "--no-default-policies")


# --- broken rules fail closed --------------------------------------------------------------------
BROKEN = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificatePolicy
metadata:
  name: broken
spec:
  rules:
    - name: fine
      expression: fleet.name != ""
      message: fine
    - name: bad-syntax
      message: never evaluated
      expression: |
        fleet.name != "" &&
          device.id ==
"""


def test_unparsable_cel_is_a_problem_naming_file_rule_field_and_line(repo: FleetRepo,
                                                                     tmp_path: Path) -> None:
    root = repo.write(tmp_path / "repo")
    (root / "policies").mkdir()
    (root / "policies" / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    problems, findings = jobs.validate(root, NOW)
    assert findings == []
    assert len(problems) == 1
    problem = problems[0]
    assert (problem.file, problem.line, problem.object, problem.field) == (
        "policies/broken.yaml", 12, "CertificatePolicy/broken", "spec.rules[1].expression")
    # the line inside the expression comes from the CEL parser
    assert problem.message == ("rule 'bad-syntax': invalid CEL expression (syntax error at line "
                               '2, column 13): fleet.name != "" && device.id ==')
    cli = invoke("validate", root, rc=1)
    assert (f"error: policies/broken.yaml:12: CertificatePolicy/broken: "
            f"spec.rules[1].expression: {problem.message}") in one_line(cli.stderr)
    invoke("plan", root, "--state-dir", tmp_path / "state", rc=1)


@pytest.mark.parametrize(("expression", "returned"), [
    ("fleet.name", "StringType"), ("fleet.deviceCount", "IntType"),
    ("fleet.labels", "MapType"), ("profile.duration", "DurationType")])
@pytest.mark.parametrize("action", ["deny", "warn"])
def test_a_rule_not_returning_a_bool_fails_closed(repo: FleetRepo, tmp_path: Path,
                                                  expression: str, returned: str,
                                                  action: str) -> None:
    repo.add_policy(policy("sloppy", rule("not-bool", expression, action=action,
                                          message="must be a bool")))
    findings = findings_of(repo, tmp_path)
    assert keyed(findings) == {(action, "sloppy/not-bool", "DeviceFleet/sensors", None)}
    assert findings[0].message == f"must be a bool (rule returned {returned}, not a bool)"


def test_an_evaluation_error_denies_and_says_so(repo: FleetRepo, tmp_path: Path) -> None:
    repo.add_policy(policy("careless", rule("team-a", 'fleet.labels["team"] == "a"',
                                            message="fleet must belong to team a")))
    findings = findings_of(repo, tmp_path)
    assert keyed(findings) == {("deny", "careless/team-a", "DeviceFleet/sensors", None)}
    message = findings[0].message
    assert message.startswith("fleet must belong to team a (rule could not be evaluated: ")
    assert "team" in message


def test_an_evaluation_error_on_one_device_denies_only_that_device(repo: FleetRepo,
                                                                   tmp_path: Path) -> None:
    repo.fleets["sensors"]["spec"]["devices"][1]["labels"] = {}
    repo.add_policy(policy("sites", rule("known-site", 'device.labels.site == "berlin"')))
    findings = findings_of(repo, tmp_path)
    assert keyed(findings) == {("deny", "sites/known-site", "DeviceFleet/sensors", "dev-2")}
    assert "could not be evaluated" in findings[0].message


# --- has(), `in`, durations and now --------------------------------------------------------------
@pytest.mark.parametrize(("expression", "failing"), [
    ("has(authority.pathLength)", {"other"}),
    ("!has(authority.pathLength)", {"root", "issuing"}),
    ("has(authority.pathLength) && authority.pathLength == 0", {"root", "other"}),
    ("!has(authority.pathLength) || authority.pathLength == 1", {"issuing"}),
    ('has(authority.labels.team) ? authority.labels.team == "a" : true', set()),
    ('!has(authority.labels.team) && authority.name != "root"', {"root", "issuing"}),
    ('"team" in authority.labels', {"root", "other"}),
    ('!("team" in authority.labels) || authority.labels["team"] == "b"', {"issuing"}),
    ('"pathLength" in authority', {"other"}),
])
def test_has_and_in_test_optional_fields(tmp_path: Path, expression: str,
                                         failing: set[str]) -> None:
    repo = FleetRepo()
    repo.authorities["issuing"]["metadata"]["labels"] = {"team": "a"}
    repo.authorities["other"] = ca_doc("other", parent="issuing")
    del repo.authorities["other"]["spec"]["pathLength"]
    repo.add_policy(policy("optional", rule("check", expression)))
    findings = findings_of(repo, tmp_path, defaults=False)
    assert {f.object.split("/")[1] for f in findings} == failing
    assert all("could not be evaluated" not in f.message for f in findings)


def test_has_with_a_space_before_the_parenthesis(tmp_path: Path) -> None:
    repo = FleetRepo()
    repo.add_policy(policy("spaced", rule("check", "!has (authority.labels.team)")))
    assert findings_of(repo, tmp_path, defaults=False) == []


@pytest.mark.parametrize(("expression", "holds"), [
    ('profile.duration <= duration("9552h")', True),
    ('profile.duration == duration("8760h")', True),
    ('profile.duration > duration("8760h")', False),
    ('profile.renewBefore == duration("2920h")', True),  # effective: a third of the lifetime
    ('authority.duration > duration("1h")', True),
    ('authority.duration < duration("1h")', False),
    ('authority.crl.duration == duration("168h")', True),
    ('now > timestamp("2020-01-01T00:00:00Z")', True),
    ('now < timestamp("2020-01-01T00:00:00Z")', False),
    ('now == timestamp("2030-01-01T00:00:00Z")', True),
    ('now + profile.duration < timestamp("2031-01-01T00:00:01Z")', True),
    ('now + profile.duration < timestamp("2031-01-01T00:00:00Z")', False),
])
def test_durations_and_now(repo: FleetRepo, tmp_path: Path, expression: str,
                           holds: bool) -> None:
    repo.add_policy(policy("time", rule("check", expression)))
    findings = findings_of(repo, tmp_path, defaults=False)
    assert all("could not be evaluated" not in f.message for f in findings)
    assert (findings == []) is holds


def test_the_data_rules_see(repo: FleetRepo, tmp_path: Path) -> None:
    repo.profiles["client"]["spec"].update(
        subject={"commonName": "{{ device.id }}", "organization": "ACME"},
        subjectAltNames={"uris": ["urn:acme:{{ fleet.name }}:{{ device.id }}"],
                         "dnsNames": ["{{ device.id }}.acme.example"]})
    repo.fleets["sensors"]["metadata"]["annotations"] = {"owner": "ops"}
    repo.authorities["issuing"]["spec"]["crl"] = {"distributionPoint": "http://crl.example/i"}
    expressions = [
        'authority.name == "issuing" || authority.name == "root"',
        'authority.type == "root" || (authority.parent == "root" && authority.pathLength == 0)',
        'authority.type == "intermediate" || authority.parent == ""',
        'authority.subject.commonName == authority.name + " CA"',
        'authority.keyAlgorithm == "ECDSA-P256" && authority.permittedDNSDomains == []',
        '!("ocspUrl" in authority)',
        'authority.type == "root" || authority.crl.distributionPoint == "http://crl.example/i"',
        'fleet.name == "sensors" && fleet.issuer == "issuing" && fleet.profile == "client"',
        'fleet.deviceCount == 3 && !fleet.suspend && !fleet.decommissioned',
        'fleet.deletionPolicy == "Revoke" && fleet.annotations.owner == "ops"',
        'profile.name == "client" && profile.keyGeneration == "server"',
        'profile.subject.commonName == "{{ device.id }}" && profile.rotationPolicy == "Always"',
        '"client auth" in profile.usages && profile.extensions == []',
        'profile.subjectAltNames.uris.size() == 1',
        'device.subject.commonName == device.id && device.subject.organization == "ACME"',
        'device.uris == ["urn:acme:sensors:" + device.id]',
        'device.dnsNames == [device.id + ".acme.example"] && device.ipAddresses == []',
        'device.labels.site == "berlin" && device.keyAlgorithm == "ECDSA-P256"',
    ]
    repo.add_policy(policy("data", *(rule(f"r{i}", e) for i, e in enumerate(expressions))))
    assert findings_of(repo, tmp_path, defaults=False) == []


# --- devices sharing a rule's result -------------------------------------------------------------
@pytest.mark.parametrize(("expression", "fields"), [
    ('device.keyAlgorithm == "ECDSA-P256"', {"keyAlgorithm"}),
    ('device.labels.site == "berlin" && device.id != ""', {"labels", "id"}),
    ('has(device.labels.site) || fleet.name == "x"', {"labels"}),
    ('device.uris.all(u, u.startsWith("urn:"))', {"uris"}),
    ("size(device) > 0", None),
    ('[device].all(d, d.id != "")', None),
])
def test_the_device_fields_a_rule_reads(expression: str, fields: set[str] | None) -> None:
    from controller.policy.engine import _COMPILED, _device_fields
    found = _device_fields(_COMPILED.compile(expression))
    assert found == (None if fields is None else frozenset(fields))


@pytest.mark.parametrize("limit", [0, 1, 10_000])
def test_devices_equal_in_the_fields_read_share_a_result_with_their_own_id(
        repo: FleetRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    from controller.policy import engine
    monkeypatch.setattr(engine, "MEMO_LIMIT", limit)
    runs: list[str] = []
    run = engine._run
    monkeypatch.setattr(engine, "_run", lambda r, *a: runs.append(r.rule.name) or run(r, *a))
    repo.fleets["sensors"]["spec"]["devices"] = devices("a-1", "a-2", "b-1", "b-2", site="paris")
    repo.fleets["sensors"]["spec"]["devices"][2]["labels"] = {"site": "berlin"}
    repo.add_policy(policy("sites", rule("berlin", 'device.labels.site == "berlin"',
                                         message="berlin only"),
                           rule("algorithm", 'device.keyAlgorithm == "ECDSA-P384"',
                                action="warn")))
    findings = [f for f in findings_of(repo, tmp_path) if f.policy == "sites"]
    assert [(f.rule, f.action, f.device) for f in findings] == [
        ("berlin", "deny", "a-1"), ("berlin", "deny", "a-2"), ("berlin", "deny", "b-2"),
        *[("algorithm", "warn", d) for d in ("a-1", "a-2", "b-1", "b-2")]]
    assert {f.message for f in findings if f.rule == "berlin"} == {"berlin only"}
    assert {f.object for f in findings} == {"DeviceFleet/sensors"}
    # evaluations: all devices share the P-256 result, paris and berlin two (what fits)
    assert (runs.count("algorithm"), runs.count("berlin")) == \
        {0: (4, 4), 1: (4, 2), 10_000: (1, 2)}[limit]


def test_judging_one_fleet_gives_its_and_its_issuers_findings_only(repo: FleetRepo,
                                                                   tmp_path: Path) -> None:
    """What an EST enrollment asks: the same findings as a whole evaluation, for one fleet."""
    from controller.plan.model import Observed
    from controller.policy.engine import evaluate
    from tests.plan.support import planned
    repo.authorities["other"] = ca_doc("other", parent="root")
    repo.fleets["lights"] = fleet_doc("lights", devices("lamp-1", "lamp-2"), issuer="other")
    repo.add_policy(policy("mixed", rule("berlin", 'device.labels.site == "paris"'),
                           rule("named", 'fleet.name == "sensors"'),
                           rule("issuer", 'authority.name == "issuing"')))
    declaration = jobs.load(repo.write(tmp_path / "repo"))
    intents = planned(declaration.desired, Observed(), NOW)[1]
    every = evaluate(declaration.rules, declaration.desired, intents, NOW, declaration.tenancy)
    for fleet, issuer in (("sensors", "issuing"), ("lights", "other")):
        mine = {key: i for key, i in intents.items() if key[0] == fleet}
        judged = evaluate(declaration.rules, declaration.desired, mine, NOW,
                          declaration.tenancy, fleet)
        assert judged == [f for f in every if f.object in (
            f"DeviceFleet/{fleet}", f"CertificateAuthority/{issuer}")]
        assert {f.policy for f in judged} >= {"mixed"}


def test_a_memo_judges_objects_once_a_minute_and_devices_by_the_fields_read(
        repo: FleetRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a server does per enrollment: the same findings as without the memo, with the CA's
    and the fleet's rules and a device rule's result for equal fields evaluated once a minute."""
    from datetime import datetime, timedelta

    from controller.plan.model import Observed
    from controller.policy import engine
    from tests.plan.support import planned
    runs: list[str] = []
    run = engine._run
    monkeypatch.setattr(engine, "_run", lambda r, *a: runs.append(r.rule.name) or run(r, *a))
    repo.fleets["sensors"]["spec"]["devices"] = devices("a-1", "a-2", "a-3", site="paris")
    repo.add_policy(policy("mixed", rule("site", 'device.labels.site == "berlin"'),
                           rule("soon", 'now < timestamp("2030-01-01T00:01:00Z")'),
                           rule("issuer", 'authority.name == "issuing"')))
    declaration = jobs.load(repo.write(tmp_path / "repo"))
    intents = planned(declaration.desired, Observed(), NOW)[1]
    memo = engine.PolicyMemo()

    def judge(device: str, at: datetime) -> list[tuple[str, str | None]]:
        one = {key: i for key, i in intents.items() if key == ("sensors", device)}
        with_memo = engine.evaluate(declaration.rules, declaration.desired, one, at,
                                    declaration.tenancy, "sensors", memo)
        assert with_memo == engine.evaluate(declaration.rules, declaration.desired, one, at,
                                            declaration.tenancy, "sensors")
        return [(f.rule, f.device) for f in with_memo if f.policy == "mixed"]

    assert judge("a-1", NOW) == [("site", "a-1")]
    runs.clear()
    assert judge("a-2", NOW + timedelta(seconds=30)) == [("site", "a-2")]
    assert judge("a-3", NOW + timedelta(seconds=59)) == [("site", "a-3")]
    # only the two calls without the memo evaluated them (same fields: the site result shared)
    assert runs.count("soon") == runs.count("issuer") == runs.count("site") == 2
    runs.clear()
    assert judge("a-1", NOW + timedelta(minutes=1)) == [("site", "a-1"), ("soon", None)]
    assert runs.count("soon") == 2  # a new minute: judged again, with and without the memo


def test_judging_intents_as_they_are_made_finds_what_judging_them_all_finds(
        repo: FleetRepo, tmp_path: Path) -> None:
    """A plan keeps no intent (a million of them would be gigabytes): the policies judge each
    as the planner makes it, with the same findings in the same order, whatever the order the
    devices come in, as judging all of them at the end."""
    import random

    from controller.plan.model import Observed
    from controller.policy.engine import PolicyJudge, evaluate
    from tests.plan.support import planned
    repo.fleets["sensors"]["spec"]["devices"] = (
        devices("s-3", "s-1", site="paris") + devices("s-2", "s-0", site="berlin"))
    repo.fleets["lights"] = fleet_doc("lights", devices("l-2", "l-1", site="paris"))
    repo.add_policy(policy("mixed", rule("berlin", 'device.labels.site == "berlin"'),
                           rule("short", 'device.id.size() < 3', action="warn"),
                           rule("named", 'fleet.name == "sensors"'),
                           rule("issuer", 'authority.name != "issuing"')))
    declaration = jobs.load(repo.write(tmp_path / "repo"))
    kept = planned(declaration.desired, Observed(), NOW)[1]
    every = evaluate(declaration.rules, declaration.desired, kept, NOW, declaration.tenancy)
    assert {(f.rule, f.device) for f in every if f.device} == {
        ("berlin", "s-1"), ("berlin", "s-3"), ("berlin", "l-1"), ("berlin", "l-2"),
        *(("short", device) for _, device in kept)}
    made = list(kept.items())
    random.Random(7).shuffle(made)
    judge = PolicyJudge(declaration.rules, declaration.desired, NOW, declaration.tenancy)
    for (fleet, _), intent in made:
        judge.device(fleet, intent)
    assert judge.findings() == every

    shown = declaration.plan(Observed(), NOW)
    assert list(shown.findings) == every
    assert len(shown.denied) == 1 + len(kept)  # the issuing CA is denied, and all it issues


def test_a_fleet_judged_on_workers_finds_what_one_judge_finds(repo: FleetRepo, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """A large fleet's shares are walked and judged on forked workers: their findings, taken
    back into the plan's judges, are those of judging every device here."""
    rows = [f"dev-{i},{('berlin', 'paris', 'rome')[i % 3]}" for i in range(40)]
    repo.fleets["sensors"]["spec"].pop("devices")
    repo.fleets["sensors"]["spec"]["deviceSource"] = {"path": "fleets/sensors.csv"}
    repo.add_policy(policy("sites", rule("known-site", 'device.labels.site != "rome"'),
                           rule("not-seven", 'device.id != "dev-7"', action="warn")))
    root = repo.write(tmp_path / "repo")
    (root / "fleets" / "sensors.csv").write_text("id,labels.site\n" + "\n".join(rows) + "\n")
    found = []
    for workers in (0, 2):
        monkeypatch.setattr(parallel, "worker_count", lambda items, count=workers: count)
        found.append(jobs.validate(root, NOW, jobs.PolicySource(False)))
    assert found[1] == found[0]
    assert keyed(found[0][1]) == {("deny", "sites/known-site", "DeviceFleet/sensors", f"dev-{i}")
                                  for i in range(2, 40, 3)} | {
        ("warn", "sites/not-seven", "DeviceFleet/sensors", "dev-7")}
