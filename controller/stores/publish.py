"""Public files (CA certificates, CRLs) that brokers and servers read, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509

from controller.pki.certificates import certificate_to_pem
from controller.pki.crl import crl_to_pem
from controller.stores.inventory import Inventory


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


def sync_public(inventory: Inventory, public_dir: Path, now: int) -> list[Path]:
    """Derive the public directory from the inventory, rewriting only the files that differ:
    `ca/<ca>.pem` (the active certificate), `crl/<ca>.crl` (its CRL, DER) and `crl/<ca>.pem`
    (the CRLs of every unexpired CA generation). Run on every apply, it repairs what a crash
    between a commit and a publish left stale or missing. Returns the files rewritten."""
    wanted: dict[Path, bytes] = {}
    for name in inventory.ca_names():
        generations = inventory.ca_generations(name)
        active = next((g for g in generations if g.state == "active"), None)
        if active is None:
            continue
        wanted[public_dir / "ca" / f"{name}.pem"] = certificate_to_pem(
            x509.load_der_x509_certificate(active.der))
        current = inventory.crl(active.serial)
        if current is not None:
            wanted[public_dir / "crl" / f"{name}.crl"] = current.der
        crls = [inventory.crl(g.serial) for g in inventory.crl_generations(name, now)]
        pems = [crl_to_pem(x509.load_der_x509_crl(c.der)) for c in crls if c is not None]
        if pems:
            wanted[public_dir / "crl" / f"{name}.pem"] = b"".join(pems)
    rewritten = []
    for path, data in wanted.items():
        try:
            if path.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        publish_file(path, data)
        rewritten.append(path)
    return rewritten
