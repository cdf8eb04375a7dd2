"""The default policy set (`policies/*.yaml`): a passing and a failing example for every rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from controller import jobs
from controller.api.desired import Desired
from controller.api.resources import CertificateAuthority
from controller.pki import keys
from controller.plan.intents import DeviceIntent
from controller.plan.model import Observed
from controller.policy.defaults import default_policies
from controller.policy.engine import compile_policies, evaluate
from tests.plan.support import planned

from .support import (
    NOW,
    PROJECT,
    FleetRepo,
    ca_doc,
    check,
    devices,
    findings_of,
    fleet_doc,
    keyed,
    of_rule,
    policy,
    profile_doc,
    rule,
)

DEFAULT_RULES = {
    "ca-access/tenant-ca", "ca-access/same-team",
    "identity/device-id-pattern", "identity/uri-san-prefix", "identity/dns-san-suffix",
    "key-algorithms/ca-key-algorithm", "key-algorithms/device-key-algorithm",
    "key-algorithms/profile-key-algorithm",
    "path-length/root-declares-path-length", "path-length/issuing-ca-is-terminal",
    "validity/device-max-validity", "validity/root-max-validity",
    "validity/intermediate-max-validity", "validity/renewal-window",
    # tests/policy/test_tenants.py
    "tenants/profile", "tenants/ca-key-algorithm", "tenants/profile-key-algorithm",
    "tenants/max-validity", "tenants/device-id",
}


@pytest.fixture(scope="module")
def rsa_2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def csr_pem(key: rsa.RSAPrivateKey, common_name: str) -> str:
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM).decode()


def test_the_default_set_is_the_policies_directory_and_every_rule_is_covered() -> None:
    located, problems = default_policies()
    assert problems == []
    assert sorted(item.resource.name for item in located) == sorted(
        path.stem for path in (PROJECT / "policies").glob("*.yaml"))
    rules, compile_problems = compile_policies(located)
    assert compile_problems == []
    assert {rule.ref for rule in rules} == DEFAULT_RULES  # a new default rule needs tests here
    scopes = {rule.ref: rule.scope for rule in rules}
    assert scopes["key-algorithms/ca-key-algorithm"] == "authority"
    assert scopes["key-algorithms/device-key-algorithm"] == "device"
    assert scopes["key-algorithms/profile-key-algorithm"] == "fleet"
    assert scopes["validity/device-max-validity"] == "fleet"
    assert scopes["ca-access/same-team"] == "fleet"
    assert scopes["tenants/ca-key-algorithm"] == "authority"  # `tenant` is then the CA's
    assert scopes["tenants/max-validity"] == "fleet"
    assert {scopes[f"identity/{name}"] for name in
            ("device-id-pattern", "uri-san-prefix", "dns-san-suffix")} == {"device"}


def test_the_baseline_repository_passes_every_default_policy(
        repo: FleetRepo, tmp_path: Path) -> None:
    assert findings_of(repo, tmp_path) == []


# --- key-algorithms ------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ECDSA-P384", "Ed25519", "RSA-3072", "ML-DSA-65"])
def test_ca_key_algorithm_accepts_strong_keys(repo: FleetRepo, tmp_path: Path,
                                              algorithm: str) -> None:
    repo.authorities["issuing"]["spec"]["keyAlgorithm"] = algorithm
    assert of_rule(findings_of(repo, tmp_path), "key-algorithms/ca-key-algorithm") == []


def test_a_weak_ca_key_is_already_refused_by_the_schema(repo: FleetRepo, tmp_path: Path) -> None:
    repo.authorities["issuing"]["spec"]["keyAlgorithm"] = "RSA-2048"
    problems, findings = check(repo, tmp_path)
    assert [(p.object, p.field) for p in problems] == [
        ("CertificateAuthority/issuing", "spec.keyAlgorithm")]
    assert findings == []


def test_ca_key_algorithm_denies_a_weak_key_that_got_past_the_schema(
        repo: FleetRepo, tmp_path: Path) -> None:
    """Defence in depth: the rule itself refuses RSA-2048 (model_copy skips validation)."""
    declaration = jobs.load(repo.write(tmp_path / "repo"))
    desired = declaration.desired
    issuing = desired.authority("issuing")
    weak = issuing.model_copy(update={
        "spec": issuing.spec.model_copy(update={"keyAlgorithm": "RSA-2048"})})
    assert isinstance(weak, CertificateAuthority)
    located = replace(desired.authorities["issuing"], resource=weak)
    weakened = Desired({**desired.authorities, "issuing": located}, desired.profiles,
                       desired.fleets, desired.policies)
    findings = evaluate(declaration.rules, weakened, {}, NOW)
    assert keyed(findings) == {("deny", "key-algorithms/ca-key-algorithm",
                                "CertificateAuthority/issuing", None)}


def test_device_key_algorithm_accepts_the_devices_own_p384_key(
        repo: FleetRepo, tmp_path: Path, p384: ec.EllipticCurvePrivateKey) -> None:
    repo.profiles["client"]["spec"].update(keyAlgorithm="ECDSA-P384", keyGeneration="device")
    repo.fleets["sensors"]["spec"]["devices"] = [{"id": "dev-1", "publicKey": public_pem(p384)}]
    repo.add_policy(policy("device-data", rule(
        "device-key-is-read", 'device.keyAlgorithm == "ECDSA-P384" && '
        'device.keyGeneration == "device"')))
    assert findings_of(repo, tmp_path) == []


def test_an_rsa_2048_csr_under_an_rsa_profile_is_a_problem_before_any_policy(
        repo: FleetRepo, tmp_path: Path, rsa_2048: rsa.RSAPrivateKey) -> None:
    """Profiles only allow strong algorithms and a device key must match its profile, so the
    weak key never reaches `device-key-algorithm`: it is a declaration problem instead."""
    repo.profiles["client"]["spec"].update(keyAlgorithm="RSA-3072", keyGeneration="device")
    repo.fleets["sensors"]["spec"]["devices"] = [
        {"id": "dev-1", "csr": csr_pem(rsa_2048, "dev-1")}]
    problems, findings = check(repo, tmp_path)
    assert [(p.object, p.device, p.field) for p in problems] == [
        ("DeviceFleet/sensors", "dev-1", "csr")]
    assert "device key is RSA-2048; profile requires RSA-3072" in problems[0].message
    assert of_rule(findings, "key-algorithms/device-key-algorithm") == []


def test_device_key_algorithm_denies_a_weak_device_key(
        repo: FleetRepo, tmp_path: Path, rsa_2048: rsa.RSAPrivateKey) -> None:
    """The rule over an intent carrying an RSA-2048 device key (as if intents let it through)
    in a fleet whose devices bring their own keys (model_copy skips validation)."""
    declaration = jobs.load(repo.write(tmp_path / "repo"))
    desired = declaration.desired
    made = planned(declaration.desired, Observed(), NOW)[1]
    client = desired.profile("client")
    own_keys = client.model_copy(update={
        "spec": client.spec.model_copy(update={"keyGeneration": "device"})})
    profiles = {**desired.profiles,
                "client": replace(desired.profiles["client"], resource=own_keys)}
    weakened = Desired(desired.authorities, profiles, desired.fleets, desired.policies)
    intents = {key: replace(intent, device_key=keys.DeviceKey.of(rsa_2048.public_key()))
               if key == ("sensors", "dev-2") else intent
               for key, intent in made.items()}
    assert all(isinstance(i, DeviceIntent) for i in intents.values())
    findings = evaluate(declaration.rules, weakened, intents, NOW)
    assert keyed(findings) == {("deny", "key-algorithms/device-key-algorithm",
                                "DeviceFleet/sensors", "dev-2")}


def test_device_key_algorithm_is_checked_once_per_fleet_for_server_keys(
        repo: FleetRepo, tmp_path: Path, rsa_2048: rsa.RSAPrivateKey) -> None:
    """With server keygen the key is the profile's, checked by profile-key-algorithm; the
    device rule's fleet-level guard holds, so no device is evaluated (or denied)."""
    declaration = jobs.load(repo.write(tmp_path / "repo"))
    made = planned(declaration.desired, Observed(), NOW)[1]
    intents = {key: replace(intent, device_key=keys.DeviceKey.of(rsa_2048.public_key()))
               for key, intent in made.items()}
    assert evaluate(declaration.rules, declaration.desired, intents, NOW) == []


