"""Tests for controller.status.gitbranch against real git repositories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from git import Repo

from controller.status import gitbranch
from controller.status.gitbranch import (
    BotIdentity,
    StatusBranchError,
    push_status_branch,
    read_status_branch,
    write_status_branch,
)

REF = "refs/heads/fleetpki/status"
HUMAN_ENV = {
    "GIT_AUTHOR_NAME": "Human",
    "GIT_AUTHOR_EMAIL": "human@example.com",
    "GIT_COMMITTER_NAME": "Human",
    "GIT_COMMITTER_EMAIL": "human@example.com",
}
STATUS = {
    "README.md": b"# status\n",
    "fleets/sensors.yaml": b"ready: true\ncount: 3\n",
    "authorities/root/status.json": b'{"serial": "01"}\n',
}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **HUMAN_ENV, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd)}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return result.stdout.rstrip("\n")


def rev(cwd: Path, ref: str) -> str:
    return git(cwd, "rev-parse", "--verify", ref)


def tree_paths(cwd: Path, ref: str) -> list[str]:
    return sorted(git(cwd, "ls-tree", "-r", "--name-only", ref).splitlines())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fleet repo with one commit on main, a dirty tracked file and an untracked file."""
    path = tmp_path / "fleet"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Configured Human")
    git(path, "config", "user.email", "configured@example.com")
    (path / "fleets").mkdir()
    (path / "fleets" / "sensors.yaml").write_text("devices: []\n")
    (path / "ca.yaml").write_text("kind: CertificateAuthority\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "initial")
    (path / "ca.yaml").write_text("kind: CertificateAuthority\n# edited\n")
    (path / "notes.txt").write_text("untracked\n")
    return path


def test_first_write_creates_branch_with_exactly_the_files(repo: Path) -> None:
    sha = write_status_branch(repo, STATUS, message="status: initial")
    assert sha is not None
    assert rev(repo, REF) == sha
    assert tree_paths(repo, REF) == sorted(STATUS)
    assert git(repo, "show", f"{REF}:fleets/sensors.yaml") + "\n" == "ready: true\ncount: 3\n"
    assert git(repo, "rev-list", "--parents", "-n1", sha) == sha  # root commit
    assert git(repo, "log", "-1", "--format=%B", sha) == "status: initial"
    assert read_status_branch(repo) == STATUS


def test_checkout_is_untouched(repo: Path) -> None:
    index = repo / ".git" / "index"
    before = (
        rev(repo, "HEAD"),
        git(repo, "symbolic-ref", "HEAD"),
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        index.read_bytes(),
        sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if ".git" not in p.parts),
    )
    write_status_branch(repo, STATUS, message="one")
    write_status_branch(repo, {**STATUS, "ca.yaml": b"status\n"}, message="two")
    after = (
        rev(repo, "HEAD"),
        git(repo, "symbolic-ref", "HEAD"),
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        index.read_bytes(),
        sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if ".git" not in p.parts),
    )
    assert after == before
    assert before[2] == " M ca.yaml\n?? notes.txt"
    assert (repo / "ca.yaml").read_text() == "kind: CertificateAuthority\n# edited\n"


def test_identical_write_is_a_noop(repo: Path) -> None:
    first = write_status_branch(repo, STATUS, message="one")
    reflog_before = git(repo, "reflog", "show", "fleetpki/status")
    assert write_status_branch(repo, dict(STATUS), message="two") is None
    assert rev(repo, REF) == first
    assert git(repo, "reflog", "show", "fleetpki/status") == reflog_before


def test_changed_content_makes_a_child_commit(repo: Path) -> None:
    first = write_status_branch(repo, STATUS, message="one")
    changed = {**STATUS, "fleets/sensors.yaml": b"ready: false\n"}
    second = write_status_branch(repo, changed, message="two")
    assert second is not None and second != first
    assert rev(repo, REF) == second
    assert git(repo, "rev-list", "--parents", "-n1", second) == f"{second} {first}"
    assert read_status_branch(repo) == changed


