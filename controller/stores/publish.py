"""Public files (CA certificates, CRLs) that brokers and servers read, written atomically."""

from __future__ import annotations

import os
from pathlib import Path


def publish_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` atomically so a reader (e.g. a broker reloading its CRL) never sees a
    half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.chmod(mode)
    os.replace(temporary, path)
