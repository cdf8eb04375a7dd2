"""No full garbage collection within a run (controller/heap.py), and the threshold comes back."""

from __future__ import annotations

import gc
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller import heap, jobs

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fleet-repo"


@pytest.fixture
def full_collections() -> Iterator[list[int]]:
    """Counts generation-2 collections while the test runs."""
    seen: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            seen.append(1)

    gc.callbacks.append(count)
    yield seen
    gc.callbacks.remove(count)


def _grow_long_lived_objects() -> list[list[int]]:
    """Enough surviving containers to start a full collection under CPython's usual rules."""
    return [[] for _ in range(2 * len(gc.get_objects()) + 200_000)]


def test_no_full_collection_within_and_the_usual_ones_after(
        full_collections: list[int]) -> None:
    before = gc.get_threshold()
    with heap.long_lived():
        assert gc.get_threshold()[2] == heap.FULL_COLLECTION_NEVER
        kept = _grow_long_lived_objects()
        assert not full_collections
    assert gc.get_threshold() == before
    kept += _grow_long_lived_objects()  # the same growth outside: collected in full
    assert full_collections


def test_overlapping_blocks_restore_the_threshold_when_the_last_ends(
        full_collections: list[int]) -> None:
    before = gc.get_threshold()
    inside, release = threading.Event(), threading.Event()

    def other_run() -> None:
        with heap.long_lived():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_run)
    with heap.long_lived():
        thread.start()
        assert inside.wait(10)
        full_collections.clear()
    assert gc.get_threshold()[2] == heap.FULL_COLLECTION_NEVER  # the other run goes on
    assert full_collections  # but what the finished run left is collected
    release.set()
    thread.join()
    assert gc.get_threshold() == before


def test_validate_plan_and_apply_run_within(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    thresholds: list[int] = []
    read = jobs.read_declaration

    def spy(*args: Any, **kwargs: Any) -> Any:
        thresholds.append(gc.get_threshold()[2])
        return read(*args, **kwargs)

    monkeypatch.setattr(jobs, "read_declaration", spy)
    monkeypatch.setenv(jobs.PASSPHRASE_ENV, "heap-test-passphrase")
    now = datetime(2026, 11, 30, tzinfo=UTC)
    repo = shutil.copytree(EXAMPLE, tmp_path / "repo")  # outside the project's own git
    state = jobs.StateDir(tmp_path / "state")
    problems, _ = jobs.validate(repo, now)
    assert not problems
    jobs.plan(repo, state, now)
    jobs.apply(repo, state, now, write_status=False)
    assert thresholds == [heap.FULL_COLLECTION_NEVER] * 3
    assert gc.get_threshold()[2] != heap.FULL_COLLECTION_NEVER
