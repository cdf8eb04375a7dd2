"""The index of a device CSV's records (one device read alone) against reading every row."""

from __future__ import annotations

import csv
import io
import random

import pytest

from controller.api.csvindex import record_at, record_starts

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
