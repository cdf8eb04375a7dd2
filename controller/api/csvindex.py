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
BLOCK = 1 << 20  # compared at once while looking for the first difference
FEW = 10_000  # changed records always read alone, however small the file
SEARCHED = 16  # ids a change adds, each looked for in the rest of the text; more: index it all


class RecordIndex(NamedTuple):
    header: list[str]
    starts: dict[str, int]  # id -> offset of its record
    doubled: bool  # some id begins several records (the first is indexed)


def lines_of(text: str, position: list[int] | None = None, start: int = 0,
             stop: int | None = None) -> Iterator[str]:
    """The lines of `text` (from `start`, a line's beginning, to `stop`, another's), each with
    its line break, one at a time: what `csv.reader` reads from a file (`io.StringIO` would
    first copy the text at four bytes a character). `position[0]`, if given, is kept where the
    line last yielded ends."""
    at = position if position is not None else [0]
    stop = len(text) if stop is None else stop
    find = text.find
    while end := find("\n", start, stop) + 1:
        at[0] = end
        yield text[start:end]
        start = end
    if start < stop:
        at[0] = stop
        yield text[start:stop]


def record_starts(text: str) -> RecordIndex | None:
    """The header and, by id, where each record begins, for a text of the plain shape; None
    for any other. A record whose first field holds a comma or line break, or which has no
    comma, is not indexed: only as many ids as records prove that none is missing."""
    header = plain_header(text)
    return None if header is None else RecordIndex(header, *_starts(text, text.find("\n"),
                                                                   len(text)))


def plain_header(text: str) -> list[str] | None:
    """The header of a text of the plain shape whose first column alone is `id`, else None."""
    header_end = text.find("\n")
    if header_end < 0 or '"' in text[:header_end] or _PLAIN.fullmatch(text) is None:
        return None
    header = text[:header_end].rstrip("\r").split(",")
    if len(header) < 2 or header[0] != "id" or header.count("id") != 1:
        return None
    return header


def _starts(text: str, begin: int, end: int) -> tuple[dict[str, int], bool]:
    """By id, where each record after the line break at `begin` and before `end` begins, and
    whether an id begins several."""
    starts: dict[str, int] = {}
    found = 0
    for match in _RECORD_OR_FIELD.finditer(text, begin, end):
        device = match.group(2) or match.group(1)
        if device:  # a record's first field, not a quoted field passed over
            found += 1
            starts.setdefault(device, match.start() + 1)
    return starts, found != len(starts)


def record_at(text: str, start: int) -> list[str]:
    """The values of the record beginning at `start`, as `csv.reader` reads them."""
    return next(csv.reader(lines_of(text, None, start)))


def record_lines(text: str, starts: list[int], one_line: bool = False) -> dict[int, int]:
    """By start, the line on which the record beginning there ends, as `csv.reader` numbers
    it (`one_line`: each record is a line, as in JSONL); the text is counted once, however
    many records."""
    found: dict[int, int] = {}
    lines = counted = 0  # the line breaks before `counted`
    for start in sorted(set(starts)):
        lines += text.count("\n", counted, start)
        counted = start
        if one_line:
            found[start] = lines + 1
            continue
        reader = csv.reader(lines_of(text, None, start))
        next(reader)
        found[start] = lines + reader.line_num
    return found


class RecordChanges(NamedTuple):
    """What differs between two versions of a plain CSV with the same header."""

    header: list[str]
    indexed: RecordIndex | None  # the new text's, if it was indexed whole
    changed: dict[str, tuple[int, list[str]]]  # id -> (line, values) of a new or changed record
    before: dict[str, list[str]]  # id -> values, in the old text, of a changed or removed record
    removed: list[str]  # ids in the old text only


