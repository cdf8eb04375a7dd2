"""EST's audit records are group-committed: concurrent enrollments share appends (one seal and
one fsync each), every record is on disk before its `record` returns, in arrival order, and the
chain verifies."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from controller.audit.log import AuditError, read_lines, verify_log
from controller.audit.records import Event
from controller.audit.trail import Trail
from controller.servers.audit import GroupCommit

KEY = ed25519.Ed25519PrivateKey.generate()


def enrollment(number: int) -> Event:
    return Event("est.enrolled", "success", "DeviceFleet/sensors", {"address": "127.0.0.1"},
                 {"device": f"sensor-{number}"})


def devices_on_disk(state: Path) -> list[str]:
    records = [json.loads(line.data) for line in read_lines(state / "audit")]
    return [r["device"] for r in records if r["action"] == "est.enrolled"]


def test_concurrent_records_share_appends_and_each_waits_for_its_own(tmp_path: Path) -> None:
    trail = Trail(tmp_path, lambda: KEY)
    appends: list[int] = []
    release = threading.Event()
    real_append = trail.append

    def slow_append(events: list[Event], now: object) -> None:
        appends.append(len(events))
        if len(appends) == 1:
            release.wait(5)  # the first append is still running while the others arrive
        real_append(events, now)  # type: ignore[arg-type]

    trail.append = slow_append  # type: ignore[method-assign]
    commit = GroupCommit(trail)

    async def main() -> None:
        first = asyncio.create_task(commit.record(enrollment(0)))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(commit.record(enrollment(n))) for n in range(1, 20)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in [first, *rest])  # nothing returns before disk
        release.set()
        await asyncio.gather(first, *rest)
        assert devices_on_disk(tmp_path) == [f"sensor-{n}" for n in range(20)]

    asyncio.run(main())
    assert appends == [1, 19]
    verdict = verify_log(tmp_path / "audit")
    assert verdict.bad is None and verdict.records > 20, verdict.reason


def test_a_failed_append_is_reported_to_each_waiting_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trail = Trail(tmp_path, lambda: KEY)

    def broken(events: list[Event], now: object) -> None:
        raise AuditError("disk full")

    trail.append = broken  # type: ignore[method-assign]
    commit = GroupCommit(trail)

    async def main() -> None:
        await asyncio.gather(*(commit.record(enrollment(n)) for n in range(3)))

    asyncio.run(main())
    assert caplog.text.count("disk full") == 3
