"""Status write-back: commit status files to a dedicated branch using git plumbing only.

HEAD, the index and the working tree of the user's checkout are never touched: blobs
are written with ``hash-object``, the tree is built in a temporary index file, the
commit is made with ``commit-tree`` and the branch is moved with a compare-and-swap
``update-ref``. Status files hold public data only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from git import Blob, Repo
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from controller.status.store import StatusUpdate

DEFAULT_BRANCH = "fleetpki/status"
DEFAULT_REMOTE = "origin"
APPLIED_TRAILER = "Applied-commit"
SIGNER_TRAILER = "Applied-commit-signer"


class StatusBranchError(Exception):
    """The status branch could not be read, written or pushed."""


@dataclass(frozen=True)
class BotIdentity:
    """Author and committer of status commits."""

    name: str = "fleetpki"
    email: str = "fleetpki@localhost"


DEFAULT_IDENTITY = BotIdentity()


@dataclass(frozen=True)
class GitStatus:
    """Status on a branch of the fleet repository (`root`), recording the commit applied."""

    root: Path
    branch: str
    commit: str | None = None

    @property
    def where(self) -> str:
        return f"on the status branch {self.branch}"

    def observed(self) -> str | None:
        return self.commit

    def read(self) -> dict[str, bytes]:
        return read_status_branch(self.root, self.branch)

    def history(self, path: str) -> Iterator[bytes]:
        return status_file_history(self.root, path, self.branch)

    def write(self, update: StatusUpdate) -> str | None:
        """Commit the status files; a run that applied a commit says which, and who signed
        it, in trailers (`Applied-commit:`, `Applied-commit-signer:`)."""
        trailers = []
        if update.applied and self.commit is not None:
            trailers.append(f"{APPLIED_TRAILER}: {self.commit.removesuffix('-dirty')}")
            if update.signer is not None:
                trailers.append(f"{SIGNER_TRAILER}: {update.signer}")
        message = f"fleetpki status: {update.summary}"
        return write_status_branch(self.root, update.files, branch=self.branch,
                                   message="\n\n".join([message, "\n".join(trailers)])
                                   if trailers else message)

    def last_applied(self) -> str | None:
        """The commit the newest status commit of an applying run records, if any."""
        return last_applied_commit(self.root, self.branch)


def write_status_branch(
    repo_dir: Path,
    files: Mapping[str, bytes],
    *,
    message: str,
    branch: str = DEFAULT_BRANCH,
    identity: BotIdentity = DEFAULT_IDENTITY,
    remote: str = DEFAULT_REMOTE,
) -> str | None:
    """Make the branch's tree exactly `files`; commit (parent = branch tip if it exists) and
    return the new commit sha, or return None without committing when the tree is unchanged.

    When ``<remote>/<branch>`` is ahead of the local branch (or the local branch does not
    exist, as in a fresh clone) the remote-tracking tip is the parent, so pushes fast-forward.
    """
    paths = _validated_paths(files)
    with _open_repo(repo_dir) as repo:
        ref = _branch_ref(repo, branch)
        _refuse_checked_out(repo, ref)
        local_tip = _resolve_commit(repo, ref)
        base = _pick_base(repo, local_tip, _resolve_commit(repo, f"refs/remotes/{remote}/{branch}"))
        tree = _write_tree(repo, paths, files)
        if base is not None and _git(repo, "rev-parse", f"{base}^{{tree}}") == tree:
            if base != local_tip:
                _update_ref(repo, ref, base, local_tip, f"fleetpki: fast-forward to {remote}")
            return None
        parents = ["-p", base] if base is not None else []
        env = {
            "GIT_AUTHOR_NAME": identity.name,
            "GIT_AUTHOR_EMAIL": identity.email,
            "GIT_COMMITTER_NAME": identity.name,
            "GIT_COMMITTER_EMAIL": identity.email,
        }
        commit = _git(repo, "commit-tree", "--no-gpg-sign", *parents, "-m", message, tree, env=env)
        _update_ref(repo, ref, commit, local_tip, "fleetpki: status write-back")
        return commit


def read_status_branch(
    repo_dir: Path, branch: str = DEFAULT_BRANCH, *, remote: str = DEFAULT_REMOTE
) -> dict[str, bytes]:
    """Return the files on the status branch (the tip `write_status_branch` would build on),
    or ``{}`` if neither the branch nor its remote-tracking branch exists."""
    with _open_repo(repo_dir) as repo:
        ref = _branch_ref(repo, branch)
        base = _pick_base(
            repo,
            _resolve_commit(repo, ref),
            _resolve_commit(repo, f"refs/remotes/{remote}/{branch}"),
        )
        if base is None:
            return {}
        return {
            str(item.path): item.data_stream.read()
            for item in repo.commit(base).tree.traverse()
            if isinstance(item, Blob)
        }


def last_applied_commit(repo_dir: Path, branch: str = DEFAULT_BRANCH, *,
                        remote: str = DEFAULT_REMOTE) -> str | None:
    """The `Applied-commit` trailer of the newest status commit that has one (refused runs
    record none), on the tip `read_status_branch` reads; None when there is none."""
    with _open_repo(repo_dir) as repo:
        tip = _pick_base(repo, _resolve_commit(repo, _branch_ref(repo, branch)),
                         _resolve_commit(repo, f"refs/remotes/{remote}/{branch}"))
        if tip is None:
            return None
        found = _git(repo, "log", "-1", f"--grep=^{APPLIED_TRAILER}: ",
                     f"--format=%(trailers:key={APPLIED_TRAILER},valueonly)", tip)
        return found.split()[0] if found else None


def status_file_history(repo_dir: Path, path: str,
                        branch: str = DEFAULT_BRANCH) -> Iterator[bytes]:
    """Every version of one status file, newest first, across every commit of the local
    status branch and of each remote's copy of it (evidence outlives a later commit)."""
    with _open_repo(repo_dir) as repo:
        ref = _branch_ref(repo, branch)
        refs = [name for name in _git(repo, "for-each-ref", "--format=%(refname)",
                                      "refs/heads", "refs/remotes").splitlines()
                if name == ref or (name.startswith("refs/remotes/")
                                   and name.split("/", 3)[-1] == branch)]
        if not refs:
            return
        for commit in _git(repo, "log", "--format=%H", *refs, "--", path).splitlines():
            try:
                yield repo.git.execute(["git", "show", f"{commit}:{path}"],
                                       strip_newline_in_stdout=False).encode()
            except GitCommandError:  # the commit deleted the file
                continue