# --- validity ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("duration", "denied"), [("9552h", False), ("398d", False),
                                                  ("9553h", True), ("800d", True)])
def test_device_certificates_live_at_most_398_days(repo: FleetRepo, tmp_path: Path,
                                                   duration: str, denied: bool) -> None:
    repo.profiles["client"]["spec"]["duration"] = duration
    expected = {("deny", "validity/device-max-validity", "DeviceFleet/sensors", None)}
    assert keyed(findings_of(repo, tmp_path)) == (expected if denied else set())


@pytest.mark.parametrize(("duration", "denied"), [("219000h", False), ("219001h", True)])
def test_roots_live_at_most_25_years(repo: FleetRepo, tmp_path: Path, duration: str,
                                     denied: bool) -> None:
    repo.authorities["root"]["spec"]["duration"] = duration
    expected = {("deny", "validity/root-max-validity", "CertificateAuthority/root", None)}
    assert keyed(findings_of(repo, tmp_path)) == (expected if denied else set())


@pytest.mark.parametrize(("duration", "denied"), [("87600h", False), ("87601h", True)])
def test_intermediates_live_at_most_10_years(repo: FleetRepo, tmp_path: Path, duration: str,
                                             denied: bool) -> None:
    repo.authorities["root"]["spec"]["duration"] = "175200h"
    repo.authorities["issuing"]["spec"]["duration"] = duration
    expected = {("deny", "validity/intermediate-max-validity",
                 "CertificateAuthority/issuing", None)}
    assert keyed(findings_of(repo, tmp_path)) == (expected if denied else set())


