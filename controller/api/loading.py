"""Parse YAML documents into resources, keeping line numbers for every field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from controller.api.problems import Problem
from controller.api.resources import API_VERSION, GROUP, KINDS, Resource

Path_ = tuple[str | int, ...]
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
_NAMED_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*): (.+)$", re.S)
MESSAGES = {"extra_forbidden": "unknown field (misspelt, or not valid here)",
            "missing": "required field is missing"}


@dataclass(frozen=True)
class Located:
    """A resource and where it was declared, down to the line of each field."""

    resource: Resource
    file: str
    line: int
    lines: dict[Path_, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.resource.kind}/{self.resource.name}"

    def line_of(self, *path: str | int) -> int:
        """Line of a field (or of its nearest declared parent)."""
        return _nearest_line(self.lines, path) or self.line


def _to_data(node: yaml.Node, path: Path_, lines: dict[Path_, int], loader: yaml.SafeLoader) -> Any:
    """Plain data from a composed node, recording the line of every key and item."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            name = key_node.value
            lines[(*path, name)] = key_node.start_mark.line + 1
            result[name] = _to_data(value_node, (*path, name), lines, loader)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(item, (*path, i), lines, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node)


def field_path(loc: tuple[str | int, ...]) -> str:
    """Pydantic location -> `spec.devices[3].id`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _nearest_line(lines: dict[Path_, int], loc: Path_) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _pydantic_problems(
    error: ValidationError, file: str, ref: str, lines: dict[Path_, int], base: Path_ = ()
) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"]
                    if not (isinstance(p, str) and p.startswith("function-")))
        full = (*base, *loc)
        message = MESSAGES.get(item["type"], item["msg"].removeprefix("Value error, "))
        named = _NAMED_FIELD.match(message)
        if named:  # "renewBefore: must be ..." raised by a model validator names its field
            full = (*full, *named.group(1).split("."))
            message = named.group(2)
        problems.append(
            Problem(file, message, _nearest_line(lines, full), ref, field_path(full) or None)
        )
    return problems


def parse_documents(text: str, file: str) -> tuple[list[Located], list[Problem]]:
    """All fleetpki resources in one (multi-document) YAML text; other documents are ignored."""
    located: list[Located] = []
    problems: list[Problem] = []
    if len(text) > MAX_DOCUMENT_BYTES:
        return [], [Problem(file, f"file larger than {MAX_DOCUMENT_BYTES} bytes")]
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        return [], [Problem(file, f"invalid YAML: {reason}", line)]
    loader = yaml.SafeLoader("")
    for node in nodes:
        if node is None:
            continue
        lines: dict[Path_, int] = {}
        try:
            data = _to_data(node, (), lines, loader)
        except yaml.YAMLError as exc:
            problems.append(Problem(file, f"invalid YAML: {exc}", node.start_mark.line + 1))
            continue
        if not isinstance(data, dict):
            continue
        api_version = data.get("apiVersion")
        if api_version != API_VERSION:
            if isinstance(api_version, str) and api_version.startswith(f"{GROUP}/"):
                problems.append(Problem(file, f"unsupported apiVersion {api_version!r}; use "
                                        f"{API_VERSION!r}", lines.get(("apiVersion",)), None,
                                        "apiVersion"))
            continue
        kind = data.get("kind")
        metadata = data.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        ref = f"{kind}/{name}" if name else str(kind)
        model = KINDS.get(kind) if isinstance(kind, str) else None
        if model is None:
            line = lines.get(("kind",), node.start_mark.line + 1)
            message = f"unknown kind {kind!r}; known: {sorted(KINDS)}"
            problems.append(Problem(file, message, line, None, "kind"))
            continue
        data.pop("status", None)
        try:
            resource = model.model_validate(data)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, file, ref, lines))
            continue
        located.append(Located(resource, file, node.start_mark.line + 1, lines))
    return located, problems
