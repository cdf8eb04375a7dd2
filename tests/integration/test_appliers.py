"""Two appliers, as on two machines, share one PostgreSQL inventory: each has its own checkout
and state directory (the keystore directory is shared, as it must be), so only the database's
lock keeps them apart. Raced over many rounds of revocations and additions, no device ever has
two active certificates, no revocation is lost, and no CRL number is used for two CRLs."""

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
    duplicate_actives,
    edit_csv,
    git,
    query,
    small_repo,
)

FLEET = "meters"
ROUNDS = 6


def test_two_appliers_race_without_harm(cli_process: Cli, postgres: Cluster, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres.database()
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", url)  # for `query`
    env = {**cli_process.env, "FLEETPKI_DATABASE_URL": url}
    ids = device_ids("m", 8)
    first = small_repo(tmp_path / "a" / "repo", ids, fleet_name=FLEET)
    second = tmp_path / "b" / "repo"
    git(tmp_path, "clone", "-q", str(first), str(second))
    states = [tmp_path / "a" / "state", tmp_path / "b" / "state"]
    cli_process("apply", first, "--state-dir", states[0], "--no-status", env=env)
    states[1].mkdir()
    (states[1] / "keys").symlink_to(states[0] / "keys")  # the shared keystore directory

    revoked: set[str] = set()
    crls: dict[int, bytes] = {}
    for round_ in range(ROUNDS):
        victim, new = ids[round_], f"n{round_}"
        edit_csv(first / "fleets" / f"{FLEET}.csv", revoke={victim: "keyCompromise"},
                 add=[f"{new},lab,"])
        commit_all(first, f"round {round_}")
        git(second, "pull", "-q", "--ff-only")
        revoked.add(victim)
        runs = [subprocess.Popen(cli_process.command("apply", repo, "--state-dir", state,
                                                     "--no-status"),
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
                for repo, state in zip((first, second), states, strict=True)]
        outputs = [run.communicate(timeout=300) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        assert sum("1 revoke" in out for out, _ in outputs) == 1, outputs  # by one of them
        assert duplicate_actives(states[0]) == []
        assert query(states[0], "SELECT owner, device FROM certificates WHERE state = 'active' "
                     "GROUP BY owner, device HAVING count(*) > 1") == []
        for state in states:
            der = (state / "public" / "crl" / "devices-ca.crl").read_bytes()
            crl = x509.load_der_x509_crl(der)
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            assert crls.setdefault(number, der) == der, f"CRL number {number} used twice"
    assert set(dict(query(states[0], "SELECT device, reason FROM certificates WHERE "
                          "state = 'revoked'"))) == revoked, "no revocation lost"
    assert len(crls) >= ROUNDS, "each round's revocation was published in a new CRL"
