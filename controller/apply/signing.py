"""Make device certificates on every core (`controller/parallel.py`): forked workers that
inherit the executor.

The parent forks once per apply, after the plan is made and every issuer key is loaded, so each
worker holds the CA keys and the keystore's key-encryption key in its own memory (inherited,
never written, pickled or sent). A worker answers with finished `CertRecord`s (certificate DER,
server keys already wrapped); the parent alone writes them to the inventory, one transaction per
batch, in plan order. A worker that reads the inventory (renewing an enrolled or kept server
key) opens its own read-only connection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from controller import parallel
from controller.plan.model import Action
from controller.stores.inventory import CertRecord, Inventory

if TYPE_CHECKING:
    from controller.apply.executor import Executor


def records(executor: Executor, actions: Sequence[Action],
            batch: int) -> Iterator[list[CertRecord]]:
    """The records of `actions` (issue, renew, rekey), `batch` at a time and in order, made by
    forked workers when `parallel.worker_count` allows, else here; each renders its device's
    intent from the declaration it inherited."""
    untouched: list[Inventory] = []  # in a worker: the parent's inventory, never used nor closed

    def start() -> None:
        """Never touch the parent's database connection (not even by closing it, which SQLite
        and libpq forbid across fork); read through a new one."""
        untouched.append(executor.inventory)
        executor.inventory = executor.inventory.reader()

    return parallel.mapped(executor._declared_certificate, actions, batch, start)