@pytest.mark.parametrize(("profile_spec", "warned"), [
    ({"renewBefore": "24h"}, False),
    ({"renewBefore": "23h"}, True),
    ({"duration": "72h"}, False),  # effective renewBefore: a third, 24h
    ({"duration": "48h"}, True),  # effective renewBefore: 16h
])
def test_renewal_window_warns_under_a_day(repo: FleetRepo, tmp_path: Path,
                                          profile_spec: dict[str, str], warned: bool) -> None:
    repo.profiles["client"]["spec"].update(profile_spec)
    expected = {("warn", "validity/renewal-window", "DeviceFleet/sensors", None)}
    assert keyed(findings_of(repo, tmp_path)) == (expected if warned else set())


# --- path-length ---------------------------------------------------------------------------------
def test_a_root_must_declare_its_path_length(repo: FleetRepo, tmp_path: Path) -> None:
    del repo.authorities["root"]["spec"]["pathLength"]
    findings = findings_of(repo, tmp_path)
    assert keyed(findings) == {("deny", "path-length/root-declares-path-length",
                                "CertificateAuthority/root", None)}
    repo.authorities["root"]["spec"]["pathLength"] = 0
    assert findings_of(repo, tmp_path) == []


@pytest.mark.parametrize(("path_length", "warned"), [(0, False), (1, True), (None, True)])
def test_an_issuing_ca_should_be_terminal(repo: FleetRepo, tmp_path: Path,
                                          path_length: int | None, warned: bool) -> None:
    spec = repo.authorities["issuing"]["spec"]
    if path_length is None:
        del spec["pathLength"]
    else:
        spec["pathLength"] = path_length
    expected = {("warn", "path-length/issuing-ca-is-terminal", "CertificateAuthority/issuing",
                 None)}
    assert keyed(findings_of(repo, tmp_path)) == (expected if warned else set())


def test_a_root_never_gets_the_terminal_warning(repo: FleetRepo, tmp_path: Path) -> None:
    repo.authorities["root"]["spec"]["pathLength"] = 8
    assert findings_of(repo, tmp_path) == []


# --- identity ------------------------------------------------------------------------------------
def test_device_ids_must_match_the_fleets_pattern(repo: FleetRepo, tmp_path: Path) -> None:
    repo.fleets["sensors"]["spec"]["devices"] = devices("dev-1", "dev-22", "legacy-7")
    assert findings_of(repo, tmp_path) == []  # no annotation: no constraint
    repo.fleets["sensors"]["metadata"]["annotations"] = {
        "fleetpki.io/device-id-pattern": "^dev-[0-9]+$"}
    findings = findings_of(repo, tmp_path)
    assert keyed(findings) == {("deny", "identity/device-id-pattern", "DeviceFleet/sensors",
                                "legacy-7")}
    assert findings[0].message == ("device id does not match the fleet's "
                                   "fleetpki.io/device-id-pattern")


