"""Where each record of a device CSV begins, found without reading its rows, so that one device
of an unchanged fleet of a million (an EST look-up, a renewal falling due) is read alone.

Only for the plain shape, which is what spreadsheets and scripts write: `id` is the first of
several columns, and every quote is a quoted field's own (it opens a field, after a comma or a
line break, or closes one, before a comma, a line break or the end; no `""` inside a field).
In such a text a line begins a record exactly when an even number of quotes precede it, and its
first field is the id. Any other text gets no index (None) and is read whole, as before.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator

# a line's first field, plain or quoted, then a comma; possessive, so a line of base64 (a PEM
# inside a quoted field) is passed over at once, never backtracked
_FIRST_FIELD = re.compile(r'\n(?:"([^",\r\n]++)"|([^",\r\n]++)),')


def record_starts(text: str) -> dict[str, int] | None:
    """Id -> offset of its record, for a text of the plain shape; None for any other. A record
    whose first field holds a comma or line break, or which has no comma, is not indexed: only
    as many keys as records prove that none is missing."""
    header_end = text.find("\n")
    if header_end < 0 or '"' in text[:header_end] or not _plain_quotes(text):
        return None
    header = text[:header_end].rstrip("\r").split(",")
    if len(header) < 2 or header[0] != "id" or header.count("id") != 1:
        return None
    starts: dict[str, int] = {}
    quotes, counted = 0, header_end
    for match in _FIRST_FIELD.finditer(text, header_end):
        start = match.start() + 1
        quotes += text.count('"', counted, start)
        counted = start
        if not quotes & 1:  # outside every quoted field: a record's first field
            starts.setdefault(match.group(1) or match.group(2), start)
    return starts


def record_at(text: str, start: int) -> list[str]:
    """The values of the record beginning at `start`, as `csv.reader` reads them."""
    return next(csv.reader(_lines_from(text, start)))


def _lines_from(text: str, start: int) -> Iterator[str]:
    while start < len(text):
        end = text.find("\n", start) + 1 or len(text)
        yield text[start:end]
        start = end


def _plain_quotes(text: str) -> bool:
    """Every quote opens a field (after a comma or a line break) or closes it (before a comma,
    a line break or the end), alternately: a doubled quote leaves an empty piece outside."""
    pieces = text.split('"')
    if len(pieces) % 2 == 0:
        return False  # a quoted field never closed
    outside = pieces[::2]  # what lies outside the quoted fields
    return (all(piece[-1:] in (",", "\n") for piece in outside[:-1])
            and all(piece[:1] in (",", "\r", "\n") for piece in outside[1:-1])
            and (len(outside) == 1 or outside[-1][:1] in ("", ",", "\r", "\n")))
