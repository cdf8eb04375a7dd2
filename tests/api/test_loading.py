"""Loading a repository: every problem names file, line, object and field."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.api.problems import InvalidDeclaration, Problem
from controller.api.resources import Revocation
from controller.jobs import load, validate
from controller.sources.policies import PolicySource
from controller.sources.repo import load_repository

from .support import FLEET, HEADER, PROFILE, ROOT_CA, MakeRepo, line_of, only

NOW = datetime(2030, 1, 1, tzinfo=UTC)
EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "examples" / "fleet-repo"
FLEET_FILE = "fleets/sensors.yaml"


def fleet_with(spec_tail: str = "", devices: str = "    - id: dev-1\n    - id: dev-2\n") -> str:
    """The fleet of the minimal repo with other devices and extra `spec` lines."""
    head = FLEET.split("  devices:\n")[0]
    return head + ("  devices:\n" + devices if devices else "") + spec_tail


def with_source(path: str, devices: str = "") -> str:
    return fleet_with(f"  deviceSource:\n    path: {path}\n", devices)


# --- valid repositories --------------------------------------------------------------------


def test_minimal_repo_loads_without_problems(make_repo: MakeRepo) -> None:
    desired, problems = load_repository(make_repo())
    assert problems == []
    assert sorted(desired.authorities) == ["issuing", "root"]
    assert list(desired.profiles) == ["client"]
    assert [d.id for d in desired.fleets["sensors"].device_set.parsed[0]] == ["dev-1", "dev-2"]
    assert desired.authorities_in_order() == ["root", "issuing"]
    assert validate(make_repo(), NOW, policies=PolicySource(defaults=False))[0] == []


def test_example_repo_is_valid() -> None:
    desired, problems = load_repository(EXAMPLE_REPO)
    assert [str(p) for p in problems] == []
    rows = (EXAMPLE_REPO / "fleets" / "sensors.csv").read_text().strip().splitlines()
    assert len(desired.fleets["sensors"].device_set.parsed[0]) == len(rows) - 1 >= 1000
    assert desired.fleets["sensors"].device_set.lines["sensor-0001"] == ("fleets/sensors.csv", 2)
    assert validate(EXAMPLE_REPO, NOW) == ([], [])  # default policies included


def test_documents_of_other_apis_and_empty_documents_are_ignored(make_repo: MakeRepo) -> None:
    other = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\n---\n# only a comment\n"
    desired, problems = load_repository(make_repo({"k8s/configmap.yaml": other}))
    assert problems == []
    assert list(desired.fleets) == ["sensors"]


def test_hidden_directories_are_not_read(make_repo: MakeRepo) -> None:
    desired, problems = load_repository(make_repo({".github/broken.yaml": "a: [\n"}))
    assert problems == []
    assert list(desired.fleets) == ["sensors"]


def test_a_name_may_be_reused_across_kinds(make_repo: MakeRepo) -> None:
    profile = PROFILE.replace("name: client", "name: issuing")
    fleet = FLEET.replace("name: client", "name: issuing")
    desired, problems = load_repository(
        make_repo({"profiles.yaml": profile, FLEET_FILE: fleet})
    )
    assert problems == []
    assert "issuing" in desired.profiles and "issuing" in desired.authorities


def test_not_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDeclaration, match="not a directory"):
        load_repository(tmp_path / "missing")


# --- schema problems -----------------------------------------------------------------------


def test_unknown_field_names_file_line_object_and_field(make_repo: MakeRepo) -> None:
    profile = PROFILE.replace("  keyAlgorithm:", "  keyAlgoritm:")
    _, problems = load_repository(make_repo({"profiles.yaml": profile}))
    problem = only(problems, field="spec.keyAlgoritm")
    assert problem.file == "profiles.yaml"
    assert problem.line == line_of(profile, "keyAlgoritm") == 6
    assert problem.object == "CertificateProfile/client"
    assert "unknown field" in problem.message
    assert str(problem) == (
        f"profiles.yaml:6: CertificateProfile/client: spec.keyAlgoritm: {problem.message}"
    )


def test_unknown_field_in_a_list_item_names_the_index(make_repo: MakeRepo) -> None:
    fleet = fleet_with(devices="    - id: dev-1\n    - id: dev-2\n      lables: {site: x}\n")
    _, problems = load_repository(make_repo({FLEET_FILE: fleet}))
    problem = only(problems, field="spec.devices[1].lables")
    assert (problem.file, problem.line) == (FLEET_FILE, line_of(fleet, "lables"))
    assert problem.object == "DeviceFleet/sensors"


def test_wrong_type(make_repo: MakeRepo) -> None:
    fleet = fleet_with("  suspend: sometimes\n")
    _, problems = load_repository(make_repo({FLEET_FILE: fleet}))
    problem = only(problems, field="spec.suspend")
    assert problem.line == line_of(fleet, "suspend:")
    assert "bool" in problem.message


def test_bad_enum_value_lists_the_allowed_ones(make_repo: MakeRepo) -> None:
    profile = PROFILE.replace("ECDSA-P256", "RSA-1024")
    _, problems = load_repository(make_repo({"profiles.yaml": profile}))
    problem = only(problems)
    assert problem.field == "spec.keyAlgorithm"
    assert problem.line == line_of(profile, "RSA-1024")
    assert "ECDSA-P256" in problem.message and "RSA-3072" in problem.message


def test_invalid_duration_is_a_field_problem(make_repo: MakeRepo) -> None:
    profile = PROFILE.replace("8760h", "1 year")
    _, problems = load_repository(make_repo({"profiles.yaml": profile}))
    problem = only(problems, field="spec.duration")
    assert problem.line == line_of(profile, "duration:")
    assert "invalid duration '1 year'" in problem.message


def test_invalid_yaml_gives_the_line(make_repo: MakeRepo) -> None:
    broken = HEADER + "kind: DeviceFleet\nmetadata:\n  name: x: y\n"
    _, problems = load_repository(make_repo({"broken.yaml": broken}))
    problem = only(problems, file="broken.yaml")
    assert problem.message.startswith("invalid YAML")
    assert problem.line == 4
    assert str(problem).startswith("broken.yaml:4: invalid YAML")


def test_unknown_kind(make_repo: MakeRepo) -> None:
    text = HEADER + "kind: DeviceFlete\nmetadata:\n  name: x\n"
    _, problems = load_repository(make_repo({"typo.yaml": text}))
    problem = only(problems, file="typo.yaml")
    assert (problem.line, problem.field) == (2, "kind")
    assert "DeviceFlete" in problem.message and "DeviceFleet" in problem.message


def test_mistyped_fleetpki_api_version_is_not_silently_ignored(make_repo: MakeRepo) -> None:
    fleet = FLEET.replace("fleetpki.io/v1alpha1", "fleetpki.io/v1beta1")
    _, problems = load_repository(make_repo({FLEET_FILE: fleet}))
    problem = only(problems, file=FLEET_FILE)
    assert problem.field == "apiVersion"


def test_invalid_object_is_not_reported_again_as_a_missing_reference(make_repo: MakeRepo) -> None:
    profile = PROFILE.replace("ECDSA-P256", "RSA-1024")
    desired, problems = load_repository(make_repo({"profiles.yaml": profile}))
    assert [p.object for p in problems] == ["CertificateProfile/client"]
    assert "sensors" not in desired.fleets


def test_duplicate_object_names_point_at_both_declarations(make_repo: MakeRepo) -> None:
    # Files are read in sorted order: `extra/` comes before `profiles.yaml`.
    _, problems = load_repository(make_repo({"extra/profiles.yaml": "# again\n" + PROFILE}))
    problem = only(problems)
    assert (problem.file, problem.line) == ("profiles.yaml", line_of(PROFILE, "name: client"))
    assert (problem.object, problem.field) == ("CertificateProfile/client", "metadata.name")
    assert "first declared at extra/profiles.yaml:2" in problem.message


# --- CA hierarchy and references -----------------------------------------------------------


def ca(name: str, parent: str | None) -> str:
    kind = "intermediate" if parent else "root"
    parent_ref = f"  parentRef:\n    name: {parent}\n" if parent else ""
    return (HEADER + f"kind: CertificateAuthority\nmetadata:\n  name: {name}\nspec:\n"
            f"  type: {kind}\n{parent_ref}  subject:\n    commonName: {name}\n")


def test_intermediate_without_parent_ref(make_repo: MakeRepo) -> None:
    text = ROOT_CA + "---\n" + ca("issuing", None).replace("type: root", "type: intermediate")
    _, problems = load_repository(make_repo({"authorities.yaml": text}))
    problem = only(problems, object="CertificateAuthority/issuing")
    assert problem.file == "authorities.yaml"
    assert problem.field == "spec.parentRef"
    assert problem.message == "required for an intermediate CA"


def test_root_with_parent_ref(make_repo: MakeRepo) -> None:
    text = ca("root", "issuing").replace("type: intermediate", "type: root")
    _, problems = load_repository(make_repo({"authorities.yaml": text + "---\n" +
                                             ca("issuing", "root")}))
    assert ("spec.parentRef", "a root CA has no parent") in [(p.field, p.message)
                                                             for p in problems]


def test_parent_ref_to_unknown_ca(make_repo: MakeRepo) -> None:
    text = ROOT_CA + "---\n" + ca("issuing", "nope")
    _, problems = load_repository(make_repo({"authorities.yaml": text}))
    problem = only(problems, field="spec.parentRef.name")
    assert problem.object == "CertificateAuthority/issuing"
    assert problem.line == line_of(text, "name: nope")
    assert "'nope'" in problem.message


def test_ca_cycle_is_reported_for_every_member(make_repo: MakeRepo) -> None:
    text = ca("issuing", "other") + "---\n" + ca("other", "issuing") + "---\n" + ca("root", None)
    _, problems = load_repository(make_repo({"authorities.yaml": text}))
    cycles = [p for p in problems if "cycle" in p.message]
    assert sorted(p.object or "" for p in cycles) == [
        "CertificateAuthority/issuing", "CertificateAuthority/other"]
    assert {p.field for p in cycles} == {"spec.parentRef.name"}


@pytest.mark.parametrize(("field", "old", "new"), [
    ("spec.issuerRef.name", "name: issuing", "name: nope"),
    ("spec.profileRef.name", "name: client", "name: nope"),
])
def test_unknown_issuer_or_profile(make_repo: MakeRepo, field: str, old: str, new: str) -> None:
    desired, problems = load_repository(make_repo({FLEET_FILE: FLEET.replace(old, new)}))
    problem = only(problems)
    assert (problem.file, problem.object, problem.field) == (FLEET_FILE, "DeviceFleet/sensors",
                                                             field)
    assert "'nope'" in problem.message
    assert "sensors" not in desired.fleets


# --- devices -------------------------------------------------------------------------------


def test_duplicate_inline_device_ids(make_repo: MakeRepo) -> None:
    fleet = fleet_with(devices="    - id: dev-1\n    - id: dev-2\n    - id: dev-1\n")
    desired, problems = load_repository(make_repo({FLEET_FILE: fleet}))
    problem = only(problems, field="id")
    assert problem.file == FLEET_FILE
    assert problem.object == "DeviceFleet/sensors"
    assert "duplicate device id 'dev-1'" in problem.message
    assert f"first at {FLEET_FILE}:" in problem.message
    assert [d.id for d in desired.fleets["sensors"].device_set.parsed[0]] == ["dev-1", "dev-2"]


def test_duplicate_inline_device_ids_name_both_lines(make_repo: MakeRepo) -> None:
    fleet = fleet_with(devices="    - id: dev-1\n    - id: dev-2\n    - id: dev-1\n")
    _, problems = load_repository(make_repo({FLEET_FILE: fleet}))
    problem = only(problems, field="id")
    first, second = line_of(fleet, "id: dev-1"), line_of(fleet, "id: dev-1", 2)
    assert problem.line == second
    assert f"first at {FLEET_FILE}:{first}" in problem.message


def test_duplicate_device_id_between_inline_and_csv(make_repo: MakeRepo) -> None:
    csv_text = "id\ndev-3\ndev-1\n"
    _, problems = load_repository(make_repo({FLEET_FILE: with_source("fleets/more.csv",
                                                                      "    - id: dev-1\n"),
                                             "fleets/more.csv": csv_text}))
    problem = only(problems)
    assert (problem.file, problem.line, problem.field) == ("fleets/more.csv", 3, "id")
    assert "duplicate device id 'dev-1'" in problem.message
    assert FLEET_FILE in problem.message  # the other place
    assert str(problem).startswith("fleets/more.csv:3: DeviceFleet/sensors: id: duplicate")


def test_csv_devices_with_labels_and_revocation(make_repo: MakeRepo) -> None:
    csv_text = "id,labels.site,revoked\ns-1,berlin,\ns-2,,keyCompromise\n"
    repo = make_repo({FLEET_FILE: with_source("fleets/s.csv"), "fleets/s.csv": csv_text})
    desired, problems = load_repository(repo)
    assert problems == []
    decl = desired.fleets["sensors"]
    devices = {d.id: d for d in decl.device_set.parsed[0]}
    assert devices["s-1"].labels == {"site": "berlin"} and devices["s-1"].revoked is None
    assert devices["s-2"].labels == {}
    assert devices["s-2"].revoked == Revocation(reason="keyCompromise")
    assert decl.device_set.lines["s-2"] == ("fleets/s.csv", 3)


def test_jsonl_devices(make_repo: MakeRepo) -> None:
    jsonl = '{"id": "j-1", "labels": {"site": "x"}}\n\n{"id": "j-2"}\n'
    repo = make_repo({FLEET_FILE: with_source("fleets/s.jsonl"), "fleets/s.jsonl": jsonl})
    desired, problems = load_repository(repo)
    assert problems == []
    decl = desired.fleets["sensors"]
    assert [d.id for d in decl.device_set.parsed[0]] == ["j-1", "j-2"]
    assert decl.device_set.lines["j-2"] == ("fleets/s.jsonl", 3)


def test_content_hash_follows_the_device_source(make_repo: MakeRepo) -> None:
    files = {FLEET_FILE: with_source("fleets/s.csv"), "fleets/s.csv": "id\na\n"}
    before = load_repository(make_repo(files))[0].fleets["sensors"].content_hash
    again = load_repository(make_repo(files))[0].fleets["sensors"].content_hash
    after = load_repository(make_repo({**files, "fleets/s.csv": "id\nb\n"}))[0]
    assert before == again != after.fleets["sensors"].content_hash


def test_missing_device_source_is_an_error_never_zero_devices(make_repo: MakeRepo) -> None:
    repo = make_repo({FLEET_FILE: with_source("fleets/gone.csv")})
    desired, problems = load_repository(repo)
    problem = only(problems)
    assert (problem.file, problem.object, problem.field) == (
        FLEET_FILE, "DeviceFleet/sensors", "spec.deviceSource.path")
    assert "'fleets/gone.csv'" in problem.message and "never zero devices" in problem.message
    assert desired.fleets["sensors"].device_set.parsed[0] == ()
    with pytest.raises(InvalidDeclaration):
        load(repo)


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("s.csv", "id,labels.site\na,x\nb,y,z\n", "line 3: more values than header columns"),
    ("s.csv", "name,labels.site\na,x\n", "needs a header row with an 'id' column"),
    ("s.csv", "", "needs a header row with an 'id' column"),
    ("s.jsonl", '{"id": "a"}\n{"id": \n', "line 2: invalid JSON"),
])
def test_malformed_device_source(make_repo: MakeRepo, name: str, text: str,
                                 expected: str) -> None:
    repo = make_repo({FLEET_FILE: with_source(f"fleets/{name}"), f"fleets/{name}": text})
    desired, problems = load_repository(repo)
    problem = only(problems)
    assert problem.field == "spec.deviceSource.path"
    assert f"'fleets/{name}'" in problem.message
    assert expected in problem.message
    assert desired.fleets["sensors"].device_set.parsed[0] == ()


def test_jsonl_format_can_be_forced(make_repo: MakeRepo) -> None:
    fleet = fleet_with("  deviceSource:\n    path: fleets/devices.txt\n    format: jsonl\n")
    repo = make_repo({FLEET_FILE: fleet, "fleets/devices.txt": '{"id": "t-1"}\n'})
    desired, problems = load_repository(repo)
    assert problems == []
    devices, _, _ = desired.fleets["sensors"].device_set.parsed
    assert [d.id for d in devices] == ["dev-1", "dev-2", "t-1"]


def test_device_id_pattern_violation_in_csv_names_csv_file_and_line(make_repo: MakeRepo) -> None:
    csv_text = "id,labels.site\nok-1,x\nnot ok!,y\n"
    repo = make_repo({FLEET_FILE: with_source("fleets/s.csv"), "fleets/s.csv": csv_text})
    _, problems = load_repository(repo)
    problem = only(problems)
    assert (problem.file, problem.line, problem.object, problem.field) == (
        "fleets/s.csv", 3, "DeviceFleet/sensors", "id")
    assert "letters, digits" in problem.message and "not ok!" in problem.message


def test_bad_revocation_reason_in_jsonl(make_repo: MakeRepo) -> None:
    jsonl = '{"id": "a"}\n{"id": "b", "revoked": {"reason": "stolen"}}\n'
    repo = make_repo({FLEET_FILE: with_source("s.jsonl"), "s.jsonl": jsonl})
    _, problems = load_repository(repo)
    problem = only(problems)
    assert (problem.file, problem.line, problem.field) == ("s.jsonl", 2, "revoked.reason")


def test_csv_with_byte_order_mark(make_repo: MakeRepo) -> None:
    repo = make_repo({FLEET_FILE: with_source("s.csv"), "s.csv": "\ufeffid\nb-1\n"})
    desired, problems = load_repository(repo)
    assert problems == []
    assert "b-1" in [d.id for d in desired.fleets["sensors"].device_set.parsed[0]]


@pytest.mark.parametrize("path", ["../x.csv", "fleets/../../x.csv", "/etc/passwd"])
def test_device_source_may_not_leave_the_repository(make_repo: MakeRepo, path: str) -> None:
    fleet = with_source(path)
    _, problems = load_repository(make_repo({FLEET_FILE: fleet}))
    problem = only(problems)
    assert (problem.file, problem.field) == (FLEET_FILE, "spec.deviceSource.path")
    assert problem.line == line_of(fleet, "path:")
    assert "stay inside" in problem.message


def test_device_source_symlink_out_of_the_repository(make_repo: MakeRepo, tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("id\nstolen\n")
    repo = make_repo({FLEET_FILE: with_source("fleets/link.csv")})
    (repo / "fleets" / "link.csv").symlink_to(outside)
    desired, problems = load_repository(repo)
    problem = only(problems)
    assert problem.field == "spec.deviceSource.path"
    assert "leaves the repository" in problem.message
    assert desired.fleets["sensors"].device_set.parsed[0] == ()


@pytest.mark.parametrize(("source", "field"), [
    ("    configMapRef:\n      - name: sensors-1\n", "configMapRef"),
    ("    sourceRef:\n      kind: GitRepository\n      name: fleet-repo\n    path: x.csv\n",
     "sourceRef"),
])
def test_kubernetes_device_sources_are_refused_in_git_mode(make_repo: MakeRepo, source: str,
                                                           field: str) -> None:
    fleet = fleet_with("  deviceSource:\n" + source)
    desired, problems = load_repository(make_repo({FLEET_FILE: fleet, "x.csv": "id\nx-1\n"}))
    problem = only(problems)
    assert (problem.file, problem.object, problem.field) == (
        FLEET_FILE, "DeviceFleet/sensors", f"spec.deviceSource.{field}")
    assert problem.line == line_of(fleet, f"{field}:")
    assert problem.message.startswith("only in Kubernetes mode (fleetpki operator)")
    assert desired.fleets["sensors"].device_set.parsed[0] == ()


# --- templates and lifetimes ---------------------------------------------------------------


def test_template_with_unknown_field(make_repo: MakeRepo) -> None:
    profile = PROFILE.replace("{{ device.id }}", "{{ device.secret }}")
    _, problems = load_repository(make_repo({"profiles.yaml": profile}))
    problem = only(problems)
    assert (problem.file, problem.object) == ("profiles.yaml", "CertificateProfile/client")
    assert problem.field == "spec.subject.commonName"
    assert problem.line == line_of(profile, "commonName")
    assert "unknown template field {{ device.secret }}" in problem.message


def test_template_with_unbalanced_braces(make_repo: MakeRepo) -> None:
    profile = PROFILE.replace("{{ device.id }}", "{{ device.id }")
    _, problems = load_repository(make_repo({"profiles.yaml": profile}))
    problem = only(problems, file="profiles.yaml")
    assert problem.field == "spec.subject.commonName"
    assert "unbalanced braces" in problem.message


def test_extension_template_is_checked(make_repo: MakeRepo) -> None:
    profile = PROFILE + ("  extensions:\n    - oid: 1.3.6.1.4.1.55555.1.1\n"
                         "      value: '{{ fleet.secret }}'\n")
    _, problems = load_repository(make_repo({"profiles.yaml": profile}))
    problem = only(problems, file="profiles.yaml")
    assert problem.field == "spec.extensions[0].value"
    assert problem.line == line_of(profile, "value:")


def test_missing_label_is_a_plan_time_problem_naming_the_device(make_repo: MakeRepo) -> None:
    profile = PROFILE + "    organization: '{{ device.labels.site }}'\n"
    fleet = fleet_with(devices="    - id: dev-1\n      labels: {site: berlin}\n    - id: dev-2\n")
    repo = make_repo({"profiles.yaml": profile, FLEET_FILE: fleet})
    assert load_repository(repo)[1] == []  # the declaration itself is fine
    problems = validate(repo, NOW, policies=PolicySource(defaults=False))[0]
    problem = only(problems)
    assert problem.device == "dev-2"
    assert (problem.file, problem.object, problem.field) == (FLEET_FILE, "DeviceFleet/sensors",
                                                             "labels")
    assert "'dev-2'" in problem.message and "'site'" in problem.message
    assert problem.as_dict()["device"] == "dev-2"


def test_missing_label_of_a_csv_device_points_at_the_csv_line(make_repo: MakeRepo) -> None:
    profile = PROFILE + "    organization: '{{ device.labels.site }}'\n"
    csv_text = "id,labels.site\ns-1,x\ns-2,\n"
    repo = make_repo({"profiles.yaml": profile, FLEET_FILE: with_source("s.csv", ""),
                      "s.csv": csv_text})
    problem = only(validate(repo, NOW, policies=PolicySource(defaults=False))[0])
    assert (problem.file, problem.line, problem.device) == ("s.csv", 3, "s-2")


def test_validate_reports_device_key_problems(make_repo: MakeRepo) -> None:
    profile = PROFILE.replace("duration:", "keyGeneration: device\n  duration:")
    problems = validate(make_repo({"profiles.yaml": profile}), NOW,
                        policies=PolicySource(defaults=False))[0]
    assert sorted((p.device, p.field) for p in problems) == [("dev-1", "csr"), ("dev-2", "csr")]


def test_validate_stops_at_declaration_problems(make_repo: MakeRepo) -> None:
    problems = validate(make_repo({FLEET_FILE: FLEET.replace("name: client", "name: x")}), NOW,
                        policies=PolicySource(defaults=False))[0]
    assert [p.field for p in problems] == ["spec.profileRef.name"]


@pytest.mark.parametrize(("file", "text"), [
    ("profiles.yaml", PROFILE + "  renewBefore: 8760h\n"),
    ("profiles.yaml", PROFILE + "  renewBefore: 400d\n"),
    ("authorities.yaml", ROOT_CA + "  duration: 10d\n  renewBefore: 240h\n"),
])
def test_renew_before_must_be_shorter_than_duration(make_repo: MakeRepo, file: str,
                                                    text: str) -> None:
    _, problems = load_repository(make_repo({file: text}))
    problem = only(problems, file=file)
    assert problem.field == "spec.renewBefore"
    assert problem.line == line_of(text, "renewBefore")
    assert problem.message == "must be shorter than duration"


def test_renew_before_shorter_than_duration_is_fine(make_repo: MakeRepo) -> None:
    desired, problems = load_repository(make_repo({"profiles.yaml": PROFILE +
                                                   "  renewBefore: 720h\n"}))
    assert problems == []
    assert desired.profile("client").spec.renewBefore is not None


def test_object_level_problem_points_at_its_key(make_repo: MakeRepo) -> None:
    profile = PROFILE + "  renewBefore: 8760h\n"
    _, problems = load_repository(make_repo({"profiles.yaml": profile}))
    problem = only(problems, file="profiles.yaml")
    assert problem.line in (line_of(profile, "spec:"), line_of(profile, "renewBefore"))


# --- Problem ---------------------------------------------------------------------------------


def test_problem_string_format() -> None:
    full = Problem("a.yaml", "boom", 3, "DeviceFleet/x", "spec.suspend")
    assert str(full) == "a.yaml:3: DeviceFleet/x: spec.suspend: boom"
    assert str(Problem("a.yaml", "boom")) == "a.yaml: boom"
    assert str(Problem("a.yaml", "boom", None, "DeviceFleet/x")) == "a.yaml: DeviceFleet/x: boom"
    assert "device" not in full.as_dict()
    error = InvalidDeclaration([full, Problem("b.yaml", "bad", 1)])
    assert str(error) == "a.yaml:3: DeviceFleet/x: spec.suspend: boom\nb.yaml:1: bad"


def test_invalid_declaration_keeps_its_problems_when_pickled() -> None:
    """Raised on a forked worker (a fleet checked or walked apart), it reaches the parent
    through pickle: the problems, not their text, must arrive."""
    problems = [Problem("fleets/a.csv", "bad row", 3, "DeviceFleet/a", "id", "d-1"),
                Problem("fleets/a.csv", "another", 9)]
    again = pickle.loads(pickle.dumps(InvalidDeclaration(problems)))
    assert isinstance(again, InvalidDeclaration) and again.problems == problems
    assert str(again) == str(InvalidDeclaration(problems))
