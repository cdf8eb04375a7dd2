"""SIGKILL `fleetpki apply` at several points, then converge: the inventory stays consistent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.apply.executor import BATCH
from controller.stores.database import ERRORS

from .support import (
    SECRET_MARKER,
    Cli,
    active_serials,
    commit_all,
    device_ids,
    duplicate_actives,
    edit_csv,
    openssl,
    openssl_serial,
    query,
    small_repo,
)

FLEET = "meters"
KILL_WHILE_BUILDING_CA = """
import os, signal, sys
from controller.pki import certificates
certificates.build_ca_certificate = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from controller.cli import main
sys.argv = ["fleetpki", *sys.argv[1:]]
main()
"""
SIZE = 5000
pytestmark = pytest.mark.usefixtures("inventory_backend")  # on SQLite and on PostgreSQL


def poll(state: Path, sql: str, ready: Callable[[Any], bool],
         process: subprocess.Popen[bytes]) -> Any:
    """Read the inventory (read-only) until `ready(value)`; the apply must still be running."""
    deadline = time.monotonic() + 120  # a safety net only: nothing asserts on durations
    while time.monotonic() < deadline:
        assert process.poll() is None, "apply finished before reaching the kill point"
        try:
            value = query(state, sql)[0][0]
        except ERRORS:  # database or table not created yet
            value = None
        if value is not None and ready(value):
            return value
        time.sleep(0.005)
    raise AssertionError(f"kill point never reached: {sql}")


def kill(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert SECRET_MARKER not in log.read_text(errors="replace")


def device_rows(state: Path) -> int:
    return int(query(state, "SELECT count(*) FROM certificates WHERE kind = 'device'")[0][0])


def assert_consistent(state: Path, declared: set[str]) -> None:
    assert duplicate_actives(state) == []
    assert set(active_serials(state, FLEET)) == declared, "every declared device, once"
    assert query(state, "SELECT count(*) FROM journal") == [(0,)], "crash journal recovered"
    keys = {p.stem for p in (state / "keys" / "ca").glob("*.pem")}
    in_use = {row[0] for row in query(state, "SELECT key_id FROM certificates WHERE "
                                      "kind = 'ca' AND state = 'active'")}
    assert keys == in_use, "CA keys that never signed a kept certificate are quarantined"
    cas = query(state, "SELECT owner, count(*) FROM certificates WHERE kind = 'ca' AND "
                "state = 'active' GROUP BY owner ORDER BY owner")
    assert cas == [("acme-root", 1), ("devices-ca", 1)]


def test_killed_applies_converge(cli_process: Cli, tmp_path: Path) -> None:
    cli = cli_process  # the real command, in a subprocess
    ids = device_ids("m", SIZE)
    repo = small_repo(tmp_path / "repo", ids, fleet_name=FLEET)
    state = tmp_path / "state"
    apply = ("apply", repo, "--state-dir", state)

    # Kill point 1, exact: the root CA key is journalled and written, its certificate not yet
    # recorded (the process SIGKILLs itself when it starts building the CA certificate).
    crashed = subprocess.run([sys.executable, "-c", KILL_WHILE_BUILDING_CA, *map(str, apply)],
                             env=cli.env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    journal = query(state, "SELECT operation, subject, detail FROM journal")
    assert [(op, subject) for op, subject, _ in journal] == [("ca-key", "acme-root")]
    orphan = journal[0][2]
    assert (state / "keys" / "ca" / f"{orphan}.pem").is_file()
    assert query(state, "SELECT count(*) FROM certificates") == [(0,)]

    # Kill point 2: in the middle of issuing the fleet.
    log = tmp_path / "kill2.log"
    process = cli.popen(*apply, log=log)
    poll(state, "SELECT count(*) FROM certificates WHERE kind = 'device'",
         lambda n: n >= 500, process)  # the first batch is committed
    kill(process, log)
    partial = device_rows(state)
    assert 500 <= partial < SIZE
    kept = active_serials(state, FLEET)

    done = cli(*apply).stdout
    assert (state / "keys" / "ca" / "orphaned" / f"{orphan}.pem").is_file()
    assert query(state, "SELECT count(*) FROM certificates WHERE key_id = ?", (orphan,)) == [(0,)]
    assert f"{SIZE - partial} issue" in done, "only what was lost is issued again"
    assert_consistent(state, set(ids))
    assert {d: s for d, s in active_serials(state, FLEET).items() if d in kept} == kept, \
        "certificates committed before the crash are kept, not re-issued"

    # Kill point 3: revoke two devices and add three signing batches of new ones; kill once the
    # first batch is committed, while the others are still issued (one batch would race the CRL).
    stolen, retired = ids[0], ids[1]
    serials = active_serials(state, FLEET)
    added = device_ids("m", 3 * BATCH, start=SIZE + 1)
    edit_csv(repo / "fleets" / f"{FLEET}.csv", revoke={stolen: "keyCompromise"},
             delete=[retired], add=[f"{d},lab," for d in added])
    commit_all(repo, f"revoke two meters, add {len(added)}")
    crl_before = query(state, "SELECT number FROM crls WHERE ca_name = 'devices-ca'")[0][0]
    log = tmp_path / "kill3.log"
    process = cli.popen(*apply, log=log)
    poll(state, "SELECT count(*) FROM certificates WHERE kind = 'device'",
         lambda n: n > SIZE, process)  # revocations and a first batch committed
    kill(process, log)
    revoked = dict(query(state, "SELECT device, reason FROM certificates WHERE "
                         "state = 'revoked'"))
    assert revoked == {stolen: "keyCompromise", retired: "cessationOfOperation"}
    assert query(state, "SELECT number FROM crls WHERE ca_name = 'devices-ca'")[0][0] == \
        crl_before, "killed before publishing the CRL"

    final = cli(*apply).stdout
    assert "publish-crl" in final and "revoke" not in final
    declared = (set(ids) - {stolen, retired}) | set(added)
    assert_consistent(state, declared)
    assert dict(query(state, "SELECT device, reason FROM certificates WHERE "
                      "state = 'revoked'")) == revoked
    text = openssl("crl", "-inform", "DER", "-in", state / "public" / "crl" / "devices-ca.crl",
                   "-noout", "-text").stdout
    assert openssl_serial(serials[stolen]) in text and openssl_serial(serials[retired]) in text
    assert "Key Compromise" in text and "Cessation Of Operation" in text
    assert "no changes" in cli(*apply).stdout
