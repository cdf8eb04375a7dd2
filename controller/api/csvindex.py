"""Where each record of a device CSV begins, found without reading its rows, so that one device
of an unchanged fleet of a million (an EST look-up, a renewal falling due) is read alone.

The same index tells which records of a new version of the text differ from the version last
applied (`changed_records`), so a change of a few rows in a large file reads those rows only.

Only for the plain shape, which is what spreadsheets and scripts write: `id` is the first of
several columns, and every quote is a quoted field's own (it opens a field, after a comma or a
line break, or closes one, before a comma, a line break or the end; no `""` inside a field).
In such a text a line break outside the quoted fields ends a record, and the next record's
first field is its id. Any other text gets no index (None) and is read whole, as before.
"""

from __future__ import annotations

import csv
import io
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


class RecordChanges(NamedTuple):
    """What differs between two versions of a plain CSV with the same header."""

    indexed: RecordIndex  # the new text's
    changed: dict[str, tuple[int, list[str]]]  # id -> (line, values) of a new or changed record
    before: dict[str, list[str]]  # id -> values, in the old text, of a changed or removed record
    removed: list[str]  # ids in the old text only
    old_count: int  # records of the old text (each one indexed)


def changed_records(old: str, new: str) -> RecordChanges | None:
    """The records of `new` that are not, byte for byte, a record of `old` under the same id,
    and the ids `old` alone has; None unless both are of the plain shape with the same header
    and each record compared was read alone as one record (so a duplicate id, or a record the
    index cannot find, reads every row). A record's text runs from its start to the next
    record's (blank lines included); its `line` is where `csv.reader` ends it."""
    before, after = record_starts(old), record_starts(new)
    if before is None or after is None or before.header != after.header:
        return None
    old_ends, new_ends = _ends(old, before), _ends(new, after)
    if old_ends is None or new_ends is None:
        return None
    changed: dict[str, tuple[int, list[str]]] = {}
    lines = counted = 0  # the line breaks of `new` before `counted`
    known = before.starts.get
    for device, start in after.starts.items():
        end, was = new_ends[start], known(device)
        if was is not None and old_ends[was] - was == end - start \
                and old[was:old_ends[was]] == new[start:end]:
            continue
        lines += new.count("\n", counted, start)
        counted = start
        read = _one_record(new[start:end], device)
        if read is None:
            return None
        changed[device] = (lines + read[0], read[1])
    removed = [device for device in before.starts if device not in after.starts]
    old_values: dict[str, list[str]] = {}
    for device in [*changed, *removed]:
        if (was := known(device)) is not None:
            read = _one_record(old[was:old_ends[was]], device)
            if read is None:  # a record the index did not find: the count tells (the caller)
                return None
            old_values[device] = read[1]
    return RecordChanges(after, changed, old_values, removed, len(before.starts))


def _ends(text: str, index: RecordIndex) -> dict[int, int] | None:
    """Where each record ends (the next one's start, or the end of the text), by its start;
    None when anything but blank lines stands between the header and the first record."""
    starts = list(index.starts.values())
    header_end = text.find("\n") + 1
    if text[header_end:starts[0] if starts else len(text)].strip():
        return None
    return dict(zip(starts, [*starts[1:], len(text)], strict=False))  # none: no record


def _one_record(record: str, device: str) -> tuple[int, list[str]] | None:
    """(lines it spans, values) when `record` is one record of id `device` and blank lines."""
    reader = csv.reader(io.StringIO(record))
    try:
        values = next(reader, None)
        lines = reader.line_num
        if values is None or values[0] != device or any(rest for rest in reader):
            return None
    except csv.Error:  # e.g. a NUL character: the full read reports it
        return None
    return lines, values
