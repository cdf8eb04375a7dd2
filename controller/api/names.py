"""Kubernetes object names made from free text (device ids, keystore blob names)."""

from __future__ import annotations

import hashlib
import re

MANAGED_BY = "app.kubernetes.io/managed-by"  # the label fleetpki puts on what it creates


def hashed_name(text: str, hashed: str, digits: int, room: int | None = None) -> str:
    """`text` as a DNS-1123 name: lowercased, every run of other characters as '-', cut to fit
    `room` characters, then `digits` hex digits of the SHA-256 of `hashed`, so that texts that
    read the same after this still get different names."""
    digest = hashlib.sha256(hashed.encode()).hexdigest()[:digits]
    readable = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if room is not None:
        readable = readable[:room - 1 - digits].strip("-")
    return f"{readable}-{digest}" if readable else digest
