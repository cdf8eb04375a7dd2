"""The inventory's two databases: an SQLite file (the default) and PostgreSQL (psycopg 3).

Both run the same SQL, written with SQLite's `?` and `:name` placeholders, which `Postgres`
rewrites for psycopg. A `Database` opens its connection; the inventory's schema and queries
live in `controller.stores.inventory`. Names in messages never carry a password.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.sql import SQL, Identifier
from psycopg.types.numeric import Int8BinaryDumper, Int8Dumper

Params = Sequence[Any] | Mapping[str, Any]
URL_SCHEMES = ("postgresql://", "postgres://")
ERRORS = (sqlite3.Error, psycopg.Error)  # what either database raises
CHANNEL = "fleetpki_inventory"  # PostgreSQL triggers notify it of every change (see `version`)
CACHE_KIB = 64 * 1024  # SQLite page cache of a writing connection
WAL_CHECKPOINT_PAGES = 100_000  # a writer checkpoints once its WAL holds 400 MB (4 KiB pages)
WAL_KEPT_BYTES = 64 * 1024 * 1024  # and a checkpointed WAL shrinks back to 64 MiB
NAMESPACE_PREFIX = "k8s_"  # the PostgreSQL schemas of Kubernetes namespaces' inventories
IDENTIFIER_BYTES = 63  # PostgreSQL's longest identifier


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class DatabaseError(Exception):
    """The database cannot be opened or used; the message names it and what to do."""


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """`url` without its password (in the user part or a `password=` parameter)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.split('://', 1)[0]}://(an unparsable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def passwords(url: str) -> list[str]:
    """The passwords written in `url` (user part, `password=`), to be kept out of messages."""
    found = re.findall(r"://[^/@]*?:([^/@]+)@", url)
    found += re.findall(r"[?&]password=([^&]+)", url)
    return [secret for secret in found if secret]


def namespace_schema(namespace: str) -> str:
    """The PostgreSQL schema holding a Kubernetes namespace's inventory: `k8s_` and the name
    with `-` as `_` (namespaces have no `_`, so distinct names stay distinct); a name too long
    for an identifier ends in a digest of the whole name instead."""
    schema = NAMESPACE_PREFIX + namespace.replace("-", "_")
    if len(schema) <= IDENTIFIER_BYTES:
        return schema
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:16]
    return f"{schema[:IDENTIFIER_BYTES - len(digest) - 1]}_{digest}"


def in_schema(url: str, schema: str) -> str:
    """`url` whose connections keep their tables in `schema` (libpq `options`: search_path);
    `fleetpki migrate` creates the schema."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    options = " ".join(v for k, v in parse_qsl(parts.query) if k == "options")
    query.append(("options", f"{options} -c search_path={schema}".strip()))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote),
                       parts.fragment))  # libpq decodes %20, not +


class Database:
    """One connection, in autocommit mode: `begin`/`commit`/`rollback` delimit transactions."""

    dialect: str
    name: str  # for messages
    errors: tuple[type[Exception], ...]

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        raise NotImplementedError

    def script(self, sql: str) -> None:
        """Run several statements (a schema), no parameters."""
        raise NotImplementedError

    def many(self, sql: str, rows: Sequence[Params]) -> None:
        """One statement for each of `rows`."""
        raise NotImplementedError

    def begin(self) -> None:
        self.execute("BEGIN")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def close(self) -> None:
        raise NotImplementedError

    def tables(self) -> set[str]:
        raise NotImplementedError

    def version(self) -> int:
        """A number that changes when another connection commits a change (for caches)."""
        raise NotImplementedError

    def describe(self, exc: Exception) -> str:
        raise NotImplementedError


class SQLite(Database):
    """An SQLite file: `BEGIN IMMEDIATE` serializes writers, WAL lets readers run beside."""

    dialect = "sqlite"
    errors = (sqlite3.Error,)

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path, self.name = db, path, str(path)

    @classmethod
    def open(cls, path: Path, read_only: bool, create: str) -> SQLite:
        """Open `path`, making it (0600, from the schema `create`) if absent and writable."""
        try:
            if read_only:
                return cls(cls._checked(cls._read_only(path), path), path)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                cls._create(path, create)
            db = cls._checked(sqlite3.connect(path, isolation_level=None, timeout=30), path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # inserts land at random places of the serial and key indexes: keep more of them
            # in memory than SQLite's default 2 MiB (it grows only as pages are read)
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            # a checkpoint copies the WAL back into the file (random writes, then fsync); at
            # SQLite's default of 1,000 pages a batch of certificates written into a large
            # inventory checkpointed at every commit, rewriting the same index pages each time
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
        except sqlite3.Error as exc:
            raise DatabaseError(sqlite_message(path, exc)) from None
        for file in (path, path.with_name(path.name + "-wal"),
                     path.with_name(path.name + "-shm")):
            if file.exists() and file.stat().st_mode & 0o077:
                file.chmod(0o600)
        return cls(db, path)

    @staticmethod
    def _checked(db: sqlite3.Connection, path: Path) -> sqlite3.Connection:
        """`db` if it is a fleetpki inventory (closed otherwise): a 0-byte or overwritten file
        would else open as a new, empty inventory and start a second PKI. Only SQLite opens
        the file: closing another descriptor of it would drop SQLite's POSIX locks."""
        try:
            names = {row[0] for row in db.execute("SELECT name FROM sqlite_master "
                                                  "WHERE type = 'table'")}
            if "certificates" not in names:
                empty = path.stat().st_size == 0
                raise DatabaseError(damaged(path, "empty file" if empty else
                                            "no certificates table: not a fleetpki inventory"))
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _read_only(path: Path) -> sqlite3.Connection:
        if not path.exists():
            raise DatabaseError(f"no inventory in {path.parent}: run `fleetpki apply` "
                                "first (or restore a backup)")
        uri = f"{path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
        try:
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            return db
        except sqlite3.OperationalError:
            db.close()  # a read-only directory: no -shm can be made
            return sqlite3.connect(f"{uri}&immutable=1", uri=True, isolation_level=None)

    @staticmethod
    def _create(path: Path, schema: str) -> None:
        """Build the empty inventory beside its place, 0600 (SQLite gives its -wal and -shm
        files the same mode), and link it in: a crash never leaves a half-made file."""
        temporary = path.with_name(f".{path.name}.{os.urandom(6).hex()}.new")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            db = sqlite3.connect(temporary, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
            db.close()
            with contextlib.suppress(FileExistsError):  # another process made it first
                os.link(temporary, path)
        finally:
            for leftover in (temporary, temporary.with_name(temporary.name + "-wal"),
                             temporary.with_name(temporary.name + "-shm")):
                leftover.unlink(missing_ok=True)

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        return self.db.execute(sql, params)

    def script(self, sql: str) -> None:
        self.db.executescript(sql)

    def many(self, sql: str, rows: Sequence[Params]) -> None:
        self.db.executemany(sql, rows)

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        self.db.close()

    def tables(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT name FROM sqlite_master "
                                                  "WHERE type = 'table'")}

    def version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def describe(self, exc: Exception) -> str:
        return sqlite_message(self.path, exc)


