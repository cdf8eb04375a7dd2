"""A failing apply changes nothing; the public directory is repaired on every run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .support import (
    Applied,
    Cli,
    active_serials,
    commit_all,
    edit_csv,
    one_line,
    openssl,
    openssl_serial,
    query,
)

DEVICE = "sensor-0042"


def snapshot(state: Path) -> list[tuple[object, ...]]:
    return query(state, "SELECT serial, state, reason FROM certificates ORDER BY serial") + \
        query(state, "SELECT ca_serial, number FROM crls ORDER BY ca_serial")


def revoke_one(repo: Path) -> None:
    edit_csv(repo / "fleets" / "sensors.csv", revoke={DEVICE: "keyCompromise"})
    commit_all(repo, f"revoke {DEVICE}")


def issuing_key(state: Path) -> Path:
    key_id = query(state, "SELECT key_id FROM certificates WHERE kind = 'ca' AND "
                   "owner = 'devices-ca' AND state = 'active'")[0][0]
    return state / "keys" / "ca" / f"{key_id}.pem"


def break_key(state: Path, how: str) -> None:
    if how == "deleted":
        issuing_key(state).unlink()
    elif how == "corrupt":
        issuing_key(state).write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n")


@pytest.mark.parametrize("fault", ["wrong-passphrase", "deleted", "corrupt"])
def test_a_failing_apply_changes_nothing(applied_example: Applied, cli: Cli, fault: str) -> None:
    repo, state = applied_example
    revoke_one(repo)
    before = snapshot(state)
    crl = (state / "public" / "crl" / "devices-ca.crl").read_bytes()
    env = {"FLEETPKI_PASSPHRASE": "not-the-passphrase"} if fault == "wrong-passphrase" else {}
    break_key(state, fault)
    refused = one_line(cli("apply", repo, "--state-dir", state, rc=1, env=env).stderr)
    expected = {"wrong-passphrase": "cannot unlock the keystore", "deleted": "not found in "
                "keystore", "corrupt": "cannot decrypt CA key"}[fault]
    assert expected in refused
    assert snapshot(state) == before, "the revocation waits until the CRL can be signed"
    assert DEVICE in active_serials(state, "sensors")
    assert (state / "public" / "crl" / "devices-ca.crl").read_bytes() == crl


def test_wrong_passphrase_is_an_error_with_nothing_due(applied_example: Applied,
                                                       cli: Cli) -> None:
    repo, state = applied_example
    cli("apply", repo, "--state-dir", state)  # converged: nothing due
    refused = cli("apply", repo, "--state-dir", state, rc=1,
                  env={"FLEETPKI_PASSPHRASE": "not-the-passphrase"})
    assert "cannot unlock the keystore" in one_line(refused.stderr)
    assert "Applied" not in refused.stdout


KILL_WHEN_PUBLISHING = """
import os, signal, sys
from controller.stores import publish
publish.publish_file = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from controller.cli import main
sys.argv = ["fleetpki", *sys.argv[1:]]
main()
"""


def test_public_files_are_repaired_after_a_crash(applied_example: Applied, cli: Cli,
                                                 cli_process: Cli) -> None:
    """Killed after committing a revocation but before publishing: the next run, with nothing
    left to do, still writes the CRL (checked with openssl) and a missing CA certificate."""
    repo, state = applied_example
    revoke_one(repo)
    public = state / "public"
    stale = (public / "crl" / "devices-ca.crl").read_bytes()
    crashed = subprocess.run(
        [*cli_process.command()[:1], "-c", KILL_WHEN_PUBLISHING, "apply", str(repo),
         "--state-dir", str(state)], env=cli_process.env, capture_output=True, timeout=300)
    assert crashed.returncode == -9
    assert DEVICE not in active_serials(state, "sensors"), "the revocation was committed"
    assert (public / "crl" / "devices-ca.crl").read_bytes() == stale
    (public / "ca" / "acme-root.pem").unlink()

    repaired = cli("apply", repo, "--state-dir", state)
    assert "Applied: no changes." in repaired.stdout
    serial = query(state, "SELECT serial FROM certificates WHERE device = ?", (DEVICE,))[0][0]
    text = openssl("crl", "-inform", "DER", "-in", public / "crl" / "devices-ca.crl",
                   "-noout", "-text").stdout
    assert openssl_serial(serial) in text
    assert "Key Compromise" in text
    root = openssl("x509", "-in", public / "ca" / "acme-root.pem", "-noout", "-subject").stdout
    assert "acme" in root.lower()