def changed_records(old: str, new: str, records: int) -> RecordChanges | None:
    """The records of `new` that are not, byte for byte, a record of `old` under the same id,
    and the ids `old` alone has; None unless `new` is of the plain shape with no id twice,
    `old` has the same header line, and each record compared is one record of its id (so a
    record the index cannot find reads every row). A record's text runs from its start to the
    next record's (blank lines included); its `line` is where `csv.reader` ends it. `old` is
    a text applied, so it holds no id twice.

    Only the window between what both texts begin and end with is compared (a commit that
    changes a few rows in one place reads that place). An id the window adds is looked for in
    the rest of `new` (SEARCHED of them at most; more, and `new` is indexed whole) to find one
    declared twice. None too when more than a quarter of the `records` (about as many as `old`
    holds) changed, and more than FEW: reading every row at once then costs less."""
    header = plain_header(new)
    header_end = new.find("\n")
    if header is None or old[:header_end + 1] != new[:header_end + 1]:
        return None
    begin, old_end, new_end = _window(old, new, header_end)
    if _PLAIN.fullmatch(old, begin, old_end) is None:
        return None
    before, doubled = _starts(old, begin, old_end)
    window, doubled_now = _starts(new, begin, new_end)
    old_ends, new_ends = _ends(old, before, begin, old_end), _ends(new, window, begin, new_end)
    if doubled or doubled_now or old_ends is None or new_ends is None:
        return None
    added = [device for device in window if device not in before]
    indexed = None
    if len(added) > SEARCHED:
        indexed = record_starts(new)
        if indexed is None or indexed.doubled:
            return None
    elif any(_begins_record(new, device, header_end, begin) or
             _begins_record(new, device, new_end - 1, len(new)) for device in added):
        return None
    changed: dict[str, tuple[int, list[str]]] = {}
    most = max(FEW, records // 4)
    lines = counted = 0  # the line breaks of `new` before `counted`
    known = before.get
    for device, start in window.items():
        end, was = new_ends[start], known(device)
        if was is not None and old_ends[was] - was == end - start \
                and old[was:old_ends[was]] == new[start:end]:
            continue
        lines += new.count("\n", counted, start)
        counted = start
        read = _one_record(new[start:end], device)
        if read is None or len(changed) == most:
            return None
        changed[device] = (lines + read[0], read[1])
    removed = [device for device in before if device not in window]  # nor elsewhere: once in old
    old_values: dict[str, list[str]] = {}
    for device in [*changed, *removed]:
        if (was := known(device)) is not None:
            read = _one_record(old[was:old_ends[was]], device)
            if read is None:
                return None
            old_values[device] = read[1]
    return RecordChanges(header, indexed, changed, old_values, removed)


def _begins_record(text: str, device: str, begin: int, end: int) -> bool:
    """Whether a record of id `device` may begin after a line break in `text[begin:end]`: its
    id plain or quoted after a line break (or the same inside a quoted field: a false alarm,
    which only costs reading every row)."""
    return text.find(f"\n{device},", begin, end) >= 0 or \
        text.find(f'\n"{device}",', begin, end) >= 0


def _window(old: str, new: str, header_end: int) -> tuple[int, int, int]:
    """(begin, old_end, new_end): `begin` a line break outside quoted fields, the ends just
    after one (or the ends of the texts), such that `old[:begin + 1] == new[:begin + 1]` and
    `old[old_end:] == new[new_end:]`."""
    prefix = _common_prefix(old, new)
    suffix = _common_suffix(old, new, min(len(old), len(new)) - prefix)
    begin = _break_before(old, prefix, header_end)
    new_end = _break_from(new, len(new) - suffix)
    return begin, new_end + len(old) - len(new), new_end


def _common_prefix(a: str, b: str) -> int:
    """How many characters `a` and `b` begin with alike."""
    low, limit = 0, min(len(a), len(b))
    while low + BLOCK <= limit and a.startswith(b[low:low + BLOCK], low):  # copies b's block
        low += BLOCK
    high = min(low + BLOCK, limit)
    while low < high:  # a[:low] == b[:low], and the answer is at most `high`
        middle = (low + high + 1) // 2
        low, high = (middle, high) if a[low:middle] == b[low:middle] else (low, middle - 1)
    return low


def _common_suffix(a: str, b: str, limit: int) -> int:
    """How many characters (at most `limit`) `a` and `b` end with alike."""
    low, ends = 0, (len(a), len(b))
    while low + BLOCK <= limit and \
            a.startswith(b[ends[1] - low - BLOCK:ends[1] - low], ends[0] - low - BLOCK):
        low += BLOCK
    high = min(low + BLOCK, limit)
    while low < high:
        middle = (low + high + 1) // 2
        alike = a[ends[0] - middle:ends[0] - low] == b[ends[1] - middle:ends[1] - low]
        low, high = (middle, high) if alike else (low, middle - 1)
    return low


def _break_before(text: str, position: int, header_end: int) -> int:
    """The last line break outside quoted fields before `position` (the header's at least)."""
    quotes = text.count('"', 0, position)
    while (found := text.rfind("\n", header_end + 1, position)) >= 0:
        quotes -= text.count('"', found, position)
        if quotes % 2 == 0:
            return found
        position = found
    return header_end


def _break_from(text: str, position: int) -> int:
    """Just after the first line break outside quoted fields from `position` on, else the
    text's end. A plain text has an even number of quotes: as many before a place as after it,
    in parity."""
    quotes = text.count('"', position)
    while (found := text.find("\n", position)) >= 0:
        quotes -= text.count('"', position, found)
        if quotes % 2 == 0:
            return found + 1
        position = found + 1
    return len(text)


def _ends(text: str, starts: dict[str, int], begin: int, end: int) -> dict[int, int] | None:
    """Where each record ends (the next one's start, or `end`), by its start; None when
    anything but blank lines stands between `begin` and the first record."""
    offsets = list(starts.values())
    if text[begin:offsets[0] if offsets else end].strip("\r\n"):
        return None
    return dict(zip(offsets, [*offsets[1:], end], strict=False))  # none: no record


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
