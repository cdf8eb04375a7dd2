"""Kubernetes CRDs generated from the pydantic models (`fleetpki crds`)."""

from __future__ import annotations

from typing import Any

import yaml

from controller.api.resources import KINDS
from controller.api.status import STATUS_KINDS

GROUP = "fleetpki.io"
VERSION = "v1alpha1"
PLURALS = {"CertificateAuthority": "certificateauthorities",
           "ClusterCertificateAuthority": "clustercertificateauthorities",
           "CertificateProfile": "certificateprofiles", "DeviceFleet": "devicefleets",
           "CertificatePolicy": "certificatepolicies", "SigningProfile": "signingprofiles",
           "Release": "releases"}
CLUSTER_KINDS = ("ClusterCertificateAuthority",)  # cluster-scoped; every other kind is namespaced
NAMESPACED_PLURALS = {kind: plural for kind, plural in PLURALS.items()
                      if kind not in CLUSTER_KINDS}
SHORT_NAMES = {"CertificateAuthority": ["fca"], "ClusterCertificateAuthority": ["fcca"],
               "CertificateProfile": ["fcp"],
               "DeviceFleet": ["fleet"], "CertificatePolicy": ["fcpol"],
               "SigningProfile": ["fsp"], "Release": ["frel"]}
_READY = {"name": "Ready", "type": "string",
          "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
_CA_COLUMNS: list[dict[str, Any]] = [
    {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
    {"name": "Algorithm", "type": "string", "jsonPath": ".spec.keyAlgorithm"},
    _READY,
    {"name": "Serial", "type": "string", "jsonPath": ".status.certificate.serial",
     "priority": 1},
    {"name": "NotAfter", "type": "string", "jsonPath": ".status.certificate.notAfter"},
    _AGE,
]
COLUMNS: dict[str, list[dict[str, Any]]] = {
    "CertificateAuthority": _CA_COLUMNS,
    "ClusterCertificateAuthority": _CA_COLUMNS,
    "CertificateProfile": [
        {"name": "Algorithm", "type": "string", "jsonPath": ".spec.keyAlgorithm"},
        {"name": "Duration", "type": "string", "jsonPath": ".spec.duration"},
        _READY,
        _AGE,
    ],
    "CertificatePolicy": [
        {"name": "Disabled", "type": "boolean", "jsonPath": ".spec.disabled"},
        _READY,
        _AGE,
    ],
    "DeviceFleet": [
        {"name": "Issuer", "type": "string", "jsonPath": ".spec.issuerRef.name"},
        _READY,
        {"name": "Issued", "type": "integer", "jsonPath": ".status.devices.active"},
        {"name": "Due", "type": "integer", "jsonPath": ".status.devices.due"},
        {"name": "Revoked", "type": "integer", "jsonPath": ".status.devices.revoked"},
        _AGE,
        {"name": "Status", "type": "string", "priority": 1,
         "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message"},
    ],
    "SigningProfile": [
        {"name": "Issuer", "type": "string", "jsonPath": ".spec.issuerRef.name"},
        {"name": "Usage", "type": "string", "jsonPath": ".status.usage", "priority": 1},
        {"name": "Algorithm", "type": "string", "jsonPath": ".status.keyAlgorithm"},
        {"name": "Key", "type": "integer", "jsonPath": ".status.keyVersion"},
        _READY,
        {"name": "Serial", "type": "string", "jsonPath": ".status.certificate.serial",
         "priority": 1},
        {"name": "NotAfter", "type": "string", "jsonPath": ".status.certificate.notAfter"},
        _AGE,
    ],
    "Release": [
        {"name": "Profile", "type": "string", "jsonPath": ".spec.signingProfileRef.name"},
        {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
        {"name": "Artifacts", "type": "integer", "jsonPath": ".status.artifacts"},
        _READY,
        {"name": "State", "type": "string", "jsonPath": ".status.state"},
        {"name": "Signed", "type": "date", "jsonPath": ".status.signature.signedAt"},
        {"name": "Serial", "type": "string", "jsonPath": ".status.signature.serial",
         "priority": 1},
        {"name": "Manifest", "type": "string", "priority": 1,
         "jsonPath": ".status.signature.manifestSha256"},
        _AGE,
    ],
}
_DROP = {"title", "default", "discriminator", "propertyNames"}


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """Resolve `$ref`s and drop keywords structural schemas reject; `anyOf [X, null]` -> X."""
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _inline(definitions[node["$ref"].split("/")[-1]], definitions)
    options = node.get("anyOf")
    if options and any(o == {"type": "null"} for o in options):
        rest = [o for o in options if o != {"type": "null"}]
        merged = {k: v for k, v in node.items() if k != "anyOf"}
        if len(rest) == 1:
            return _inline({**rest[0], **merged}, definitions)
        node = {**merged, "anyOf": rest}
    result = {k: _inline(v, definitions) for k, v in node.items()
              if k not in _DROP and k != "$defs"}
    if result.get("type") == "object" and "additionalProperties" in result and \
            isinstance(result["additionalProperties"], bool):
        result.pop("additionalProperties")
    if "const" in result:
        result["enum"] = [result.pop("const")]
    return result


def spec_schema(kind: str) -> dict[str, Any]:
    schema = KINDS[kind].model_json_schema(by_alias=True)
    definitions = schema.get("$defs", {})
    spec = schema["properties"]["spec"]
    return dict(_inline(spec, definitions))


def status_schema(kind: str) -> dict[str, Any]:
    """Structural: only `status.kopf` (kopf's progress fields) preserves unknown fields."""
    schema = STATUS_KINDS[kind].model_json_schema(by_alias=True)
    return dict(_inline(schema, schema.get("$defs", {})))


def crd(kind: str) -> dict[str, Any]:
    plural = PLURALS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Cluster" if kind in CLUSTER_KINDS else "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": SHORT_NAMES[kind],
                      "categories": ["fleetpki"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": COLUMNS[kind],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(kind),
                        "status": status_schema(kind),
                    },
                }},
            }],
        },
    }


def render_crds() -> dict[str, str]:
    """File name -> YAML text, one CRD per file."""
    header = ("# Generated by `fleetpki crds` from controller/api/resources.py and status.py; "
              "do not edit.\n")
    return {f"{GROUP}_{PLURALS[kind]}.yaml": header + yaml.safe_dump(crd(kind), sort_keys=False)
            for kind in STATUS_KINDS}  # Tenants come only from --policies DIR: no CRD
