"""Parse YAML documents into resources, keeping line numbers for every field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from controller.api.problems import Problem
from controller.api.resources import (
    API_VERSION,
    CONFIGMAP_KEY,
    DNS_SUBDOMAIN,
    FLUX_SOURCE_API,
    GROUP,
    K8S_NAMESPACE,
    KINDS,
    Resource,
)

Path_ = tuple[str | int, ...]
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
_NAMED_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*): (.+)$", re.S)
MAX_ALIAS_NODES = 10_000
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
MESSAGES = {"extra_forbidden": "unknown field (misspelt, or not valid here)",
            "missing": "required field is missing",
            "model_type": "must be a mapping of fields",
            "model_attributes_type": "must be a mapping of fields",
            "dict_type": "must be a mapping",
            "list_type": "must be a list"}


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


class Refused(yaml.YAMLError):
    """YAML that is valid but not acceptable here (recursive or exploding aliases, tags)."""

    def __init__(self, message: str, node: yaml.Node) -> None:
        super().__init__(message)
        self.line = node.start_mark.line + 1


class _Builder:
    """Plain data from composed nodes, recording the line of every key and item.

    Aliases are followed, but a recursive one is refused and re-expanded nodes are counted, so
    an alias "bomb" stops at MAX_ALIAS_NODES instead of exhausting memory. Tags other than
    YAML's own are refused (safe loading would refuse them too).
    """

    def __init__(self, lines: dict[Path_, int]) -> None:
        self.lines = lines
        self.loader = yaml.SafeLoader("")
        self.seen: set[int] = set()
        self.active: set[int] = set()
        self.repeats = 0

    def build(self, node: yaml.Node, path: Path_ = ()) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self.active:
            raise Refused("recursive YAML alias", node)
        if id(node) in self.seen:
            self.repeats += 1
            if self.repeats > MAX_ALIAS_NODES:
                raise Refused(f"YAML aliases expand to more than {MAX_ALIAS_NODES} nodes", node)
        self.seen.add(id(node))
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and \
                node.tag not in (MAP_TAG, SEQ_TAG):
            raise Refused(f"unsupported YAML tag {node.tag!r}", node)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                result: dict[Any, Any] = {}
                for key_node, value_node in node.value:
                    name = key_node.value
                    self.lines[(*path, name)] = key_node.start_mark.line + 1
                    result[name] = self.build(value_node, (*path, name))
                return result
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self.loader.construct_object(node)
        finally:
            self.active.discard(id(node))


def _syntax_problem(error: yaml.YAMLError, file: str) -> Problem:
    """`invalid YAML: <what>` at the problem's line, with the construct it was inside."""
    mark = getattr(error, "problem_mark", None)
    reason = getattr(error, "problem", None) or str(error)
    if "'\\t'" in reason:
        reason = "a tab character: YAML is indented with spaces, never tabs"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None:
        reason += f" ({context} started at line {context_mark.line + 1})"
    where = context_mark if context_mark is not None else mark  # where the broken construct began
    return Problem(file, f"invalid YAML: {reason}", where.line + 1 if where is not None else None)


def field_path(loc: tuple[str | int, ...]) -> str:
    """Pydantic location -> `spec.devices[3].id`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


PATTERN_HINTS = {
    "id": "a device id is 1-128 characters: letters, digits and . _ : @ -, starting with a "
          "letter or digit",
    "name": "must be a lower-case DNS label (a-z, 0-9, '-' and '.'; at most 63 characters)",
    "oid": "must be a dotted object identifier such as 1.3.6.1.4.1.55555.1",
    "country": "must be a two-letter ISO 3166 country code such as DE",
}
PATTERN_HINTS_BY_PATTERN = {  # Kubernetes names, which differ from fleetpki's own
    DNS_SUBDOMAIN: "must be a Kubernetes object name: lower-case a-z, 0-9, '-' and '.', "
                   "starting and ending with a letter or digit",
    K8S_NAMESPACE: "must be a Kubernetes namespace: lower-case a-z, 0-9 and '-', at most 63 "
                   "characters",
    CONFIGMAP_KEY: "a ConfigMap key is letters, digits, '-', '_' and '.'",
    FLUX_SOURCE_API: "must be a Flux source API version such as source.toolkit.fluxcd.io/v1",
}


def friendly_message(error: Mapping[str, Any]) -> str:
    """A pydantic error as users should read it: no class names, no bare regexes."""
    loc = error.get("loc") or ()
    pattern = (error.get("ctx") or {}).get("pattern")
    if error["type"] == "string_pattern_mismatch" and pattern in PATTERN_HINTS_BY_PATTERN:
        return f"{PATTERN_HINTS_BY_PATTERN[pattern]} (got {error.get('input')!r})"
    if error["type"] == "string_pattern_mismatch" and loc and loc[-1] in PATTERN_HINTS:
        return f"{PATTERN_HINTS[str(loc[-1])]} (got {error.get('input')!r})"
    if error["type"] == "string_too_long":
        return f"{error['msg'].lower()} (got {len(str(error.get('input')))})"
    return MESSAGES.get(error["type"], str(error["msg"]).removeprefix("Value error, "))


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
        message = friendly_message(item)
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
        return [], [_syntax_problem(exc, file)]
    for node in nodes:
        if node is None:
            continue
        lines: dict[Path_, int] = {}
        try:
            data = _Builder(lines).build(node)
        except Refused as exc:
            problems.append(Problem(file, f"invalid YAML: {exc}", exc.line))
            continue
        except yaml.YAMLError as exc:
            problems.append(Problem(file, f"invalid YAML: {exc}", node.start_mark.line + 1))
            continue
        if isinstance(data, list) and any(isinstance(item, dict) and str(
                item.get("apiVersion", "")).startswith(f"{GROUP}/") for item in data):
            problems.append(Problem(file, "a document must be one resource (a mapping), not a "
                                    "list; separate resources with ---", node.start_mark.line + 1))
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
