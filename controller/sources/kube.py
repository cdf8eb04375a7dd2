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

from controller.api.crds import PLURALS
from controller.api.problems import Problem

DEVICE_DIR = "devices"
# metadata worth keeping in the declaration; kopf's and kubectl's bookkeeping is not
_DROPPED_ANNOTATIONS = ("kopf.zalando.org/", "kubectl.kubernetes.io/")

# (kind, name) of a Flux source -> its object, or None when absent
FluxReader = Callable[[str, str, str, str], Mapping[str, Any] | None]
ConfigMapReader = Callable[[str, str], Mapping[str, str] | None]  # (namespace, name) -> data
ArtifactReader = Callable[[Mapping[str, Any], str], str]  # (Flux object, path) -> text


class DeviceSourceUnavailable(Exception):
    """A fleet's device source cannot be read (a problem for the fleet, never zero devices)."""


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


def _format_of(key: str, declared: str | None) -> str:
    if declared:
        return declared
    return "jsonl" if key.endswith((".jsonl", ".ndjson")) else "csv"


def _joined(parts: list[tuple[str, str]], fmt: str) -> str:
    """Several device lists as one: JSONL lines follow each other; CSV parts share a header."""
    if fmt == "jsonl":
        return "".join(text if text.endswith("\n") else text + "\n" for _, text in parts)
    header = None
    lines: list[str] = []
    for label, text in parts:
        rows = text.lstrip("\ufeff").splitlines()
        if not rows:
            continue
        if header is None:
            header = rows[0]
            lines.append(header)
        elif rows[0] != header:
            raise DeviceSourceUnavailable(f"{label}: its CSV header {rows[0]!r} differs from "
                                          f"the first part's {header!r}")
        lines.extend(rows[1:])
    return "\n".join(lines) + "\n"


def device_text(namespace: str, source: Mapping[str, Any], readers: Readers) -> tuple[str, str]:
    """(text, format) of a fleet's ConfigMap or Flux source; DeviceSourceUnavailable if not."""
    declared_format = source.get("format")
    if source.get("configMapRef"):
        parts = []
        formats = set()
        for ref in source["configMapRef"]:
            name, key = ref.get("name"), ref.get("key", "devices.csv")
            data = readers.config_map(namespace, name)
            if data is None:
                raise DeviceSourceUnavailable(f"ConfigMap {namespace}/{name} not found")
            if key not in data:
                raise DeviceSourceUnavailable(f"ConfigMap {namespace}/{name} has no key {key!r} "
                                              f"(keys: {sorted(data)})")
            parts.append((f"ConfigMap {namespace}/{name} key {key}", data[key]))
            formats.add(_format_of(key, declared_format))
        if len(formats) > 1:
            raise DeviceSourceUnavailable("the ConfigMaps mix CSV and JSONL: set "
                                          "deviceSource.format or use one format")
        fmt = formats.pop()
        return _joined(parts, fmt), fmt
    ref = source["sourceRef"]
    kind, name = ref.get("kind"), ref.get("name")
    source_namespace = ref.get("namespace") or namespace
    version = ref.get("apiVersion") or ("source.toolkit.fluxcd.io/v1" if kind == "GitRepository"
                                        else "source.toolkit.fluxcd.io/v1beta2")
    flux = readers.flux_source(version, kind, source_namespace, name)
    if flux is None:
        raise DeviceSourceUnavailable(f"{kind} {source_namespace}/{name} not found")
    path = source.get("path") or ""
    return readers.artifact(flux, path), _format_of(path, declared_format)


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
        source = spec.get("deviceSource")
        if body["kind"] == "DeviceFleet" and isinstance(source, dict) and (
                source.get("configMapRef") or source.get("sourceRef")):
            name = body["metadata"]["name"]
            field = "spec.deviceSource." + ("configMapRef" if source.get("configMapRef")
                                            else "sourceRef")
            try:
                text, fmt = device_text(namespace, source, readers)
            except DeviceSourceUnavailable as exc:
                problems.append(Problem(f"{namespace}/{object_ref(body)}", f"{exc} (a missing "
                                        "device source is an error, never zero devices)",
                                        None, object_ref(body), field))
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
