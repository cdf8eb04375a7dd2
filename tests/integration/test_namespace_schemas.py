"""Kubernetes namespaces share one PostgreSQL database, each inventory in its own schema:
objects of the same names in two namespaces never meet, `fleetpki migrate` upgrades every
namespace's schema, and the advisory locks are per schema."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg

from controller.stores.database import in_schema, namespace_schema
from controller.stores.inventory import VERSION, create_if_absent, database_lock
from tests.postgres import Cluster

from .support import Cli, device_ids, small_repo


def test_schema_names_are_distinct_identifiers() -> None:
    assert namespace_schema("fleet-demo") == "k8s_fleet_demo"
    long_a, long_b = "a" * 62 + "b", "a" * 62 + "c"
    schemas = {namespace_schema(long_a), namespace_schema(long_b)}
    assert len(schemas) == 2 and all(len(s) <= 63 and s.startswith("k8s_") for s in schemas)
    assert namespace_schema(long_a) == namespace_schema(long_a)


def test_in_schema_keeps_the_url_and_its_options() -> None:
    url = "postgresql://u:pw@db:5432/pki?sslmode=require&options=-c%20statement_timeout%3D5s"
    scoped = psycopg.conninfo.conninfo_to_dict(in_schema(url, "k8s_a"))
    assert scoped["password"] == "pw" and scoped["sslmode"] == "require"
    assert scoped["options"] == "-c statement_timeout=5s -c search_path=k8s_a"


def test_two_namespaces_with_the_same_names_keep_apart(cli: Cli, postgres: Cluster,
                                                      tmp_path: Path, passphrase: str) -> None:
    url = postgres.database(schema=False)
    repos = {ns: small_repo(tmp_path / ns, device_ids("m", n)) for ns, n in (("a", 2), ("b", 3))}
    for namespace, repo in repos.items():
        scoped = in_schema(url, namespace_schema(namespace))
        create_if_absent(scoped)
        create_if_absent(scoped)  # present: left as it is
        cli("apply", repo, "--state-dir", tmp_path / f"state-{namespace}", "--database-url",
            scoped)
    with psycopg.connect(url) as db:
        counts = dict(db.execute(
            "SELECT 'a', count(*) FROM k8s_a.certificates WHERE kind = 'device' UNION ALL "
            "SELECT 'b', count(*) FROM k8s_b.certificates WHERE kind = 'device'").fetchall())
        cas = db.execute("SELECT count(*) FROM k8s_a.certificates JOIN k8s_b.certificates USING "
                         "(serial)").fetchone()
    assert counts == {"a": 2, "b": 3}
    assert cas == (0,), "each namespace made its own CAs: no certificate is in both"
    migrated = cli("migrate", "--database-url", url).stdout
    assert f"Namespace inventory k8s_a: schema at version {VERSION} (up to date)" in migrated
    assert f"Namespace inventory k8s_b: schema at version {VERSION} (up to date)" in migrated
    assert f"Inventory schema at version {VERSION} (was 0)" in migrated


def test_advisory_locks_are_per_schema(postgres: Cluster) -> None:
    url = postgres.database(schema=False)
    a, b = in_schema(url, "k8s_a"), in_schema(url, "k8s_b")
    for scoped in (a, b):
        create_if_absent(scoped)
    other_schema, same_schema = threading.Event(), threading.Event()

    def take(scoped: str, taken: threading.Event) -> None:
        with database_lock(scoped, ["all fleets"]):
            taken.set()

    with database_lock(a, ["all fleets"]):
        threads = [threading.Thread(target=take, args=(b, other_schema)),
                   threading.Thread(target=take, args=(a, same_schema))]
        for thread in threads:
            thread.start()
        assert other_schema.wait(30), "namespace b's applier waits for nothing of namespace a"
        assert not same_schema.wait(1), "a second applier of namespace a waits"
    assert same_schema.wait(30)
    for thread in threads:
        thread.join()
