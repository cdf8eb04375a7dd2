"""The discovery job: read the places, classify against the inventory, hand findings on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from controller.discovery.classify import Finding, Known, Sighting, classify
from controller.discovery.scan import Endpoint, read_endpoint, read_tree
from controller.stores.inventory import Inventory

TLS_WORKERS = 16


def _known(inventory: Inventory) -> Callable[[str], Known | None]:
    def lookup(serial: str) -> Known | None:
        record = inventory.get(serial)
        if record is None:
            return None
        return Known(record.kind, record.owner, record.device, record.state,
                     record.fingerprint, record.reason)
    return lookup


def authorities(inventory: Inventory) -> list[x509.Certificate]:
    """Every CA certificate in the inventory (all generations)."""
    return [x509.load_der_x509_certificate(record.der) for name in inventory.ca_names()
            for record in inventory.ca_generations(name)]


def discover(inventory: Inventory, endpoints: Sequence[Endpoint],
             trees: Sequence[Path], now: datetime, expiring_within: timedelta,
             p12_passphrase: bytes | None = None,
             progress: Callable[[int, int], None] = lambda done, total: None) -> list[Finding]:
    """Findings for every endpoint (read in parallel) and every certificate file in `trees`."""
    sightings: list[Sighting] = []
    total = len(endpoints)
    with ThreadPoolExecutor(max_workers=TLS_WORKERS) as pool:
        for sighting in pool.map(read_endpoint, endpoints):
            sightings.append(sighting)
            progress(len(sightings), total)
    for tree in trees:
        for sighting in read_tree(tree, p12_passphrase):
            sightings.append(sighting)
            total += 1
            progress(len(sightings), total)
    cas = authorities(inventory)
    roots = [ca for ca in cas if ca.issuer == ca.subject]
    lookup = _known(inventory)
    findings = [finding for sighting in sightings
                for finding in classify(sighting, lookup, cas, roots, now, expiring_within)]
    return findings
