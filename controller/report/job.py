"""The report job: query the inventory (SQL aggregates), git history and the audit log, then
write report.html, report.json and one CSV file per section."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from controller.clock import epoch
from controller.discovery.classify import describe_key
from controller.exports import write_file
from controller.report import model
from controller.report.page import render
from controller.report.tables import COLUMNS, document, tables, to_csv
from controller.sources.history import applied_runs, changes
from controller.stores.inventory import Inventory

HISTORY = 100  # commits and apply runs shown
AUDIT_LOG = Path("audit") / "audit.jsonl"
STEPS = 5  # calls of `step` in build_report


def _skip(der: bytes, at: int) -> tuple[int, int]:
    """(start of the contents, end) of the DER element at `at`."""
    size = der[at + 1]
    if size < 0x80:
        return at + 2, at + 2 + size
    count = size & 0x7F
    start = at + 2 + count
    return start, start + int.from_bytes(der[at + 2:start], "big")


def _public_key_shape(der: bytes) -> bytes:
    """A certificate's SubjectPublicKeyInfo algorithm identifier and key length: certificates
    with the same shape have the same key algorithm (RSA key sizes differ in length)."""
    tbs, _ = _skip(der, 0)
    at, _ = _skip(der, tbs)
    if der[at] == 0xA0:  # [0] version
        at = _skip(der, at)[1]
    for _field in range(5):  # serialNumber, signature, issuer, validity, subject
        at = _skip(der, at)[1]
    spki, _ = _skip(der, at)
    algorithm_end = _skip(der, spki)[1]
    key_start, key_end = _skip(der, algorithm_end)
    return der[spki:algorithm_end] + (key_end - key_start).to_bytes(4, "big")


class KeyAlgorithmNames:
    """`name(der)` = the key algorithm of a certificate, parsed in full once per key shape:
    about 20 times faster than parsing every certificate of a large fleet."""

    def __init__(self) -> None:
        self.known: dict[bytes, str] = {}

    def __call__(self, der: bytes) -> str:
        try:
            shape = _public_key_shape(der)
        except IndexError:
            shape = der  # not the DER expected: parsed in full below
        name = self.known.get(shape)
        if name is None:
            name = describe_key(x509.load_der_x509_certificate(der).public_key())
            self.known[shape] = name
        return name


def _ca_names(inventory: Inventory) -> dict[str, str]:
    """CA certificate serial -> CA name, every generation."""
    return {g.serial: name for name in inventory.ca_names()
            for g in inventory.ca_generations(name)}


def authorities(inventory: Inventory, now: int) -> list[model.CAHealth]:
    found = []
    for name in inventory.ca_names():
        record = inventory.active_ca(name)
        crl = inventory.crl(record.serial) if record else None
        found.append(model.ca_health(
            name, record.serial if record else None, record.not_after if record else None,
            (crl.number, crl.next_update, crl.revoked_total) if crl else None,
            inventory.revoked_total(record.serial) if record else 0, now))
    return found


def read_audit(state_dir: Path) -> model.AuditSummary | None:
    """Summary of `<state-dir>/audit/audit.jsonl` (JSON Lines), None when there is none."""
    path = state_dir / AUDIT_LOG
    if not path.exists():
        return None
    unreadable = 0

    def records() -> Iterator[dict[str, Any]]:
        nonlocal unreadable
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    yield record
                elif line.strip():
                    unreadable += 1

    summary = model.audit_summary(records())
    return replace(summary, unreadable_lines=unreadable)


def build_report(inventory: Inventory, state_dir: Path, directory: Path, now: datetime,
                 policy: list[dict[str, Any]], status_branch: str,
                 step: Callable[[str], None] = lambda what: None,
                 lint: list[dict[str, Any]] | None = None,
                 problems: list[dict[str, Any]] | None = None) -> model.Report:
    """The report's content; `step(what)` is called before each of STEPS steps. `lint`
    (`fleetpki lint` findings) fills the lint section; without it the section is left out.
    `problems`: DIR's declaration problems (its policy findings are then incomplete)."""
    at = epoch(now)
    step("counting certificates")
    fleets = model.fleet_counts(
        inventory.state_counts(at, [d * model.DAY for d in model.HORIZONS_DAYS]),
        _ca_names(inventory))
    expiry = model.expiry_series(inventory.expiry_buckets(
        at, model.EXPIRY_BUCKET_DAYS * model.DAY, model.EXPIRY_BUCKETS))
    step("key algorithms")
    algorithms = inventory.key_algorithms(KeyAlgorithmNames())
    step("CAs and CRLs")
    cas = authorities(inventory, at)
    step("git history")
    history = changes(directory, HISTORY), applied_runs(directory, status_branch, HISTORY)
    step("audit log")
    audit = read_audit(state_dir)
    return model.Report(at, fleets, cas, algorithms, expiry, inventory.revocation_reasons(),
                        policy, history[0], history[1], problems=problems or [], audit=audit,
                        lint=lint)


def write_report(report: model.Report, out: Path, title: str) -> list[Path]:
    """report.html, report.json and <section>.csv under `out`; the paths written."""
    written = {out / "report.html": render(report, title).encode(),
               out / "report.json": json.dumps(document(report), indent=2).encode() + b"\n"}
    for name, rows in tables(report).items():
        written[out / f"{name}.csv"] = to_csv(rows, COLUMNS.get(name, ())).encode()
    for path, data in written.items():
        write_file(path, data)
    return list(written)
