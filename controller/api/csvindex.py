"""Where each record of a device CSV begins, found without reading its rows, so that one device
of an unchanged fleet of a million (an EST look-up, a renewal falling due) is read alone.

Only for the plain shape, which is what spreadsheets and scripts write: `id` is the first of
several columns, and every quote is a quoted field's own (it opens a field, after a comma or a
line break, or closes one, before a comma, a line break or the end; no `""` inside a field).
In such a text a line break outside the quoted fields ends a record, and the next record's
first field is its id. Any other text gets no index (None) and is read whole, as before.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from typing import NamedTuple

# Outside quoted fields, a line break and the next record's first field (plain or quoted) up to
# its comma; a quoted field is matched whole, so nothing inside one is taken for a record.
# Possessive: linear, never backtracking over a line of base64 (a PEM in a quoted field).
_RECORD_OR_FIELD = re.compile(r'"[^"]*+"|\n(?:"([^",\r\n]++)"|([^",\r\n]++)),')
# A text of plain quotes: each quoted field opens after a comma, a line break or at the start,
# and closes before a comma, a line break or the end (so no quote is doubled or stray).
_PLAIN = re.compile(r'(?:[^"]*+(?<![^,\n])"[^"]*+"(?![^,\r\n]))*+[^"]*+')


class RecordIndex(NamedTuple):
    header: list[str]
    starts: dict[str, int]  # id -> offset of its record


def record_starts(text: str) -> RecordIndex | None:
    """The header and, by id, where each record begins, for a text of the plain shape; None
    for any other. A record whose first field holds a comma or line break, or which has no
    comma, is not indexed: only as many ids as records prove that none is missing."""
    header_end = text.find("\n")
    if header_end < 0 or '"' in text[:header_end] or _PLAIN.fullmatch(text) is None:
        return None
    header = text[:header_end].rstrip("\r").split(",")
    if len(header) < 2 or header[0] != "id" or header.count("id") != 1:
        return None
    starts: dict[str, int] = {}
    for match in _RECORD_OR_FIELD.finditer(text, header_end):
        device = match.group(2) or match.group(1)
        if device:  # a record's first field, not a quoted field passed over
            starts.setdefault(device, match.start() + 1)
    return RecordIndex(header, starts)


def record_at(text: str, start: int) -> list[str]:
    """The values of the record beginning at `start`, as `csv.reader` reads them."""
    return next(csv.reader(_lines_from(text, start)))


def _lines_from(text: str, start: int) -> Iterator[str]:
    while start < len(text):
        end = text.find("\n", start) + 1 or len(text)
        yield text[start:end]
        start = end
