"""Where a path sits in a git work tree, and what under it is not committed."""

from __future__ import annotations

import os
from pathlib import Path

import git


def enclosing_work_tree(path: Path) -> Path | None:
    """The top of the git work tree holding `path` (which need not exist yet: its nearest
    existing ancestor decides), or None outside any work tree."""
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    try:
        repository = git.Repo(existing, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    top = repository.working_tree_dir
    return Path(top).resolve() if top is not None else None


def uncommitted_changes(directory: Path) -> list[str]:
    """Repository-relative paths under `directory` that differ from HEAD: modified, staged,
    deleted, renamed or untracked (ignored files excepted). [] outside a git work tree."""
    top = enclosing_work_tree(directory)
    if top is None:
        return []
    pathspec = os.path.relpath(directory.resolve(), top)
    listing = git.Repo(top).git.execute(  # no optional locks: the index is left untouched
        ["git", "--no-optional-locks", "status", "--porcelain=v1", "-z",
         "--untracked-files=normal", "--", pathspec])
    paths: set[str] = set()
    fields = iter(listing.split("\0"))
    for entry in fields:
        if not entry:
            continue
        paths.add(entry[3:])
        if entry[0] in "RC":  # a rename or copy: the next field is its source
            paths.add(next(fields))
    return sorted(paths)
