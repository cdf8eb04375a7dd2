"""Desired state from a directory (usually a git checkout): YAML resources and device files."""

from __future__ import annotations

import codecs
import hashlib
import subprocess
from dataclasses import replace
from pathlib import Path

from controller.api.desired import Applied, Desired, Issued, ReadArtifact, cross_check
from controller.api.devices import (
    KUBERNETES_ONLY,
    DeviceSourceError,
    DeviceText,
    ReadDevices,
    UnsupportedDeviceSource,
    read_fleet_devices,
)
from controller.api.loading import Located, parse_documents
from controller.api.problems import InvalidDeclaration, Problem
from controller.api.resources import DeviceFleet, DeviceSource, Tenant

YAML_SUFFIXES = (".yaml", ".yml")


def yaml_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.suffix in YAML_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def repository_reader(root: Path) -> ReadDevices:
    """Git mode's `read_devices`: `deviceSource.path` is a file of the repository at `root`;
    `configMapRef` and `sourceRef` are refused (only the operator reads them)."""

    def read(source: DeviceSource) -> list[DeviceText]:
        label, path = _repository_path(root, source)
        try:
            # not mapped: a file truncated in place while mapped would kill the process
            return [device_text(label, path.read_bytes(), source.resolved_format())]
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DeviceSourceError(reason) from None

    return read


def device_text(label: str, data: bytes, fmt: str) -> DeviceText:
    """A device file's text as Python reads a text file: UTF-8 without the byte order mark
    Excel writes, every line break a line feed (the same, read from the work tree or from a
    commit, for `DeviceSet.parse_changes` to compare). The bytes are hashed as read where
    they are the text's UTF-8, not encoded again."""
    text = str(data, "utf-8-sig")
    if data.find(b"\r") >= 0:
        return DeviceText(label, text.replace("\r\n", "\n").replace("\r", "\n"), fmt)
    if data[:3] == codecs.BOM_UTF8:
        return DeviceText(label, text, fmt)
    return DeviceText(label, text, fmt, sha256=hashlib.sha256(data).digest())


def committed_reader(root: Path, commit: str) -> ReadDevices:
    """`repository_reader` of the files as `commit` holds them (the commit last applied, whose
    text a changed fleet's rows are compared with: `DeviceSet.parse_changes`)."""

    def read(source: DeviceSource) -> list[DeviceText]:
        label, path = _repository_path(root, source)
        relative = path.relative_to(root.resolve()).as_posix()
        try:
            found = subprocess.run(["git", "-C", str(root), "cat-file", "blob",
                                    f"{commit}:./{relative}"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)  # one pipe: read whole, no polling
        except OSError as exc:
            raise DeviceSourceError(f"cannot run git: {exc}") from None
        if found.returncode:
            raise DeviceSourceError(f"not in commit {commit}")
        try:
            return [device_text(label, found.stdout, source.resolved_format())]
        except UnicodeDecodeError as exc:
            raise DeviceSourceError(str(exc)) from None

    return read


def _repository_path(root: Path, source: DeviceSource) -> tuple[str, Path]:
    """`deviceSource.path` and the file it names, resolved; a source git mode does not read, or
    a path leaving the repository, refused."""
    for name in ("configMapRef", "sourceRef"):
        if getattr(source, name) is not None:
            raise UnsupportedDeviceSource(
                f"{KUBERNETES_ONLY}; in a git repository, devices come from spec.devices "
                "or deviceSource.path", field=name)
    assert source.path is not None  # the model requires it without configMapRef
    try:
        path = (root / source.path).resolve()
    except OSError as exc:  # e.g. a symbolic link loop
        raise DeviceSourceError(exc.strerror or str(exc)) from None
    if not path.is_relative_to(root.resolve()):
        raise DeviceSourceError("path leaves the repository")
    return source.path, path


def artifact_reader(root: Path) -> ReadArtifact:
    """Git mode's `read_artifact`: SHA-256 and size of a file of the repository at `root`."""

    def read(path_text: str) -> tuple[str, int]:
        path = root / path_text
        try:
            if not path.resolve().is_relative_to(root.resolve()):
                raise ValueError("path leaves the repository")
            with path.open("rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest(), path.stat().st_size
        except OSError as exc:
            raise ValueError(exc.strerror or str(exc)) from None

    return read


def load_repository(root: Path, applied: Applied | None = None, issued: Issued | None = None,
                    deferred: bool = False, previous: ReadDevices | None = None
                    ) -> tuple[Desired, list[Problem]]:
    """Parse every YAML file under `root` and cross-check; problems name file, line and field.
    The device rows of fleets `applied` as they are now (of every fleet, when `deferred`) are
    parsed only when used, and the rows of certificates `issued` are not validated again (see
    `cross_check`). Of a fleet whose device file alone changed since it was applied, as
    `previous` reads it then, only the changed rows are parsed."""
    root = root.resolve()
    if not root.is_dir():
        raise InvalidDeclaration([Problem(str(root), "not a directory")])
    located: list[Located] = []
    problems: list[Problem] = []
    for path in yaml_files(root):
        relative = str(path.relative_to(root))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(relative, f"cannot read: {exc}"))
            continue
        found, found_problems = parse_documents(text, relative)
        problems += [Problem(item.file, "a Tenant is accepted only from the trusted policy "
                             "source (--policies DIR), never from the repository it governs",
                             item.line, item.ref, "kind")
                     for item in found if isinstance(item.resource, Tenant)]
        located += [item for item in found if not isinstance(item.resource, Tenant)]
        problems.extend(found_problems)
    read_devices = repository_reader(root)
    fleet_devices = {
        item.resource.name: read_fleet_devices(item, problems, read_devices)
        for item in located if isinstance(item.resource, DeviceFleet)
    }
    invalid = frozenset(p.object for p in problems if p.object)
    desired, reference_problems = cross_check(located, fleet_devices, invalid, applied,
                                              artifact_reader(root), issued, deferred,
                                              previous)
    unparsed = sorted({p.file for p in problems if p.message.startswith("invalid YAML")})
    if unparsed:  # a "missing" object may well be declared in a file that did not parse
        note = f" (maybe declared in {', '.join(unparsed)}, which could not be read)"
        reference_problems = [replace(p, message=p.message + note)
                              if p.message.startswith("no ") and (p.field or "").endswith(".name")
                              else p for p in reference_problems]
    return desired, problems + reference_problems