def test_removed_file_leaves_the_tree(repo: Path) -> None:
    write_status_branch(repo, STATUS, message="one")
    remaining = {k: v for k, v in STATUS.items() if not k.startswith("authorities/")}
    assert write_status_branch(repo, remaining, message="two") is not None
    assert tree_paths(repo, REF) == sorted(remaining)
    assert "authorities" not in git(repo, "ls-tree", "--name-only", REF).splitlines()


def test_empty_files_give_an_empty_tree(repo: Path) -> None:
    write_status_branch(repo, STATUS, message="one")
    assert write_status_branch(repo, {}, message="cleared") is not None
    assert tree_paths(repo, REF) == []
    assert read_status_branch(repo) == {}


def test_commits_use_the_bot_identity(repo: Path) -> None:
    sha = write_status_branch(repo, STATUS, message="one")
    assert sha is not None
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", sha) == (
        "fleetpki <fleetpki@localhost>|fleetpki <fleetpki@localhost>"
    )
    custom = BotIdentity(name="Status Bot", email="bot@example.org")
    sha = write_status_branch(repo, {"a": b"1"}, message="two", identity=custom)
    assert sha is not None
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", sha) == (
        "Status Bot <bot@example.org>|Status Bot <bot@example.org>"
    )
    assert git(repo, "config", "user.name") == "Configured Human"


def test_commit_signing_config_is_ignored(repo: Path) -> None:
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "gpg.program", "false")
    assert write_status_branch(repo, STATUS, message="one") is not None


def test_works_in_a_repo_without_commits(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    sha = write_status_branch(tmp_path, {"x/y/z.json": b"{}"}, message="one")
    assert sha is not None
    assert read_status_branch(tmp_path) == {"x/y/z.json": b"{}"}
    assert git(tmp_path, "symbolic-ref", "HEAD") == "refs/heads/main"
    unborn = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=tmp_path, capture_output=True
    )
    assert unborn.returncode != 0


def test_custom_branch_name(repo: Path) -> None:
    sha = write_status_branch(repo, STATUS, message="one", branch="status/prod")
    assert rev(repo, "refs/heads/status/prod") == sha
    assert read_status_branch(repo, "status/prod") == STATUS
    assert read_status_branch(repo) == {}


def test_push_and_continue_from_a_fresh_clone(tmp_path: Path, repo: Path) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    first = write_status_branch(repo, STATUS, message="one")
    push_status_branch(repo)
    assert rev(remote, REF) == first
    assert rev(repo, "refs/remotes/origin/fleetpki/status") == first

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(remote), str(clone))
    assert git(clone, "branch", "--list", "fleetpki/status") == ""  # remote-tracking only
    assert read_status_branch(clone) == STATUS
    assert write_status_branch(clone, STATUS, message="unchanged") is None
    assert rev(clone, REF) == first  # local branch created at the remote tip
    second = write_status_branch(clone, {**STATUS, "README.md": b"v2\n"}, message="two")
    assert second is not None
    assert git(clone, "rev-list", "--parents", "-n1", second) == f"{second} {first}"
    push_status_branch(clone)
    assert rev(remote, REF) == second

    # The original checkout is now behind; after a fetch it continues from the remote tip.
    git(repo, "fetch", "-q", "origin")
    third = write_status_branch(repo, {**STATUS, "README.md": b"v3\n"}, message="three")
    assert third is not None
    assert git(repo, "rev-list", "--parents", "-n1", third) == f"{third} {second}"
    push_status_branch(repo)
    assert rev(remote, REF) == third


def test_push_rejects_non_fast_forward(tmp_path: Path, repo: Path) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    write_status_branch(repo, STATUS, message="one")
    push_status_branch(repo)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(remote), str(clone))
    write_status_branch(clone, {"a": b"clone"}, message="from clone")
    push_status_branch(clone)
    write_status_branch(repo, {"a": b"original"}, message="diverged")
    with pytest.raises(StatusBranchError, match="pushing refs/heads/fleetpki/status to 'origin'"):
        push_status_branch(repo)


def test_push_without_branch(repo: Path) -> None:
    with pytest.raises(StatusBranchError, match="does not exist"):
        push_status_branch(repo)


