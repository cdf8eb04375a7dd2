"""The index of a device CSV's records (one device read alone) against reading every row."""

from __future__ import annotations

import csv
import io
import random

import pytest

from controller.api import csvindex
from controller.api.csvindex import changed_records, record_at, record_starts

PEM = ("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0C,AQYIKo\nZIzj0DAQcDQgAE\n"
       "-----END PUBLIC KEY-----")


def plain_text(chance: random.Random) -> str:
    """A plain CSV: `id` first; quoted fields with line breaks and commas (and lines in them
    that look like records), blank lines, short rows, quoted and odd ids, CRLF or LF."""
    header = ["id", *chance.sample(["labels.site", "publicKey", "revoked", "csr"],
                                   chance.randint(1, 4))]
    values = ["", "a", "b c", "x,y", PEM, "\ndev-1,fake", "keyCompromise"]
    ids = [f"dev-{n}" for n in range(chance.randint(0, 12))] + ["with,comma", "two\nlines"]
    lines = [",".join(header)]
    for device in chance.sample(ids, len(ids)):
        if chance.random() < 0.15:
            lines.append("")
        cells = [device] + [chance.choice(values)
                            for _ in range(chance.choice([0, len(header) - 1]))]
        quoted = [f'"{cell}"' if any(c in cell for c in ',\n') or cell and chance.random() < 0.1
                  else cell for cell in cells]
        lines.append(",".join(quoted))
    return chance.choice(["\n", "\r\n"]).join(lines) + chance.choice(["", "\n"])


@pytest.mark.parametrize("seed", range(300))
def test_an_indexed_record_is_what_reading_every_row_gives(seed: int) -> None:
    text = plain_text(random.Random(seed))
    index = record_starts(text)
    assert index is not None
    starts = index.starts
    records = {values[0]: values for values in list(csv.reader(io.StringIO(text)))[1:] if values}
    assert set(starts) <= set(records)  # nothing inside a quoted field taken for a record
    for device, start in starts.items():
        assert record_at(text, start) == records[device]
    for device, values in records.items():  # left out: ids it cannot read, rows of one value
        assert device in starts or any(c in device for c in ",\n") or len(values) == 1


def test_the_values_are_those_of_the_full_read() -> None:
    text = f'id,labels.site,publicKey,revoked\nd-1,a,"{PEM}",\n"d-2","x,y",,keyCompromise\n'
    index = record_starts(text)
    assert index is not None and set(index.starts) == {"d-1", "d-2"}
    assert index.header == ["id", "labels.site", "publicKey", "revoked"]
    starts = index.starts
    assert record_at(text, starts["d-1"]) == ["d-1", "a", PEM, ""]
    assert record_at(text, starts["d-2"]) == ["d-2", "x,y", "", "keyCompromise"]


@pytest.mark.parametrize("text", [
    "labels.site,id\na,d-1\n",  # id not first
    "id\nd-1\n",  # a single column
    '"id",site\nd-1,a\n',  # a quoted header
    'id,site\nd-1,"say ""hi"""\n',  # a doubled quote
    'id,site\nd-1,ab"c\n',  # a quote inside a plain field
    'id,site\nd-1,"abc"d\n',  # text after a closing quote
    'id,site\nd-1,"abc\n',  # a quoted field never closed
    'id,site\nd-1\r"x",a\n',  # a quote after a lone carriage return
    "no line break",
])
def test_any_other_shape_gets_no_index(text: str) -> None:
    assert record_starts(text) is None


def edited(chance: random.Random) -> tuple[str, str, list[list[str]]]:
    """A plain CSV of unique ids and a random edit of it: values changed, records added,
    removed, moved or doubled, blank lines, a record the index cannot find; and the edit's
    records as `csv.reader` reads them."""
    header = ["id", "labels.site", "publicKey", "revoked"]
    values = ["", "a", "b c", "x,y", PEM, "\ndev-1,fake", "keyCompromise"]

    def record() -> list[str]:
        return [chance.choice(values) for _ in header[1:]]

    rows = [[f"dev-{n}", *record()] for n in range(chance.randint(0, 15))]
    if chance.random() < 0.2:
        rows.insert(chance.randint(0, len(rows)), ["odd,one", *record()])
    old = [row[:] for row in rows]
    for _ in range(chance.randint(0, 6)):
        edit = chance.choice(["value", "add", "remove", "move", "double", "odd", "blank"])
        filled = [row for row in rows if row]
        if edit == "add" or not filled:
            rows.insert(chance.randint(0, len(rows)), [f"new-{chance.random()}", *record()])
        elif edit == "value":
            chance.choice(filled)[chance.randint(1, 3)] = chance.choice(values)
        elif edit == "remove":
            rows.remove(chance.choice(rows))
        elif edit == "move":
            rows.insert(chance.randint(0, len(rows)), rows.pop(chance.randrange(len(rows))))
        elif edit == "double":
            rows.insert(chance.randint(0, len(rows)), [chance.choice(filled)[0], *record()])
        elif edit == "odd":  # an id the index does not read
            rows.insert(chance.randint(0, len(rows)), ["with,comma", *record()])
        else:
            rows.insert(chance.randint(0, len(rows)), [])
    newline = chance.choice(["\n", "\r\n"])

    def text(records: list[list[str]]) -> str:
        lines = [",".join(f'"{cell}"' if any(c in cell for c in ',\n') else cell
                          for cell in cells) for cells in [header, *records]]
        return newline.join(lines) + newline

    return text(old), text(rows), [values for values in rows if values]


