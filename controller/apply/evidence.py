"""Evidence that a CA already exists, looked for before fleetpki creates one.

A CA is created only where nothing says it exists. Evidence is any of: the inventory's record of
an earlier certificate of the CA; a key of the CA in the keystore, a file or a Kubernetes Secret
(other than one a crashed run left in its journal, which recovery quarantines); a published CA
certificate or CRL in the public directory; a certificate serial for the CA in any commit of the
status branch (local or a remote's copy); and, when the inventory holds no CA at all, an
initialised keystore (`kek.json`). The keystore is asked through its blob backend, never
globbed, and a keystore that cannot be listed is an error (KeyStoreError), never "no evidence".
An empty or wrong state directory therefore never starts a second PKI: creating a CA despite
the evidence takes `--new-ca NAME`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from controller.status.gitbranch import StatusBranchError
from controller.status.report import status_path
from controller.status.store import StatusStore
from controller.stores.inventory import Inventory
from controller.stores.keystore import CA_PREFIX, KEK_BLOB, KeyBlobs, ca_key_ids, initialised


class ExistingCA(Exception):
    """A CA the plan would create exists already somewhere; nothing was changed."""


@dataclass(frozen=True)
class Places:
    """Where evidence of a CA may be: the state directory's parts, the keystore's blobs (files
    or Secrets) and the status with its history (every commit of a status branch)."""

    state_dir: Path
    keys: KeyBlobs
    public_dir: Path
    status: StatusStore | None


def recorded_serial(status: StatusStore, name: str) -> str | None:
    """The newest serial any known status of CA `name` recorded."""
    try:
        for text in status.history(status_path("CertificateAuthority", name)):
            try:
                document = yaml.safe_load(text) or {}
            except yaml.YAMLError:
                continue
            recorded = document.get("status") if isinstance(document, dict) else None
            certificate = recorded.get("certificate") if isinstance(recorded, dict) else None
            if isinstance(certificate, dict) and certificate.get("serial") \
                    and not certificate.get("external"):
                return str(certificate["serial"])
    except StatusBranchError:
        return None
    return None


def evidence_of(name: str, places: Places, inventory: Inventory | None) -> list[str]:
    """What says CA `name` exists, in words; empty when it may be created."""
    found: list[str] = []
    in_journal: set[str] = set()
    if inventory is not None:
        generations = inventory.ca_generations(name)
        if generations:
            found.append(f"the inventory holds {len(generations)} earlier certificate(s) of it")
        in_journal = {detail for _, operation, _, detail in inventory.journal_entries()
                      if operation == "ca-key"}
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{16}}")
    keys = [places.keys.describe(f"{CA_PREFIX}{key_id}.pem") for key_id in ca_key_ids(places.keys)
            if pattern.fullmatch(key_id) and key_id not in in_journal]
    if keys:
        found.append(f"its key(s) {', '.join(keys)}")
    published = [str(p) for p in (places.public_dir / "ca" / f"{name}.pem",
                                  places.public_dir / "crl" / f"{name}.crl") if p.exists()]
    if published:
        found.append(f"its published {' and '.join(published)}")
    if places.status is not None:
        serial = recorded_serial(places.status, name)
        if serial:
            found.append(f"serial {serial} {places.status.where}")
    return found


def refuse_existing_cas(names: Iterable[str], places: Places, inventory: Inventory | None,
                        allowed: frozenset[str]) -> None:
    """Raise ExistingCA when any CA to be created (and not in `allowed`) has evidence."""
    names = list(names)
    blocked = {name: evidence_of(name, places, inventory)
               for name in names if name not in allowed}
    blocked = {name: found for name, found in blocked.items() if found}
    has_cas = inventory is not None and bool(inventory.ca_names())
    pending = inventory is not None and bool(inventory.journal_entries())
    if names and not blocked and not allowed and not has_cas and not pending \
            and initialised(places.keys):
        blocked = {name: [f"the keystore {places.keys.describe('')} is initialised "
                          f"({places.keys.describe(KEK_BLOB)}) but the inventory holds no CA"]
                   for name in names}
    if not blocked:
        return
    lines = [f"CertificateAuthority/{name} exists already: {'; '.join(found)}"
             for name, found in sorted(blocked.items())]
    flags = " ".join(f"--new-ca {name}" for name in sorted(blocked))
    raise ExistingCA(
        "\n".join(lines) + f"\nThe state directory {places.state_dir} has no record of "
        f"{'it' if len(lines) == 1 else 'them'}: "
        "wrong --state-dir, or a lost or damaged state directory? Point --state-dir at the "
        "right one or restore it (fleetpki restore BACKUP --state-dir DIR). fleetpki never "
        f"creates a CA where one existed; to start a new one on purpose, pass {flags}")
