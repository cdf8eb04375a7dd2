"""Exponential backoff for failed EST secrets, per claimed device id and per client address.

After `allowed` consecutive failures of a key, the key is locked for `first` seconds, and each
further failure doubles the lock (up to `cap`). While locked, attempts are refused without
checking the secret (and do not count). A success forgets the key; so does a quiet period of
`forget` seconds after the last failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    allowed: int = 5
    first: float = 1.0
    cap: float = 300.0
    forget: float = 900.0


@dataclass
class _Failures:
    count: int
    last: float
    locked_until: float


class Throttle:
    """Failure counters by key (e.g. `device:<id>`, `client:<address>`), bounded in number."""

    def __init__(self, backoff: Backoff, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.backoff = backoff
        self.clock = clock
        self.max_keys = max_keys
        self._keys: dict[str, _Failures] = {}

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until none of `keys` is locked (0: go ahead)."""
        now = self.clock()
        return max([0.0, *(self._current(key, now).locked_until - now for key in keys)])

    def failed(self, key: str) -> float:
        """Count a failure; the lock it starts, in seconds (0: none yet)."""
        now = self.clock()
        entry = self._current(key, now)
        entry.count += 1
        entry.last = now
        self._keys.pop(key, None)
        if len(self._keys) >= self.max_keys:  # drop the longest quiet key
            del self._keys[next(iter(self._keys))]
        self._keys[key] = entry
        over = entry.count - self.backoff.allowed
        if over < 0:
            return 0.0
        lock = min(self.backoff.first * 2 ** min(over, 32), self.backoff.cap)
        entry.locked_until = now + lock
        return lock

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)

    def _current(self, key: str, now: float) -> _Failures:
        entry = self._keys.get(key)
        if entry is None or now - entry.last > self.backoff.forget:
            return _Failures(0, now, now)
        return entry
