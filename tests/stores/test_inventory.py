"""The inventory on both databases: the schema's invariants, versions, `migrate` and `copy`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.lint.rules import Window
from controller.stores import inventory as inventory_module
from controller.stores.database import ERRORS, for_psycopg, redact
from controller.stores.inventory import (
    DIALECTS,
    SCHEMA,
    VERSION,
    VERSION_3,
    CertRecord,
    CRLRecord,
    EnrollmentSecret,
    Inventory,
    InventoryError,
    copy,
    migrate,
    upgrade,
)
from tests.postgres import Cluster


@pytest.fixture
def location(inventory_backend: str | None, tmp_path: Path) -> Path | str:
    return inventory_backend or tmp_path / "state" / "inventory.db"


def record(serial: str, device: str = "d1", state: str = "active", **fields: object) -> CertRecord:
    values: dict[str, object] = dict(
        serial=serial, kind="device", owner="meters", device=device, issuer_serial="ca1",
        state=state, not_before=1_000, not_after=5_000_000_000, renew_at=4_000, intent="x:k" * 1,
        fingerprint="f" + serial, key_id=None, key_blob=None, der=b"\x30\x00" + serial.encode(),
        issued_at=1_000)
    values.update(fields)
    return CertRecord(**values)  # type: ignore[arg-type]


def test_one_active_certificate_per_device(location: Path | str) -> None:
    with Inventory(location) as inventory:
        with inventory.transaction():
            inventory.insert(record("01"))
        with pytest.raises(ERRORS), inventory.transaction():
            inventory.insert(record("02"))  # a second active certificate of d1
        with inventory.transaction():  # replaced atomically: revoke the old, add the new
            inventory.revoke("01", "superseded", 2_000)
            inventory.insert(record("02", issued_at=2_000))
        assert inventory.active_device("meters", "d1") == record("02", issued_at=2_000)
        assert inventory.revoked_total("ca1") == 1
        assert [r.serial for r in inventory.device_history("meters", "d1")] == ["01", "02"]


def test_failed_batch_leaves_nothing(location: Path | str) -> None:
    with Inventory(location) as inventory:
        with pytest.raises(RuntimeError), inventory.transaction():
            inventory.insert(record("01"))
            inventory.revoke("01", "keyCompromise", 2_000)
            raise RuntimeError("crash")
        assert inventory.get("01") is None and inventory.revoked_total("ca1") == 0


def test_queries_agree(location: Path | str) -> None:
    """The dialect-sensitive queries (upserts, aggregates, RETURNING) on either database."""
    with Inventory(location) as inventory, inventory.transaction():
        inventory.insert(record("ca1", kind="ca", owner="root", device="",
                                issuer_serial=None, intent="ca"))
        inventory.insert(record("01", intent="x:" + "a" * 64))
        inventory.insert(record("02", device="d2", not_after=1_500, renew_at=1_200,
                                intent="x:" + "a" * 64))  # due before it expires, as always
        inventory.insert(record("03", device="d3", state="revoked", revoked_at=2_000,
                                reason="keyCompromise"))
        crl = CRLRecord("ca1", "root", 1, 10, 20, 0, 0, b"crl1")
        inventory.put_crl(crl)
        inventory.put_crl(CRLRecord("ca1", "root", 2, 10, 20, 1, 1, b"crl2"))
        secret = EnrollmentSecret("meters", "d1", "scrypt:1:1:1", b"salt", b"hash", 5)
        inventory.put_enrollment_secret(secret)
        inventory.put_enrollment_secret(EnrollmentSecret("meters", "d1", "k", b"s", b"h", 6))
        inventory.saw("03", "est", 3_000)
        inventory.saw("03", "est", 4_000)
        entry = inventory.journal_begin("ca-key", "root", "k1", 1)
        assert inventory.journal_entries() == [(entry, "ca-key", "root", "k1")]
        inventory.journal_end(entry)
        inventory.set_fleet("meters", "h1", False, 1, 3, 3)
        inventory.set_fleet("meters", "h2", True, 2, 3, 2)
    with Inventory(location, read_only=True) as inventory:
        assert inventory.crl("ca1") == CRLRecord("ca1", "root", 2, 10, 20, 1, 1, b"crl2")
        assert inventory.next_crl_number("root") == 3
        assert inventory.enrollment_secrets("d1", ["meters", "other"]) == [EnrollmentSecret(
            "meters", "d1", "k", b"s", b"h", 6)]
        assert inventory.enrollment_secrets("d1", ["other"]) == []
        assert inventory.enrollment_secrets("d2", ["meters"]) == []
        assert inventory.journal_entries() == []
        assert inventory.fleet_hash("meters") == "h2"
        assert inventory.applied_fleets() == {"meters": ("h2", 3, 2)}
        assert inventory.fleet_counts("meters", 2_000) == {
            "active": 2, "revoked": 1, "due": 1, "expired": 1}
        assert inventory.state_counts(1_000, [1_000]) == [
            ("ca", "root", "", 1, 0, 0, 0, 0), ("device", "meters", "ca1", 2, 0, 1, 0, 1)]
        assert inventory.expiry_buckets(1_000, 1_000, 3) == {0: 1, 3: 1}
        assert inventory.revocation_reasons() == [("meters", "keyCompromise", 1)]
        assert inventory.key_algorithms(lambda der: "ec") == [
            ("ca", "root", "ec", 1), ("device", "meters", "ec", 2)]
        assert [c[3] for c in inventory.changed_at(1_000)] == ["ca1", "01", "02", "03"]
        assert inventory.ca_names() == ["root"] and inventory.fleet_names() == ["meters"]


def test_copy_is_verified_and_refuses_a_full_target(tmp_path: Path, postgres: Cluster) -> None:
    source = tmp_path / "inventory.db"
    with Inventory(source) as inventory, inventory.transaction():
        for i in range(50):
            inventory.insert(record(f"{i:02}", device=f"d{i}", key_blob=b"\x00\xff" * i))
        inventory.journal_begin("ca-key", "root", "k1", 1)
        inventory.saw("01", "ocsp", 7)
    target = postgres.database()
    with Inventory(source, read_only=True) as reader, Inventory(target) as writer:
        copied = copy(reader, writer, batch=7)
        assert copied["certificates"] == 50 and copied["journal"] == 1
        assert writer.device_records("meters") == reader.device_records("meters")
        assert [c[3] for c in writer.changed_at(1_000)] == [c[3] for c in
                                                           reader.changed_at(1_000)]
        with pytest.raises(InventoryError, match="not empty"):
            copy(reader, writer)


def test_versions_are_checked_never_altered(tmp_path: Path, postgres: Cluster) -> None:
    url = postgres.database(schema=False)
    with pytest.raises(InventoryError, match="schema version 0.*fleetpki migrate --database-url"):
        Inventory(url)
    assert migrate(url) == (0, VERSION) and migrate(url) == (VERSION, VERSION)
    Inventory(url).close()
    path = tmp_path / "inventory.db"
    Inventory(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(InventoryError, match="newer than this fleetpki"):
        Inventory(path)


def test_an_inventory_from_before_versions_is_version_1(tmp_path: Path) -> None:
    """As fleetpki made them before schema versions: completed and stamped when next opened
    for writing; read-only before that, it asks for `fleetpki migrate`."""
    path = tmp_path / "inventory.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.format(**DIALECTS["sqlite"]))
    db.close()
    with pytest.raises(InventoryError, match=f"schema version 1, this fleetpki needs {VERSION}: "
                       "run `fleetpki migrate --state-dir"):
        Inventory(path, read_only=True)
    Inventory(path).close()  # stamped when opened for writing
    with Inventory(path, read_only=True) as inventory:
        assert "schema_version" in inventory.db.tables()
        assert inventory.applied_fleets() == {}  # the columns of version 2 are there
        assert inventory.active_devices("any") == {}  # and version 3's


def test_placeholders_and_passwords() -> None:
    assert for_psycopg("SELECT '?:x%' , ? , :now, a::text WHERE b LIKE '%'") == \
        "SELECT '?:x%%' , %s , %(now)s, a::text WHERE b LIKE '%%'"
    assert redact("postgresql://u:secret@h:5432/db?password=other&sslmode=require") == \
        "postgresql://u@h:5432/db?sslmode=require"
    assert redact("postgresql://u:secret@[bad/db") == "postgresql://(an unparsable URL)"
    with pytest.raises(InventoryError) as refused:
        Inventory("postgresql://u:s3cret@[bad/db")
    assert "s3cret" not in str(refused.value) and "***" in str(refused.value)


def test_shared_keys_are_noted_as_certificates_are_inserted(location: Path | str) -> None:
    """Lint, metrics and status look only at keys noted when a certificate was inserted
    beside another active holder; what is no longer shared drops out, renewals with the same
    key (the old one revoked first) and server-generated keys never count."""
    from controller.stores import facts
    shared, other = "a" * 64, "b" * 64
    with Inventory(location) as inventory:
        with inventory.transaction():
            inventory.insert(record("01", device="d1", intent="x:" + shared))
            inventory.insert(record("02", device="d2", intent="x:" + other))
            inventory.insert(record("03", device="s1", intent="x:server-ECDSA-P256"))
            inventory.insert(record("04", device="s2", intent="x:server-ECDSA-P256"))
        assert facts.shared_key_count(inventory) == 0
        with inventory.transaction():
            inventory.insert(record("05", device="d3", intent="y:" + shared))
        assert facts.shared_key_count(inventory) == 2
        assert [(key, row.device) for key, row in facts.shared_keys(inventory)] == [
            (shared, "d1"), (shared, "d3")]
        with inventory.transaction():  # renewal of d2 with its own key: not shared
            inventory.revoke("02", "superseded", 2_000)
            inventory.insert(record("06", device="d2", intent="z:" + other))
            inventory.revoke("05", "keyCompromise", 2_000)
        assert facts.shared_key_count(inventory) == 0
        assert list(facts.shared_keys(inventory)) == []
        noted = {row[0] for row in inventory.db.execute("SELECT key FROM shared_keys")}
        assert noted == {shared}


def test_an_older_inventory_notes_its_shared_keys_when_upgraded(tmp_path: Path) -> None:
    from controller.stores import facts
    path = tmp_path / "inventory.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.format(**DIALECTS["sqlite"]))
    for serial, device in (("01", "d1"), ("02", "d2")):
        db.execute("INSERT INTO certificates (serial, kind, owner, device, state, not_before, "
                   "not_after, renew_at, intent, fingerprint, der, issued_at) VALUES "
                   "(?, 'device', 'meters', ?, 'active', 0, 9, 9, ?, 'f', x'00', 0)",
                   (serial, device, "x:" + "c" * 64))
    db.commit()
    db.close()
    with Inventory(path) as inventory:
        assert facts.shared_key_count(inventory) == 2


def test_what_every_run_asks_never_reads_every_certificate(tmp_path: Path) -> None:
    """SQLite's plans for the shared keys and for a run's changes search indexes."""
    from controller.stores import facts
    with Inventory(tmp_path / "inventory.db") as inventory:
        def plan(query: str) -> list[str]:
            return [row[3] for row in inventory.db.execute("EXPLAIN QUERY PLAN " + query)]

        for query in (f"SELECT * FROM ({facts.SHARED})",
                      f"SELECT * FROM ({facts.SHARED}) shared CROSS JOIN certificates c WHERE "
                      f"{facts.KEY} IN (shared.key) AND {facts.ACTIVE}"):
            steps = [step for step in plan(query) if step.split()[1:2] == ["c"]]
            assert steps and all("USING INDEX active_keys (<expr>=?)" in s for s in steps), steps
        steps = plan("SELECT kind FROM certificates WHERE issued_at = 1 OR revoked_at = 1")
        assert any("by_issue_time" in s for s in steps) and \
            any("by_revocation_time" in s for s in steps), steps
        # a no-op's status: the fleets, the due and expired counts, the revoked in use
        traced: list[str] = []
        inventory.db.db.set_trace_callback(traced.append)
        inventory.fleet_names()
        inventory.fleet_counts("meters", 1)
        list(facts.device_rows(inventory, "revoked-certificate-in-use",
                               Window(1, 1, 1)))
        inventory.db.db.set_trace_callback(None)
        due = [q for q in traced if "renew_at <= " in q]
        assert len(due) == 1 and "by_owner_renewal" in " ".join(plan(due[0])), due
        for query in (next(q for q in traced if q.startswith("WITH RECURSIVE")),
                      next(q for q in traced if "sightings" in q)):
            steps = plan(query)
            assert any(s.startswith("SEARCH c") or s.startswith("SEARCH certificates")
                       for s in steps), steps
            assert not any(s.startswith(("SCAN c", "SCAN certificates")) for s in steps), steps


def test_fleet_names_are_every_owner_and_applied_fleet(location: Path | str) -> None:
    with Inventory(location) as inventory:
        with inventory.transaction():
            inventory.insert(record("ca", kind="ca", owner="root", device="",
                                    issuer_serial=None, intent="ca"))
            for serial, owner, device in (("01", "b", "d1"), ("02", "b", "d2"), ("03", "a", "d1"),
                                          ("04", "c", "d1"), ("05", "_serve", "d1")):
                inventory.insert(record(serial, owner=owner, device=device))
            inventory.set_fleet("z", "h", False, 1, 0, 0)
            inventory.set_fleet("b", "h", False, 1, 2, 2)
        assert inventory.fleet_names() == ["_serve", "a", "b", "c", "z"]


def test_a_version_2_inventory_needs_migrate_and_keeps_its_certificates(tmp_path: Path) -> None:
    """Version 3 records each certificate's source row digest; an inventory of version 2 is
    refused until `migrate`, which keeps every row (with no source: planned the long way once)."""
    path = tmp_path / "inventory.db"
    db = sqlite3.connect(path)
    db.executescript(upgrade("sqlite", 0).split(VERSION_3)[0] +
                     "CREATE TABLE schema_version (version INTEGER NOT NULL);"
                     "INSERT INTO schema_version VALUES (2);")
    db.execute("INSERT INTO certificates (serial, kind, owner, device, state, not_before, "
               "not_after, renew_at, intent, fingerprint, der, issued_at) VALUES "
               "('01', 'device', 'meters', 'd1', 'active', 0, 9, 9, 'x:k', 'f', x'00', 0)")
    db.commit()
    db.close()
    with pytest.raises(InventoryError, match="schema version 2, this fleetpki needs 3: run "
                       "`fleetpki migrate --state-dir"):
        Inventory(path)
    assert migrate(path) == (2, VERSION)
    with Inventory(path) as inventory:
        assert inventory.active_devices("meters") == {"d1": ("01", "x:k", 9, None)}
        with inventory.transaction():
            inventory.note_sources({"01": "s" * 64})
        assert inventory.active_devices("meters")["d1"][3] == "s" * 64


def ca_record(serial: str, state: str = "active", owner: str = "fleet-root",
              **fields: object) -> CertRecord:
    return record(serial, device="", state=state, kind="ca", owner=owner, issuer_serial=None,
                  key_id=f"key-{serial}", **fields)


def test_cluster_wide_ca_certificates_are_mirrored_and_follow_their_source(
        location: Path | str) -> None:
    """A namespace holds copies of the cluster-wide CAs' certificates: new ones added, a
    renewal copied (the old one retired before the new one is active), never its own CA of the
    same name taken over."""
    with Inventory(location) as inventory:
        inventory.mirror_cas([ca_record("0a")])
        assert inventory.active_ca("fleet-root") == ca_record("0a")
        inventory.mirror_cas([ca_record("0a")])  # unchanged: nothing to do
        inventory.mirror_cas([ca_record("0b", issued_at=2_000), ca_record("0a", "retired")])
        assert inventory.active_ca("fleet-root") == ca_record("0b", issued_at=2_000)
        assert [r.state for r in inventory.ca_generations("fleet-root")] == ["active", "retired"]
        with inventory.transaction():
            inventory.insert(ca_record("0c", owner="own-ca"))
        with pytest.raises(InventoryError, match="has a CertificateAuthority 'own-ca' of its own"):
            inventory.mirror_cas([ca_record("0d", owner="own-ca")])
        assert [r.serial for r in inventory.ca_generations("own-ca")] == ["0c"]


def test_a_fleet_that_is_most_of_the_table_is_read_in_table_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same answer either way; the whole table is read (not the index, one random read per
    row) only for a fleet holding most of it."""
    monkeypatch.setattr(inventory_module, "WHOLE_TABLE_FROM", 1)
    with Inventory(tmp_path / "inventory.db") as inventory:
        with inventory.transaction():
            for n in range(6):
                inventory.insert(record(f"{n:02x}", device=f"d{n}", owner="big" if n else "small",
                                        source=f"s{n}"))
        traced: list[str] = []
        inventory.db.db.set_trace_callback(traced.append)
        big, small = inventory.active_devices("big"), inventory.active_devices("small")
        inventory.db.db.set_trace_callback(None)
        reads = [q for q in traced if q.startswith("SELECT device, serial")]
        assert ["NOT INDEXED" in q for q in reads] == [True, False], reads
        assert big == {f"d{n}": (f"{n:02x}", "x:k", 4_000, f"s{n}") for n in range(1, 6)}
        assert small == {"d0": ("00", "x:k", 4_000, "s0")}