def sqlite_message(path: Path, exc: Exception) -> str:
    """A user's message for an SQLite error on the inventory at `path`."""
    text = str(exc)
    if "full" in text:
        return (f"cannot write the inventory {path}: {text}; free some space and re-run "
                "(each batch is atomic: nothing was half-written)")
    if "readonly" in text or "read-only" in text:
        return (f"cannot write the inventory {path}: {text}; it or its directory is "
                "read-only (status, plan and export work read-only, apply needs write "
                "access)")
    if "locked" in text or "busy" in text:
        return f"the inventory {path} is locked by another process ({text}); re-run later"
    if "unable to open" in text:
        return (f"cannot open the inventory {path}: {text} (is the state directory "
                "readable, and writable for apply?)")
    return damaged(path, text)


def damaged(path: Path, why: str) -> str:
    return (f"the inventory {path} is damaged ({why}): restore it from a backup "
            "(fleetpki restore); fleetpki never starts a new inventory in its place")


@functools.lru_cache(maxsize=1024)
def for_psycopg(sql: str) -> str:
    """SQLite placeholders (`?`, `:name`) as psycopg's (`%s`, `%(name)s`); `%` escaped."""
    pieces = re.split(r"('(?:[^']|'')*')", sql)  # odd pieces are string literals
    for i in range(0, len(pieces), 2):
        code = pieces[i].replace("%", "%%").replace("?", "%s")
        pieces[i] = re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", code)
    for i in range(1, len(pieces), 2):
        pieces[i] = pieces[i].replace("%", "%%")
    return "".join(pieces)


class Postgres(Database):
    """A PostgreSQL database, shared by several fleetpki processes and machines."""

    dialect = "postgresql"
    errors = (psycopg.Error,)

    def __init__(self, url: str, read_only: bool) -> None:
        self.name = redact(url)
        self._secrets = passwords(url)
        try:
            self.db = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise DatabaseError(self.describe(exc)) from None
        # every Python int as bigint: epoch arithmetic in SQL never overflows an int4
        self.db.adapters.register_dumper(int, Int8Dumper)
        self.db.adapters.register_dumper(int, Int8BinaryDumper)
        if read_only:
            self.db.execute("SET default_transaction_read_only = on")
        self._changes = 0
        self._listening = False

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        if not params:
            return self.db.execute(sql)
        return self.db.execute(for_psycopg(sql), params)

    def script(self, sql: str) -> None:
        self.db.execute(sql.encode())  # several statements: the simple query protocol

    def many(self, sql: str, rows: Sequence[Params]) -> None:
        with self.db.cursor() as cursor:
            cursor.executemany(for_psycopg(sql), rows)

    def close(self) -> None:
        self.db.close()

    def tables(self) -> set[str]:
        rows = self.db.execute("SELECT tablename FROM pg_tables "
                               "WHERE schemaname = current_schema()")
        return {row[0] for row in rows}

    def create_schema(self) -> None:
        """Create the schema the connection's search_path names first, if it is absent."""
        row = self.db.execute("SELECT current_schema(), current_setting('search_path')"
                              ).fetchone()
        if row is None or row[0] is not None:
            return
        first = str(row[1]).split(",")[0].strip().strip('"')
        if first and first != "$user":
            self.db.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(first)))

    def schemas(self, prefix: str) -> list[str]:
        """The schemas named `prefix`… that hold a fleetpki inventory."""
        rows = self.db.execute("SELECT DISTINCT schemaname FROM pg_tables WHERE tablename = "
                               "'certificates' AND starts_with(schemaname, %s) ORDER BY 1",
                               (prefix,))
        return [row[0] for row in rows]

    def version(self) -> int:
        """Counts the notifications the schema's triggers send on each committed change."""
        if not self._listening:
            self.db.add_notify_handler(self._notified)
            self.db.execute(f"LISTEN {CHANNEL}")
            self._listening = True
        self.db.execute("SELECT 1")  # receives the notifications sent meanwhile
        return self._changes

    def _notified(self, _: psycopg.Notify) -> None:
        self._changes += 1

    def describe(self, exc: Exception) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for secret in self._secrets:  # libpq may quote the URL it could not parse
            text = text.replace(secret, "***")
        return f"the inventory database {self.name}: {text}"
