"""The release manifest: the JSON document a release signature covers, byte for byte.

Deterministic: the same declaration always gives the same bytes (sorted keys, two-space
indent, ASCII only, one final newline), so its SHA-256 says whether a release changed and an
unchanged release is never signed again. Nothing time-dependent is in it: the signing time is
a signed attribute of the CMS signature."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from controller.api.desired import ReleaseDecl
from controller.api.resources import API_VERSION

MANIFEST_KIND = "ReleaseManifest"


def manifest_data(decl: ReleaseDecl) -> dict[str, Any]:
    release = decl.release
    spec = release.spec
    data: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": MANIFEST_KIND,
        "release": release.name,
        "signingProfile": spec.signingProfileRef.name,
        "artifacts": [{"name": a.name, "sha256": a.sha256, "size": a.size}
                      for a in decl.artifacts],
        "targets": {"fleets": list(decl.fleets)},
    }
    if spec.targets.selectors:
        data["targets"]["selectors"] = [s.model_dump() for s in spec.targets.selectors]
    if spec.version is not None:
        data["version"] = spec.version
    if spec.firmwareVersions is not None:
        versions = spec.firmwareVersions.model_dump(exclude_none=True)
        if versions:
            data["firmwareVersions"] = versions
    return data


def manifest_bytes(decl: ReleaseDecl) -> bytes:
    return (json.dumps(manifest_data(decl), sort_keys=True, indent=2, ensure_ascii=True)
            + "\n").encode("ascii")


def manifest_digest(decl: ReleaseDecl) -> str:
    """SHA-256 (hex) of the manifest: a release is signed again exactly when it changes."""
    return hashlib.sha256(manifest_bytes(decl)).hexdigest()
