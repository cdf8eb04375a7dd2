"""Who changed what: the fleet repository's commits and the status branch's apply runs."""

from __future__ import annotations

import os
from pathlib import Path

import git

from controller.report.model import AppliedRun, Change
from controller.sources.worktree import enclosing_work_tree
from controller.status.gitbranch import APPLIED_TRAILER, SIGNER_TRAILER

RECORD, FIELD = "\x1e", "\x1f"
MAX_FILES = 20  # files named per commit


def _log(repo: git.Repo, *args: str) -> list[list[str]]:
    text = repo.git.execute(["git", "--no-optional-locks", "log", *args])
    return [record.split(FIELD) for record in text.split(RECORD)[1:]]


def changes(directory: Path, limit: int) -> list[Change]:
    """The newest `limit` commits touching `directory`, newest first ([] outside git)."""
    top = enclosing_work_tree(directory)
    if top is None:
        return []
    repo = git.Repo(top)
    if not repo.head.is_valid():
        return []
    pathspec = os.path.relpath(directory.resolve(), top)
    found = []
    for commit, author, date, rest in _log(
            repo, f"-n{limit}", "--name-only",
            f"--format={RECORD}%H{FIELD}%an <%ae>{FIELD}%aI{FIELD}%s", "--", pathspec):
        subject, _, names = rest.partition("\n")
        files = [name for name in names.splitlines() if name]
        found.append(Change(commit, author, date, subject, tuple(files[:MAX_FILES]),
                            max(0, len(files) - MAX_FILES)))
    return found


def applied_runs(directory: Path, branch: str, limit: int) -> list[AppliedRun]:
    """The newest `limit` commits of the local status branch ([] when there is none)."""
    top = enclosing_work_tree(directory)
    if top is None:
        return []
    repo = git.Repo(top)
    ref = f"refs/heads/{branch}"
    if ref not in {r.path for r in repo.references}:
        return []
    trailer = "%(trailers:key={},valueonly,separator=%x2C)"
    return [AppliedRun(commit, date, summary, applied.strip() or None, signer.strip() or None)
            for commit, date, summary, applied, signer in _log(
                repo, f"-n{limit}", f"--format={RECORD}%H{FIELD}%aI{FIELD}%s{FIELD}"
                f"{trailer.format(APPLIED_TRAILER)}{FIELD}{trailer.format(SIGNER_TRAILER)}",
                ref)]
