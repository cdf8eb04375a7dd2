"""The git-only controller loop (`reconcile`) and the state-directory lock."""

from __future__ import annotations

import fcntl
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from controller.jobs import StateDir
from controller.sources.reconciler import Reconciler

from .support import (
    Cli,
    branch_sha,
    commit_all,
    copy_example,
    device_ids,
    edit_csv,
    git,
    one_line,
    small_repo,
    status_files,
)

STATUS = "fleetpki/status"



def loop_until(cli: Cli, log: Path, marker: str, *args: str | Path) -> str:
    """Run the reconcile loop (1 s interval) until `marker` was logged twice, stop it with
    SIGTERM (a clean exit), and return its log."""
    process = cli.popen("reconcile", "--interval", "1s", *args, log=log)
    try:
        deadline = time.monotonic() + 120  # safety net only
        while process.poll() is None and time.monotonic() < deadline:
            if log.read_text().count(marker) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, f"the loop exited:\n{log.read_text()}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return log.read_text()

def test_reconcile_once_then_push_to_a_bare_remote(cli: Cli, tmp_path: Path) -> None:
    repo = copy_example(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD").strip()
    state = tmp_path / "state"

    first = cli("reconcile", "--repo", repo, "--once", "--state-dir", state)
    assert f"reconcile {head[:12]}: " in first.stderr
    assert "1002 issue" in first.stderr
    checkouts = list((state / "checkouts").iterdir())
    assert len(checkouts) == 1
    checkout = checkouts[0]
    assert branch_sha(checkout, STATUS) is not None, "status written in the private checkout"
    files = status_files(checkout)
    assert files["status/DeviceFleet/sensors.yaml"]["status"]["observedCommit"] == head
    assert files["status/DeviceFleet/sensors.yaml"]["status"]["devices"]["active"] == 1000
    assert branch_sha(repo, STATUS) is None, "the source repository is only read"
    assert git(repo, "rev-parse", "HEAD").strip() == head

    # The same state, now following a bare remote and pushing status to it.
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(remote))
    pushed = cli("reconcile", "--repo", remote, "--push", "--once", "--state-dir", state)
    assert "no changes" in pushed.stderr
    first_status = branch_sha(remote, STATUS)
    assert first_status is not None, "the remote gained the status branch"
    remote_files = status_files(remote)
    assert remote_files["status/DeviceFleet/sensors.yaml"]["status"]["observedCommit"] == head
    conditions = remote_files["status/CertificateAuthority/devices-ca.yaml"]["status"]
    assert {c["type"]: c["status"] for c in conditions["conditions"]}["Ready"] == "True"

    # A change pushed to main is picked up; the status branch moves forward on the remote.
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(remote), str(work))
    edit_csv(work / "fleets" / "sensors.csv", revoke={"sensor-0100": "keyCompromise"})
    new_head = commit_all(work, "revoke sensor-0100")
    git(work, "push", "-q", "origin", "main")
    second = cli("reconcile", "--repo", remote, "--push", "--once", "--state-dir", state)
    assert f"reconcile {new_head[:12]}: " in second.stderr and "1 revoke" in second.stderr
    tip = branch_sha(remote, STATUS)
    assert tip is not None and tip != first_status
    git(remote, "merge-base", "--is-ancestor", first_status, tip)  # fast-forward
    sensors = status_files(remote)["status/DeviceFleet/sensors.yaml"]["status"]
    assert sensors["observedCommit"] == new_head
    assert sensors["devices"]["revoked"] == 1


def test_reconcile_once_reports_a_refused_apply(cli: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 150))
    state = tmp_path / "state"
    cli("reconcile", "--repo", repo, "--once", "--state-dir", state)
    edit_csv(repo / "fleets" / "meters.csv", delete=device_ids("meter", 101))
    commit_all(repo, "drop 101 meters")
    refused = cli("reconcile", "--repo", repo, "--once", "--state-dir", state, rc=1)
    assert "not applied" in refused.stderr and "--allow-mass-revocation" in one_line(
        refused.stderr)
    checkout = next((state / "checkouts").iterdir())
    conditions = status_files(checkout)["status/DeviceFleet/meters.yaml"]["status"]["conditions"]
    assert {c["type"]: c["status"] for c in conditions}["Stalled"] == "True"


def test_state_lock_excludes_a_second_applier(cli_process: Cli, tmp_path: Path) -> None:
    cli = cli_process  # the real command, in a subprocess
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with open(state / "apply.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for command in (("apply", repo, "--state-dir", state),
                        ("reconcile", "--repo", repo, "--once", "--state-dir", state)):
            locked = cli(*command, rc=1)
            assert "another fleetpki process" in one_line(locked.stderr), command
            assert str(state) in one_line(locked.stderr)
        assert not (state / "inventory.db").exists(), "nothing done while locked"
        assert not (state / "keys").exists()
        # Reading is not blocked by the lock.
        assert "2 issue" in cli("plan", repo, "--state-dir", state).stdout
        fcntl.flock(handle, fcntl.LOCK_UN)
    assert "2 issue" in cli("apply", repo, "--state-dir", state).stdout


