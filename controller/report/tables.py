"""The report as data: one JSON document and one CSV table per section (pure)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from controller.report.model import HORIZONS_DAYS, Report

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a cell
# CSV header columns, also when a section has no rows (rows may add more columns)
COLUMNS = {
    "fleets": ("fleet", "ca", "active", "retired", "revoked", "expired",
               *(f"expiring{d}d" for d in HORIZONS_DAYS)),
    "authorities": ("ca", "serial", "notAfter", "crlNumber", "crlNextUpdate", "healthy",
                    "problems"),
    "algorithms": ("kind", "owner", "algorithm", "active"),
    "expiry": ("window", "active"),
    "revocations": ("owner", "reason", "count"),
    "policy": ("policy", "rule", "action", "message", "object", "device"),
    "problems": ("file", "line", "object", "field", "message", "device"),
    "changes": ("commit", "author", "date", "subject", "files", "moreFiles"),
    "applied": ("commit", "date", "summary", "appliedCommit", "signer"),
    "audit": ("time", "actor", "object", "action", "outcome"),
}


def iso(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def tables(report: Report) -> dict[str, list[dict[str, Any]]]:
    """Rows per section; the CSV files and the JSON document share them."""
    sections: dict[str, list[dict[str, Any]]] = {
        "fleets": [{"fleet": f.fleet, "ca": f.ca, "active": f.active, "retired": f.retired,
                    "revoked": f.revoked, "expired": f.expired,
                    **{f"expiring{d}d": n for d, n in zip(HORIZONS_DAYS, f.expiring,
                                                          strict=True)}}
                   for f in report.fleets],
        "authorities": [{"ca": c.name, "serial": c.serial, "notAfter": iso(c.not_after),
                         "crlNumber": c.crl_number, "crlNextUpdate": iso(c.crl_next_update),
                         "healthy": not c.problems, "problems": "; ".join(c.problems)}
                        for c in report.authorities],
        "algorithms": [{"kind": k, "owner": o, "algorithm": a, "active": n}
                       for k, o, a, n in report.algorithms],
        "expiry": [{"window": label, "active": n} for label, n in report.expiry],
        "revocations": [{"owner": o, "reason": r, "count": n} for o, r, n in report.revocations],
        "policy": report.policy,
        "problems": report.problems,
        "changes": [{"commit": c.commit, "author": c.author, "date": c.date,
                     "subject": c.subject, "files": " ".join(c.files), "moreFiles": c.more_files}
                    for c in report.changes],
        "applied": [{"commit": r.commit, "date": r.date, "summary": r.summary,
                     "appliedCommit": r.applied_commit, "signer": r.signer}
                    for r in report.runs],
    }
    if report.audit is not None:
        sections["audit"] = report.audit.recent
    if report.lint is not None:
        sections["lint"] = report.lint
    return sections


def document(report: Report) -> dict[str, Any]:
    """report.json: every section, plus totals, and what the audit log holds."""
    body: dict[str, Any] = {"generatedAt": iso(report.generated_at), "totals": report.totals,
                            "byAlgorithm": report.by_algorithm(), "byState": report.by_state()}
    body.update(tables(report))
    body["audit"] = None if report.audit is None else {
        "records": report.audit.records, "unreadableLines": report.audit.unreadable_lines,
        "byActor": report.audit.by_actor, "byAction": report.audit.by_action,
        "recent": report.audit.recent}
    return body


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    if isinstance(value, dict | list):
        return str(value)
    return value


def to_csv(rows: list[dict[str, Any]], columns: Sequence[str] = ()) -> str:
    """CSV with a header row: `columns`, then any other keys of the rows."""
    columns = list(dict.fromkeys([*columns, *(key for row in rows for key in row)]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()
