"""Mistakes users make get one `error:` line and exit 1, never a traceback or an empty table."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from .support import Cli, commit_all, device_ids, edit_csv, one_line, small_repo

DIR_COMMANDS = [
    ("validate", "DIR"), ("plan", "DIR"), ("apply", "DIR"), ("status", "DIR"),
    ("export", "cert", "DIR", "--fleet", "f", "--device", "d", "--out", "o"),
    ("export", "fleet", "DIR", "--fleet", "f", "--out", "o"),
    ("export", "crl", "DIR", "--ca", "c", "--out", "o"), ("export", "bundle", "DIR", "--out", "o"),
    ("enroll-secret", "DIR", "--fleet", "f", "--device", "d"),
    ("serve", "DIR", "--http", "127.0.0.1:0"),
]


def test_version(cli: Cli) -> None:
    printed = cli("--version")
    assert printed.stdout == f"fleetpki {importlib.metadata.version('fleetpki')}\n"


@pytest.mark.parametrize("command", DIR_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_dir_must_be_an_existing_directory(cli: Cli, tmp_path: Path,
                                           command: tuple[str, ...]) -> None:
    missing = tmp_path / "no-such-repo"
    a_file = tmp_path / "file.yaml"
    a_file.write_text("{}\n")
    for directory, reason in ((missing, "does not exist"), (a_file, "is not a directory")):
        args = [directory if word == "DIR" else word for word in command]
        failed = cli(*args, rc=1, env={"FLEETPKI_STATE_DIR": str(tmp_path / "state")})
        assert one_line(failed.stderr) == (
            f"error: {directory} {reason} (DIR is the fleet repository directory)")
    assert not (tmp_path / "state").exists(), "nothing done"


def test_status_of_an_unknown_fleet(cli: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    state = tmp_path / "state"
    cli("apply", repo, "--state-dir", state)
    for extra in ([], ["--devices"]):
        failed = cli("status", repo, "--state-dir", state, "--fleet", "nope", *extra, rc=1)
        assert one_line(failed.stderr) == "error: no fleet 'nope' in the inventory (fleets: meters)"
    assert "meter-00002" in cli("status", repo, "--state-dir", state, "--fleet", "meters",
                                "--devices").stdout


def test_stale_status_branch_lock_is_named(cli: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    state = tmp_path / "state"
    cli("apply", repo, "--state-dir", state)
    lock = repo / ".git" / "refs" / "heads" / "fleetpki" / "status.lock"
    lock.write_text("")  # left behind by a git process that crashed
    edit_csv(repo / "fleets" / "meters.csv", revoke={"meter-00001": "keyCompromise"})
    commit_all(repo, "revoke meter-00001")

    failed = cli("apply", repo, "--state-dir", state, rc=1)
    assert one_line(failed.stderr) == (
        f"error: could not move refs/heads/fleetpki/status: {lock} exists: another git process "
        f"is updating the status branch, or one crashed; if no git process is running, delete "
        f"{lock} and re-run")
    lock.unlink()
    assert "Status committed" in cli("apply", repo, "--state-dir", state).stdout