def push_status_branch(
    repo_dir: Path, remote: str = DEFAULT_REMOTE, branch: str = DEFAULT_BRANCH
) -> None:
    """Push the local status branch to `remote` (fast-forward only)."""
    with _open_repo(repo_dir) as repo:
        ref = _branch_ref(repo, branch)
        if _resolve_commit(repo, ref) is None:
            raise StatusBranchError(f"cannot push {ref}: the branch does not exist")
        try:
            repo.git.execute(["git", "push", "--porcelain", remote, f"{ref}:{ref}"])
        except GitCommandError as exc:
            raise StatusBranchError(
                f"pushing {ref} to {remote!r} failed: {git_stderr(exc)}"
            ) from None


def _open_repo(repo_dir: Path) -> Repo:
    try:
        return Repo(repo_dir)
    except (InvalidGitRepositoryError, NoSuchPathError):
        raise StatusBranchError(f"{repo_dir} is not a git repository") from None


def git_stderr(exc: GitCommandError) -> str:
    """What git wrote to stderr, without GitPython's quoting."""
    text = str(exc.stderr).strip().removeprefix("stderr: ").strip()
    return text[1:-1].strip() if len(text) > 1 and text[0] == text[-1] == "'" else text


def _git(
    repo: Repo, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Run a git command in `repo` and return its stripped stdout."""
    try:
        if stdin is None:
            return repo.git.execute(["git", *args], env=env)
        with tempfile.TemporaryFile() as stream:
            stream.write(stdin)
            stream.seek(0)
            return repo.git.execute(["git", *args], istream=stream, env=env)
    except GitCommandError as exc:
        raise StatusBranchError(f"git {args[0]} failed: {git_stderr(exc)}") from None


def _branch_ref(repo: Repo, branch: str) -> str:
    ref = f"refs/heads/{branch}"
    try:
        repo.git.execute(["git", "check-ref-format", ref])
    except GitCommandError:
        raise StatusBranchError(f"invalid branch name {branch!r}") from None
    return ref


def _validated_paths(files: Mapping[str, bytes]) -> list[str]:
    """Check that every path is a normalised relative POSIX path and return them sorted."""
    paths = sorted(files)
    for path in paths:
        parts = path.split("/")
        if any(p in ("", ".", "..") or p.lower() == ".git" or "\0" in p for p in parts):
            raise StatusBranchError(f"invalid status file path {path!r}")
    as_files = set(paths)
    for path in paths:
        for parent in PurePosixPath(path).parents:
            if str(parent) in as_files:
                raise StatusBranchError(
                    f"status file path {path!r} is inside {str(parent)!r}, which is also a file"
                )
    return paths


def _resolve_commit(repo: Repo, ref: str) -> str | None:
    try:
        return repo.git.execute(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"])
    except GitCommandError:
        return None


def _is_ancestor(repo: Repo, ancestor: str, descendant: str) -> bool:
    try:
        repo.git.execute(["git", "merge-base", "--is-ancestor", ancestor, descendant])
    except GitCommandError as exc:
        if exc.status == 1:
            return False
        raise StatusBranchError(f"git merge-base failed: {git_stderr(exc)}") from None
    return True


def _pick_base(repo: Repo, local: str | None, tracking: str | None) -> str | None:
    """The local tip, unless the remote-tracking tip is strictly ahead of it (or it is absent)."""
    if local is None:
        return tracking
    if tracking is not None and tracking != local and _is_ancestor(repo, local, tracking):
        return tracking
    return local


def _refuse_checked_out(repo: Repo, ref: str) -> None:
    """Moving a branch that a worktree has checked out would change that checkout's HEAD."""
    listing = _git(repo, "worktree", "list", "--porcelain")
    if f"branch {ref}" in listing.splitlines():
        raise StatusBranchError(
            f"{ref} is checked out in a worktree; switch that worktree to another branch "
            "so fleetpki can update the status branch without touching the checkout"
        )


def _write_tree(repo: Repo, paths: Sequence[str], files: Mapping[str, bytes]) -> str:
    """Write blobs and a tree holding exactly `files`; return the tree sha."""
    with tempfile.TemporaryDirectory(prefix="fleetpki-status-") as tmp:
        scratch = Path(tmp)
        blob_files = []
        for index, path in enumerate(paths):
            blob_file = scratch / f"blob-{index}"
            blob_file.write_bytes(files[path])
            blob_files.append(str(blob_file))
        shas = (
            _git(
                repo,
                "hash-object",
                "-w",
                "--no-filters",
                "--stdin-paths",
                stdin="".join(f"{name}\n" for name in blob_files).encode(),
            ).split()
            if paths
            else []
        )
        index_env = {"GIT_INDEX_FILE": str(scratch / "index")}
        entries = b"".join(
            f"100644 {sha}\t{path}".encode() + b"\0" for sha, path in zip(shas, paths, strict=True)
        )
        if entries:
            _git(repo, "update-index", "-z", "--index-info", stdin=entries, env=index_env)
        return _git(repo, "write-tree", env=index_env)


def _update_ref(repo: Repo, ref: str, new: str, expected_old: str | None, reason: str) -> None:
    """Compare-and-swap `ref` from `expected_old` (None: must not exist) to `new`."""
    try:
        repo.git.execute(["git", "update-ref", "-m", reason, ref, new, expected_old or ""])
    except GitCommandError as exc:
        lock = Path(repo.common_dir).resolve() / f"{ref}.lock"
        if lock.exists():
            raise StatusBranchError(
                f"could not move {ref}: {lock} exists: another git process is updating the "
                f"status branch, or one crashed; if no git process is running, delete {lock} "
                "and re-run"
            ) from None
        raise StatusBranchError(
            f"could not move {ref} to {new[:12]}: lost the compare-and-swap against a concurrent "
            f"update (expected {expected_old[:12] if expected_old else 'no branch'}); "
            f"re-run to retry. git said: {git_stderr(exc)}"
        ) from None
