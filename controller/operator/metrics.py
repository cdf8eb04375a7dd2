"""Prometheus metrics of the operator (`--metrics-port`): reconciles, their duration, the
certificate actions they applied, and the inventory gauges of every namespace
(controller.status.metrics)."""

from __future__ import annotations

from prometheus_client import Counter

from controller.status.metrics import DURATION as DURATION
from controller.status.metrics import reconciled as reconciled
from controller.status.metrics import serve as serve

ACTIONS = Counter("fleetpki_certificate_actions_total", "Certificate actions applied "
                  "(issue, renew, rekey, revoke, create-ca, renew-ca, publish-crl).",
                  ["namespace", "action"])