def test_lost_compare_and_swap(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_status_branch(repo, STATUS, message="one")
    concurrent = write_status_branch(repo, {"other": b"writer"}, message="concurrent")
    git(repo, "update-ref", REF, str(first))
    real_update_ref = gitbranch._update_ref

    def racing_update_ref(r: Repo, ref: str, new: str, old: str | None, reason: str) -> None:
        git(repo, "update-ref", REF, str(concurrent))  # another writer wins the race
        real_update_ref(r, ref, new, old, reason)

    monkeypatch.setattr(gitbranch, "_update_ref", racing_update_ref)
    with pytest.raises(StatusBranchError, match="lost the compare-and-swap"):
        write_status_branch(repo, {"mine": b"1"}, message="mine")
    assert rev(repo, REF) == concurrent


def test_lost_compare_and_swap_on_creation(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = write_status_branch(repo, {"other": b"1"}, message="other", branch="scratch")
    real_update_ref = gitbranch._update_ref

    def racing_update_ref(r: Repo, ref: str, new: str, old: str | None, reason: str) -> None:
        git(repo, "update-ref", REF, str(other))  # another writer creates the branch first
        real_update_ref(r, ref, new, old, reason)

    monkeypatch.setattr(gitbranch, "_update_ref", racing_update_ref)
    with pytest.raises(StatusBranchError, match="lost the compare-and-swap"):
        write_status_branch(repo, STATUS, message="mine")
    assert rev(repo, REF) == other


def test_stale_lock_is_named(repo: Path, tmp_path: Path) -> None:
    first = write_status_branch(repo, STATUS, message="one")
    git(repo, "worktree", "add", "-q", "--detach", str(tmp_path / "linked"))
    lock = repo / ".git" / "refs" / "heads" / "fleetpki" / "status.lock"
    lock.write_text("")  # a git process crashed while moving the branch
    for checkout in (repo, tmp_path / "linked"):  # branches live in the common git directory
        with pytest.raises(StatusBranchError) as refused:
            write_status_branch(checkout, {"new": b"1"}, message="two")
        assert str(refused.value) == (
            f"could not move {REF}: {lock} exists: another git process is updating the status "
            f"branch, or one crashed; if no git process is running, delete {lock} and re-run")
    assert rev(repo, REF) == first


def test_refuses_branch_checked_out(repo: Path) -> None:
    write_status_branch(repo, STATUS, message="one")
    git(repo, "stash", "-q", "--include-untracked")
    git(repo, "switch", "-q", "fleetpki/status")
    with pytest.raises(StatusBranchError, match="checked out"):
        write_status_branch(repo, {"a": b"1"}, message="two")


@pytest.mark.parametrize(
    "path", ["../x", "/abs", "a//b", "a/./b", "", ".git/config", "sub/.GIT/x", "nul\0byte"]
)
def test_invalid_paths_rejected(repo: Path, path: str) -> None:
    with pytest.raises(StatusBranchError, match="invalid status file path"):
        write_status_branch(repo, {path: b"x"}, message="bad")
    assert git(repo, "branch", "--list", "fleetpki/status") == ""


def test_file_and_directory_conflict_rejected(repo: Path) -> None:
    with pytest.raises(StatusBranchError, match="also a file"):
        write_status_branch(repo, {"a": b"1", "a/b": b"2"}, message="bad")


def test_invalid_branch_rejected(repo: Path) -> None:
    with pytest.raises(StatusBranchError, match="invalid branch name"):
        write_status_branch(repo, STATUS, message="x", branch="bad..name")


def test_not_a_git_repo(tmp_path: Path) -> None:
    with pytest.raises(StatusBranchError, match="not a git repository"):
        write_status_branch(tmp_path, STATUS, message="x")
    with pytest.raises(StatusBranchError, match="not a git repository"):
        read_status_branch(tmp_path / "missing")


def test_read_absent_branch(repo: Path) -> None:
    assert read_status_branch(repo) == {}


def test_binary_and_unusual_names_round_trip(repo: Path) -> None:
    files = {"bin/data.der": bytes(range(256)), "with space/é\nnewline.txt": b"\r\n"}
    write_status_branch(repo, files, message="odd")
    assert read_status_branch(repo) == files
