"""`apply --fleet NAME…` changes only those fleets' certificates (CAs and CRLs always)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import (
    Cli,
    device_ids,
    dump_yaml,
    fleet,
    one_line,
    query,
    small_repo,
    write_csv,
)

pytestmark = pytest.mark.usefixtures("inventory_backend")  # on SQLite and on PostgreSQL


def actives(state: Path) -> dict[str, int]:
    return dict(query(state, "SELECT owner, count(*) FROM certificates WHERE state = 'active' "
                      "GROUP BY owner"))


def test_apply_one_fleet(cli: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("m", 3), git_init=False)
    dump_yaml(repo / "fleets" / "valves.yaml", fleet("valves", "meter",
                                                     source="fleets/valves.csv"))
    write_csv(repo / "fleets" / "valves.csv", device_ids("v", 2))
    state = tmp_path / "state"
    refused = cli("apply", repo, "--state-dir", state, "--allow-uncommitted",
                  "--fleet", "valves", "--fleet", "nope", rc=1).stderr
    assert "--fleet nope: no such DeviceFleet is declared; nothing applied" in one_line(refused)
    done = cli("apply", repo, "--state-dir", state, "--allow-uncommitted", "--fleet", "valves")
    assert "2 create-ca, 2 issue" in done.stdout
    assert actives(state) == {"acme-root": 1, "devices-ca": 1, "valves": 2}
    assert "3 issue" in cli("apply", repo, "--state-dir", state, "--allow-uncommitted").stdout
    assert actives(state)["meters"] == 3
