"""Kubernetes-style conditions (`Ready`, `Reconciling`, `Stalled`), set in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Condition = dict[str, Any]


def condition(previous: Sequence[Condition], type_: str, status: bool, reason: str,
              message: str, now: str, generation: str | None = None) -> Condition:
    """A condition that keeps `lastTransitionTime` when its status did not change."""
    value = "True" if status else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    changed = before is None or before.get("status") != value
    result: Condition = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if before is None or changed else before.get(
            "lastTransitionTime", now),
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def summarize(previous: Sequence[Condition], *, stalled: str | None, reconciling: str | None,
              ready_message: str, reason: str, now: str) -> list[Condition]:
    """Derive the three conditions once: Stalled wins over Reconciling, Ready only if neither."""
    ready = stalled is None and reconciling is None
    return [
        condition(previous, "Ready", ready, reason,
                  ready_message if ready else (stalled or reconciling or ""), now),
        condition(previous, "Reconciling", reconciling is not None and stalled is None,
                  reason if reconciling else "Idle", reconciling or "", now),
        condition(previous, "Stalled", stalled is not None, reason if stalled else "Idle",
                  stalled or "", now),
    ]
