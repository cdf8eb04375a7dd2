"""kopf handlers: thin. Any change to a fleetpki object reconciles its namespace (a change to a
cluster-wide CA, the cluster scope); timers reconcile what comes due (renewals, CRLs, retries
after backoff)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from controller import jobs
from controller.api.crds import GROUP, NAMESPACED_PLURALS, PLURALS, VERSION
from controller.operator.cluster import CA_CHANGES
from controller.operator.due import is_due
from controller.operator.namespaces import Namespaces
from controller.operator.tls_secrets import TLSSecretsError
from controller.sources.kube import cluster_authorities_used

TIMED = ("CertificateAuthority", "DeviceFleet")
RETRY_DELAY = 30  # seconds before kopf retries a run that failed for a transient reason
CLUSTER_INDEX = PLURALS["ClusterCertificateAuthority"]
CLUSTER_KEY = ""  # the one key of the cluster-scoped objects' index


def _indexed(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, Any] | None:
    """Index value: the object as declared now; objects being deleted are left out."""
    if body.metadata.get("deletionTimestamp") or namespace is None:
        return None
    return {namespace: copy.deepcopy(dict(body))}


def _cluster_indexed(body: kopf.Body, **_: Any) -> dict[str, Any] | None:
    """Index value of a cluster-scoped object (all under one key)."""
    if body.metadata.get("deletionTimestamp"):
        return None
    return {CLUSTER_KEY: copy.deepcopy(dict(body))}


def build_registry(namespaces: Namespaces, resync: timedelta) -> kopf.OperatorRegistry:
    """Index every kind by namespace; on any change or due timer, reconcile the namespace. A
    change to a cluster-wide CA reconciles the cluster scope, then, if a CA certificate was
    made, every namespace whose fleets issue from cluster-wide CAs."""
    registry = kopf.OperatorRegistry()
    indexes = list(NAMESPACED_PLURALS.values())

    def cluster_bodies(found: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        return list(found[CLUSTER_INDEX].get(CLUSTER_KEY, []))

    def run(namespace: str, found: Mapping[str, Any]) -> None:
        def bodies() -> Iterable[Mapping[str, Any]]:  # copies already (see _indexed)
            return [b for plural in indexes for b in list(found[plural].get(namespace, []))]
        try:
            namespaces.reconcile(namespace, bodies, lambda: cluster_bodies(found))
        except (ApiException, jobs.InventoryError, jobs.KeyStoreError, OSError,
                TLSSecretsError) as exc:
            raise kopf.TemporaryError(f"namespace {namespace}: {exc}", delay=RETRY_DELAY) \
                from None

    def run_cluster(found: Mapping[str, Any]) -> None:
        try:
            report = namespaces.cluster.reconcile(cluster_bodies(found))
        except (ApiException, jobs.InventoryError, jobs.KeyStoreError, OSError) as exc:
            raise kopf.TemporaryError(f"cluster-wide CAs: {exc}", delay=RETRY_DELAY) from None
        if report is None or not any(report.result.done.get(a) for a in CA_CHANGES):
            return
        fleets = found[NAMESPACED_PLURALS["DeviceFleet"]]
        authorities = {b["metadata"]["name"]: b for b in cluster_bodies(found)}
        for namespace in sorted(fleets):
            if cluster_authorities_used(list(fleets.get(namespace, [])), authorities):
                run(namespace, found)

    def changed(**kwargs: Any) -> None:  # kopf passes the indexes by name among kwargs
        run(kwargs["namespace"], kwargs)

    def tick(**kwargs: Any) -> None:
        if is_due(kwargs["body"], namespaces.clock(), resync):
            run(kwargs["namespace"], kwargs)

    def cluster_changed(**kwargs: Any) -> None:
        run_cluster(kwargs)

    def cluster_tick(**kwargs: Any) -> None:
        if is_due(kwargs["body"], namespaces.clock(), resync):
            run_cluster(kwargs)

    kopf.index(GROUP, VERSION, CLUSTER_INDEX, id=CLUSTER_INDEX, registry=registry)(
        _cluster_indexed)
    for event in (kopf.on.create, kopf.on.update, kopf.on.resume):
        event(GROUP, VERSION, CLUSTER_INDEX, registry=registry)(cluster_changed)
    kopf.on.delete(GROUP, VERSION, CLUSTER_INDEX, optional=True, registry=registry)(
        cluster_changed)
    kopf.timer(GROUP, VERSION, CLUSTER_INDEX, interval=resync.total_seconds(),
               registry=registry)(cluster_tick)
    for kind, plural in NAMESPACED_PLURALS.items():
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
