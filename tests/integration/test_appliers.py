"""Two appliers, as on two machines, share one PostgreSQL inventory: each has its own checkout
and state directory (the keystore directory is shared, as it must be), so only the database's
locks keep them apart. Raced over many rounds of revocations and additions, no device ever has
two active certificates, no revocation is lost, and no CRL number is used for two CRLs: whether
both apply everything (they take turns) or each its own fleet (`--fleet`: they run together,
their CA work in turns)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from tests.postgres import Cluster

from .support import (
    Cli,
    commit_all,
    device_ids,
    dump_yaml,
    duplicate_actives,
    edit_csv,
    fleet,
    git,
    query,
    small_repo,
    write_csv,
)

ROUNDS = 6
CRL = Path("public") / "crl" / "devices-ca.crl"


class Race:
    """Two checkouts and state directories on one database, the first one applied."""

    def __init__(self, cli: Cli, url: str, root: Path, fleets: list[str]) -> None:
        self.cli, self.env = cli, {**cli.env, "FLEETPKI_DATABASE_URL": url}
        self.ids = {name: device_ids(name[0], 8) for name in fleets}
        self.repos = [small_repo(root / "a" / "repo", self.ids[fleets[0]], fleet_name=fleets[0],
                                 git_init=False), root / "b" / "repo"]
        for name in fleets[1:]:
            dump_yaml(self.repos[0] / "fleets" / f"{name}.yaml",
                      fleet(name, "meter", source=f"fleets/{name}.csv"))
            write_csv(self.repos[0] / "fleets" / f"{name}.csv", self.ids[name])
        git(self.repos[0], "init", "-q", "-b", "main")
        commit_all(self.repos[0], "fleets")
        git(root, "clone", "-q", str(self.repos[0]), str(self.repos[1]))
        self.states = [root / "a" / "state", root / "b" / "state"]
        cli("apply", self.repos[0], "--state-dir", self.states[0], "--no-status", env=self.env)
        self.states[1].mkdir()
        (self.states[1] / "keys").symlink_to(self.states[0] / "keys")  # the shared keystore
        self.crls: dict[int, bytes] = {}

    def round(self, number: int, *options: list[str]) -> list[str]:
        """Revoke one device and add one in each fleet, then run both appliers at once (with
        `options[i]` for the i-th); their outputs."""
        for name, ids in self.ids.items():
            edit_csv(self.repos[0] / "fleets" / f"{name}.csv",
                     revoke={ids[number]: "keyCompromise"}, add=[f"{name}-new{number},lab,"])
        commit_all(self.repos[0], f"round {number}")
        git(self.repos[1], "pull", "-q", "--ff-only")
        runs = [subprocess.Popen(self.cli.command("apply", repo, "--state-dir", state,
                                                  "--no-status", *extra),
                                 env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
                for repo, state, extra in zip(self.repos, self.states, options, strict=True)]
        outputs = [run.communicate(timeout=300) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        self.check()
        return [out for out, _ in outputs]

    def check(self) -> None:
        assert duplicate_actives(self.states[0]) == []
        for state in self.states:
            der = (state / CRL).read_bytes()
            crl = x509.load_der_x509_crl(der)
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            assert self.crls.setdefault(number, der) == der, f"CRL number {number} used twice"

    def assert_nothing_lost(self) -> None:
        revoked = {device for ids in self.ids.values() for device in ids[:ROUNDS]}
        rows = query(self.states[0], "SELECT device, serial FROM certificates WHERE "
                     "state = 'revoked'")
        assert {device for device, _ in rows} == revoked, "no revocation lost"
        latest = x509.load_der_x509_crl(self.crls[max(self.crls)])
        assert {f"{entry.serial_number:x}" for entry in latest} >= \
            {serial.lstrip("0").lower() for _, serial in rows}, "the last CRL lists them all"


@pytest.fixture
def race(cli_process: Cli, postgres: Cluster, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Race:
    url = postgres.database()
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", url)  # for `query`
    return Race(cli_process, url, tmp_path, ["meters", "valves"])


def test_appliers_of_everything_take_turns(race: Race) -> None:
    for number in range(ROUNDS):
        outputs = race.round(number, [], [])
        assert sum("2 revoke" in out for out in outputs) == 1, outputs  # by one of them
    race.assert_nothing_lost()
    assert len(race.crls) >= ROUNDS, "each round's revocations in a new CRL"


def test_appliers_of_different_fleets_run_together(race: Race) -> None:
    for number in range(ROUNDS):
        outputs = race.round(number, ["--fleet", "meters"], ["--fleet", "valves"])
        assert ["1 revoke" in out for out in outputs] == [True, True], outputs
    race.assert_nothing_lost()
    query_active = query(race.states[0], "SELECT owner, count(*) FROM certificates WHERE "
                         "kind = 'device' AND state = 'active' GROUP BY owner ORDER BY owner")
    assert query_active == [("meters", 8), ("valves", 8)]
