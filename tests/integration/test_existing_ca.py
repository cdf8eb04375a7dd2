"""Never a second PKI: a CA with evidence of existing is never created again by accident."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .support import (
    SECRET_MARKER,
    Applied,
    Cli,
    branch_sha,
    ca_rows,
    commit_all,
    device_ids,
    git,
    one_line,
    small_repo,
    status_files,
)

STATUS = "fleetpki/status"
CA_STATUS = "status/CertificateAuthority/acme-root.yaml"


def recorded_serial(repo: Path) -> str:
    return str(status_files(repo)[CA_STATUS]["status"]["certificate"]["serial"])


def assert_refused(cli: Cli, *args: str | Path) -> str:
    """The command exits 1 naming the CA, the evidence and the flag that overrides it."""
    message = one_line(cli(*args, rc=1).stderr)
    assert "CertificateAuthority/acme-root exists already" in message
    assert "--new-ca acme-root" in message and "--new-ca devices-ca" in message
    assert "Traceback" not in message
    return message


def test_wrong_state_dir_is_refused_every_time(applied_example: Applied, cli: Cli,
                                               tmp_path: Path) -> None:
    repo, _ = applied_example
    serial = recorded_serial(repo)
    typo = tmp_path / "state-typo"
    for _ in range(3):  # the refusal itself must not erase the evidence
        message = assert_refused(cli, "apply", repo, "--state-dir", typo)
        assert f"serial {serial} on the status branch" in message
        assert ca_rows(typo) == []
        assert recorded_serial(repo) == serial
    assert_refused(cli, "plan", repo, "--state-dir", typo)
    assert_refused(cli, "apply", repo, "--state-dir", typo, "--no-status")
    document = status_files(repo)[CA_STATUS]["status"]
    stalled = {c["type"]: c for c in document["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and "exists already" in stalled["message"]
    assert stalled["reason"] == "Failed", "a refusal, not a mistake in the spec"


def test_lost_inventory_is_refused(applied_example: Applied, cli: Cli) -> None:
    repo, state = applied_example
    for path in state.glob("inventory.db*"):
        path.unlink()
    message = assert_refused(cli, "apply", repo, "--state-dir", state, "--no-status")
    assert "its key(s) " in message and "/keys/ca/acme-root-" in message
    assert "published" in message
    assert not (state / "inventory.db").exists() or ca_rows(state) == []


def test_evidence_anywhere_in_the_status_history(applied_example: Applied, cli: Cli,
                                                 tmp_path: Path) -> None:
    """A later status commit without the certificate (as older versions wrote on a refused
    run) does not erase the evidence: any commit of the branch counts."""
    repo, _ = applied_example
    serial = recorded_serial(repo)
    tip = branch_sha(repo, STATUS)
    empty_tree = git(repo, "hash-object", "-t", "tree", "/dev/null").strip()
    erased = git(repo, "commit-tree", empty_tree, "-p", str(tip), "-m", "erased").strip()
    git(repo, "update-ref", f"refs/heads/{STATUS}", erased)
    message = assert_refused(cli, "apply", repo, "--state-dir", tmp_path / "fresh")
    assert f"serial {serial}" in message


def test_new_ca_starts_a_new_pki_on_purpose(applied_example: Applied, cli: Cli,
                                            tmp_path: Path) -> None:
    repo, _ = applied_example
    old = recorded_serial(repo)
    fresh = tmp_path / "new-pki"
    cli("apply", repo, "--state-dir", fresh, "--new-ca", "acme-root", "--new-ca", "devices-ca")
    assert {row[1] for row in ca_rows(fresh)} == {"acme-root", "devices-ca"}
    assert recorded_serial(repo) != old
    cli("apply", repo, "--state-dir", fresh)  # and from then on it is the known PKI


def test_deleted_kek_is_refused(applied_example: Applied, cli: Cli) -> None:
    repo, state = applied_example
    (state / "keys" / "kek.json").unlink()
    edit = repo / "fleets" / "sensors.csv"
    edit.write_text(edit.read_text() + "sensor-9999,TS-100,hamburg,\n")
    commit_all(repo, "one more sensor")
    message = one_line(cli("apply", repo, "--state-dir", state, rc=1).stderr)
    assert "kek.json is missing but the keystore" in message
    assert not (state / "keys" / "kek.json").exists()


def test_short_passphrase_for_a_new_keystore(cli: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("m", 2))
    message = one_line(cli("apply", repo, "--state-dir", tmp_path / "state", rc=1,
                           env={"FLEETPKI_PASSPHRASE": "short"}).stderr)
    assert "too short for a new keystore" in message
    assert ca_rows(tmp_path / "state") == []


def test_reconcile_with_a_wrong_state_dir_keeps_the_origin(applied_example: Applied,
                                                           cli: Cli, tmp_path: Path) -> None:
    repo, _ = applied_example
    serial = recorded_serial(repo)
    typo = tmp_path / "state-typo"
    for _ in range(2):
        run = cli("reconcile", "--repo", repo, "--once", "--push", "--state-dir", typo, rc=1)
        assert "exists already" in one_line(run.stderr)
    assert recorded_serial(repo) == serial, "the origin's status branch keeps the CA"
    assert ca_rows(typo) == []


def test_two_state_dirs_at_once_make_one_pki(cli_process: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("m", 1500))
    states = [tmp_path / "state-a", tmp_path / "state-b"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [cli_process.popen("apply", repo, "--state-dir", state, log=log)
                 for state, log in zip(states, logs, strict=True)]
    codes = sorted(p.wait(timeout=300) for p in processes)
    assert codes == [0, 1]
    outputs = [one_line(log.read_text()) for log in logs]
    assert all(SECRET_MARKER not in text and "Traceback" not in text for text in outputs)
    assert any("another fleetpki apply is running on the repository" in text
               or "exists already" in text for text in outputs)
    made = [state for state in states if (state / "inventory.db").exists() and ca_rows(state)]
    assert len(made) == 1, "exactly one state directory holds CAs"


def test_killed_first_run_is_not_evidence(cli_process: Cli, tmp_path: Path) -> None:
    """A crash while creating the first CA leaves a journalled key: that is our own work in
    progress, not another PKI, and the next run converges without --new-ca."""
    repo = small_repo(tmp_path / "repo", device_ids("m", 3))
    state = tmp_path / "state"
    killer = ("import os, signal, sys\nfrom controller.pki import certificates\n"
              "certificates.build_ca_certificate = lambda *a, **k: os.kill(os.getpid(), 9)\n"
              "from controller.cli import main\nsys.argv = ['fleetpki', *sys.argv[1:]]\nmain()\n")
    crashed = subprocess.run([*cli_process.command()[:1], "-c", killer, "apply", str(repo),
                              "--state-dir", str(state)], env=cli_process.env, timeout=120,
                             capture_output=True)
    assert crashed.returncode == -9
    assert list((state / "keys" / "ca").glob("acme-root-*.pem"))
    cli_process("apply", repo, "--state-dir", state)
    assert {row[1] for row in ca_rows(state)} == {"acme-root", "devices-ca"}


def test_copied_state_dir_still_applies(applied_example: Applied, cli: Cli,
                                        tmp_path: Path) -> None:
    """Moving a state directory (the same inventory and keys) is not a second PKI."""
    repo, state = applied_example
    moved = tmp_path / "moved"
    shutil.copytree(state, moved)
    cli("apply", repo, "--state-dir", moved)
