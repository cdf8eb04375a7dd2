"""Plans as text (terminals), markdown (pull requests) and JSON (scripts)."""

from __future__ import annotations

import json
from collections import defaultdict

from controller.plan.model import ACTION_NAMES, Action, Plan

SHOWN_PER_GROUP = 20
MARKDOWN_ROWS = 100  # keeps a PR comment far below GitHub's 65,536-character limit
SYMBOLS = {"create-ca": "+", "renew-ca": "~", "issue": "+", "renew": "~", "rekey": "~",
           "revoke": "-", "publish-crl": "*"}


def _groups(plan: Plan) -> dict[tuple[str, str, str], list[Action]]:
    groups: dict[tuple[str, str, str], list[Action]] = defaultdict(list)
    for action in plan.actions:
        groups[(action.kind, action.name, action.action)].append(action)
    return groups


def _summary_line(plan: Plan) -> str:
    summary = plan.summary()
    parts = [f"{summary[name]} {name}" for name in ACTION_NAMES if summary[name]]
    return "Plan: " + (", ".join(parts) if parts else "no changes") + "."


def as_json(plan: Plan) -> str:
    """`{"actions": [...], "summary": {...}, "problems": [...], "warnings": [...]}`."""
    return json.dumps({
        "actions": [a.as_dict() for a in plan.actions],
        "summary": plan.summary(),
        "problems": [p.as_dict() for p in plan.problems],
        "warnings": list(plan.warnings),
    }, indent=2)


def as_text(plan: Plan, shown: int = SHOWN_PER_GROUP) -> str:
    lines = []
    for (kind, name, action), actions in _groups(plan).items():
        symbol = SYMBOLS[action]
        for item in actions[:shown]:
            target = f"{kind}/{name}" + (f" device {item.device}" if item.device else "")
            lines.append(f"  {symbol} {action:<11} {target}  ({item.reason})")
        if len(actions) > shown:
            lines.append(f"  {symbol} {action:<11} {kind}/{name}  ... and {len(actions) - shown} "
                         "more")
    lines += [f"  ! warning: {w}" for w in plan.warnings]
    lines += [f"  x problem: {p}" for p in plan.problems]
    return "\n".join([*lines, _summary_line(plan)])


def as_markdown(plan: Plan, shown: int = SHOWN_PER_GROUP) -> str:
    lines = ["### fleetpki plan", "", _summary_line(plan), ""]
    if plan.actions:
        lines += ["| object | action | count | first devices |", "|---|---|---:|---|"]
        groups = list(_groups(plan).items())
        for (kind, name, action), actions in groups[:MARKDOWN_ROWS]:
            devices = [f"`{a.device}`" for a in actions[:shown] if a.device]
            more = f" … +{len(actions) - shown}" if len(actions) > shown and devices else ""
            lines.append(f"| {kind}/{name} | {action} | {len(actions)} | "
                         f"{', '.join(devices)}{more} |")
        if len(groups) > MARKDOWN_ROWS:
            rest = sum(len(actions) for _, actions in groups[MARKDOWN_ROWS:])
            lines.append(f"| … {len(groups) - MARKDOWN_ROWS} more rows | | {rest} | "
                         "see `fleetpki plan -o json` |")
    if plan.warnings:
        lines += ["", "**Warnings**", ""] + [f"- ⚠️ {w}" for w in plan.warnings]
    if plan.problems:
        lines += ["", "**Problems**", ""] + [f"- ❌ `{p}`" for p in plan.problems[:100]]
    return "\n".join(lines) + "\n"


RENDERERS = {"text": as_text, "markdown": as_markdown, "json": as_json}
