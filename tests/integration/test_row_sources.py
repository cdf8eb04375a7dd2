"""Each certificate records the digest of the row it was issued from: apply stores it, an
inventory without it (from before version 3) has it noted when a plan finds the row unchanged,
and revoking rows changes nothing else. On SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from controller.stores.inventory import Inventory

from .support import Cli, commit_all, device_ids, edit_csv, query, small_repo

pytestmark = pytest.mark.usefixtures("inventory_backend")

SOURCES = "SELECT serial, source FROM certificates WHERE kind = 'device' AND state = 'active'"


def test_sources_are_recorded_noted_and_kept(cli: Cli, tmp_path: Path, passphrase: str) -> None:
    repo, state = small_repo(tmp_path / "repo", device_ids("m", 20)), tmp_path / "state"
    cli("apply", repo, "--state-dir", state)
    issued = dict(query(state, SOURCES))
    assert len(issued) == 20 and all(issued.values()) and len(set(issued.values())) == 20

    # as an inventory upgraded from version 2, whose fleet was edited since
    _write(state, "UPDATE certificates SET source = NULL; UPDATE fleets SET content_hash = ''")
    assert "no changes" in cli("apply", repo, "--state-dir", state).stdout
    assert dict(query(state, SOURCES)) == issued, "the same rows: the same digests, noted"

    edit_csv(repo / "fleets" / "meters.csv", revoke={"m-00003": "keyCompromise"})
    commit_all(repo, "revoke m-00003")
    assert "1 revoke" in cli("apply", repo, "--state-dir", state).stdout
    after = dict(query(state, SOURCES))
    assert after == {serial: s for serial, s in issued.items() if serial in after}
    assert len(after) == 19


def _write(state: Path, script: str) -> None:
    if os.environ.get("FLEETPKI_DATABASE_URL"):
        with Inventory(os.environ["FLEETPKI_DATABASE_URL"]) as inventory:
            for statement in script.split(";"):
                inventory.db.execute(statement)
        return
    db = sqlite3.connect(state / "inventory.db")
    db.executescript(script)
    db.commit()
    db.close()
