"""Audit records: building, hash-chaining, sealing and verifying (pure: bytes in, bytes out).

A record is one JSON object on one line (keys sorted, compact). Each holds `seq` (1, 2, ...),
`time`, `run` (the writing run's id), `action`, `outcome`, `object`, `actor`, the action's own
fields (serials, fingerprints, reason, ...) and `prev`: the SHA-256 (hex) of the previous line's
exact bytes, without its newline (64 zeros for the first record). Every append ends with a seal:
an `audit.sealed` record carrying `key` (the signing key's fingerprint) and `sig`, an Ed25519
signature over the seal's own line without `sig`; as the seal holds `prev`, it signs the whole
history before it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

GENESIS = "0" * 64
SEALED = "audit.sealed"
RECOVERED = "audit.recovered"
OUTCOMES = ("success", "failure", "refused", "denied")
RESERVED = frozenset({"seq", "time", "run", "action", "outcome", "object", "actor", "prev",
                      "key", "sig"})


@dataclass(frozen=True)
class Event:
    """What happened, before it is chained: `fields` are the action's own (serial,
    fingerprint, device, reason, counts...), never key material."""

    action: str
    outcome: str = "success"
    object: str = ""
    actor: Mapping[str, str] = field(default_factory=dict)
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown audit outcome {self.outcome!r}")
        clash = RESERVED & set(self.fields)
        if clash:
            raise ValueError(f"audit fields {sorted(clash)} are reserved")


@dataclass(frozen=True)
class Tail:
    """Where the chain stands: the last record's `seq` and the SHA-256 of its line."""

    seq: int = 0
    digest: str = GENESIS


def encode(record: Mapping[str, Any]) -> bytes:
    """The canonical line of a record (no newline)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def key_fingerprint(public_key: ed25519.Ed25519PublicKey) -> str:
    """`SHA256:` and the hex SHA-256 of the raw public key."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def chain(events: Iterable[Event], tail: Tail, time: str, run: str,
          key: ed25519.Ed25519PrivateKey | None) -> tuple[list[bytes], Tail]:
    """The lines (no newlines) of `events` chained after `tail`, then a seal (none without a
    key); the new tail."""
    lines: list[bytes] = []
    seq, prev = tail.seq, tail.digest
    for event in [*events, *([Event(SEALED)] if key is not None else [])]:
        seq += 1
        record: dict[str, Any] = {**event.fields, "seq": seq, "time": time, "run": run,
                                  "action": event.action, "outcome": event.outcome,
                                  "object": event.object, "actor": dict(event.actor),
                                  "prev": prev}
        if key is not None and event.action == SEALED:
            record["key"] = key_fingerprint(key.public_key())
            record["sig"] = base64.b64encode(key.sign(encode(record))).decode("ascii")
        line = encode(record)
        lines.append(line)
        prev = digest(line)
    return lines, Tail(seq, prev)


@dataclass(frozen=True)
class Line:
    """One line of the log as stored: where it is and its bytes (newline included, if any)."""

    file: str
    number: int
    data: bytes

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}"


@dataclass
class Verdict:
    """The outcome of a verification: `bad` names the first bad record (None when intact)."""

    records: int = 0
    seals: int = 0
    bad: Line | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.bad is None


def parse(data: bytes) -> dict[str, Any] | None:
    """A line's record, None unless a JSON object with an integer seq, prev and action."""
    try:
        record = json.loads(data)
    except ValueError:
        return None
    ok = (isinstance(record, dict) and isinstance(record.get("seq"), int)
          and isinstance(record.get("prev"), str) and isinstance(record.get("action"), str))
    return record if ok else None


def _seal_valid(record: Mapping[str, Any], public_key: ed25519.Ed25519PublicKey) -> bool:
    if record.get("key") != key_fingerprint(public_key) or not isinstance(record.get("sig"), str):
        return False
    unsigned = {k: v for k, v in record.items() if k != "sig"}
    try:
        public_key.verify(base64.b64decode(record["sig"], validate=True), encode(unsigned))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify(lines: Iterable[Line], public_key: ed25519.Ed25519PublicKey | None) -> Verdict:
    """Check the chain, the sequence and every seal; the first bad record, with why.

    A broken link between lines j-1 and j is blamed on the line that caused it: j when a
    record is missing before it (its `seq` jumps) or it was moved; j-1 when it was edited or
    inserted (j still points to the record before it). A seal that does not verify blames the
    first record after the last good seal (everything since may have been rewritten, with
    recomputed hashes); so does a log that does not end with a seal.
    """
    verdict = Verdict()
    before: list[tuple[Line, dict[str, Any]]] = []  # the last two good lines
    first_unsealed: Line | None = None

    def bad(line: Line, reason: str) -> Verdict:
        verdict.bad, verdict.reason = line, reason
        return verdict

    for line in lines:
        if not line.data.endswith(b"\n"):
            return bad(line, "incomplete record (an interrupted write, or the file was cut)")
        record = parse(line.data)
        if record is None:
            return bad(line, "not an audit record (JSON object with seq, prev and action)")
        previous = before[-1] if before else None
        expected_prev = digest(previous[0].data[:-1]) if previous else GENESIS
        expected_seq = previous[1]["seq"] + 1 if previous else 1
        if record["prev"] != expected_prev or record["seq"] != expected_seq:
            if previous is None:
                return bad(line, f"the log does not start at record 1 (seq {record['seq']}): "
                                 "earlier records or files are missing")
            if len(before) == 2 and record["prev"] == digest(before[0][0].data[:-1]):
                return bad(previous[0], "inserted record: the next record chains past it")
            if record["seq"] == expected_seq:
                return bad(previous[0], "edited record: its hash is not the one the next "
                                        "record holds")
            return bad(line, f"seq {record['seq']} follows seq {previous[1]['seq']}: records "
                             "deleted, inserted or reordered here")
        if first_unsealed is None:
            first_unsealed = line
        if record["action"] == SEALED:
            if public_key is None:
                return bad(line, "a sealed record but no audit public key to check it")
            if not _seal_valid(record, public_key):
                return bad(first_unsealed, f"the seal at {line.where} does not verify with "
                                           "the audit key: records from here to it were "
                                           "rewritten (or the seal was)")
            verdict.seals += 1
            first_unsealed = None
        elif record["action"] == RECOVERED:
            verdict.warnings.append(f"{line.where}: {record.get('reason', 'recovered')}")
        verdict.records += 1
        before = [*before[-1:], (line, record)]
    if first_unsealed is not None:
        return bad(first_unsealed, "unsealed tail: no valid seal after this record (an "
                                   "interrupted run, or the tail was rewritten or cut)")
    return verdict


def split_lines(file: str, data: bytes) -> Iterator[Line]:
    """The lines of one file's bytes, numbered from 1 (the last one may lack its newline)."""
    chunks = data.split(b"\n")
    for number, chunk in enumerate(chunks[:-1], start=1):
        yield Line(file, number, chunk + b"\n")
    if chunks[-1]:
        yield Line(file, len(chunks), chunks[-1])
