"""The git-only controller loop: fetch the fleet repo, apply, push status, sleep."""

from __future__ import annotations

import hashlib
import shutil
import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import FrameType

import git

from controller import jobs
from controller.apply.executor import ApplyRefused
from controller.status.gitbranch import git_stderr, push_status_branch


class SourceError(Exception):
    """The fleet repository could not be cloned or fetched, or lacks the branch to apply."""


def _git_said(exc: git.GitCommandError) -> str:
    """git's complaint, on one line."""
    return " ".join(git_stderr(exc).split())


class Reconciler:
    """Keeps a private checkout of `repo` at `ref` in the state directory and applies it."""

    def __init__(self, repo: str, ref: str, state: jobs.StateDir, *, path: str = ".",
                 push: bool = False, max_revocations: int | None = None,
                 new_cas: frozenset[str] = frozenset(),
                 policies: jobs.PolicySource = jobs.DEFAULT_SOURCE,
                 signers: jobs.AllowedSigners | None = None) -> None:
        self.repo = repo
        self.ref = ref
        self.state = state
        self.path = path
        self.push = push
        self.max_revocations = max_revocations
        self.new_cas = new_cas
        self.policies = policies
        self.signers = signers
        local = Path(repo).expanduser()
        self.url = str(local.resolve()) if local.exists() else repo  # what git records
        digest = hashlib.sha256(repo.encode()).hexdigest()[:12]
        self.checkout = state.path / "checkouts" / digest
        self.stopping = threading.Event()

    def _usable_checkout(self) -> git.Repo | None:
        """The private checkout, if it is a complete clone of `repo` (an interrupted clone or a
        foreign directory is not)."""
        try:
            repository = git.Repo(self.checkout)
            origin = repository.remote("origin")
            usable = origin.url == self.url and bool(
                repository.git.config("--get-all", "remote.origin.fetch"))
        except (git.InvalidGitRepositoryError, git.NoSuchPathError, git.GitCommandError,
                ValueError):
            return None
        return repository if usable else None

    def _clone(self) -> git.Repo:
        """Clone beside the checkout and rename into place, so a killed clone leaves no
        half-made checkout behind."""
        partial = self.checkout.with_name(self.checkout.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(self.checkout, ignore_errors=True)
        self.checkout.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            git.Repo.clone_from(self.url, partial)
        except git.GitCommandError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise SourceError(f"cannot clone {self.repo}: {_git_said(exc)}") from None
        partial.rename(self.checkout)
        return git.Repo(self.checkout)

    def sync(self, log: Callable[[str], None]) -> git.Repo:
        """Clone once, then fetch and hard-reset the private checkout to origin/<ref>."""
        repository = self._usable_checkout()
        if repository is None:
            if self.checkout.exists():
                log(f"{self.checkout} is not a complete clone of {self.repo}: cloning again")
            repository = self._clone()
        else:
            try:
                repository.remotes.origin.fetch(prune=True)
            except git.GitCommandError as exc:
                raise SourceError(f"cannot fetch {self.repo}: {_git_said(exc)}") from None
        target = f"refs/remotes/origin/{self.ref}"
        try:
            repository.git.rev_parse("--verify", "--quiet", f"{target}^{{commit}}")
        except git.GitCommandError:
            branches = sorted(ref.remote_head for ref in repository.remotes.origin.refs
                              if ref.remote_head != "HEAD")
            raise SourceError(f"{self.repo} has no branch {self.ref!r} (--ref); it has: "
                              f"{', '.join(branches) or 'no branches'}") from None
        repository.git.checkout("--detach", target)
        repository.git.reset("--hard", target)
        repository.git.clean("-fdx")
        return repository

    def once(self, log: Callable[[str], None]) -> bool:
        """One reconcile; True on success. Errors are logged and reported as status."""
        from controller.status import metrics  # here: no other command loads prometheus_client

        result = "error"
        try:
            with metrics.DURATION.labels("").time():
                result = self._apply(log)
        finally:
            metrics.reconciled("", result)
        return result == "applied"

    def _apply(self, log: Callable[[str], None]) -> str:
        repository = self.sync(log)
        head = repository.head.commit.hexsha[:12]
        try:
            report = jobs.apply(Path(self.checkout) / self.path, self.state, jobs.now_utc(),
                                max_revocations=self.max_revocations, new_cas=self.new_cas,
                                policies=self.policies, signers=self.signers)
        except jobs.REFUSALS as exc:
            log(f"reconcile {head}: not applied: {exc}")
            result = "refused"
        else:
            done = ", ".join(f"{v} {k}" for k, v in sorted(report.result.done.items()))
            log(f"reconcile {head}: {done or 'no changes'}")
            result = "applied"
        if self.push:
            push_status_branch(self.checkout, "origin", jobs.STATUS_BRANCH)
        return result

    def run(self, interval: timedelta | None, log: Callable[[str], None]) -> None:
        """Loop until SIGTERM/SIGINT, logging and retrying every failure; with no interval,
        run once and raise on failure."""
        if interval is None:
            if not self.once(log):
                raise ApplyRefused("reconcile failed; see the messages above")
            return

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not self.stopping.is_set():
            try:
                self.once(log)
            except Exception as exc:  # whatever failed, a controller logs it and tries again
                log(f"reconcile failed, will retry: {exc or type(exc).__name__}")
            self.stopping.wait(interval.total_seconds())
