"""Reading the report back: its HTML (tables and SVG bars), and headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

# Chromium with everything that could reach the network off: a file:// page needs none.
OFFLINE_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps",
                 "--no-first-run", "--no-pings", "--hide-scrollbars", "--disable-extensions")


class Page(HTMLParser):
    """Tables by id (rows of cell texts) and SVG charts by id ({label: value} of their bars)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.charts: dict[str, dict[str, int]] = {}
        self.texts: dict[str, str] = {}  # id -> text of elements such as <p id=...>
        self._table: str | None = None
        self._chart: str | None = None
        self._cell: list[str] | None = None
        self._text_id: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "table":
            self._table = attr["id"]
            self.tables[str(self._table)] = []
        elif tag == "svg":
            self._chart = attr["id"]
            self.charts[str(self._chart)] = {}
        elif tag == "g" and self._chart is not None:
            self.charts[self._chart][str(attr["data-label"])] = int(str(attr["data-value"]))
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "p" and "id" in attr:
            self._text_id = attr["id"]
            self.texts[str(self._text_id)] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "svg":
            self._chart = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "p":
            self._text_id = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._text_id is not None:
            self.texts[self._text_id] += data

    def records(self, table_id: str) -> list[dict[str, str]]:
        """A table's rows as {header: cell}."""
        header, *rows = self.tables[table_id]
        return [dict(zip(header, row, strict=True)) for row in rows]


def chromium() -> str:
    """The Chromium binary (.ci/run installs Debian's `chromium`)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found is not None, "chromium is not installed (apt-get install chromium)"
    return found


def browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on `page` (offline, its own profile directory)."""
    return subprocess.run([chromium(), *OFFLINE_FLAGS, f"--user-data-dir={profile}", *args,
                           page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=180, check=True)
