"""Plans as text (terminals), markdown (pull requests) and JSON (scripts)."""

from __future__ import annotations

import json
from collections import defaultdict

from controller.api.problems import Finding
from controller.plan.model import ACTION_NAMES, RELEASE_ACTION_NAMES, Action, Plan

SHOWN_PER_GROUP = 20
MARKDOWN_ROWS = 100  # rows per table section
MARKDOWN_LIMIT = 60_000  # characters; GitHub refuses comments over 65,536
SYMBOLS = {"create-ca": "+", "renew-ca": "~", "issue": "+", "renew": "~", "rekey": "~",
           "revoke": "-", "publish-crl": "*", "sign-release": "+", "withdraw-release": "-",
           "revoke-signer": "-"}


def _groups(actions: tuple[Action, ...],
            by_reason: bool = False) -> dict[tuple[str, str, str], list[Action]]:
    """(kind, name, action) -> actions; `by_reason` splits revocations by RFC 5280 reason."""
    groups: dict[tuple[str, str, str], list[Action]] = defaultdict(list)
    for action in actions:
        label: str = action.action
        if by_reason and action.revocation_reason:
            label = f"{label} ({action.revocation_reason})"
        groups[(action.kind, action.name, label)].append(action)
    return groups


def _finding_groups(findings: tuple[Finding, ...]) -> dict[tuple[str, str, str, str],
                                                           list[Finding]]:
    groups: dict[tuple[str, str, str, str], list[Finding]] = defaultdict(list)
    for finding in findings:
        key = (finding.action, f"{finding.policy}/{finding.rule}", finding.object,
               finding.message)
        groups[key].append(finding)
    return groups


def _summary_line(plan: Plan) -> str:
    summary = plan.summary()
    parts = [f"{summary[name]} {name}" for name in (*ACTION_NAMES, *RELEASE_ACTION_NAMES)
             if summary.get(name)]
    line = "Plan: " + (", ".join(parts) if parts else "no changes") + "."
    if plan.denied:
        line += f" {len(plan.denied)} denied by policy."
    return line


def as_json(plan: Plan) -> str:
    """`{"actions": [...], "summary": {...}, "dangers", "policy", "denied", "problems",
    "warnings"}`; see README for the contract."""
    return json.dumps({
        "actions": [a.as_dict() for a in plan.actions],
        "summary": plan.summary(),
        "dangers": list(plan.dangers),
        "policy": [f.as_dict() for f in plan.findings],
        "denied": [a.as_dict() for a in plan.denied],
        "problems": [p.as_dict() for p in plan.problems],
        "warnings": list(plan.warnings),
    }, indent=2) + "\n"


def as_text(plan: Plan, shown: int = SHOWN_PER_GROUP) -> str:
    lines = [f"  !! danger: {d}" for d in plan.dangers]
    for (kind, name, action), actions in _groups(plan.actions).items():
        symbol = SYMBOLS[action]
        for item in actions[:shown]:
            target = f"{kind}/{name}" + (f" device {item.device}" if item.device else "")
            lines.append(f"  {symbol} {action:<11} {target}  ({item.reason})")
        if len(actions) > shown:
            lines.append(f"  {symbol} {action:<11} {kind}/{name}  ... and {len(actions) - shown} "
                         "more")
    lines += [f"  ! warning: {w}" for w in plan.warnings]
    lines += [f"  x problem: {p}" for p in plan.problems]
    for (_, _, _, _), findings in _finding_groups(plan.findings).items():
        lines += [f"  x policy {f}" for f in findings[:shown]]
        if len(findings) > shown:
            lines.append(f"  x policy {findings[0].action}: ... and {len(findings) - shown} "
                         f"more for {findings[0].policy}/{findings[0].rule}")
    if plan.denied:
        lines.append(f"  x {len(plan.denied)} action(s) denied by policy will not be applied")
    return "\n".join([*lines, _summary_line(plan)]) + "\n"


def _devices(items: list[Action] | list[Finding], shown: int) -> str:
    devices = [f"`{i.device}`" for i in items[:shown] if i.device]
    more = f" … +{len(items) - shown}" if len(items) > shown and devices else ""
    return ", ".join(devices) + more


def as_markdown(plan: Plan, shown: int = SHOWN_PER_GROUP) -> str:
    """GitHub-flavoured: summary, dangers, changes per object, policy results, problems."""
    denies = len(plan.denies)
    verdict = ("❌ policy denies this change" if denies else
               "❌ the declaration has problems" if plan.problems else
               "🚨 review the dangers below" if plan.dangers else "✅ no policy denials")
    lines = ["### fleetpki plan", "", f"**{_summary_line(plan)}** {verdict}", ""]
    if plan.dangers:
        lines += ["#### Dangers", ""] + [f"- 🚨 {d}" for d in plan.dangers[:MARKDOWN_ROWS]]
        if len(plan.dangers) > MARKDOWN_ROWS:
            lines.append(f"- … and {len(plan.dangers) - MARKDOWN_ROWS} more")
        lines.append("")
    groups = list(_groups(plan.actions, by_reason=True).items())
    if groups:
        lines += ["#### Changes", "", "| object | action | count | first devices |",
                  "|---|---|---:|---|"]
        for (kind, name, action), actions in groups[:MARKDOWN_ROWS]:
            lines.append(f"| {kind}/{name} | {action} | {len(actions)} | "
                         f"{_devices(actions, shown)} |")
        if len(groups) > MARKDOWN_ROWS:
            rest = sum(len(actions) for _, actions in groups[MARKDOWN_ROWS:])
            lines.append(f"| … {len(groups) - MARKDOWN_ROWS} more rows | | {rest} | "
                         "see `fleetpki plan -o json` |")
        lines.append("")
    finding_groups = list(_finding_groups(plan.findings).items())
    if finding_groups:
        lines += ["#### Policy", "", "| result | rule | object | count | message | first devices |",
                  "|---|---|---|---:|---|---|"]
        for (action, rule, target, message), findings in finding_groups[:MARKDOWN_ROWS]:
            icon = "❌ deny" if action == "deny" else "⚠️ warn"
            lines.append(f"| {icon} | `{rule}` | {target} | {len(findings)} | {message} | "
                         f"{_devices(findings, shown)} |")
        if len(finding_groups) > MARKDOWN_ROWS:
            lines.append(f"| … {len(finding_groups) - MARKDOWN_ROWS} more rows | | | | | |")
        lines.append("")
    if plan.warnings:
        lines += ["#### Warnings", ""] + [f"- ⚠️ {w}" for w in plan.warnings[:MARKDOWN_ROWS]]
        lines.append("")
    if plan.problems:
        lines += ["#### Problems", ""] + [f"- ❌ `{p}`" for p in plan.problems[:MARKDOWN_ROWS]]
        if len(plan.problems) > MARKDOWN_ROWS:
            lines.append(f"- … and {len(plan.problems) - MARKDOWN_ROWS} more")
        lines.append("")
    return _truncated("\n".join(lines))


def _truncated(text: str) -> str:
    """Cut at a line boundary below MARKDOWN_LIMIT, saying where the rest is."""
    if len(text) <= MARKDOWN_LIMIT:
        return text
    cut = text.rfind("\n", 0, MARKDOWN_LIMIT - 200)
    return text[:cut] + "\n\n… truncated to stay within a PR comment; the full plan is " \
        "`fleetpki plan -o json`.\n"


RENDERERS = {"text": as_text, "markdown": as_markdown, "json": as_json}