def test_the_active_certificates_of_some_devices(
        location: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As `active_devices` gives them, of the devices asked for only (in several queries)."""
    monkeypatch.setattr(inventory_module, "IN_LIST", 3)
    with Inventory(location) as inventory:
        with inventory.transaction():
            for n in range(10):
                inventory.insert(record(f"{n:02x}", device=f"d{n}", source=f"s{n}"))
            inventory.insert(record("20", device="d1", state="retired"))
            inventory.insert(record("21", device="d1", owner="other"))
        wanted = ["d1", "d3", "d4", "d5", "d8", "absent", "d9"]
        every = inventory.active_devices("meters")
        assert inventory.active_of("meters", wanted) == {
            device: every[device] for device in wanted if device in every}
        assert inventory.active_of("meters", []) == {}


def test_a_writer_checkpoints_its_wal_rarely_and_shrinks_it(tmp_path: Path) -> None:
    """At SQLite's default (1,000 pages) a batch into a large inventory checkpointed at every
    commit; the WAL grows to 400 MB between checkpoints and is cut back to 64 MiB after."""
    with Inventory(tmp_path / "inventory.db") as inventory:
        pragma = inventory.db.execute
        assert pragma("PRAGMA wal_autocheckpoint").fetchone()[0] == 100_000
        assert pragma("PRAGMA journal_size_limit").fetchone()[0] == 64 * 1024 * 1024
    with Inventory(tmp_path / "inventory.db", read_only=True) as reader:
        assert reader.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1_000