@pytest.mark.parametrize(("block", "searched"), [(csvindex.BLOCK, csvindex.SEARCHED), (5, 0)])
@pytest.mark.parametrize("seed", range(400))
def test_changed_records_are_those_reading_both_texts_finds(
        seed: int, block: int, searched: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts of one block and of many, compared by block; ids added looked for in the rest of
    the text, or (none searched) the text indexed whole."""
    monkeypatch.setattr(csvindex, "BLOCK", block)
    monkeypatch.setattr(csvindex, "SEARCHED", searched)
    old, new, records = edited(random.Random(seed))
    found = changed_records(old, new, len(records))
    reader = csv.reader(io.StringIO(new))
    lines = {values[0]: reader.line_num for values in reader if values}  # where each ends
    ids = [values[0] for values in records]
    before = {values[0]: values for values in list(csv.reader(io.StringIO(old)))[1:]}
    if found is None:  # only where the texts hold what the index cannot compare
        assert len(set(ids)) < len(ids) or {"with,comma", "odd,one"} & {*ids, *before}
        return
    assert len(set(ids)) == len(ids)  # a doubled id is never taken for a changed row
    assert found.header == next(csv.reader(io.StringIO(old)))
    assert (found.indexed is None) == bool(searched or not set(ids) - set(before))
    assert set(found.changed) | {i for i in ids if i not in found.changed} == set(ids)
    for values in records:
        device = values[0]
        if device in found.changed:
            assert found.changed[device] == (lines[device], values)
        else:
            assert before[device] == values  # alike, so left out
    assert sorted(found.removed) == sorted(set(before) - set(ids))
    assert found.before == {i: before[i] for i in [*found.changed, *found.removed]
                            if i in before}


@pytest.mark.parametrize(("old", "new"), [
    ("id,site\nd-1,a\n", "id,place\nd-1,a\n"),  # another header
    ("id,site\nd-1,a\n", 'id,site\nd-1,"a""b"\n'),  # not plain
    ("id,site\nd-1,a\n", "id,site\nd-1,a\nd-1,b\n"),  # a doubled id
    ('id,site\n"d-1",a\nd-2,b\n', 'id,site\n"d-1",a\nd-2,b\nd-1,c\n'),  # quoted the first time
    ("id,site\nd-1,a\nd-2,b\n", "id,site\nd-3,x\nd-1,a\nd-2,b\nd-3,c\n"),  # both new
    ("id,site\nd-1,a\n", "id,site\nodd\nd-1,a\n"),  # a record before the first indexed one
])
def test_texts_not_compared_record_by_record(old: str, new: str) -> None:
    assert changed_records(old, new, 1) is None


@pytest.mark.parametrize("block", [csvindex.BLOCK, 7])
def test_only_what_changed_is_read(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvindex, "BLOCK", block)
    rows = [f'dev-{n},site-{n % 3},"{PEM}",\n' for n in range(50)]
    old = "id,labels.site,publicKey,revoked\n" + "".join(rows)
    edits = {
        "revoke one": (old.replace(f'dev-20,site-2,"{PEM}",', f'dev-20,site-2,"{PEM}",x'),
                       ["dev-20"], []),
        "append one": (old + "dev-50,site-0,,\n", ["dev-50"], []),
        "remove one": (old.replace(rows[31], ""), [], ["dev-31"]),
        "move one": (old.replace(rows[5], "") + rows[5], [], []),
        "first and last": (old.replace("dev-0,site-0", "dev-0,site-9").replace(
            "dev-49,site-1", "dev-49,site-9"), ["dev-0", "dev-49"], []),
    }
    for name, (new, changed, removed) in edits.items():
        found = changed_records(old, new, 50)
        assert found is not None, name
        assert (sorted(found.changed), found.removed) == (changed, removed), name


def test_when_most_records_changed_every_row_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvindex, "FEW", 2)
    old = "id,site\n" + "".join(f"d-{n},a\n" for n in range(12))
    assert changed_records(old, old.replace("d-1,a", "d-1,b"), 12) is not None
    three = old.replace("d-1,a", "d-1,b").replace("d-2,a", "d-2,b").replace("d-3,a", "d-3,b")
    assert changed_records(old, three, 12) is not None  # a quarter
    assert changed_records(old, three.replace("d-4,a", "d-4,b"), 12) is None
