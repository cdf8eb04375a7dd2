"""Durations as users write them: Go-style `2160h`, `90m`, `1h30m`, plus `d` for days."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|m|s)")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
PATTERN = r"^(\d+(\.\d+)?(d|h|m|s))+$"


def parse_duration(value: Any) -> timedelta:
    """Parse `8760h`, `90d`, `1h30m`; a timedelta passes through."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str) or not re.fullmatch(PATTERN, value.strip()):
        raise ValueError(f"invalid duration {value!r}: use e.g. '8760h', '90d' or '1h30m'")
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value.strip()))
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"duration {value!r} must be a positive whole number of seconds")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render as hours (cert-manager style), e.g. `8760h` or `1h30m`."""
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes else ""
    text += f"{seconds}s" if seconds else ""
    return text or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": PATTERN}),
]
