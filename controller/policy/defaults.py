"""The recommended default policy set (the project's `policies/`), applied unless disabled.

A repository policy with the same `metadata.name` replaces the default one, so a fleet repo can
tighten a default, relax it, or switch it off with `spec.disabled: true`.
"""

from __future__ import annotations

from importlib.resources import files

from controller.api.loading import Located, parse_documents
from controller.api.problems import Problem

PACKAGE = "controller.default_policies"


def default_policies() -> tuple[list[Located], list[Problem]]:
    located: list[Located] = []
    problems: list[Problem] = []
    for entry in sorted(files(PACKAGE).iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            found, found_problems = parse_documents(entry.read_text(encoding="utf-8"),
                                                    f"(default policies)/{entry.name}")
            located += found
            problems += found_problems
    return located, problems


def effective_policies(repository: dict[str, Located],
                       defaults: list[Located]) -> list[Located]:
    """Defaults first, each replaced by a repository policy of the same name."""
    merged = {item.resource.name: item for item in defaults}
    merged.update(repository)
    return [merged[name] for name in sorted(merged)]
