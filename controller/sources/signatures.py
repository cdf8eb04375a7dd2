"""Signed commits: every commit applied must carry a valid SSH signature by a key the allowed
signers file allows for every path of the fleet directory it touches.

Validity is git's (`%G?` with `gpg.ssh.allowedSignersFile` set on the command line, which beats
any repository configuration); which tenants a key may sign for is ours (policy/signers.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import git

from controller.policy.signers import AllowedSigners, SignersFileError, path_refusal
from controller.policy.tenancy import Tenancy
from controller.sources.worktree import uncommitted_changes

FIELDS = "%H%x00%P%x00%G?%x00%GF%x00%an%x00%s"
INVALID = {  # %G? -> why the commit is refused
    "N": "not signed",
    "B": "bad signature",
    "E": "the signature cannot be checked (missing key or signing program)",
    "X": "good signature, but it has expired",
    "Y": "good signature, but by an expired key",
    "R": "good signature, but by a revoked key",
}


class UnsignedChange(Exception):
    """A commit to apply is not signed, or not by a key allowed for a path it touches."""

    def __init__(self, commit: str, file: str, reason: str) -> None:
        super().__init__(f"{commit}: {file}: {reason}")
        self.commit, self.file, self.reason = commit, file, reason


@dataclass(frozen=True)
class Signer:
    """The key that signed the applied commit, and the tenants it may sign for."""

    fingerprint: str
    principals: tuple[str, ...]

    def __str__(self) -> str:
        return f"{','.join(self.principals)} {self.fingerprint}"


def read_allowed_signers(path: Path) -> AllowedSigners:
    """The allowed signers file, or SignersFileError naming it (and the malformed line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SignersFileError(f"{path}: cannot read: {reason}") from None
    return AllowedSigners.parse(text, str(path))


def _touched(repository: git.Repo, commit: str, merge: bool) -> list[str]:
    """Repository-relative paths a commit changes; of a merge, only those that differ from
    every parent (conflict resolutions: the merged branches' commits are checked themselves)."""
    how = ["-c"] if merge else ["--root"]
    listing = repository.git.execute(["git", "diff-tree", "--no-commit-id", "--name-only", "-r",
                                      "-z", *how, commit])
    return [path for path in listing.split("\0") if path]


def _known(repository: git.Repo, commit: str) -> bool:
    """Whether the repository has the commit (a rewritten history may have lost it)."""
    try:
        repository.git.execute(["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"])
    except git.GitCommandError:
        return False
    return True


def _log(repository: git.Repo, allowed: AllowedSigners, *revs: str) -> list[list[str]]:
    """FIELDS of each commit `revs` walk, oldest first, signatures checked against `allowed`."""
    listing = repository.git.execute(
        ["git", "-c", f"gpg.ssh.allowedSignersFile={Path(allowed.file).resolve()}", "log",
         "--no-show-signature", "--reverse", f"--format={FIELDS}", *revs, "--"])
    return [line.split("\0") for line in listing.splitlines()]


def verify_commits(root: Path, directory: Path, since: str | None, allowed: AllowedSigners,
                   tenancy: Tenancy) -> Signer:
    """Check every commit from `since` (the last applied commit; None or unknown here: every
    commit reachable from HEAD) to HEAD, and return HEAD's signer; UnsignedChange names the
    first refused commit, file and reason. Uncommitted files under `directory` are refused."""
    dirty = uncommitted_changes(directory)
    if dirty:
        raise UnsignedChange("working tree", dirty[0], "not committed (a working tree has no "
                             "signature)")
    repository = git.Repo(root)
    subdirectory = os.path.relpath(directory.resolve(), root)
    head = repository.git.execute(["git", "rev-parse", "--verify", "HEAD^{commit}"])
    if since is not None and not _known(repository, since):
        since = None
    rows = _log(repository, allowed, head, *(["--not", since] if since else []))
    if not rows:  # HEAD itself was applied before
        rows = _log(repository, allowed, "--no-walk", head)
    signer = None
    for commit, parents, status, key, author, subject in rows:
        name = f'commit {commit[:12]} ({author}: "{subject}")'
        touched = _touched(repository, commit, len(parents.split()) > 1)
        if status != "G" or key not in allowed.keys:
            reason = INVALID.get(status, f"signature status {status}")
            if status == "U":
                reason = f"signed by key {key}, which is not in {allowed.file}"
            elif status == "G":
                reason = (f"signed by key {key}: GPG signatures are not mapped to tenants: sign "
                          f"with an SSH key listed in {allowed.file}")
            raise UnsignedChange(name, touched[0] if touched else "(no files)", reason)
        patterns = allowed.keys[key]
        for path in touched:
            inside = os.path.relpath(path, subdirectory)
            outside = inside == ".." or inside.startswith("../")
            refusal = path_refusal(patterns, None if outside else inside, tenancy)
            if refusal is not None:
                raise UnsignedChange(name, path, f"signed by key {key} {refusal}")
        if commit == head:
            signer = Signer(key, patterns)
    assert signer is not None  # HEAD is always walked
    return signer

