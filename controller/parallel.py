"""Map a function over a list on every core: forked workers that inherit the function and list.

The parent sets what to do, then forks; a worker is handed only index ranges of the list it
inherited and sends back the results of each range (pickled), which the parent yields in
order. Nothing but results crosses between processes: keys the function holds (the CA keys
of the signing workers) stay in memory, inherited, never written, pickled or sent.

Forking is used only where it is safe and worth it: a single-threaded parent on a system that
forks, more than one usable core and at least `MIN_PARALLEL` items; otherwise the function runs
here, on the same items, in the same order.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.pool import AsyncResult
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

WORKERS_ENV = "FLEETPKI_WORKERS"  # 0 or 1: work in the job's process only
MIN_PARALLEL = 2_000
AHEAD = 2  # ranges handed to each worker beyond the one the parent waits for

_inherited: tuple[Callable[[Any], Any], Sequence[Any], Callable[[], None] | None] | None = None


def worker_count(items: int) -> int:
    """How many worker processes to map `items` items with (0: in this process)."""
    setting = os.environ.get(WORKERS_ENV)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    wanted = int(setting) if setting and setting.isdigit() else cores
    if (wanted < 2 or items < MIN_PARALLEL or threading.active_count() > 1
            or "fork" not in multiprocessing.get_all_start_methods()):
        return 0
    return wanted


def mapped(function: Callable[[Item], Result], items: Sequence[Item], batch: int,
           start: Callable[[], None] | None = None,
           workers: int | None = None) -> Iterator[list[Result]]:
    """`function` of each item, `batch` items at a time, in order; on forked workers when
    `worker_count` allows (or on `workers` of them, counted by the caller), each of which
    first calls `start` (e.g. to open its own database connection), else here. Workers run at
    most AHEAD ranges each ahead of what the caller took: results the caller is slower to use
    (the signing's inventory writes) wait in no queue (at a million certificates, `Pool.imap`
    held about 550 MB of them)."""
    bounds = [(first, min(first + batch, len(items))) for first in range(0, len(items), batch)]
    workers = worker_count(len(items)) if workers is None else workers
    if not workers:
        yield from ([function(item) for item in items[first:end]] for first, end in bounds)
        return
    global _inherited
    _inherited = (function, items, start)
    try:
        context = multiprocessing.get_context("fork")
        with context.Pool(workers, initializer=_start_worker) as pool:
            waiting: deque[AsyncResult[list[Result]]] = deque()
            for span in bounds:
                waiting.append(pool.apply_async(_range, (span,)))
                if len(waiting) > AHEAD * workers:
                    yield waiting.popleft().get()
            while waiting:
                yield waiting.popleft().get()
    finally:
        _inherited = None


def _start_worker() -> None:
    assert _inherited is not None
    if _inherited[2] is not None:
        _inherited[2]()


def _range(span: tuple[int, int]) -> list[Any]:
    assert _inherited is not None
    function, items, _ = _inherited
    return [function(item) for item in items[span[0]:span[1]]]
