"""Desired state of one Kubernetes namespace, written out as a declaration directory.

The operator reads the namespace's fleetpki objects (from kopf's indexes) and the device lists
they point at (ConfigMaps, Flux source artifacts), and writes them to
`<state>/namespaces/<ns>/declaration/` as YAML files and device files. The job then reads that
directory exactly as it reads a git checkout: one loader, one validation, one planner for both
modes. `fleetpki serve` reads the same directory, so EST knows the cluster's fleets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from controller.api.crds import PLURALS
from controller.api.desired import PATH_NEEDS_REPOSITORY
from controller.api.devices import (
    NEVER_ZERO,
    DeviceSourceError,
    DeviceText,
    configmap_device_text,
)
from controller.api.problems import Problem
from controller.api.resources import DeviceSource
from controller.status.kube import DECLARED_AS

DEVICE_DIR = "devices"
# metadata worth keeping in the declaration; kopf's and kubectl's bookkeeping is not
_DROPPED_ANNOTATIONS = ("kopf.zalando.org/", "kubectl.kubernetes.io/")

ConfigMapReader = Callable[[str, str], Mapping[str, Any] | None]  # (namespace, name) -> object
# (apiVersion, kind, namespace, name) -> the Flux source object
FluxReader = Callable[[str, str, str, str], Mapping[str, Any] | None]
ArtifactReader = Callable[[Mapping[str, Any], DeviceSource], DeviceText]  # (Flux object, source)


@dataclass(frozen=True)
class Readers:
    """How a namespace's device sources are read from the cluster."""

    config_map: ConfigMapReader
    flux_source: FluxReader
    artifact: ArtifactReader


def object_ref(body: Mapping[str, Any]) -> str:
    return f"{body['kind']}/{body['metadata']['name']}"


