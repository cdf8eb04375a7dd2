"""The CLI on a PostgreSQL inventory: `--database-url`, `fleetpki migrate` (schema, and a copy
of an SQLite state directory, verified), and its errors (never showing the password)."""

from __future__ import annotations

from pathlib import Path

from controller.stores.inventory import VERSION
from tests.postgres import Cluster

from .support import Applied, Cli, one_line


def test_a_state_directory_moves_to_postgresql(applied_example: Applied, cli: Cli,
                                               postgres: Cluster) -> None:
    repo, state = applied_example.repo, applied_example.state
    url = postgres.database(schema=False)
    before = cli("status", repo, "--state-dir", state).stdout
    copied = one_line(cli("migrate", "--from", f"sqlite:{state}", "--to", url).stdout)
    assert copied.startswith("Copied and verified 1004 certificates, 2 fleets, 2 crls")
    assert cli("status", repo, "--state-dir", state, "--database-url", url).stdout == before
    plan = cli("plan", repo, "--state-dir", state, env={"FLEETPKI_DATABASE_URL": url}).stdout
    assert "Plan: no changes." in plan
    again = cli("migrate", "--from", f"sqlite:{state}", "--to", url, rc=1).stderr
    assert "is not empty" in one_line(again)


def test_migrate_and_its_errors(cli: Cli, postgres: Cluster, tmp_path: Path) -> None:
    state = tmp_path / "state"
    url = postgres.database(schema=False).replace("fleetpki@", "fleetpki:s3cret-pw@")
    refused = one_line(cli("status", tmp_path, "--state-dir", state, "--database-url", url,
                           rc=1).stderr)
    assert f"schema version 0, this fleetpki needs {VERSION}: run `fleetpki migrate " \
        "--database-url postgresql://fleetpki@127.0.0.1" in refused
    made = cli("migrate", "--database-url", url).stdout
    assert f"schema at version {VERSION} (was 0)" in one_line(made)
    assert "up to date" in cli("migrate", "--database-url", url).stdout
    cli("status", tmp_path, "--state-dir", state, "--database-url", url)
    wrong = one_line(cli("status", tmp_path, "--database-url", "mysql://u:pw@h/db", rc=1).stderr)
    assert "must be a postgresql:// URL" in wrong
    backup = one_line(cli("backup", "--out", tmp_path / "b.tgz", "--state-dir", state,
                          "--database-url", url, rc=1).stderr)
    assert "pg_dump" in backup
    unreachable = postgres.url("absent").replace("fleetpki@", "fleetpki:s3cret-pw@")
    failed = one_line(cli("status", tmp_path, "--database-url", unreachable, rc=1).stderr)
    assert "the inventory database postgresql://fleetpki@127.0.0.1" in failed
    assert "s3cret-pw" not in "".join(cli.outputs)
