"""Prometheus metrics shared by `serve`, `reconcile` and the operator.

`InventoryCollector` derives gauges from the inventory at scrape time, with SQL aggregates over
a fresh read-only connection (safe from the exporter's thread). Labels are bounded: namespace
(empty outside the operator), fleet, ca, state, reason, code and severity, never a device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.clock import epoch, now_utc
from controller.lint.rules import CHECKS
from controller.status.fleetlint import counts as lint_counts
from controller.stores import facts
from controller.stores.database import ERRORS, is_url, redact
from controller.stores.inventory import Inventory, InventoryError

log = logging.getLogger(__name__)

RECONCILES = Counter("fleetpki_reconciles_total", "Reconciles by result (applied, refused, "
                     "error); namespace is empty in git mode.", ["namespace", "result"])
DURATION = Histogram("fleetpki_reconcile_duration_seconds", "Time of one reconcile.",
                     ["namespace"], buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
LAST_SUCCESS = Gauge("fleetpki_reconcile_last_success_timestamp_seconds", "When a reconcile "
                     "last applied (Unix time).", ["namespace"])


def reconciled(namespace: str, result: str) -> None:
    """Count one reconcile and, when it applied, when."""
    RECONCILES.labels(namespace, result).inc()
    if result == "applied":
        LAST_SUCCESS.labels(namespace).set_to_current_time()


def _gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"fleetpki_{name}", text, labels=["namespace", *labels])


class InventoryCollector(Collector):
    """Gauges from the inventories `sources()` names (namespace -> inventory file or
    PostgreSQL URL)."""

    def __init__(self, sources: Callable[[], Mapping[str, Path | str]], clock: Callable[[], int]
                 ) -> None:
        self.sources = sources
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        up = _gauge("inventory_up", "1 if the inventory could be read at this scrape.", [])
        families = {
            "certificates": _gauge("certificates", "Device certificates by fleet, issuing CA "
                                   "and state (active, retired, revoked).",
                                   ["fleet", "ca", "state"]),
            "earliest": _gauge("fleet_earliest_expiry_seconds", "Seconds until the fleet's "
                               "first active certificate expires (negative: expired).",
                               ["fleet"]),
            "due": _gauge("renewals_due", "Active certificates whose renewal time has come.",
                          ["fleet"]),
            "revoked": _gauge("revocations", "Revoked device certificates by reason.",
                              ["fleet", "reason"]),
            "ca": _gauge("ca_expiry_seconds", "Seconds until the CA's active certificate "
                         "expires.", ["ca"]),
            "crl_age": _gauge("crl_age_seconds", "Seconds since the CA's CRL thisUpdate.",
                              ["ca"]),
            "crl_next": _gauge("crl_next_update_seconds", "Seconds until the CA's CRL "
                               "nextUpdate (negative: stale).", ["ca"]),
            "crl_validity": _gauge("crl_validity_seconds", "nextUpdate - thisUpdate of the "
                                   "CA's CRL.", ["ca"]),
            "lint": _gauge("lint_findings", "Fleet lint findings by check and severity "
                           "(all but weak-key, which `fleetpki lint` reports).",
                           ["code", "severity"]),
        }
        for namespace, path in sorted(self.sources().items()):
            try:
                with Inventory(path, read_only=True) as inventory:
                    self._add(families, namespace, inventory, now)
            except (InventoryError, *ERRORS) as exc:
                log.warning("metrics: cannot read the inventory %s: %s",
                            redact(str(path)) if is_url(path) else path, exc)
                up.add_metric([namespace], 0)
            else:
                up.add_metric([namespace], 1)
        yield up
        yield from families.values()

    @staticmethod
    def _add(families: dict[str, GaugeMetricFamily], ns: str, inventory: Inventory,
             now: int) -> None:
        for (fleet, ca, state), number in facts.certificate_counts(inventory).items():
            families["certificates"].add_metric([ns, fleet, ca, state], number)
        for fleet, not_after in facts.earliest_expiry(inventory):
            families["earliest"].add_metric([ns, fleet], not_after - now)
        for fleet, number in facts.renewals_due(inventory, now):
            families["due"].add_metric([ns, fleet], number)
        for fleet, reason, number in facts.revocations(inventory):
            families["revoked"].add_metric([ns, fleet, reason], number)
        for authority in facts.active_cas(inventory):
            families["ca"].add_metric([ns, authority.name], authority.not_after - now)
        for crl in facts.crls(inventory):
            families["crl_age"].add_metric([ns, crl.ca], now - crl.this_update)
            families["crl_next"].add_metric([ns, crl.ca], crl.next_update - now)
            families["crl_validity"].add_metric([ns, crl.ca], crl.next_update - crl.this_update)
        for code, number in lint_counts(inventory, now).items():
            families["lint"].add_metric([ns, code, CHECKS[code].severity], number)



INVENTORIES = InventoryCollector(dict, lambda: epoch(now_utc()))
REGISTRY.register(INVENTORIES)


def serve(port: int, inventories: Callable[[], Mapping[str, Path | str]]) -> None:
    """Serve the process's metrics on /metrics on all interfaces (a background thread), with
    the gauges of `inventories` (namespace -> inventory file)."""
    INVENTORIES.sources = inventories
    start_http_server(port)
