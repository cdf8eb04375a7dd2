"""Read-only aggregates of the inventory for lint and metrics, computed in SQL.

A fleet may hold a million certificates: every query here groups or narrows in SQL and
returns rows per fleet, CA or flagged certificate, never one row per healthy device. Owners
starting with `_` (serve's own TLS certificates) are not fleets and are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

from cryptography import x509

from controller.lint.rules import CARow, CRLRow, DeviceRow, Window
from controller.pki import keys
from controller.stores.inventory import Inventory

DEVICES = "c.kind = 'device' AND substr(c.owner, 1, 1) != '_'"
KEY = "substr(c.intent, instr(c.intent, ':') + 1)"  # the key part of the intent digest
# With KEY IN (a key) (not `=`, whose text affinity hides the `active_keys` index from SQLite)
# and CROSS JOIN (SQLite keeps the order: the few shared keys first), a key's holders are an
# index search, never a pass over every certificate.
ACTIVE = "c.kind = 'device' AND c.state = 'active'"
SERVER_KEY = "server-"  # KEY of a server-generated key: server-<algorithm>
ROW = "c.owner, c.device, c.serial, c.not_before, c.not_after"
CERTIFICATES = "certificates c"
# Sightings first (CROSS JOIN keeps the order in SQLite): one look-up per sighting by serial,
# not a pass over every revoked certificate.
SIGHTED = "sightings s CROSS JOIN certificates c"
# check code -> (tables, condition, detail) selecting its certificates
CHECKS = {
    "certificate-expired": (CERTIFICATES, "c.state = 'active' AND c.not_after <= :now", "''"),
    "certificate-expiring": (CERTIFICATES, "c.state = 'active' AND c.not_after > :now "
                             "AND c.not_after <= :expires_before", "''"),
    "certificate-too-old": (CERTIFICATES,
                            "c.state = 'active' AND c.not_before <= :issued_before", "''"),
    "revoked-certificate-in-use": (
        SIGHTED, "c.serial = s.serial AND s.last_seen >= c.revoked_at AND c.state = 'revoked'",
        "s.source || ', ' || s.times || ' time(s)'"),
}


def _query(code: str, columns: str) -> str:
    tables, condition, detail = CHECKS[code]
    return (f"SELECT {columns.replace('DETAIL', detail)} FROM {tables} "
            f"WHERE {DEVICES} AND {condition}")


def device_rows(inventory: Inventory, code: str, window: Window,
                limit: int = -1) -> Iterator[DeviceRow]:
    """The certificates one of the SQL checks selects, by fleet and device (at most `limit`;
    -1: all)."""
    query = _query(code, f"{ROW}, DETAIL")
    for row in inventory.db.execute(query + " ORDER BY c.owner, c.device" + _limit(limit),
                                    asdict(window)):
        yield DeviceRow(*row)


def _limit(limit: int) -> str:
    return f" LIMIT {int(limit)}" if limit >= 0 else ""


def device_counts(inventory: Inventory, window: Window) -> dict[str, int]:
    """How many certificates each SQL check selects."""
    return {code: int(inventory.db.execute(_query(code, "count(*)"), asdict(window)
                                           ).fetchone()[0]) for code in CHECKS}


# The fingerprints held by several active device certificates: of the keys noted when
# certificates were inserted (`shared_keys`, a few), those still held more than once.
SHARED = (f"SELECT s.key AS key, count(*) AS holders FROM shared_keys s CROSS JOIN "
          f"certificates c WHERE {KEY} IN (s.key) AND {ACTIVE} GROUP BY s.key "
          "HAVING count(*) > 1")


def shared_keys(inventory: Inventory, limit: int = -1) -> Iterator[tuple[str, DeviceRow]]:
    """(key fingerprint, certificate) of the active device certificates whose key (SHA-256 of
    the SubjectPublicKeyInfo, kept in the intent digest) another one has too, at most `limit`
    (-1: all). Server-generated keys are fresh per certificate and not fingerprinted there."""
    rows = inventory.db.execute(
        f"SELECT shared.key, {ROW} FROM ({SHARED}) shared CROSS JOIN certificates c "
        f"WHERE {KEY} IN (shared.key) AND {ACTIVE} ORDER BY shared.key, c.owner, c.device"
        + _limit(limit))
    for row in rows:
        yield row[0], DeviceRow(*row[1:])


def shared_key_count(inventory: Inventory) -> int:
    """How many active device certificates share their key."""
    query = f"SELECT coalesce(sum(holders), 0) FROM ({SHARED}) shared"
    return int(inventory.db.execute(query).fetchone()[0])


def key_algorithms(inventory: Inventory) -> Iterator[DeviceRow]:
    """Every active device certificate with its key algorithm as `detail`: named by the intent
    for server-generated keys, read from the certificate otherwise (one parse each)."""
    rows = inventory.db.execute(f"SELECT {ROW}, {KEY}, c.der FROM certificates c "
                                f"WHERE {DEVICES} AND c.state = 'active'")
    for fleet, device, serial, not_before, not_after, key, der in rows:
        if key.startswith(SERVER_KEY):
            algorithm = key.removeprefix(SERVER_KEY)
        else:
            public_key = x509.load_der_x509_certificate(der).public_key()
            algorithm = keys.key_algorithm_of(keys.supported_public_key(public_key))
        yield DeviceRow(fleet, device, serial, not_before, not_after, algorithm)


def active_cas(inventory: Inventory) -> list[CARow]:
    rows = inventory.db.execute("SELECT owner, serial, not_after FROM certificates "
                                "WHERE kind = 'ca' AND state = 'active' ORDER BY owner")
    return [CARow(*row) for row in rows]


def crls(inventory: Inventory) -> list[CRLRow]:
    """The CRL of each CA's active certificate."""
    rows = inventory.db.execute(
        "SELECT l.ca_name, l.number, l.this_update, l.next_update FROM crls l JOIN "
        "certificates c ON c.serial = l.ca_serial WHERE c.kind = 'ca' AND c.state = 'active' "
        "ORDER BY l.ca_name")
    return [CRLRow(*row) for row in rows]


