"""When an object's namespace needs a reconcile without any change: renewals, CRLs, retries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from controller.clock import epoch
from controller.plan.schedule import crl_due


def _seconds(stamp: object) -> int | None:
    if not isinstance(stamp, str):
        return None
    try:
        return epoch(datetime.fromisoformat(stamp.replace("Z", "+00:00")))
    except ValueError:
        return None


def _is(status: Mapping[str, Any], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True"
               for c in status.get("conditions") or [])


def is_due(body: Mapping[str, Any], now: datetime, ahead: timedelta) -> bool:
    """Whether a timer tick should reconcile: the object is new or not converged, a renewal or
    a CRL re-publication comes within `ahead`, or a failing object's backoff has passed."""
    status = body.get("status") or {}
    metadata = body.get("metadata") or {}
    soon = epoch(now + ahead)
    if _is(status, "Stalled"):
        retry = _seconds(status.get("nextAttemptAt"))
        return retry is None or retry <= epoch(now)
    if not _is(status, "Ready") or status.get("observedGeneration") != metadata.get("generation"):
        return True
    renewals = [_seconds((status.get("certificate") or {}).get("renewAt")),
                _seconds(status.get("nextRenewalAt"))]
    if any(moment is not None and moment <= soon for moment in renewals):
        return True
    crl = status.get("crl") or {}
    this_update, next_update = _seconds(crl.get("thisUpdate")), _seconds(crl.get("nextUpdate"))
    return this_update is not None and next_update is not None and \
        crl_due(this_update, next_update, soon)
