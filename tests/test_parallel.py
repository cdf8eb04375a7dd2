"""controller/parallel.py: results in order, from workers that run only a few ranges ahead of
what the caller has taken (the rest would wait in the caller's memory)."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from controller import parallel

DONE = multiprocessing.Value("i", 0)  # items mapped, by any process (shared across the fork)


def doubled(item: int) -> int:
    with DONE.get_lock():
        DONE.value += 1
    return 2 * item


def test_results_in_order_with_workers_a_few_ranges_ahead(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")
    monkeypatch.setattr(parallel.threading, "active_count", lambda: 1)  # threads other tests left
    items, batch = list(range(20 * parallel.MIN_PARALLEL)), 100
    DONE.value = 0
    results = parallel.mapped(doubled, items, batch)
    first = next(results)
    ahead = (parallel.AHEAD * 2 + 1) * batch  # the range taken and AHEAD more per worker
    deadline = time.monotonic() + 30
    while DONE.value < ahead and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # room to run further ahead, which they must not
    assert DONE.value == ahead < len(items)
    assert [*first, *(value for more in results for value in more)] == [2 * i for i in items]
    assert DONE.value == len(items)
