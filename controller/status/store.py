"""Where status goes: the status branch of the fleet repository (git-only mode) or the
objects' `.status` (Kubernetes mode). The job writes through this interface only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from controller.plan.model import Plan
from controller.status.report import Outcome


@dataclass(frozen=True)
class StatusUpdate:
    """One run's status documents (`status/<Kind>/<name>.yaml`) and what produced them."""

    files: dict[str, bytes]
    summary: str
    plan: Plan
    outcome: Outcome
    now: datetime
    done: dict[str, int] = field(default_factory=dict)  # action -> count actually applied
    applied: bool = False  # the run got past every refusal: the declaration was applied
    signer: str | None = None  # who signed the applied commit (--require-signed-commits)


class StatusStore(Protocol):
    """Reads last known status, writes a run's status, and keeps the history of both."""

    @property
    def where(self) -> str:
        """Where status lives, in words ("on the status branch X"), for messages."""
        ...

    def observed(self) -> str | None:
        """The revision of the declaration this run applies (`observedCommit`), if any."""
        ...

    def read(self) -> dict[str, bytes]:
        """The last status documents, by path."""
        ...

    def history(self, path: str) -> Iterable[bytes]:
        """Every known version of one status document, newest first."""
        ...

    def write(self, update: StatusUpdate) -> str | None:
        """Record the run's status; returns a revision (a commit) when there is one."""
        ...
