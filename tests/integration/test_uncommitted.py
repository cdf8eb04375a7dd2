"""Apply applies what is committed: uncommitted files under DIR are refused (plan warns)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from controller.sources.worktree import uncommitted_changes

from .support import (
    ROOT,
    Cli,
    active_serials,
    base_env,
    commit_all,
    device_ids,
    edit_csv,
    git,
    init_repo,
    one_line,
    small_repo,
    status_files,
)


def test_uncommitted_changes_lists_paths_under_the_directory(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "fleet").mkdir(parents=True)
    for name in ("a.yaml", "b.yaml", "c.yaml"):
        (repo / "fleet" / name).write_text("x: 1\n")
    (repo / "outside.txt").write_text("1\n")
    (repo / ".gitignore").write_text("*.log\n")
    init_repo(repo)
    assert uncommitted_changes(repo / "fleet") == []

    (repo / "fleet" / "a.yaml").write_text("x: 2\n")            # modified
    git(repo, "mv", "fleet/b.yaml", "fleet/renamed.yaml")        # staged rename
    (repo / "fleet" / "c.yaml").unlink()                         # deleted
    (repo / "fleet" / "new dir").mkdir()
    (repo / "fleet" / "new dir" / "d.yaml").write_text("x: 1\n")  # untracked
    (repo / "fleet" / "debug.log").write_text("ignored\n")
    (repo / "outside.txt").write_text("2\n")                     # not under the directory
    assert uncommitted_changes(repo / "fleet") == [
        "fleet/a.yaml", "fleet/b.yaml", "fleet/c.yaml", "fleet/new dir/", "fleet/renamed.yaml"]
    assert "outside.txt" in uncommitted_changes(repo)
    assert uncommitted_changes(tmp_path) == [], "not in a git work tree"


def test_apply_refuses_uncommitted_changes(cli: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 3))
    state = tmp_path / "state"
    cli("apply", repo, "--state-dir", state)
    serials = active_serials(state, "meters")
    csv = repo / "fleets" / "meters.csv"

    edit_csv(csv, revoke={"meter-00001": "keyCompromise"})
    refused = cli("apply", repo, "--state-dir", state, rc=1)
    assert one_line(refused.stderr) == (
        "error: fleets/meters.csv has uncommitted changes: commit them first (status records "
        "the commit that was applied), or pass --allow-uncommitted")
    assert active_serials(state, "meters") == serials, "nothing applied"

    git(repo, "add", "-A")  # staged is not committed either
    assert "fleets/meters.csv" in cli("apply", repo, "--state-dir", state, rc=1).stderr
    planned = cli("plan", repo, "--state-dir", state)
    assert "revoke" in planned.stdout, "plan shows the working tree"
    assert one_line(planned.stderr) == (
        "warning: fleets/meters.csv has uncommitted changes: this plan shows the working tree; "
        "apply refuses it until they are committed")

    head = commit_all(repo, "revoke meter-00001")
    assert "1 revoke" in cli("apply", repo, "--state-dir", state).stdout
    sensors = status_files(repo)["status/DeviceFleet/meters.yaml"]["status"]
    assert sensors["observedCommit"] == head
    assert cli("plan", repo, "--state-dir", state).stderr == "", "no warning when committed"


def test_untracked_files_are_refused_and_listed(cli: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    state = tmp_path / "state"
    for number in range(12):
        (repo / f"note-{number:02d}.txt").write_text("not committed\n")
    refused = cli("apply", repo, "--state-dir", state, rc=1)
    listed = ", ".join(f"note-{n:02d}.txt" for n in range(10))
    assert f"error: {listed} and 2 more have uncommitted changes" in one_line(refused.stderr)
    assert not (state / "inventory.db").exists(), "nothing issued"

    done = cli("apply", repo, "--state-dir", state, "--allow-uncommitted")
    assert "2 issue" in done.stdout
    head = git(repo, "rev-parse", "HEAD").strip()
    observed = status_files(repo)["status/DeviceFleet/meters.yaml"]["status"]["observedCommit"]
    assert observed == f"{head}-dirty", "status says the working tree was applied"


def test_apply_of_a_subdirectory_ignores_changes_elsewhere(cli: Cli, tmp_path: Path) -> None:
    monorepo = tmp_path / "monorepo"
    small_repo(monorepo / "pki", device_ids("meter", 2), git_init=False)
    init_repo(monorepo)
    (monorepo / "README.md").write_text("work in progress\n")
    assert "2 issue" in cli("apply", monorepo / "pki", "--state-dir", tmp_path / "state").stdout


def test_quickstart_script_runs(tmp_path: Path) -> None:
    """examples/quickstart.sh, as the README runs it, with `fleetpki` on PATH and no git
    identity configured (a fresh machine)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "fleetpki"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m controller.cli "$@"\n')
    shim.chmod(0o755)
    env = base_env(tmp_path / "home")
    env.update({"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "TMPDIR": str(tmp_path),
                "PYTHONPATH": str(ROOT)})
    script = ROOT / "examples" / "quickstart.sh"
    run = subprocess.run([shutil.which("bash") or "bash", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Applied: 1 publish-crl, 2 revoke." in run.stdout
    assert "sensor-0001/cert.pem: OK" in run.stdout
    assert "OK: release sensor-fw-1.4.2, signed" in run.stdout
