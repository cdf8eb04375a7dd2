"""Inline SVG bar charts: no scripts, fonts or anything fetched (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = ("#2f6fb0", "#e08a1e", "#c0392b", "#7d3c98", "#7f8c8d", "#27ae60", "#16a085")
WIDTH = 560


def _scale(values: Sequence[int], span: float) -> list[float]:
    top = max(values, default=0) or 1
    return [span * v / top for v in values]


def vertical_bars(chart_id: str, title: str, series: Sequence[tuple[str, int]],
                  height: int = 240) -> str:
    """Columns left to right (e.g. expiry over time), each labelled with its value."""
    base, left = height - 40, 10
    step = (WIDTH - left) / max(len(series), 1)
    parts = [f'<svg id="{escape(chart_id)}" class="chart" role="img" width="{WIDTH}" '
             f'height="{height}" viewBox="0 0 {WIDTH} {height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i, ((label, value), size) in enumerate(zip(series, _scale([v for _, v in series],
                                                                   base - 20), strict=True)):
        x = left + i * step
        color = PALETTE[2] if label == "expired" else PALETTE[0]
        parts.append(
            f'<g class="bar" data-label="{escape(label)}" data-value="{value}">'
            f'<title>{escape(label)}: {value}</title>'
            f'<rect x="{x + 3:.1f}" y="{base - size:.1f}" width="{step - 6:.1f}" '
            f'height="{size:.1f}" fill="{color}"/>'
            f'<text x="{x + step / 2:.1f}" y="{base - size - 4:.1f}" text-anchor="middle" '
            f'font-size="11">{value}</text>'
            f'<text x="{x + step / 2:.1f}" y="{base + 14}" text-anchor="middle" '
            f'font-size="9" transform="rotate(30 {x + step / 2:.1f} {base + 14})">'
            f'{escape(label)}</text></g>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{WIDTH}" y2="{base}" stroke="#555"/></svg>')
    return "".join(parts)


def horizontal_bars(chart_id: str, title: str, series: Sequence[tuple[str, int]]) -> str:
    """One row per item (e.g. certificates by algorithm), each labelled with its value."""
    row, label_width = 26, 170
    height = row * max(len(series), 1) + 10
    parts = [f'<svg id="{escape(chart_id)}" class="chart" role="img" width="{WIDTH}" '
             f'height="{height}" viewBox="0 0 {WIDTH} {height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    sizes = _scale([v for _, v in series], WIDTH - label_width - 60)
    for i, ((label, value), size) in enumerate(zip(series, sizes, strict=True)):
        y = 5 + i * row
        parts.append(
            f'<g class="bar" data-label="{escape(label)}" data-value="{value}">'
            f'<title>{escape(label)}: {value}</title>'
            f'<text x="{label_width - 6}" y="{y + 16}" text-anchor="end" font-size="12">'
            f'{escape(label)}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{size:.1f}" height="{row - 8}" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{label_width + size + 6:.1f}" y="{y + 16}" font-size="12">{value}</text>'
            f'</g>')
    parts.append("</svg>")
    return "".join(parts)