@pytest.mark.parametrize(("prefix", "denied"), [("urn:acme:device:sensors:", False),
                                                ("urn:acme:device:gateways:", True)])
def test_uri_sans_must_start_with_the_fleets_prefix(repo: FleetRepo, tmp_path: Path,
                                                    prefix: str, denied: bool) -> None:
    repo.profiles["client"]["spec"]["subjectAltNames"] = {
        "uris": ["urn:acme:device:{{ fleet.name }}:{{ device.id }}"]}
    repo.fleets["sensors"]["metadata"]["annotations"] = {"fleetpki.io/uri-prefix": prefix}
    expected = {("deny", "identity/uri-san-prefix", "DeviceFleet/sensors", device)
                for device in ("dev-1", "dev-2", "dev-3")}
    assert keyed(findings_of(repo, tmp_path)) == (expected if denied else set())


@pytest.mark.parametrize(("suffix", "denied"), [(".sensors.acme.example", False),
                                                (".gw.acme.example", True)])
def test_dns_sans_must_end_with_the_fleets_suffix(repo: FleetRepo, tmp_path: Path,
                                                  suffix: str, denied: bool) -> None:
    repo.profiles["client"]["spec"]["subjectAltNames"] = {
        "dnsNames": ["{{ device.id }}.sensors.acme.example"]}
    repo.fleets["sensors"]["metadata"]["annotations"] = {"fleetpki.io/dns-suffix": suffix}
    expected = {("deny", "identity/dns-san-suffix", "DeviceFleet/sensors", device)
                for device in ("dev-1", "dev-2", "dev-3")}
    assert keyed(findings_of(repo, tmp_path)) == (expected if denied else set())


def test_identity_annotations_hold_vacuously_without_sans(repo: FleetRepo,
                                                          tmp_path: Path) -> None:
    repo.fleets["sensors"]["metadata"]["annotations"] = {
        "fleetpki.io/uri-prefix": "urn:nowhere:", "fleetpki.io/dns-suffix": ".nowhere.example"}
    assert findings_of(repo, tmp_path) == []


# --- ca-access -----------------------------------------------------------------------------------
def teams_repo(ca_team: str | None, fleet_team: str | None) -> FleetRepo:
    repo = FleetRepo()
    if ca_team:
        repo.authorities["issuing"]["metadata"]["labels"] = {"team": ca_team}
    if fleet_team:
        repo.fleets["sensors"]["metadata"]["labels"] = {"team": fleet_team}
    return repo


@pytest.mark.parametrize(("ca_team", "fleet_team", "denied"), [
    ("b", "a", True),  # another team's CA
    ("b", None, True),  # a team CA does not issue to fleets without a team
    ("a", "a", False),
    (None, "a", False),  # a CA without a team is shared
    (None, None, False),
])
def test_a_fleet_only_issues_from_its_teams_ca(tmp_path: Path, ca_team: str | None,
                                               fleet_team: str | None, denied: bool) -> None:
    findings = findings_of(teams_repo(ca_team, fleet_team), tmp_path)
    expected = {("deny", "ca-access/same-team", "DeviceFleet/sensors", None)}
    assert keyed(findings) == (expected if denied else set())
    if denied:
        assert "labels.team must match the CA's" in findings[0].message


def test_team_labels_across_two_cas(tmp_path: Path) -> None:
    repo = FleetRepo()
    repo.authorities["issuing"]["metadata"]["labels"] = {"team": "a"}
    repo.authorities["shared"] = ca_doc("shared", parent="root")
    repo.fleets = {
        "a-on-a": fleet_doc("a-on-a", devices("a-1"), labels={"team": "a"}),
        "b-on-a": fleet_doc("b-on-a", devices("b-1"), labels={"team": "b"}),
        "b-on-shared": fleet_doc("b-on-shared", devices("b-2"), issuer="shared",
                                 labels={"team": "b"}),
    }
    repo.profiles["client"] = profile_doc("client")
    assert keyed(findings_of(repo, tmp_path)) == {
        ("deny", "ca-access/same-team", "DeviceFleet/b-on-a", None)}