# --- metrics ---------------------------------------------------------------------------------
def certificate_counts(inventory: Inventory) -> dict[tuple[str, str, str], int]:
    """(fleet, issuing CA, state) -> count of the device certificates."""
    names = dict(inventory.db.execute("SELECT serial, owner FROM certificates WHERE kind = 'ca'"))
    counts: dict[tuple[str, str, str], int] = {}
    for fleet, state, issuer, number in inventory.db.execute(
            f"SELECT c.owner, c.state, c.issuer_serial, count(*) FROM certificates c "
            f"WHERE {DEVICES} GROUP BY c.owner, c.state, c.issuer_serial"):
        key = (fleet, names.get(issuer, ""), state)  # CA generations add up
        counts[key] = counts.get(key, 0) + int(number)
    return counts


def earliest_expiry(inventory: Inventory) -> list[tuple[str, int]]:
    """(fleet, earliest notAfter) of the active device certificates."""
    rows = inventory.db.execute(f"SELECT c.owner, min(c.not_after) FROM certificates c "
                                f"WHERE {DEVICES} AND c.state = 'active' GROUP BY c.owner")
    return [(r[0], int(r[1])) for r in rows]


def renewals_due(inventory: Inventory, now: int) -> list[tuple[str, int]]:
    """(fleet, active certificates whose renewal time has come)."""
    rows = inventory.db.execute(f"SELECT c.owner, count(*) FROM certificates c WHERE {DEVICES} "
                                "AND c.state = 'active' AND c.renew_at <= ? GROUP BY c.owner",
                                (now,))
    return [(r[0], int(r[1])) for r in rows]


def revocations(inventory: Inventory) -> list[tuple[str, str, int]]:
    """(fleet, reason, revoked device certificates)."""
    rows = inventory.db.execute(f"SELECT c.owner, coalesce(c.reason, ''), count(*) FROM "
                                f"certificates c WHERE {DEVICES} AND c.state = 'revoked' "
                                "GROUP BY c.owner, c.reason")
    return [(r[0], r[1], int(r[2])) for r in rows]
