"""kopf handlers: thin. Any change to a fleetpki object reconciles its namespace; timers
reconcile what comes due (renewals, CRLs, retries after backoff)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from controller import jobs
from controller.api.crds import GROUP, PLURALS, VERSION
from controller.operator.due import is_due
from controller.operator.namespaces import Namespaces
from controller.operator.tls_secrets import TLSSecretsError

TIMED = ("CertificateAuthority", "DeviceFleet")
RETRY_DELAY = 30  # seconds before kopf retries a run that failed for a transient reason


def _indexed(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, Any] | None:
    """Index value: the object as declared now; objects being deleted are left out."""
    if body.metadata.get("deletionTimestamp") or namespace is None:
        return None
    return {namespace: copy.deepcopy(dict(body))}


def build_registry(namespaces: Namespaces, resync: timedelta) -> kopf.OperatorRegistry:
    """Index every kind by namespace; on any change or due timer, reconcile the namespace."""
    registry = kopf.OperatorRegistry()
    indexes = list(PLURALS.values())

    def run(namespace: str, found: Mapping[str, Any]) -> None:
        def bodies() -> Iterable[Mapping[str, Any]]:  # copies already (see _indexed)
            return [b for plural in indexes for b in list(found[plural].get(namespace, []))]
        try:
            namespaces.reconcile(namespace, bodies)
        except (ApiException, jobs.InventoryError, jobs.KeyStoreError, OSError,
                TLSSecretsError) as exc:
            raise kopf.TemporaryError(f"namespace {namespace}: {exc}", delay=RETRY_DELAY) \
                from None

    def changed(**kwargs: Any) -> None:  # kopf passes the indexes by name among kwargs
        run(kwargs["namespace"], kwargs)

    def tick(**kwargs: Any) -> None:
        if is_due(kwargs["body"], namespaces.clock(), resync):
            run(kwargs["namespace"], kwargs)

    for kind, plural in PLURALS.items():
        kopf.index(GROUP, VERSION, plural, id=plural, registry=registry)(_indexed)
        # a shard hears only of its own fleets (it still indexes all: the declaration's)
        selector = namespaces.fleet_selector if kind == "DeviceFleet" else None
        labels = dict(selector) if selector else None
        for event in (kopf.on.create, kopf.on.update, kopf.on.resume):
            event(GROUP, VERSION, plural, labels=labels, registry=registry)(changed)
        kopf.on.delete(GROUP, VERSION, plural, labels=labels, optional=True,
                       registry=registry)(changed)
        if kind in TIMED:
            kopf.timer(GROUP, VERSION, plural, interval=resync.total_seconds(), labels=labels,
                       registry=registry)(tick)
    return registry
