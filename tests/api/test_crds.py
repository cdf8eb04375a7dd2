"""The CRDs generated from the models are structural and match the committed files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.crds import render_crds

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
KINDS = {"CertificateAuthority", "CertificateProfile", "DeviceFleet", "CertificatePolicy"}
# Keywords of apiextensions.k8s.io/v1 JSONSchemaProps; anything else is an unknown field that
# the API server rejects (strict field validation) or drops.
K8S_SCHEMA_KEYWORDS = {
    "id", "$schema", "$ref", "description", "type", "format", "title", "default", "maximum",
    "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern",
    "maxItems", "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties",
    "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not", "properties",
    "additionalProperties", "patternProperties", "dependencies", "additionalItems",
    "definitions", "externalDocs", "example", "nullable", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
}


def crds() -> dict[str, dict[str, Any]]:
    return {kind: doc for doc in (yaml.safe_load(text) for text in render_crds().values())
            for kind in [doc["spec"]["names"]["kind"]]}


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def schemas(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below `node` (properties, items, additionalProperties, combinators)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schemas(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schemas(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schemas(node["additionalProperties"], f"{path}{{}}")
    for keyword in ("anyOf", "oneOf", "allOf"):
        for index, child in enumerate(node.get(keyword, [])):
            yield from schemas(child, f"{path}/{keyword}[{index}]")


def all_dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from all_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_dicts(value)


def test_one_crd_per_kind_with_status_subresource_and_printer_columns() -> None:
    found = crds()
    assert set(found) == KINDS
    for kind, crd in found.items():
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.fleetpki.io"
        assert crd["spec"]["group"] == "fleetpki.io"
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}
        columns = version["additionalPrinterColumns"]
        assert columns, kind
        assert {"Age"} <= {c["name"] for c in columns}
        assert all({"name", "type", "jsonPath"} <= set(c) for c in columns)
        assert all(c["jsonPath"].startswith(".") for c in columns)
    fleet_columns = found["DeviceFleet"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert {"Issuer", "Ready"} <= {c["name"] for c in fleet_columns}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_is_structural(kind: str) -> None:
    schema = schema_of(crds()[kind])
    assert schema["required"] == ["spec"]
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    for node in all_dicts(schema):
        assert "$ref" not in node and "$defs" not in node
        assert {"type": "null"} not in node.get("anyOf", [])
        assert "title" not in node and "default" not in node
    for path, node in schemas(schema):
        if node.get("x-kubernetes-preserve-unknown-fields") or "/" in path:
            continue
        assert "type" in node, f"{kind} schema node {path or '<root>'} has no type"
        if node["type"] == "object" and path.startswith(".spec"):
            assert "properties" in node or "additionalProperties" in node, path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_spec_schema_follows_the_models(kind: str) -> None:
    spec = schema_of(crds()[kind])["properties"]["spec"]
    if kind == "CertificateAuthority":
        assert spec["properties"]["type"]["enum"] == ["root", "intermediate", "external"]
        assert "RSA-1024" not in spec["properties"]["keyAlgorithm"]["enum"]
        assert spec["properties"]["duration"]["type"] == "string"
        assert spec["properties"]["parentRef"]["properties"]["name"]["type"] == "string"
        assert set(spec["required"]) == {"type"}
    elif kind == "CertificateProfile":
        assert spec["properties"]["keyGeneration"]["enum"] == ["server", "device"]
        assert "pattern" in spec["properties"]["renewBefore"]
    elif kind == "CertificatePolicy":
        rule = spec["properties"]["rules"]["items"]
        assert rule["properties"]["action"]["enum"] == ["deny", "warn"]
        assert set(rule["required"]) == {"name", "expression", "message"}
    else:
        device = spec["properties"]["devices"]["items"]
        assert device["required"] == ["id"]
        assert device["properties"]["labels"]["additionalProperties"]["type"] == "string"
        assert set(spec["required"]) == {"issuerRef", "profileRef"}


@pytest.mark.parametrize("kind", [
    "CertificateAuthority",
    "CertificateProfile",
    "DeviceFleet",
])
def test_schema_uses_only_keywords_kubernetes_knows(kind: str) -> None:
    unknown = {key for path, node in schemas(schema_of(crds()[kind])) for key in node
               if key not in K8S_SCHEMA_KEYWORDS}
    assert unknown == set()


def test_committed_crds_are_up_to_date() -> None:
    rendered = render_crds()
    committed = {p.name: p.read_text(encoding="utf-8") for p in CRD_DIR.glob("*.yaml")}
    assert set(committed) == set(rendered), "run `fleetpki crds --out crds`"
    for name, text in rendered.items():
        assert committed[name] == text, f"crds/{name} is stale: run `fleetpki crds --out crds`"
