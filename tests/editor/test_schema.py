"""The JSON Schemas for editors: current, faithful to the loader, and wired up by modelines."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.loading import parse_documents
from controller.api.resources import API_VERSION, KINDS
from controller.api.schema import json_schema, render_schemas
from controller.pki.usages import USAGE_NAMES

from .support import EXAMPLE_REPO, POLICIES, ROOT, SCHEMA_DIR, fleetpki

MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")
Document = tuple[str, int, dict[str, Any]]


def documents(*directories: Path) -> Iterator[Document]:
    """(file, index, document) of every fleetpki document under the directories."""
    for directory in directories:
        for path in sorted([*directory.rglob("*.yaml"), *directory.rglob("*.yml")]):
            for index, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
                if isinstance(doc, dict) and doc.get("apiVersion") == API_VERSION:
                    yield str(path.relative_to(ROOT)), index, doc


def example_document(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(doc for _, _, doc in documents(EXAMPLE_REPO) if doc["kind"] == kind))


def validator(kind: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMA_DIR / f"{kind}.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(kind: str, doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(kind).iter_errors(doc)]


def loader_problems(doc: dict[str, Any]) -> list[str]:
    _, problems = parse_documents(yaml.safe_dump(doc, sort_keys=False), "doc.yaml")
    return [str(p) for p in problems]


# --- the committed schemas -------------------------------------------------------------------


def test_committed_schemas_are_up_to_date() -> None:
    rendered = render_schemas()
    committed = {p.name: p.read_text(encoding="utf-8") for p in SCHEMA_DIR.glob("*.json")}
    assert set(committed) == set(rendered), "run `fleetpki schema --out docs/schema`"
    for name, text in rendered.items():
        assert committed[name] == text, f"docs/schema/{name} is stale: run " \
            "`fleetpki schema --out docs/schema`"


def test_render_format_is_two_space_json_with_trailing_newline() -> None:
    for name, text in render_schemas().items():
        assert text.endswith("}\n") and not text.endswith("\n\n"), name
        assert text.splitlines()[1].startswith('  "$schema"'), name
        assert json.loads(text) == json_schema(name.removesuffix(".json"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_describes_a_whole_document(kind: str) -> None:
    schema = json_schema(kind)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://fleetpki.io/schema/v1alpha1/{kind}.json"
    assert kind in schema["title"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["apiVersion", "kind", "metadata", "spec"]
    properties = schema["properties"]
    assert properties["apiVersion"] == {"const": "fleetpki.io/v1alpha1"}
    assert properties["kind"] == {"const": kind}
    assert properties["status"]["type"] == "object"
    metadata = schema["$defs"][properties["metadata"]["$ref"].split("/")[-1]]
    assert metadata["required"] == ["name"]
    assert {"name", "labels", "annotations"} <= set(metadata["properties"])
    spec = schema["$defs"][properties["spec"]["$ref"].split("/")[-1]]
    assert spec["additionalProperties"] is False


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_ref_resolves_and_every_default_is_valid(kind: str) -> None:
    """Defaults are what editors offer on completion: `8760h`, not pydantic's `P365D`."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema(kind)
    definitions = schema["$defs"]

    def walk(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            yield where, node
            for key, value in node.items():
                yield from walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, f"{where}/{index}")

    checked = 0
    for where, node in walk(schema, "#"):
        ref = node.get("$ref")
        if isinstance(ref, str):
            assert ref.startswith("#/$defs/") and ref.split("/")[-1] in definitions, where
        if "default" in node and "properties" not in where.rsplit("/", 1)[-1]:
            subschema = {k: v for k, v in node.items() if k != "default"}
            check = jsonschema.Draft202012Validator({**subschema, "$defs": definitions})
            assert not list(check.iter_errors(node["default"])), f"{where}: {node['default']!r}"
            checked += 1
    assert checked or kind == "CertificatePolicy"


# --- what the schemas accept and refuse ------------------------------------------------------


DECLARED = list(documents(EXAMPLE_REPO, POLICIES, ROOT / "examples" / "tenants",
                          ROOT / "examples" / "cluster-wide-ca"))


def test_the_examples_and_policies_declare_every_kind() -> None:
    assert {doc["kind"] for _, _, doc in DECLARED} == set(KINDS)


@pytest.mark.parametrize(("file", "index", "doc"), DECLARED,
                         ids=[f"{file}#{index}" for file, index, _ in DECLARED])
def test_examples_and_policies_validate_against_their_schema(
        file: str, index: int, doc: dict[str, Any]) -> None:
    assert errors(doc["kind"], doc) == []


@pytest.mark.parametrize(("kind", "path", "typo"), [
    ("CertificateProfile", ("spec",), "keyAlgoritm"),
    ("CertificateAuthority", ("spec", "subject"), "commmonName"),
    ("DeviceFleet", ("spec",), "issuerReff"),
    ("CertificatePolicy", ("spec", "rules", 0), "expresion"),
    ("DeviceFleet", (), "metdata"),
])
def test_a_typo_fails_the_schema_as_it_fails_the_loader(
        kind: str, path: tuple[str | int, ...], typo: str) -> None:
    if kind == "CertificatePolicy":
        doc = copy.deepcopy(next(d for _, _, d in DECLARED if d["kind"] == kind))
    else:
        doc = example_document(kind)
    node: Any = doc
    for part in path:
        node = node[part]
    correct = next(key for key in node if _one_letter_apart(key, typo))
    node[typo] = node.pop(correct)
    found = errors(kind, doc)
    assert found and any(typo in message for message in found), found
    assert any(typo in problem for problem in loader_problems(doc))


