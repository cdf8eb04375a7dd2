"""The inventory: every certificate ever issued, in SQLite (one file in the state directory).

Invariants kept by the schema, not only by the code:
- at most one `active` certificate per device and per CA (partial unique indexes);
- a batch of issuances, with the revocation of the certificates they replace, commits atomically,
  so a crash leaves either the old certificate active or the new one, never both or neither.
Times are integer epoch seconds (UTC) so renewal queries are indexed range scans.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('ca', 'device')),
    owner TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    issuer_serial TEXT,
    state TEXT NOT NULL CHECK (state IN ('active', 'retired', 'revoked')),
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    renew_at INTEGER NOT NULL,
    intent TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    key_id TEXT,
    key_blob BLOB,
    der BLOB NOT NULL,
    issued_at INTEGER NOT NULL,
    revoked_at INTEGER,
    reason TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_per_intent
    ON certificates (kind, owner, device) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS by_owner_renewal ON certificates (owner, renew_at)
    WHERE state = 'active';
CREATE INDEX IF NOT EXISTS by_issuer_state ON certificates (issuer_serial, state, not_after);
-- metrics and lint aggregate over these without reading the certificates (controller.stores.facts)
CREATE INDEX IF NOT EXISTS device_facts ON certificates
    (kind, owner, state, issuer_serial, reason, not_after, renew_at, not_before);
CREATE INDEX IF NOT EXISTS active_keys ON certificates (substr(intent, instr(intent, ':') + 1))
    WHERE kind = 'device' AND state = 'active';
CREATE TABLE IF NOT EXISTS fleets (
    name TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    decommissioned INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    devices INTEGER,  -- declared devices, and those not revoked, when content_hash was applied
    declared INTEGER
);
CREATE TABLE IF NOT EXISTS crls (
    ca_serial TEXT PRIMARY KEY,
    ca_name TEXT NOT NULL,
    number INTEGER NOT NULL,
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    revoked_total INTEGER NOT NULL,
    der BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS enrollment_secrets (
    fleet TEXT NOT NULL,
    device TEXT NOT NULL,
    kdf TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (fleet, device)
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    operation TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    started_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sightings (
    serial TEXT NOT NULL,
    source TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    times INTEGER NOT NULL,
    PRIMARY KEY (serial, source)
);
"""

COLUMNS = ("serial, kind, owner, device, issuer_serial, state, not_before, not_after, renew_at, "
           "intent, fingerprint, key_id, key_blob, der, issued_at, revoked_at, reason")


@dataclass(frozen=True, slots=True)
class CertRecord:
    """One row of the inventory."""

    serial: str
    kind: str
    owner: str
    device: str
    issuer_serial: str | None
    state: str
    not_before: int
    not_after: int
    renew_at: int
    intent: str
    fingerprint: str
    key_id: str | None
    key_blob: bytes | None
    der: bytes
    issued_at: int
    revoked_at: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CRLRecord:
    """A published CRL; `revoked_total` is how many revocations the CA had when it was built."""

    ca_serial: str
    ca_name: str
    number: int
    this_update: int
    next_update: int
    entries: int
    revoked_total: int
    der: bytes


@dataclass(frozen=True, slots=True)
class EnrollmentSecret:
    """A one-time EST enrollment secret, stored only as a salted KDF hash."""

    fleet: str
    device: str
    kdf: str  # e.g. "scrypt:16384:8:1"
    salt: bytes
    hash: bytes
    created_at: int


@dataclass(frozen=True, slots=True)
class Revocation:
    serial: str
    reason: str


class InventoryError(Exception):
    """The inventory cannot be opened, read or written; the message names it and what to do."""


def describe(path: Path, exc: sqlite3.Error) -> str:
    """A user's message for an SQLite error on the inventory at `path`."""
    text = str(exc)
    if "full" in text:
        return (f"cannot write the inventory {path}: {text}; free some space and re-run "
                "(each batch is atomic: nothing was half-written)")
    if "readonly" in text or "read-only" in text:
        return (f"cannot write the inventory {path}: {text}; it or its directory is read-only "
                "(status, plan and export work read-only, apply needs write access)")
    if "locked" in text or "busy" in text:
        return f"the inventory {path} is locked by another process ({text}); re-run later"
    if "unable to open" in text:
        return (f"cannot open the inventory {path}: {text} (is the state directory readable, "
                "and writable for apply?)")
    return damaged(path, text)


