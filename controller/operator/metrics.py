"""Prometheus metrics of the operator (`--metrics-port`): reconciles, their duration and the
certificate actions they applied."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter("fleetpki_reconciles_total", "Namespace reconciles by result "
                     "(applied, refused, error).", ["namespace", "result"])
DURATION = Histogram("fleetpki_reconcile_duration_seconds", "Time of one namespace reconcile.",
                     ["namespace"], buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
ACTIONS = Counter("fleetpki_certificate_actions_total", "Certificate actions applied "
                  "(issue, renew, rekey, revoke, create-ca, renew-ca, publish-crl).",
                  ["namespace", "action"])


def serve(port: int) -> None:
    """Serve /metrics on all interfaces in a background thread."""
    start_http_server(port)
