"""The CRDs generated from the models are structural and match the committed files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.crds import render_crds

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
KINDS = {"CertificateAuthority", "ClusterCertificateAuthority", "CertificateProfile",
         "DeviceFleet", "CertificatePolicy", "SigningProfile", "Release"}
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
    "x-kubernetes-list-type", "x-kubernetes-map-type",
}  # no x-kubernetes-validations: CEL rules stop `kubectl apply -f crds/` before Kubernetes 1.25


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


def test_only_the_cluster_wide_ca_is_cluster_scoped() -> None:
    scopes = {kind: crd["spec"]["scope"] for kind, crd in crds().items()}
    assert scopes.pop("ClusterCertificateAuthority") == "Cluster"
    assert set(scopes.values()) == {"Namespaced"}


READY = '.status.conditions[?(@.type=="Ready")]'
CA_COLUMNS = [  # name, type, jsonPath, priority (0: shown by default, 1: with -o wide)
    ("Type", "string", ".spec.type", 0),
    ("Algorithm", "string", ".spec.keyAlgorithm", 0),
    ("Ready", "string", f"{READY}.status", 0),
    ("Serial", "string", ".status.certificate.serial", 1),
    ("NotAfter", "string", ".status.certificate.notAfter", 0),
    ("Age", "date", ".metadata.creationTimestamp", 0),
]
COLUMNS = {
    "CertificateAuthority": CA_COLUMNS,
    "ClusterCertificateAuthority": CA_COLUMNS,
    "CertificateProfile": [
        ("Algorithm", "string", ".spec.keyAlgorithm", 0),
        ("Duration", "string", ".spec.duration", 0),
        ("Ready", "string", f"{READY}.status", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
    ],
    "CertificatePolicy": [
        ("Disabled", "boolean", ".spec.disabled", 0),
        ("Ready", "string", f"{READY}.status", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
    ],
    "DeviceFleet": [
        ("Issuer", "string", ".spec.issuerRef.name", 0),
        ("Ready", "string", f"{READY}.status", 0),
        ("Issued", "integer", ".status.devices.active", 0),
        ("Due", "integer", ".status.devices.due", 0),
        ("Revoked", "integer", ".status.devices.revoked", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
        ("Status", "string", f"{READY}.message", 1),
    ],
    "SigningProfile": [
        ("Issuer", "string", ".spec.issuerRef.name", 0),
        ("Usage", "string", ".status.usage", 1),  # the effective values: defaults included
        ("Algorithm", "string", ".status.keyAlgorithm", 0),
        ("Key", "integer", ".status.keyVersion", 0),
        ("Ready", "string", f"{READY}.status", 0),
        ("Serial", "string", ".status.certificate.serial", 1),
        ("NotAfter", "string", ".status.certificate.notAfter", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
    ],
    "Release": [
        ("Profile", "string", ".spec.signingProfileRef.name", 0),
        ("Version", "string", ".spec.version", 0),
        ("Artifacts", "integer", ".status.artifacts", 0),
        ("Ready", "string", f"{READY}.status", 0),
        ("State", "string", ".status.state", 0),
        ("Signed", "date", ".status.signature.signedAt", 0),
        ("Serial", "string", ".status.signature.serial", 1),
        ("Manifest", "string", ".status.signature.manifestSha256", 1),
        ("Age", "date", ".metadata.creationTimestamp", 0),
    ],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_printer_columns(kind: str) -> None:
    crd = crds()[kind]
    (version,) = crd["spec"]["versions"]
    columns = [(c["name"], c["type"], c["jsonPath"], c.get("priority", 0))
               for c in version["additionalPrinterColumns"]]
    assert columns == COLUMNS[kind]
    assert crd["spec"]["names"]["categories"] == ["fleetpki"]
    assert crd["spec"]["names"]["shortNames"]


def resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    """The schema node a printer column's simple JSONPath points at (None: not in the schema;
    filters such as `[?(@.type=="Ready")]` step into the list's items)."""
    node = schema
    for part in re.findall(r"\.(\w+)|(\[\?\(.*?\)\])", json_path):
        if part[1]:
            node = node["items"]
            continue
        if part[0] not in node.get("properties", {}):
            return None
        node = node["properties"][part[0]]
    return node


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_printer_columns_point_at_fields_of_the_schema(kind: str) -> None:
    crd = crds()[kind]
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    schema = {**schema, "properties": {**schema["properties"],
                                       "metadata": {"properties": {"creationTimestamp": {
                                           "type": "string", "format": "date-time"}}}}}
    for column in version["additionalPrinterColumns"]:
        node = resolve(schema, column["jsonPath"])
        assert node is not None, f"{kind} column {column['name']}: {column['jsonPath']}"
        expected = {"date": "string", "integer": "integer", "boolean": "boolean",
                    "string": "string"}[column["type"]]
        assert node["type"] == expected, column


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_status_schema_is_structural_with_conditions_as_a_map(kind: str) -> None:
    status = schema_of(crds()[kind])["properties"]["status"]
    assert status["type"] == "object"
    preserved = [path for path, node in schemas(status)
                 if node.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == [".kopf"], "only status.kopf keeps unknown fields"
    common = {"observedGeneration", "lastHandledReconcileAt", "observedCommit", "conditions",
              "failedAttempts", "nextAttemptAt", "kopf"}
    assert common <= set(status["properties"])
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    condition = conditions["items"]
    assert "type" in condition["required"], "a list-map key must be required"
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["observedGeneration"]["type"] == "integer"
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert status["properties"]["observedGeneration"]["type"] == "integer"
    extra = set(status["properties"]) - common
    assert extra == {"CertificateAuthority": {"certificate", "crl"},
                     "ClusterCertificateAuthority": {"certificate", "crl"},
                     "DeviceFleet": {"devices", "attention", "policyWarnings", "nextRenewalAt",
                                     "source"},
                     "SigningProfile": {"usage", "keyAlgorithm", "keyVersion", "certificate",
                                        "activeCertificates", "revoked"},
                     "Release": {"state", "artifacts", "fleets", "signature"}}.get(kind, set())
    if kind == "Release":
        signature = status["properties"]["signature"]
        assert signature["properties"]["state"]["enum"] == ["active", "revoked"]
        assert signature["properties"]["signedAt"]["format"] == "date-time"
        assert status["properties"]["state"]["enum"] == ["Pending", "Signed", "Withdrawn",
                                                         "SignerRevoked"]
    if kind == "SigningProfile":
        assert set(status["properties"]["certificate"]["properties"]) == {
            "serial", "notAfter", "issuedAt", "keyVersion", "release"}  # public data only
    if kind == "DeviceFleet":
        assert status["properties"]["attention"]["maxItems"] == 50
        assert status["properties"]["policyWarnings"]["maxItems"] == 50
        assert status["properties"]["devices"]["properties"]["active"]["type"] == "integer"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_is_structural(kind: str) -> None:
    schema = schema_of(crds()[kind])
    assert schema["required"] == ["spec"]
    assert "x-kubernetes-preserve-unknown-fields" not in schema["properties"]["status"]
    for node in all_dicts(schema):
        assert "$ref" not in node and "$defs" not in node
        assert {"type": "null"} not in node.get("anyOf", [])
        assert "title" not in node and "default" not in node
    for path, node in schemas(schema):
        if node.get("x-kubernetes-preserve-unknown-fields") or "/" in path:
            continue
        assert "type" in node, f"{kind} schema node {path or '<root>'} has no type"
        if node["type"] == "object" and path.startswith((".spec", ".status")):
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
    elif kind == "ClusterCertificateAuthority":
        assert spec["properties"]["allowedNamespaces"]["items"]["type"] == "string"
        assert spec["properties"]["allowedTenants"]["type"] == "array"
        assert set(spec["required"]) == {"type"}
    elif kind == "CertificateProfile":
        assert spec["properties"]["keyGeneration"]["enum"] == ["server", "device"]
        assert "pattern" in spec["properties"]["renewBefore"]
    elif kind == "CertificatePolicy":
        rule = spec["properties"]["rules"]["items"]
        assert rule["properties"]["action"]["enum"] == ["deny", "warn"]
        assert set(rule["required"]) == {"name", "expression", "message"}
    elif kind == "SigningProfile":
        assert spec["properties"]["usage"]["enum"] == ["codeSigning", "timeStamping"]
        assert spec["properties"]["keyVersion"]["minimum"] == 1
        assert set(spec["required"]) == {"issuerRef"}
    elif kind == "Release":
        artifact = spec["properties"]["artifacts"]["items"]
        # `path` stays in the schema (pruning it would silently drop it): the operator refuses it
        assert set(artifact["properties"]) == {"path", "name", "sha256", "size"}
        assert artifact["properties"]["sha256"]["pattern"] == "^[0-9a-f]{64}$"
        assert set(spec["required"]) == {"signingProfileRef", "artifacts", "targets"}
    else:
        device = spec["properties"]["devices"]["items"]
        assert device["required"] == ["id"]
        assert device["properties"]["labels"]["additionalProperties"]["type"] == "string"
        assert set(spec["required"]) == {"issuerRef", "profileRef"}
        issuer = spec["properties"]["issuerRef"]["properties"]["kind"]
        assert issuer["enum"] == ["CertificateAuthority", "ClusterCertificateAuthority"]


@pytest.mark.parametrize("kind", sorted(KINDS))
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