def _declared(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object as a repository would declare it: no status, no server-set metadata."""
    metadata = body.get("metadata") or {}
    kept: dict[str, Any] = {"name": metadata.get("name")}
    if metadata.get("labels"):
        kept["labels"] = dict(metadata["labels"])
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items()
                   if not k.startswith(_DROPPED_ANNOTATIONS)}
    if annotations:
        kept["annotations"] = annotations
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept,
            "spec": body.get("spec")}


def _joined(parts: list[DeviceText]) -> str:
    """Several device lists as one: JSONL lines follow each other; CSV parts share a header."""
    if parts[0].format == "jsonl":
        return "".join(p.text if p.text.endswith("\n") else p.text + "\n" for p in parts)
    header = None
    lines: list[str] = []
    for part in parts:
        rows = part.text.splitlines()
        if not rows:
            continue
        if header is None:
            header = rows[0]
            lines.append(header)
        elif rows[0] != header:
            raise DeviceSourceError(f"{part.label}: its CSV header {rows[0]!r} differs from the "
                                    f"first part's {header!r}", field=part.field)
        lines.extend(rows[1:])
    return "\n".join(lines) + "\n"


def device_text(namespace: str, source: DeviceSource, readers: Readers) -> tuple[str, str]:
    """(text, format) of a fleet's ConfigMaps or Flux source; DeviceSourceError if unreadable."""
    if source.configMapRef:
        parts = [configmap_device_text(ref, readers.config_map(namespace, ref.name), source, i)
                 for i, ref in enumerate(source.configMapRef)]
        if len({part.format for part in parts}) > 1:
            raise DeviceSourceError("the ConfigMaps mix CSV and JSONL: set deviceSource.format "
                                    "or use one format", field="configMapRef")
        return _joined(parts), parts[0].format
    assert source.sourceRef is not None
    ref = source.sourceRef
    flux = readers.flux_source(ref.resolved_api_version(), ref.kind, ref.namespace or namespace,
                               ref.name)
    if flux is None:
        raise DeviceSourceError(f"{ref.kind} {ref.namespace or namespace}/{ref.name} not found",
                                field="sourceRef")
    part = readers.artifact(flux, source)
    return part.text, part.format


def write_declaration(namespace: str, bodies: Iterable[Mapping[str, Any]], target: Path,
                      readers: Readers) -> list[Problem]:
    """Write the namespace's objects (and device files) to `target`, replacing what was there;
    returns the problems of device sources that could not be read."""
    files: dict[str, str] = {}
    problems: list[Problem] = []
    for body in sorted(bodies, key=lambda b: (b["kind"], b["metadata"]["name"])):
        declared = _declared(body)
        raw_spec = body.get("spec")
        spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
        by_path = _path_artifacts(namespace, body, spec)
        if by_path:  # left out: the loader never reads a file of the declaration directory
            problems.extend(by_path)
            continue
        source = _cluster_source(spec.get("deviceSource")) if body["kind"] == "DeviceFleet" \
            else None
        if source is not None:
            name = body["metadata"]["name"]
            try:
                text, fmt = device_text(namespace, source, readers)
            except DeviceSourceError as exc:
                field = exc.field or ("configMapRef" if source.configMapRef else "sourceRef")
                problems.append(Problem(f"{namespace}/{object_ref(body)}",
                                        f"cannot read device source {exc.source or field}: "
                                        f"{exc.message}{NEVER_ZERO}", None, object_ref(body),
                                        f"spec.deviceSource.{field}"))
                declared["spec"] = {k: v for k, v in spec.items() if k != "deviceSource"}
            else:
                device_file = f"{DEVICE_DIR}/{name}.{fmt}"
                files[device_file] = text
                declared["spec"] = {**spec, "deviceSource": {"path": device_file,
                                                             "format": fmt}}
        plural = PLURALS.get(str(body["kind"]), "unknown")
        files[f"{plural}/{body['metadata']['name']}.yaml"] = yaml.safe_dump(
            declared, sort_keys=False)
    _replace_directory(target, files)
    return problems


CLUSTER_ONLY_FIELDS = ("allowedNamespaces", "allowedTenants")  # checked by each namespace's job


def write_cluster_declaration(bodies: Iterable[Mapping[str, Any]], target: Path) -> None:
    """Write the ClusterCertificateAuthorities to `target` as the CertificateAuthorities the
    operator's cluster scope keeps (which namespaces may use them is each namespace's check)."""
    files: dict[str, str] = {}
    for body in bodies:
        declared = _declared(body)
        spec = body.get("spec")
        declared["kind"] = DECLARED_AS[str(body["kind"])]
        declared["spec"] = {key: value for key, value in spec.items()
                            if key not in CLUSTER_ONLY_FIELDS} if isinstance(spec, dict) else spec
        files[f"{PLURALS[str(body['kind'])]}/{body['metadata']['name']}.yaml"] = \
            yaml.safe_dump(declared, sort_keys=False)
    _replace_directory(target, files)


def cluster_authorities_used(objects: Iterable[Mapping[str, Any]],
                             cluster: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ClusterCertificateAuthorities (by name in `cluster`) the fleets among `objects` issue
    from, with their parents: what a namespace's declaration needs of them."""
    names = [ref.get("name") for body in objects if body.get("kind") == "DeviceFleet"
             and isinstance(ref := (body.get("spec") or {}).get("issuerRef"), dict)
             and ref.get("kind") == "ClusterCertificateAuthority"]
    used: dict[str, Mapping[str, Any]] = {}
    while names:
        name = names.pop()
        if not isinstance(name, str) or name in used or name not in cluster:
            continue
        used[name] = cluster[name]
        parent = (cluster[name].get("spec") or {}).get("parentRef")
        names.append(parent.get("name") if isinstance(parent, dict) else None)
    return [used[name] for name in sorted(used)]


def _path_artifacts(namespace: str, body: Mapping[str, Any],
                    spec: Mapping[str, Any]) -> list[Problem]:
    """A Release's artifacts given by `path`: there is no repository in a cluster, so each is
    a problem naming its field (the whole run is refused: nothing is half-applied)."""
    artifacts = spec.get("artifacts") if body["kind"] == "Release" else None
    if not isinstance(artifacts, list):
        return []
    return [Problem(f"{namespace}/{object_ref(body)}",
                    f"{PATH_NEEDS_REPOSITORY} (Kubernetes mode has no repository)", None,
                    object_ref(body), f"spec.artifacts[{index}].path")
            for index, artifact in enumerate(artifacts)
            if isinstance(artifact, dict) and artifact.get("path") is not None]


def _cluster_source(raw: object) -> DeviceSource | None:
    """A valid `deviceSource` that reads from the cluster (ConfigMaps or a Flux source); other
    forms, and invalid ones, are left to the loader to accept or report."""
    try:
        source = DeviceSource.model_validate(raw)
    except ValidationError:
        return None
    return source if source.configMapRef or source.sourceRef else None


def _replace_directory(target: Path, files: Mapping[str, str]) -> None:
    """Make `target` hold exactly `files`; unchanged files are not rewritten."""
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    for existing in sorted(target.rglob("*"), reverse=True):
        relative = existing.relative_to(target).as_posix()
        if existing.is_file() and relative not in files:
            existing.unlink()
        elif existing.is_dir() and not any(existing.iterdir()):
            existing.rmdir()
    for relative, text in files.items():
        path = target / relative
        data = text.encode("utf-8")
        if path.is_file() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