def test_reconcile_loop_survives_a_rejected_push(cli_process: Cli, tmp_path: Path) -> None:
    cli = cli_process  # the real command, in a subprocess
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(remote))
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'status pushes are closed today' >&2\nexit 1\n")
    hook.chmod(0o755)
    text = loop_until(cli, tmp_path / "loop.log", "status pushes are closed today",
                      "--repo", remote, "--push", "--state-dir", tmp_path / "state")
    assert "2 issue" in text


def test_apply_outside_git_writes_no_status(cli: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2), git_init=False)
    done = cli("apply", repo, "--state-dir", tmp_path / "state")
    assert "2 issue" in done.stdout and "Status committed" not in done.stdout
    assert subprocess.run(["git", "-C", str(repo), "rev-parse"], capture_output=True,
                          check=False).returncode != 0


def test_invalid_interval_is_a_clean_error(cli_process: Cli, tmp_path: Path) -> None:
    cli = cli_process  # the real command, in a subprocess
    failed = cli("reconcile", "--repo", tmp_path / "nowhere", "--interval", "5x",
                 "--state-dir", tmp_path / "state", rc=None)
    assert failed.returncode in (1, 2)
    assert "invalid duration '5x'" in one_line(failed.stderr)
    assert "Traceback" not in failed.stderr


def test_reconcile_once_names_a_missing_repo_or_branch(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    missing = tmp_path / "nowhere"
    failed = cli("reconcile", "--repo", missing, "--once", "--state-dir", state, rc=1)
    assert one_line(failed.stderr).startswith(f"error: cannot clone {missing}: ")
    assert "Traceback" not in failed.stderr

    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    failed = cli("reconcile", "--repo", repo, "--ref", "nope", "--once", "--state-dir", state,
                 rc=1)
    assert one_line(failed.stderr) == f"error: {repo} has no branch 'nope' (--ref); it has: main"
    assert "2 issue" in cli("reconcile", "--repo", repo, "--once", "--state-dir", state).stderr


@pytest.mark.parametrize("damage", ["no-refspec", "half-written", "foreign-origin"])
def test_reconcile_clones_again_over_a_broken_checkout(cli: Cli, tmp_path: Path,
                                                       damage: str) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    state = tmp_path / "state"
    cli("reconcile", "--repo", repo, "--once", "--state-dir", state)
    checkout = next((state / "checkouts").iterdir())
    if damage == "no-refspec":  # what a clone killed after `git init` leaves behind
        git(checkout, "config", "--unset-all", "remote.origin.fetch")
    elif damage == "half-written":
        shutil.rmtree(checkout)
        (checkout / ".git").mkdir(parents=True)
        (checkout / ".git" / "config").write_text("[core]\n")
    else:
        other = small_repo(tmp_path / "other", device_ids("other", 1))
        git(checkout, "remote", "set-url", "origin", str(other))
    (checkout.parent / f"{checkout.name}.partial").mkdir()  # an interrupted clone's leftovers

    edit_csv(repo / "fleets" / "meters.csv", add=["meter-00003,lab,"])
    head = commit_all(repo, "one more meter")
    again = cli("reconcile", "--repo", repo, "--once", "--state-dir", state)
    assert f"{checkout} is not a complete clone of {repo}: cloning again" in one_line(
        again.stderr)
    assert f"reconcile {head[:12]}: 1 issue" in again.stderr
    assert sorted(p.name for p in (state / "checkouts").iterdir()) == [checkout.name]
    assert cli("reconcile", "--repo", repo, "--once", "--state-dir", state).stderr == \
        f"reconcile {head[:12]}: no changes\n", "the new clone is used as it is"


def test_reconcile_loop_logs_and_retries_every_failure(cli_process: Cli, tmp_path: Path) -> None:
    cli = cli_process  # the real command, in a subprocess
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    text = loop_until(cli, tmp_path / "loop.log", "has no branch 'nope'",
                      "--repo", repo, "--ref", "nope", "--state-dir", tmp_path / "state")
    assert f"reconcile failed, will retry: {repo} has no branch 'nope'" in one_line(text)
    assert "Traceback" not in text


def test_reconcile_loop_survives_unexpected_errors(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    reconciler = Reconciler(str(tmp_path / "repo"), "main", StateDir(tmp_path / "state"))
    calls: list[int] = []

    def failing_once(log: Callable[[str], None]) -> bool:
        calls.append(1)
        if len(calls) == 2:
            reconciler.stopping.set()
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(reconciler, "once", failing_once)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # keep pytest's handlers
    logged: list[str] = []
    reconciler.run(timedelta(0), logged.append)
    assert logged == ["reconcile failed, will retry: something nobody expected"] * 2
