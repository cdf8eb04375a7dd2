"""The git-only controller loop: fetch the fleet repo, apply, push status, sleep."""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import FrameType

import git

from controller import jobs
from controller.api.problems import InvalidDeclaration
from controller.apply.evidence import ExistingCA
from controller.apply.executor import ApplyRefused
from controller.pki.errors import PKIError
from controller.status.gitbranch import StatusBranchError, push_status_branch
from controller.stores.keystore import KeyStoreError


class Reconciler:
    """Keeps a private checkout of `repo` at `ref` in the state directory and applies it."""

    def __init__(self, repo: str, ref: str, state: jobs.StateDir, *, path: str = ".",
                 push: bool = False, max_revocations: int | None = None,
                 new_cas: frozenset[str] = frozenset()) -> None:
        self.repo = repo
        self.ref = ref
        self.state = state
        self.path = path
        self.push = push
        self.max_revocations = max_revocations
        self.new_cas = new_cas
        digest = hashlib.sha256(repo.encode()).hexdigest()[:12]
        self.checkout = state.path / "checkouts" / digest
        self.stopping = threading.Event()

    def sync(self) -> git.Repo:
        """Clone once, then fetch and hard-reset the private checkout to origin/<ref>."""
        if not (self.checkout / ".git").exists():
            self.checkout.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            repository = git.Repo.clone_from(self.repo, self.checkout)
        else:
            repository = git.Repo(self.checkout)
            repository.remotes.origin.fetch(prune=True)
        repository.git.checkout("--detach", f"origin/{self.ref}")
        repository.git.reset("--hard", f"origin/{self.ref}")
        repository.git.clean("-fdx")
        return repository

    def once(self, log: Callable[[str], None]) -> bool:
        """One reconcile; True on success. Errors are logged and reported as status."""
        repository = self.sync()
        head = repository.head.commit.hexsha[:12]
        try:
            report = jobs.apply(Path(self.checkout) / self.path, self.state, jobs.now_utc(),
                                max_revocations=self.max_revocations, new_cas=self.new_cas)
        except (InvalidDeclaration, ApplyRefused, ExistingCA) as exc:
            log(f"reconcile {head}: not applied: {exc}")
            ok = False
        else:
            done = ", ".join(f"{v} {k}" for k, v in sorted(report.result.done.items()))
            log(f"reconcile {head}: {done or 'no changes'}")
            ok = True
        if self.push:
            push_status_branch(self.checkout, "origin", jobs.STATUS_BRANCH)
        return ok

    def run(self, interval: timedelta | None, log: Callable[[str], None]) -> None:
        """Loop until SIGTERM/SIGINT; with no interval, run once and raise on failure."""
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
            except (git.GitCommandError, jobs.StateLocked, StatusBranchError, KeyStoreError,
                    PKIError, OSError) as exc:
                log(f"reconcile failed, will retry: {exc}")
            self.stopping.wait(interval.total_seconds())
