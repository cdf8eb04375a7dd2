"""When certificates and CRLs are due: renewal windows with per-device jitter."""

from __future__ import annotations

import hashlib
from datetime import timedelta


def renew_before(duration: timedelta, configured: timedelta | None) -> timedelta:
    """`renewBefore`, defaulting to one third of the lifetime (as cert-manager does)."""
    return configured if configured is not None else duration / 3


def renewal_time(not_after: int, window: timedelta, key: str) -> int:
    """Epoch second at which to renew: inside [notAfter - window, notAfter - window/2].

    The offset is a deterministic hash of `key` (e.g. fleet/device), so a fleet issued at once
    renews spread over half the window instead of in one storm, and every run agrees on it.
    """
    fraction = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32
    start = not_after - int(window.total_seconds())
    return start + int(fraction * window.total_seconds() / 2)


def crl_due(this_update: int, next_update: int, now: int) -> bool:
    """Re-publish once half of the CRL's validity has passed, well before `nextUpdate`."""
    return now >= this_update + (next_update - this_update) // 2