def damaged(path: Path, why: str) -> str:
    return (f"the inventory {path} is damaged ({why}): restore it from a backup "
            "(fleetpki restore); fleetpki never starts a new inventory in its place")


class Inventory:
    """SQLite-backed store; use as a context manager or call `close()`.

    An existing file must be a fleetpki inventory (else InventoryError, never a new one); a
    new one is created 0600. `read_only` opens an existing inventory without writing to it,
    also in a read-only state directory.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        try:
            self.db = self._open_read_only() if read_only else self._open_for_writing()
        except OSError as exc:
            raise InventoryError(f"cannot open the inventory {path}: {exc.strerror}") from None
        except sqlite3.Error as exc:
            raise InventoryError(describe(path, exc)) from None

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise InventoryError(f"no inventory in {self.path.parent}: run `fleetpki apply` "
                                 "first (or restore a backup)")
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            return self._checked(sqlite3.connect(uri, uri=True, isolation_level=None,
                                                 timeout=30))
        except sqlite3.OperationalError:  # a read-only directory: no -shm can be made
            return self._checked(sqlite3.connect(f"{uri}&immutable=1", uri=True,
                                                 isolation_level=None))

    def _open_for_writing(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            self._create()
        db = self._checked(sqlite3.connect(self.path, isolation_level=None, timeout=30))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(fleets)")}
        for column in ("devices", "declared"):  # inventories made before these columns
            if column not in columns:
                db.execute(f"ALTER TABLE fleets ADD COLUMN {column} INTEGER")
        for path in (self.path, self.path.with_name(self.path.name + "-wal"),
                     self.path.with_name(self.path.name + "-shm")):
            if path.exists() and path.stat().st_mode & 0o077:
                path.chmod(0o600)
        return db

    def _create(self) -> None:
        """Build the empty inventory beside its place, 0600 (SQLite gives its -wal and -shm
        files the same mode), and link it in: a crash never leaves a half-made file."""
        temporary = self.path.with_name(f".{self.path.name}.{os.urandom(6).hex()}.new")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            db = sqlite3.connect(temporary, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            db.close()
            with contextlib.suppress(FileExistsError):  # another process made it first
                os.link(temporary, self.path)
        finally:
            for leftover in (temporary, temporary.with_name(temporary.name + "-wal"),
                             temporary.with_name(temporary.name + "-shm")):
                leftover.unlink(missing_ok=True)

    def _checked(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """`db` if it is a fleetpki inventory (closed otherwise): a 0-byte or overwritten file
        would else open as a new, empty inventory and start a second PKI. Only SQLite opens
        the file: closing another descriptor of it would drop SQLite's POSIX locks."""
        try:
            names = {row[0] for row in db.execute("SELECT name FROM sqlite_master "
                                                  "WHERE type = 'table'")}
            if "certificates" not in names:
                empty = self.path.stat().st_size == 0
                raise InventoryError(damaged(self.path, "empty file" if empty else
                                             "no certificates table: not a fleetpki inventory"))
        except BaseException:
            db.close()
            raise
        return db

    def __enter__(self) -> Inventory:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        """Close; an SQLite error raised inside the block becomes an InventoryError."""
        self.close()
        if isinstance(exc, sqlite3.Error):
            raise InventoryError(describe(self.path, exc)) from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- reads -------------------------------------------------------------------------------
    def _records(self, where: str, params: Iterable[object] = ()) -> list[CertRecord]:
        rows = self.db.execute(f"SELECT {COLUMNS} FROM certificates WHERE {where}", tuple(params))
        return [CertRecord(*row) for row in rows]

    def get(self, serial: str) -> CertRecord | None:
        found = self._records("serial = ?", (serial,))
        return found[0] if found else None

    def active_ca(self, name: str) -> CertRecord | None:
        found = self._records("kind = 'ca' AND owner = ? AND state = 'active'", (name,))
        return found[0] if found else None

    def ca_generations(self, name: str) -> list[CertRecord]:
        """All certificates of a CA (active and retired), newest first."""
        return self._records("kind = 'ca' AND owner = ? ORDER BY issued_at DESC, rowid DESC",
                             (name,))

    def crl_generations(self, name: str, now: int) -> list[CertRecord]:
        """The certificates of a CA that need a CRL: unexpired and not revoked, newest first."""
        return [g for g in self.ca_generations(name) if g.not_after > now and g.state != "revoked"]

    def ca_names(self) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT owner FROM certificates WHERE kind = 'ca'")
        return sorted(r[0] for r in rows)

    def active_device(self, fleet: str, device: str) -> CertRecord | None:
        found = self._records("kind = 'device' AND owner = ? AND device = ? AND state = 'active'",
                              (fleet, device))
        return found[0] if found else None

    def device_history(self, fleet: str, device: str) -> list[CertRecord]:
        return self._records("kind = 'device' AND owner = ? AND device = ? ORDER BY issued_at",
                             (fleet, device))

    def active_devices(self, fleet: str) -> dict[str, tuple[str, str, int]]:
        """device id -> (serial, intent digest, renew_at) for a fleet's active certificates."""
        rows = self.db.execute(
            "SELECT device, serial, intent, renew_at FROM certificates "
            "WHERE kind = 'device' AND owner = ? AND state = 'active'", (fleet,))
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    def due_devices(self, fleet: str, now: int) -> dict[str, tuple[str, str, int]]:
        """Like `active_devices`, only those whose renewal time has come (indexed)."""
        rows = self.db.execute(
            "SELECT device, serial, intent, renew_at FROM certificates WHERE owner = ? "
            "AND state = 'active' AND kind = 'device' AND renew_at <= ?", (fleet, now))
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    def active_count(self, fleet: str) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM certificates WHERE kind = 'device' AND owner = ? "
            "AND state = 'active'", (fleet,)).fetchone()[0])

    def device_records(self, fleet: str) -> list[CertRecord]:
        return self._records("kind = 'device' AND owner = ? ORDER BY device, issued_at", (fleet,))

    def fleet_names(self) -> list[str]:
        rows = self.db.execute(
            "SELECT name FROM fleets UNION SELECT DISTINCT owner FROM certificates "
            "WHERE kind = 'device'")
        return sorted(r[0] for r in rows)

    def fleet_hash(self, name: str) -> str | None:
        row = self.db.execute("SELECT content_hash FROM fleets WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def applied_fleets(self) -> dict[str, tuple[str, int, int]]:
        """Fleet name -> (content hash, devices, not revoked) as last applied completely."""
        try:
            rows = self.db.execute("SELECT name, content_hash, devices, declared FROM fleets "
                                   "WHERE devices IS NOT NULL AND declared IS NOT NULL")
        except sqlite3.OperationalError:  # read-only, made before the columns: parse them all
            return {}
        return {name: (digest, devices, declared) for name, digest, devices, declared in rows}

    def fleet_counts(self, fleet: str, now: int) -> dict[str, int]:
        """Certificate counts by state, plus active ones due for renewal and expired."""
        counts = {"active": 0, "revoked": 0, "due": 0, "expired": 0}
        for state, number in self.db.execute(
            "SELECT state, count(*) FROM certificates WHERE kind = 'device' AND owner = ? "
            "GROUP BY state", (fleet,)):
            counts[state] = number
        counts["due"] = self.db.execute(
            "SELECT count(*) FROM certificates WHERE kind = 'device' AND owner = ? "
            "AND state = 'active' AND renew_at <= ?", (fleet, now)).fetchone()[0]
        counts["expired"] = self.db.execute(
            "SELECT count(*) FROM certificates WHERE kind = 'device' AND owner = ? "
            "AND state = 'active' AND not_after <= ?", (fleet, now)).fetchone()[0]
        return counts

    def next_renewal(self, fleet: str) -> int | None:
        """When the fleet's next active certificate is due for renewal."""
        row = self.db.execute("SELECT min(renew_at) FROM certificates WHERE kind = 'device' "
                              "AND owner = ? AND state = 'active'", (fleet,)).fetchone()
        return None if row[0] is None else int(row[0])

    def revoked_by_issuer(self, issuer_serial: str, now: int) -> list[tuple[str, int, str]]:
        """(serial, revoked_at, reason) of unexpired revoked certificates issued by a CA cert."""
        rows = self.db.execute(
            "SELECT serial, revoked_at, reason FROM certificates WHERE issuer_serial = ? "
            "AND state = 'revoked' AND not_after > ? ORDER BY serial", (issuer_serial, now))
        return [(r[0], r[1], r[2]) for r in rows]

    def revoked_total(self, issuer_serial: str) -> int:
        """Revocations ever made under a CA certificate: only grows, so a CRL built at a lower
        total is missing some (e.g. after a crash between revoking and publishing)."""
        row = self.db.execute(
            "SELECT count(*) FROM certificates WHERE issuer_serial = ? AND state = 'revoked'",
            (issuer_serial,)).fetchone()
        return int(row[0])

    def crl(self, ca_serial: str) -> CRLRecord | None:
        row = self.db.execute(
            "SELECT ca_serial, ca_name, number, this_update, next_update, entries, "
            "revoked_total, der FROM crls WHERE ca_serial = ?", (ca_serial,)).fetchone()
        return CRLRecord(*row) if row else None

    def next_crl_number(self, ca_name: str) -> int:
        row = self.db.execute("SELECT max(number) FROM crls WHERE ca_name = ?",
                              (ca_name,)).fetchone()
        return (row[0] or 0) + 1

    def changed_at(self, at: int) -> Iterator[tuple[str, str, str, str, str, int, int | None,
                                                     str | None]]:
        """(kind, owner, device, serial, fingerprint, issued_at, revoked_at, reason) of the
        certificates issued or revoked at `at` (one run's clock), in insertion order."""
        yield from self.db.execute(
            "SELECT kind, owner, device, serial, fingerprint, issued_at, revoked_at, reason "
            "FROM certificates WHERE issued_at = ? OR revoked_at = ? ORDER BY rowid", (at, at))

    def uses_key(self, key_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM certificates WHERE key_id = ? LIMIT 1", (key_id,))
        return row.fetchone() is not None

    def journal_entries(self) -> list[tuple[int, str, str, str]]:
        rows = self.db.execute("SELECT id, operation, subject, detail FROM journal ORDER BY id")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def enrollment_secret(self, fleet: str, device: str) -> EnrollmentSecret | None:
        """The hashed one-time EST enrollment secret of a device, if one is outstanding."""
        row = self.db.execute(
            "SELECT fleet, device, kdf, salt, hash, created_at FROM enrollment_secrets "
            "WHERE fleet = ? AND device = ?", (fleet, device)).fetchone()
        return EnrollmentSecret(*row) if row else None

    # --- report aggregates (SQL: fleets may hold millions of certificates) ----------------
    def state_counts(self, now: int, horizons: Sequence[int]) -> list[tuple[Any, ...]]:
        """Per (kind, owner, issuer serial): active, retired, revoked, expired (active past
        not_after), then per horizon (seconds) the active ones expiring within it."""
        expiring = "".join(f", sum(state = 'active' AND not_after > :now AND not_after <= "
                           f":now + :h{i})" for i in range(len(horizons)))
        params: dict[str, int] = {"now": now, **{f"h{i}": h for i, h in enumerate(horizons)}}
        rows = self.db.execute(
            "SELECT kind, owner, coalesce(issuer_serial, ''), sum(state = 'active'), "
            "sum(state = 'retired'), sum(state = 'revoked'), "
            f"sum(state = 'active' AND not_after <= :now){expiring} FROM certificates "
            "GROUP BY kind, owner, issuer_serial ORDER BY kind, owner, issuer_serial", params)
        return [tuple(row) for row in rows]

    def revocation_reasons(self) -> list[tuple[str, str, int]]:
        """(fleet or CA, reason, count) of every revoked certificate."""
        rows = self.db.execute(
            "SELECT owner, coalesce(reason, 'unspecified'), count(*) FROM certificates "
            "WHERE state = 'revoked' GROUP BY owner, 2 ORDER BY owner, 2")
        return [(r[0], r[1], r[2]) for r in rows]

    def expiry_buckets(self, now: int, width: int, count: int) -> dict[int, int]:
        """Active device certificates by expiry: bucket -1 is expired, 0..count-1 expire within
        successive `width` seconds, `count` later."""
        rows = self.db.execute(
            "SELECT CASE WHEN not_after <= :now THEN -1 ELSE min((not_after - :now - 1) / :w, "
            ":n) END AS bucket, count(*) FROM certificates WHERE kind = 'device' AND "
            "state = 'active' GROUP BY bucket", {"now": now, "w": width, "n": count})
        return {r[0]: r[1] for r in rows}

    def key_algorithms(self, name_of: Callable[[bytes], str]) -> list[tuple[str, str, str, int]]:
        """(kind, owner, algorithm, count) of active certificates; `name_of(der)` names a
        certificate's key algorithm (grouped in SQL, one call per certificate)."""
        self.db.create_function("key_algorithm", 1, name_of, deterministic=True)
        rows = self.db.execute(
            "SELECT kind, owner, key_algorithm(der) AS algorithm, count(*) FROM certificates "
            "WHERE state = 'active' GROUP BY kind, owner, algorithm ORDER BY kind, owner, "
            "algorithm")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # --- writes (call inside `transaction()`) ----------------------------------------------
    def put_enrollment_secret(self, secret: EnrollmentSecret) -> None:
        """Store (or replace) a device's hashed one-time enrollment secret."""
        self.db.execute(
            "INSERT OR REPLACE INTO enrollment_secrets (fleet, device, kdf, salt, hash, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (secret.fleet, secret.device, secret.kdf, secret.salt, secret.hash,
             secret.created_at))

    def consume_enrollment_secret(self, fleet: str, device: str, hash_: bytes) -> bool:
        """Delete the secret if it is still the one given; False if it was used meanwhile."""
        cursor = self.db.execute(
            "DELETE FROM enrollment_secrets WHERE fleet = ? AND device = ? AND hash = ?",
            (fleet, device, hash_))
        return cursor.rowcount == 1

    def insert(self, record: CertRecord) -> None:
        placeholders = ", ".join("?" * len(COLUMNS.split(",")))
        self.db.execute(f"INSERT INTO certificates ({COLUMNS}) VALUES ({placeholders})",
                        tuple(getattr(record, c.strip()) for c in COLUMNS.split(",")))

    def revoke(self, serial: str, reason: str, at: int) -> None:
        self.db.execute(
            "UPDATE certificates SET state = 'revoked', revoked_at = ?, reason = ? "
            "WHERE serial = ? AND state != 'revoked'", (at, reason, serial))

    def retire(self, serial: str) -> None:
        self.db.execute("UPDATE certificates SET state = 'retired' WHERE serial = ? "
                        "AND state = 'active'", (serial,))

    def set_fleet(self, name: str, content_hash: str, decommissioned: bool, at: int,
                  devices: int, declared: int) -> None:
        self.db.execute(
            "INSERT INTO fleets (name, content_hash, decommissioned, updated_at, devices, "
            "declared) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET content_hash = "
            "excluded.content_hash, decommissioned = excluded.decommissioned, updated_at = "
            "excluded.updated_at, devices = excluded.devices, declared = excluded.declared",
            (name, content_hash, int(decommissioned), at, devices, declared))

    def put_crl(self, record: CRLRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO crls (ca_serial, ca_name, number, this_update, next_update, "
            "entries, revoked_total, der) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.ca_serial, record.ca_name, record.number, record.this_update,
             record.next_update, record.entries, record.revoked_total, record.der))

    def saw(self, serial: str, source: str, at: int) -> None:
        """Record that a certificate was presented to `source` (e.g. "est") at `at`."""
        self.db.execute(
            "INSERT INTO sightings (serial, source, first_seen, last_seen, times) "
            "VALUES (?, ?, ?, ?, 1) ON CONFLICT(serial, source) DO UPDATE SET "
            "last_seen = excluded.last_seen, times = times + 1", (serial, source, at, at))

    def journal_begin(self, operation: str, subject: str, detail: str, at: int) -> int:
        cursor = self.db.execute(
            "INSERT INTO journal (operation, subject, detail, started_at) VALUES (?, ?, ?, ?)",
            (operation, subject, detail, at))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def journal_end(self, entry: int) -> None:
        self.db.execute("DELETE FROM journal WHERE id = ?", (entry,))
