"""The page and the tables from a Report built by hand: sections that depend on other data."""

from __future__ import annotations

from controller.report.model import FleetCounts, Report, expiry_series
from controller.report.page import MAX_ROWS, render
from controller.report.tables import document, tables

from .support import Page


def report(**changes: object) -> Report:
    base = dict(generated_at=1_900_000_000,
                fleets=[FleetCounts("f", "ca", 3, 1, 2, 1, (0, 1, 2))], authorities=[],
                algorithms=[("device", "f", "ECDSA-P256", 3)], expiry=expiry_series({-1: 1, 0: 2}),
                revocations=[("f", "keyCompromise", 2)], policy=[], changes=[], runs=[])
    base.update(changes)
    return Report(**base)  # type: ignore[arg-type]


def test_lint_section_only_with_lint_findings() -> None:
    assert "Lint findings" not in render(report(), "t")
    assert "lint" not in tables(report()) and "lint" not in document(report())
    finding = {"rule": "expiry-too-long", "object": "DeviceFleet/f", "message": "<too long>"}
    page = Page(render(report(lint=[finding]), "t"))
    assert page.records("lint") == [{"rule": "expiry-too-long", "object": "DeviceFleet/f",
                                     "message": "<too long>"}]
    assert tables(report(lint=[finding]))["lint"] == [finding]


def test_totals_states_and_long_tables() -> None:
    many = [{"policy": "p", "rule": "r", "action": "warn", "message": str(i), "object": "o"}
            for i in range(MAX_ROWS + 5)]
    html = render(report(policy=many), "<title>")
    page = Page(html)
    assert len(page.records("policy")) == MAX_ROWS and "5 more rows in the CSV file" in html
    assert "<title>&lt;title&gt;</title>" in html
    assert page.charts["chart-states"] == {"valid": 1, "expiring ≤30d": 1, "expired": 1,
                                           "revoked": 2, "superseded": 1}
    assert page.charts["chart-expiry"]["expired"] == 1
    assert document(report())["totals"] == {"active": 3, "retired": 1, "revoked": 2,
                                             "expired": 1, "expiring7d": 0, "expiring30d": 1,
                                             "expiring90d": 2}
