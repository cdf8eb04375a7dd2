"""A damaged, read-only or full state directory gives a clear error, never a traceback; read-only
commands work on a read-only state directory; every state file is private."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from controller import jobs

from .support import Applied, Cli, commit_all, edit_csv, one_line


@pytest.fixture
def mount_namespace(tmp_path: Path) -> None:
    """Read-only and full file systems need a private mount namespace (`unshare -rm`)."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0"',
                            str(tmp_path)], capture_output=True, check=False) \
        if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("unshare -rm (user and mount namespaces) is not available here")


def confined(cli: Cli, setup: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a mount namespace prepared by the shell commands `setup`."""
    script = f"set -e; {setup}; exec \"$@\""
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *cli.command(*args)],
                          env=cli.env, capture_output=True, text=True, timeout=300, check=False)


def assert_clean_error(run: subprocess.CompletedProcess[str], *words: str) -> str:
    message = one_line(run.stderr)
    assert run.returncode == 1, run.stdout + run.stderr
    assert message.startswith("error:") and "Traceback" not in message, message
    for word in words:
        assert word in message
    return message


@pytest.mark.usefixtures("mount_namespace")
def test_read_only_state_dir(applied_example: Applied, cli_process: Cli, tmp_path: Path) -> None:
    repo, state = applied_example
    read_only = f"mount --bind -o ro '{state}' '{state}'"
    shown = confined(cli_process, read_only, "status", repo, "--state-dir", state, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert '"ca": "acme-root"' in shown.stdout
    planned = confined(cli_process, read_only, "plan", repo, "--state-dir", state)
    assert planned.returncode == 0, planned.stderr
    out = tmp_path / "exported"
    exported = confined(cli_process, read_only, "export", "cert", repo, "--state-dir", state,
                        "--fleet", "sensors", "--device", "sensor-0001", "--out", out)
    assert exported.returncode == 0, exported.stderr
    assert (out / "cert.pem").is_file()
    edit_csv(repo / "fleets" / "sensors.csv", revoke={"sensor-0001": "keyCompromise"})
    commit_all(repo, "revoke one")
    assert_clean_error(confined(cli_process, read_only, "apply", repo, "--state-dir", state),
                       "read-only")


@pytest.mark.usefixtures("mount_namespace")
def test_read_only_inventory_file(applied_example: Applied, cli_process: Cli) -> None:
    repo, state = applied_example
    database = state / "inventory.db"
    edit_csv(repo / "fleets" / "sensors.csv", revoke={"sensor-0001": "keyCompromise"})
    commit_all(repo, "revoke one")
    run = confined(cli_process, f"mount --bind -o ro '{database}' '{database}'",
                   "apply", repo, "--state-dir", state)
    assert_clean_error(run, str(database), "read-only")


@pytest.mark.usefixtures("mount_namespace")
def test_full_disk(applied_example: Applied, cli_process: Cli, tmp_path: Path) -> None:
    repo, state = applied_example
    disk = tmp_path / "disk"
    disk.mkdir()
    edit_csv(repo / "fleets" / "sensors.csv", add=[f"extra-{n:04d},TS-100,kiel," for n in
                                                   range(300)])
    commit_all(repo, "300 more sensors")
    fill = (f"mount -t tmpfs -o size=12m tmpfs '{disk}'; cp -a '{state}' '{disk}/state'; "
            f"dd if=/dev/zero of='{disk}/fill' bs=64k 2>/dev/null || true")
    run = confined(cli_process, fill, "apply", repo, "--state-dir", disk / "state")
    message = assert_clean_error(run)
    assert "full" in message or "No space left" in message


@pytest.mark.parametrize("damage", ["empty", "overwritten"])
def test_damaged_inventory_is_never_replaced(applied_example: Applied, cli: Cli,
                                             damage: str) -> None:
    repo, state = applied_example
    database = state / "inventory.db"
    if damage == "empty":
        database.write_bytes(b"")
    else:
        data = bytearray(database.read_bytes())
        data[100:len(data) // 2] = b"\x55" * (len(data) // 2 - 100)
        database.write_bytes(bytes(data))
    damaged = database.read_bytes()
    for command in (("apply", repo), ("plan", repo), ("status", repo),
                    ("export", "bundle", repo, "--out", state.parent / "bundle.pem")):
        message = one_line(cli(*command, "--state-dir", state, rc=1).stderr)
        assert f"the inventory {database} is damaged" in message
        assert "restore it from a backup" in message
        assert database.read_bytes() == damaged, "never a new inventory in its place"


def test_state_files_are_private(tmp_path: Path) -> None:
    """The inventory and its SQLite -wal/-shm files are created 0600 in a 0700 directory."""
    state = jobs.StateDir(tmp_path / "state")
    with state.inventory() as inventory, inventory.transaction():
        inventory.set_fleet("meters", "hash", False, 0, 0, 0)
        made = sorted(state.path.iterdir())
        assert {p.name for p in made} >= {"inventory.db", "inventory.db-wal", "inventory.db-shm"}
        for path in made:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
