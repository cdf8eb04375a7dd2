"""The pure lint rules over plain rows: thresholds, severities and the failing level."""

from __future__ import annotations

from datetime import timedelta

from controller.lint import rules
from controller.lint.rules import CARow, CRLRow, DeviceRow, Report, Thresholds

DAY = 86400
NOW = 1_900_000_000


def codes(findings: object) -> list[str]:
    return [f.code for f in findings]  # type: ignore[attr-defined]


def test_ca_windows() -> None:
    cas = [CARow("old", "01", NOW - 1), CARow("soon", "02", NOW + 10 * DAY),
           CARow("fine", "03", NOW + 365 * DAY)]
    assert codes(rules.ca_findings(cas, NOW, Thresholds())) == ["ca-expired", "ca-expiring"]
    wider = Thresholds(ca_expiring_within=timedelta(days=400))
    assert codes(rules.ca_findings(cas, NOW, wider)) == ["ca-expired", "ca-expiring",
                                                         "ca-expiring"]


def test_crl_near_next_update_is_a_share_of_its_validity() -> None:
    week = 7 * DAY
    crls = [CRLRow("fresh", 1, NOW - DAY, NOW - DAY + week),  # 6 of 7 days left
            CRLRow("late", 2, NOW - 6 * DAY, NOW - 6 * DAY + week),  # 1 day left: < 25%
            CRLRow("stale", 3, NOW - 8 * DAY, NOW - DAY)]
    found = list(rules.crl_findings(crls, NOW, Thresholds()))
    assert [(f.code, f.object, f.severity) for f in found] == [
        ("crl-near-next-update", "CertificateAuthority/late", "warning"),
        ("crl-expired", "CertificateAuthority/stale", "critical")]


def test_shared_keys_name_the_other_holders() -> None:
    rows = [("ab" * 32, DeviceRow("f", f"d{i}", f"{i:02x}", 0, 0)) for i in range(8)]
    rows.append(("cd" * 32, DeviceRow("f", "alone", "99", 0, 0)))
    found = list(rules.shared_key_findings(rows))
    assert [f.device for f in found] == [f"d{i}" for i in range(8)]
    assert found[0].message.endswith("of f/d1, f/d2, f/d3, f/d4, f/d5 and 2 more")


def test_report_order_and_fail_on() -> None:
    report = Report()
    assert report.worst() is None
    report.add(rules.device_findings("certificate-too-old", [DeviceRow("f", "d", "1", 0, 0)],
                                     NOW))
    assert not rules.fails(report, "warning") and rules.fails(report, "info")
    assert not rules.fails(report, None)
    report.add(rules.device_findings("certificate-expired", [DeviceRow("f", "d", "1", 0, 0)],
                                     NOW))
    assert rules.fails(report, "critical")
    assert codes(report.sorted()) == ["certificate-expired", "certificate-too-old"]
    assert report.counts == {"certificate-too-old": 1, "certificate-expired": 1}
