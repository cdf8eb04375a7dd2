"""Validation problems that point at a file, line, object and field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the declaration; `str()` is what users see."""

    file: str
    message: str
    line: int | None = None
    object: str | None = None  # "Kind/name"
    field: str | None = None
    device: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where]
        if self.object:
            parts.append(self.object)
        if self.field:
            parts.append(self.field)
        return ": ".join([*parts, self.message])

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "object": self.object,
            "field": self.field,
            "message": self.message,
            **({"device": self.device} if self.device else {}),
        }


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule that did not hold for an object (and device)."""

    policy: str
    rule: str
    action: str  # "deny" | "warn"
    message: str
    object: str  # "Kind/name"
    device: str | None = None

    def __str__(self) -> str:
        target = self.object + (f" device {self.device}" if self.device else "")
        return f"{self.action}: {target}: {self.policy}/{self.rule}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        data = {"policy": self.policy, "rule": self.rule, "action": self.action,
                "message": self.message, "object": self.object}
        return data | ({"device": self.device} if self.device else {})


class InvalidDeclaration(Exception):
    """Raised when the declaration has problems; nothing may be applied."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def __reduce__(self) -> tuple[type, tuple[list[Problem]]]:
        return InvalidDeclaration, (self.problems,)  # as raised on a worker (`parallel`)