def _one_letter_apart(word: str, typo: str) -> bool:
    """`keyAlgorithm` vs `keyAlgoritm`: same but for one inserted or deleted letter."""
    short, long = sorted((word, typo), key=len)
    return len(long) == len(short) + 1 and any(
        long[:i] + long[i + 1:] == short for i in range(len(long)))


@pytest.mark.parametrize(("kind", "change"), [
    ("CertificateProfile", {"usages": ["digital signature", "client-auth"]}),
    ("CertificateProfile", {"subject": {"cn": "{{ device.id }}"}}),
    ("CertificateProfile", {"duration": "1 year"}),
    ("CertificateAuthority", {"keyAlgorithm": "RSA-1024"}),
    ("CertificateAuthority", {"pathLength": 9}),
    ("DeviceFleet", {"deletionPolicy": "Delete"}),
])
def test_wrong_values_fail_the_schema_and_the_loader(kind: str, change: dict[str, Any]) -> None:
    doc = example_document(kind)
    doc["spec"].update(change)
    assert errors(kind, doc)
    assert loader_problems(doc)


def test_usages_and_profile_subject_keys_are_enumerated_for_completion() -> None:
    profile = json_schema("CertificateProfile")["$defs"]["CertificateProfileSpec"]["properties"]
    assert set(profile["usages"]["items"]["enum"]) == set(USAGE_NAMES)
    assert "commonName" in profile["subject"]["propertyNames"]["enum"]


def test_status_and_extra_metadata_are_allowed_but_not_other_top_level_fields() -> None:
    doc = example_document("DeviceFleet")
    doc["status"] = {"observedCommit": "abc", "devices": {"active": 3}}
    doc["metadata"]["namespace"] = "ignored-by-fleetpki"
    assert errors("DeviceFleet", doc) == []
    assert loader_problems(doc) == []
    del doc["apiVersion"]
    assert any("apiVersion" in message for message in errors("DeviceFleet", doc))
    doc["apiVersion"] = API_VERSION
    doc["kind"] = "CertificateProfile"
    assert errors("DeviceFleet", doc)


# --- the CLI ----------------------------------------------------------------------------------


def test_schema_check_passes_on_the_committed_files() -> None:
    result = fleetpki("schema", "--check", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_schema_out_then_check_reports_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "schema"
    written = fleetpki("schema", "--out", str(out), cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.json" for k in KINDS)
    assert fleetpki("schema", "--check", "--out", str(out), cwd=tmp_path).returncode == 0

    (out / "DeviceFleet.json").write_text("{}\n", encoding="utf-8")
    (out / "CertificatePolicy.json").unlink()
    stale = fleetpki("schema", "--check", "--out", str(out), cwd=tmp_path)
    assert stale.returncode == 1
    assert sorted(stale.stdout.splitlines()) == [
        f"stale: {out / 'CertificatePolicy.json'}", f"stale: {out / 'DeviceFleet.json'}"]
    assert (out / "DeviceFleet.json").read_text(encoding="utf-8") == "{}\n", "check wrote"
    # --kind narrows the check to one file
    only = fleetpki("schema", "--check", "--out", str(out), "--kind", "CertificateAuthority",
                    cwd=tmp_path)
    assert only.returncode == 0, only.stdout

    assert fleetpki("schema", "--out", str(out), cwd=tmp_path).returncode == 0
    assert fleetpki("schema", "--check", "--out", str(out), cwd=tmp_path).returncode == 0


def test_schema_prints_one_kind_or_all(tmp_path: Path) -> None:
    one = fleetpki("schema", "--kind", "DeviceFleet", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert one.stdout == render_schemas(["DeviceFleet"])["DeviceFleet.json"]
    every = fleetpki("schema", cwd=tmp_path)
    assert every.returncode == 0, every.stderr
    assert json.loads(every.stdout) == {kind: json_schema(kind) for kind in KINDS}
    unknown = fleetpki("schema", "--kind", "Fleet", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown kind" in unknown.stderr


# --- the modelines ------------------------------------------------------------------------------


EXAMPLE_YAML = sorted(p for p in EXAMPLE_REPO.rglob("*.y*ml"))


@pytest.mark.parametrize("path", EXAMPLE_YAML, ids=[str(p.relative_to(EXAMPLE_REPO))
                                                    for p in EXAMPLE_YAML])
def test_each_example_file_has_a_modeline_to_the_schema_of_its_kind(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = MODELINE.match(first)
    assert match, f"{path.name}: first line is not a yaml-language-server modeline: {first!r}"
    target = (path.parent / match.group(1)).resolve()
    assert target.is_file(), f"{path.name}: {match.group(1)} does not resolve"
    assert target.parent == SCHEMA_DIR.resolve()
    kinds = {doc["kind"] for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
             if isinstance(doc, dict)}
    assert kinds == {target.stem}, f"{path.name} declares {kinds}, its modeline {target.name}"
