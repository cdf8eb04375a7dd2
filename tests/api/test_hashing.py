"""Content hashes must never change for the same content: a new digest for an unchanged device
would renew it. The fast path for pairs of strings writes exactly what json.dumps writes."""

from __future__ import annotations

import hashlib
import json
import random

from controller.api.desired import _json, content_hash, hash_parts

ALPHABET = ['a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\t', '\x00', '\x1f', '\x7f', 'é', 'ß',
            'Ω', '中', '\u2028', '\ud800', '😀', '{', '}', ',', ':']


def reference(part: object) -> str:
    return json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)


def test_pairs_of_strings_are_written_as_json_dumps_writes_them() -> None:
    generator = random.Random("hash-parts")
    for _ in range(5_000):
        part = tuple(
            tuple("".join(generator.choice(ALPHABET) for _ in range(generator.randint(0, 12)))
                  for _ in range(2))
            for _ in range(generator.randint(0, 5)))
        assert _json(part) == reference(part)


def test_everything_else_is_json_dumps() -> None:
    for part in [("a", "b"), (("a", "b", "c"),), (("a", 1),), [("a", "b")], {"b": 1, "a": [2]},
                 "text", 7, None, ((("a", "b"), "c"),)]:
        assert _json(part) == reference(part)
    assert content_hash({"x": 1}, (("k", "v"),)) == hash_parts(
        hashlib.sha256(), {"x": 1}, (("k", "v"),)).hexdigest() == hashlib.sha256(
        b'{"x":1}\0[["k","v"]]\0').hexdigest()
