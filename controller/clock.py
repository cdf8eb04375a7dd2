"""Time as the controller sees it: UTC, whole seconds, stored as epoch integers."""

from __future__ import annotations

from datetime import UTC, datetime


def now_utc() -> datetime:
    """The current time, truncated to the second (certificates carry whole seconds)."""
    return datetime.now(UTC).replace(microsecond=0)


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def rfc3339(seconds: int) -> str:
    return from_epoch(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")
