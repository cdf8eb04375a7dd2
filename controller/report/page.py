"""The report as one self-contained HTML page (pure): inline CSS and SVG, nothing fetched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from controller.report.charts import horizontal_bars, vertical_bars
from controller.report.model import EXPIRY_BUCKET_DAYS, Report
from controller.report.tables import iso, tables

MAX_ROWS = 200  # rows per HTML table; the CSV files have all of them

STYLE = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#eef2f7}
td.n{text-align:right}.bad{color:#c0392b}.ok{color:#27ae60}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.card{border:1px solid #ccc;border-radius:6px;
padding:8px 14px}.card b{display:block;font-size:22px}.charts{display:flex;flex-wrap:wrap;
gap:24px}figure{margin:0}figcaption{font-weight:bold;margin-bottom:4px}.muted{color:#777}
"""


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return f'<td class="{"ok" if value else "bad"}">{"yes" if value else "no"}</td>'
    if isinstance(value, int):
        return f'<td class="n">{value}</td>'
    return f"<td>{escape('' if value is None else str(value))}</td>"


def table(table_id: str, rows: Sequence[Mapping[str, Any]], empty: str = "none") -> str:
    """An HTML table of `rows` (at most MAX_ROWS shown; the rest counted)."""
    if not rows:
        return f'<p id="{escape(table_id)}" class="muted">{escape(empty)}</p>'
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>"
                   for row in rows[:MAX_ROWS])
    more = (f'<p class="muted">{len(rows) - MAX_ROWS} more rows in the CSV file.</p>'
            if len(rows) > MAX_ROWS else "")
    return f'<table id="{escape(table_id)}"><tr>{head}</tr>{body}</table>{more}'


def _cards(totals: Mapping[str, int]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card" data-total="{escape(k)}"><b>{v}</b>{escape(k)}</div>'
        for k, v in totals.items()) + "</div>"


def _audit(report: Report) -> str:
    if report.audit is None:
        return '<p id="audit" class="muted">no audit log</p>'
    audit = report.audit
    actors = [{"actor": k, "records": v} for k, v in audit.by_actor.items()]
    actions = [{"action": k, "records": v} for k, v in audit.by_action.items()]
    damaged = (f'; <span class="bad">{audit.unreadable_lines} unreadable line(s)</span>'
               if audit.unreadable_lines else "")
    return (f"<p>{audit.records} record(s){damaged}.</p>" + table("audit-actors", actors)
            + table("audit-actions", actions)
            + f"<h3>Newest {len(audit.recent)} records</h3>" + table("audit", audit.recent))


def _problems(report: Report) -> str:
    """DIR's declaration problems: policies could not be evaluated where they are."""
    if not report.problems:
        return ""
    return (f'<p class="bad">The declaration has {len(report.problems)} problem(s), so policy '
            "findings are incomplete (see `fleetpki validate`):</p>"
            + table("problems", report.problems))


def render(report: Report, title: str) -> str:
    """The whole page."""
    sections = tables(report)
    state_series = list(report.by_state().items())
    charts = (
        f'<figure><figcaption>Expiry of active device certificates ({EXPIRY_BUCKET_DAYS}-day '
        f'windows)</figcaption>{vertical_bars("chart-expiry", "Expiry", report.expiry)}</figure>'
        f'<figure><figcaption>Active certificates by key algorithm</figcaption>'
        f'{horizontal_bars("chart-algorithms", "Algorithms", list(report.by_algorithm().items()))}'
        f'</figure><figure><figcaption>Device certificates by state</figcaption>'
        f'{horizontal_bars("chart-states", "States", state_series)}</figure>')
    lint = ("" if report.lint is None else
            "<h2>Lint findings</h2>" + table("lint", report.lint, "no lint findings"))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class=\"muted\">Generated "
        f"{escape(str(iso(report.generated_at)))}</p>" + _cards(report.totals)
        + f'<div class="charts">{charts}</div>'
        "<h2>Fleets</h2>" + table("fleets", sections["fleets"], "no fleets in the inventory")
        + "<h2>Certificate authorities and CRLs</h2>" + table("authorities",
                                                             sections["authorities"])
        + "<h2>Key algorithms in use</h2>" + table("algorithms", sections["algorithms"])
        + "<h2>Revocations by reason</h2>" + table("revocations", sections["revocations"],
                                                    "no revocations")
        + "<h2>Policy findings</h2>" + _problems(report)
        + table("policy", sections["policy"], "no policy findings")
        + lint + "<h2>Who changed what</h2><h3>Commits to the fleet repository</h3>"
        + table("changes", sections["changes"], "no git history")
        + "<h3>Apply runs (status branch)</h3>" + table("applied", sections["applied"],
                                                         "no status branch")
        + "<h3>Audit log</h3>" + _audit(report) + "</body></html>\n")
