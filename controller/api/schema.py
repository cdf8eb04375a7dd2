"""Standalone JSON Schemas (draft 2020-12) of whole fleetpki documents (`fleetpki schema`).

For editors (yaml-language-server modelines) and CI linters. Unlike the CRDs (crds.py), these
keep `$defs`/`$ref`, titles of models, descriptions and defaults, and they describe the whole
document: `apiVersion`, `kind`, `metadata`, `spec` and the controller-written `status`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from controller.api.durations import format_duration
from controller.api.resources import API_VERSION, KINDS, Subject
from controller.pki.usages import USAGE_NAMES

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE = "https://fleetpki.io/schema/v1alpha1"
STATUS = {
    "type": "object",
    "description": "Written by the controller (on the status branch); ignored when read.",
}


class _Generator(GenerateJsonSchema):
    """Pydantic's generator, with defaults shown as users write them and no per-field titles
    (pydantic derives them from the field name: `Renewbefore` helps nobody in a hover)."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):  # pydantic would say `P365D`, which the pattern rejects
            return format_duration(dft)
        return super().encode_default(dft)

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _checked_by_validators(definitions: dict[str, Any]) -> None:
    """Say in the schema what the models check in code, so editors can complete it."""
    profile = definitions["CertificateProfileSpec"]["properties"]
    profile["usages"]["items"]["enum"] = sorted(USAGE_NAMES)
    profile["subject"]["propertyNames"] = {"enum": list(Subject.model_fields)}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a whole document of `kind`; KeyError for an unknown kind."""
    model = KINDS[kind]
    generated = model.model_json_schema(by_alias=True, schema_generator=_Generator)
    definitions: dict[str, Any] = generated.pop("$defs", {})
    if "CertificateProfileSpec" in definitions:
        _checked_by_validators(definitions)
    properties = dict(generated["properties"])
    properties["apiVersion"] = {"const": API_VERSION}
    properties["kind"] = {"const": kind}
    properties["status"] = dict(STATUS)
    return {
        "$schema": DRAFT,
        "$id": f"{SCHEMA_BASE}/{kind}.json",
        "title": f"fleetpki {kind}",
        "description": (model.__doc__ or "").strip(),
        "type": "object",
        # apiVersion and kind have model defaults, but a document without them is not read
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": properties,
        "additionalProperties": False,
        "$defs": dict(sorted(definitions.items())),
    }


def render_schemas(kinds: list[str] | None = None) -> dict[str, str]:
    """File name (`<Kind>.json`) -> JSON text, 2-space indent, trailing newline."""
    return {f"{kind}.json": json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"
            for kind in (KINDS if kinds is None else kinds)}
