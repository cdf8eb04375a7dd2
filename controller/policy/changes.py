"""What a change does to the policies that judge it: a Danger per policy added, removed,
disabled, re-scoped or with a rule changed, with the rule diff."""

from __future__ import annotations

from collections.abc import Iterable

from controller.api.loading import Located
from controller.api.resources import CertificatePolicy, PolicyRule


def _policies(items: Iterable[Located]) -> dict[str, CertificatePolicy]:
    found = {}
    for item in items:
        assert isinstance(item.resource, CertificatePolicy)
        found[item.resource.name] = item.resource
    return found


def _rule(rule: PolicyRule) -> str:
    return f"{rule.action} `{rule.expression}`"


def policy_changes(before: Iterable[Located], after: Iterable[Located]) -> list[str]:
    """Danger lines for every difference between two effective policy sets."""
    old, new = _policies(before), _policies(after)
    flags: list[str] = []
    for name in sorted(old.keys() | new.keys()):
        was, now = old.get(name), new.get(name)
        where = f"CertificatePolicy/{name}"
        if now is None:
            assert was is not None
            flags.append(f"removes {where} (its {len(was.spec.rules)} rule(s) no longer apply)")
            continue
        if was is None:
            flags.append(f"adds {where}: " + "; ".join(
                f"rule {r.name}: {_rule(r)}" for r in now.spec.rules))
            continue
        diff: list[str] = []
        if was.spec.disabled != now.spec.disabled:
            diff.append("disabled" if now.spec.disabled else "enabled again")
        if was.spec.selector != now.spec.selector:
            diff.append(f"selector {was.spec.selector.model_dump(exclude_defaults=True)} -> "
                        f"{now.spec.selector.model_dump(exclude_defaults=True)}")
        old_rules = {r.name: r for r in was.spec.rules}
        new_rules = {r.name: r for r in now.spec.rules}
        for rule in sorted(old_rules.keys() | new_rules.keys()):
            a, b = old_rules.get(rule), new_rules.get(rule)
            if a is not None and b is None:
                diff.append(f"rule {rule} removed (was {_rule(a)})")
            elif a is None and b is not None:
                diff.append(f"rule {rule} added: {_rule(b)}")
            elif a is not None and b is not None and _rule(a) != _rule(b):
                diff.append(f"rule {rule}: {_rule(a)} -> {_rule(b)}")
        if diff:
            flags.append(f"changes {where}: " + "; ".join(diff))
    return flags
