"""A state directory's audit trail as the job layer and the servers use it: events appended in
sealed batches, then forwarded to the configured SIEM destinations (best effort)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from controller.audit.forward import Destination, forward_all
from controller.audit.log import AuditLog, KeySource
from controller.audit.records import Event

BATCH = 10_000  # events per sealed append: a million certificates are 100 appends
log = logging.getLogger(__name__)


class Trail:
    """Appends to `<state>/audit/audit.jsonl` and forwards to `destinations`."""

    def __init__(self, state: Path, key: KeySource,
                 destinations: Sequence[Destination] = ()) -> None:
        self.log = AuditLog(state, key)
        self.destinations = list(destinations)

    def record(self, events: Iterable[Event], now: datetime) -> None:
        """Append `events`, then forward what the receivers lack."""
        self.append(events, now)
        self.forward()

    def append(self, events: Iterable[Event], now: datetime) -> None:
        """Append `events` in sealed batches."""
        iterator = iter(events)
        while batch := list(itertools.islice(iterator, BATCH)):
            self.log.append(batch, now)

    def forward(self) -> None:
        """Send the records each destination has not received; a down receiver is reported
        and left for the next time (the log is the spool)."""
        for destination, error in forward_all(self.log.directory, self.destinations):
            log.warning("audit: cannot forward to %s (kept for the next attempt): %s",
                        destination.url, error)
