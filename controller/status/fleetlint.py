"""`fleetpki lint`: the lint rules over the inventory (read-only)."""

from __future__ import annotations

from collections import defaultdict

from controller.lint import rules
from controller.lint.rules import Finding, Report, Thresholds
from controller.stores import facts
from controller.stores.inventory import Inventory

DEFAULT = Thresholds()


def lint(inventory: Inventory, now: int, thresholds: Thresholds = DEFAULT) -> Report:
    """Every finding. The weak-key check reads the key of each active certificate whose key
    fleetpki did not generate (see README, Fleet lint, for its cost)."""
    report = Report()
    window = rules.window(now, thresholds)
    for code in facts.CHECKS:
        report.add(rules.device_findings(code, facts.device_rows(inventory, code, window), now))
    report.add(rules.shared_key_findings(facts.shared_keys(inventory)))
    report.add(rules.weak_key_findings(facts.key_algorithms(inventory), thresholds))
    report.add(rules.ca_findings(facts.active_cas(inventory), now, thresholds))
    report.add(rules.crl_findings(facts.crls(inventory), now, thresholds))
    return report


def counts(inventory: Inventory, now: int,
           thresholds: Thresholds = DEFAULT) -> dict[str, int]:
    """Findings per check, by SQL counts only (cheap enough for every scrape): every check
    but weak-key, which reads certificates."""
    found = facts.device_counts(inventory, rules.window(now, thresholds))
    found["shared-public-key"] = facts.shared_key_count(inventory)
    small = Report()
    small.add(rules.ca_findings(facts.active_cas(inventory), now, thresholds))
    small.add(rules.crl_findings(facts.crls(inventory), now, thresholds))
    return {**{code: 0 for code in rules.CHECKS if code != "weak-key"}, **found, **small.counts}


def attention(inventory: Inventory, now: int, limit: int) -> dict[str, list[Finding]]:
    """Fleet -> its devices' findings that need no threshold (a shared public key, a revoked
    certificate presented again), for the status `attention` list; at most `limit` rows per
    check are read."""
    report = Report()
    report.add(rules.shared_key_findings(facts.shared_keys(inventory, limit)))
    code = "revoked-certificate-in-use"
    report.add(rules.device_findings(code, facts.device_rows(
        inventory, code, rules.window(now, DEFAULT), limit), now))
    by_fleet: dict[str, list[Finding]] = defaultdict(list)
    for finding in report.sorted():
        by_fleet[finding.object.removeprefix("DeviceFleet/")].append(finding)
    return by_fleet
