"""Desired state from a directory (usually a git checkout): YAML resources and device files."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.api.desired import Desired, cross_check
from controller.api.loading import Located, field_path, friendly_message, parse_documents
from controller.api.problems import InvalidDeclaration, Problem
from controller.api.resources import Device, DeviceFleet

YAML_SUFFIXES = (".yaml", ".yml")
DeviceLines = dict[str, tuple[str, int | None]]


def _yaml_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.suffix in YAML_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _device_rows(text: str, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, raw device dict) per row; CSV columns `labels.<key>` become labels."""
    rows: list[tuple[int, dict[str, Any]]] = []
    if fmt == "jsonl":
        for number, entry in enumerate(text.splitlines(), start=1):
            if entry.strip():
                try:
                    rows.append((number, json.loads(entry)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line {number}: invalid JSON: {exc.msg}") from None
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "id" not in reader.fieldnames:
        raise ValueError("CSV needs a header row with an 'id' column")
    for row in reader:
        line = reader.line_num
        device: dict[str, Any] = {"labels": {}}
        for column, value in row.items():
            if column is None:
                raise ValueError(f"line {line}: more values than header columns")
            if value in (None, ""):
                continue
            if column.startswith("labels."):
                device["labels"][column.removeprefix("labels.")] = value
            elif column == "revoked":
                device["revoked"] = {"reason": value}
            else:
                device[column] = value
        rows.append((line, device))
    return rows


def load_fleet_devices(
    root: Path, item: Located, problems: list[Problem]
) -> tuple[tuple[Device, ...], DeviceLines]:
    """Inline devices plus those of `deviceSource`; a missing or broken source is an error."""
    fleet = item.resource
    assert isinstance(fleet, DeviceFleet)
    devices: list[Device] = []
    lines: DeviceLines = {}

    def add(device: Device, file: str, line: int | None) -> None:
        if device.id in lines:
            first_file, first_line = lines[device.id]
            problems.append(Problem(file, f"duplicate device id {device.id!r} (first at "
                                    f"{first_file}:{first_line})", line, item.ref, "id"))
            return
        lines[device.id] = (file, line)
        devices.append(device)

    for index, device in enumerate(fleet.spec.devices):
        add(device, item.file, item.line_of("spec", "devices", index, "id"))
    source = fleet.spec.deviceSource
    if source is not None:
        path = root / source.path
        try:
            if not path.resolve().is_relative_to(root.resolve()):
                raise ValueError("path leaves the repository")
            text = path.read_text(encoding="utf-8-sig")  # Excel writes a byte order mark
            rows = _device_rows(text, source.resolved_format())
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(Problem(item.file, f"cannot read device source {source.path!r}: "
                                    f"{reason} (a missing source is an error, never zero devices)",
                                    item.line_of("spec", "deviceSource", "path"), item.ref,
                                    "spec.deviceSource.path"))
            return (), {}
        for line, raw in rows:
            try:
                add(Device.model_validate(raw), source.path, line)
            except ValidationError as exc:
                for error in exc.errors():
                    problems.append(Problem(source.path, friendly_message(error), line, item.ref,
                                            field_path(error["loc"]) or None))
    return tuple(devices), lines


def load_repository(root: Path) -> tuple[Desired, list[Problem]]:
    """Parse every YAML file under `root` and cross-check; problems name file, line and field."""
    root = root.resolve()
    if not root.is_dir():
        raise InvalidDeclaration([Problem(str(root), "not a directory")])
    located: list[Located] = []
    problems: list[Problem] = []
    for path in _yaml_files(root):
        relative = str(path.relative_to(root))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(relative, f"cannot read: {exc}"))
            continue
        found, found_problems = parse_documents(text, relative)
        located.extend(found)
        problems.extend(found_problems)
    fleet_devices = {
        item.resource.name: load_fleet_devices(root, item, problems)
        for item in located if isinstance(item.resource, DeviceFleet)
    }
    invalid = frozenset(p.object for p in problems if p.object)
    desired, reference_problems = cross_check(located, fleet_devices, invalid)
    unparsed = sorted({p.file for p in problems if p.message.startswith("invalid YAML")})
    if unparsed:  # a "missing" object may well be declared in a file that did not parse
        note = f" (maybe declared in {', '.join(unparsed)}, which could not be read)"
        reference_problems = [replace(p, message=p.message + note)
                              if p.message.startswith("no ") else p for p in reference_problems]
    return desired, problems + reference_problems
