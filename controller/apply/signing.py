"""Make device certificates on every core: forked workers that inherit the executor.

The parent forks once per apply, after the plan is made and every issuer key is loaded, so each
worker holds the CA keys and the keystore's key-encryption key in its own memory (inherited,
never written, pickled or sent). A worker is handed only index ranges of the issuance list it
also inherited, and answers with finished `CertRecord`s (certificate DER, server keys already
wrapped); the parent alone writes them to the inventory, one transaction per batch, in plan
order. A worker that reads the inventory (renewing an enrolled or kept server key) opens its
own read-only connection.

Forking is used only where it is safe and worth it: a single-threaded parent on Linux-like
systems, more than one usable core and at least `MIN_PARALLEL` certificates; otherwise the
records are made in the parent, by the same code.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from controller.plan.intents import DeviceIntent
from controller.plan.model import Action
from controller.stores.inventory import CertRecord, Inventory

if TYPE_CHECKING:
    from controller.apply.executor import Executor

WORKERS_ENV = "FLEETPKI_SIGNING_WORKERS"  # 0 or 1: sign in the apply process only
MIN_PARALLEL = 2_000

Work = Sequence[tuple[Action, DeviceIntent]]
_inherited: tuple[Executor, Work] | None = None  # set by the parent just before forking


def worker_count(certificates: int) -> int:
    """How many worker processes to sign `certificates` with (0: in this process)."""
    setting = os.environ.get(WORKERS_ENV)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    wanted = int(setting) if setting and setting.isdigit() else cores
    if (wanted < 2 or certificates < MIN_PARALLEL or threading.active_count() > 1
            or "fork" not in multiprocessing.get_all_start_methods()):
        return 0
    return wanted


def records(executor: Executor, work: Work, batch: int) -> Iterator[list[CertRecord]]:
    """The records of `work`, `batch` at a time and in order, made by forked workers when
    `worker_count` allows, else here."""
    bounds = [(start, min(start + batch, len(work))) for start in range(0, len(work), batch)]
    workers = worker_count(len(work))
    if not workers:
        yield from (_range(executor, work, span) for span in bounds)
        return
    global _inherited
    _inherited = (executor, work)
    try:
        context = multiprocessing.get_context("fork")
        with context.Pool(workers, initializer=_start_worker) as pool:
            yield from pool.imap(_make, bounds)
    finally:
        _inherited = None


_untouched: list[Inventory] = []  # in a worker: the parent's inventory, never used nor closed


def _start_worker() -> None:
    """In a new worker: never touch the parent's database connection (not even by closing it,
    which SQLite and libpq forbid across fork); read through a new one."""
    assert _inherited is not None
    executor = _inherited[0]
    _untouched.append(executor.inventory)
    executor.inventory = executor.inventory.reader()


def _make(span: tuple[int, int]) -> list[CertRecord]:
    assert _inherited is not None
    return _range(*_inherited, span)


def _range(executor: Executor, work: Work, span: tuple[int, int]) -> list[CertRecord]:
    return [executor._device_certificate(action, intent)
            for action, intent in work[span[0]:span[1]]]
