"""`fleetpki operator`: settings, credentials and the kopf event loop."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import kopf

from controller import jobs
from controller.operator import metrics
from controller.operator.handlers import build_registry
from controller.operator.namespaces import Namespaces
from controller.operator.readers import cluster_readers
from controller.status.kube import BACKOFF_BASE


@dataclass(frozen=True)
class OperatorOptions:
    state_root: Path
    keys_namespace: str  # the operator's namespace: CA keys are Secrets there
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    standalone: bool = False
    peering: str = "fleetpki"
    resync: timedelta = timedelta(minutes=5)
    health_port: int | None = None
    metrics_port: int | None = None
    priority: int | None = None  # kopf peering: the highest acts; default random per process
    backoff_base: timedelta = BACKOFF_BASE
    policies: Path | None = None  # trusted policies and Tenants (namespaces' tenants)
    database_url: str | None = None  # PostgreSQL: one schema per namespace
    fleet_selector: dict[str, str] | None = None  # a shard: only the fleets with these labels


def shard_name(selector: Mapping[str, str]) -> str:
    """A shard's own name, from its fleet selector: its finalizer and annotations."""
    canonical = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
    return "shard-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def settings(options: OperatorOptions) -> kopf.OperatorSettings:
    result = kopf.OperatorSettings()
    result.scanning.disabled = True  # the resources are known; no cluster-wide CRD watch
    result.posting.enabled = False  # our own events, one per fleet and action
    if options.fleet_selector is not None:
        # shards see the same CAs, profiles and policies: each keeps its own finalizer (else a
        # shard removes the one another put on its fleets) and its own record of what it handled
        prefix = f"{shard_name(options.fleet_selector)}.fleetpki.io"
        result.persistence.finalizer = f"{prefix}/finalizer"
        result.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
        result.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix)
    return result


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else $KUBECONFIG (as read now, like `jobs.api_client`)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def run(options: OperatorOptions, stop: threading.Event | None = None,
        ready: threading.Event | None = None) -> None:
    """Run until stopped (SIGTERM/SIGINT, or `stop` when given)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s "
                        "%(message)s")
    api = jobs.api_client()
    namespaces = Namespaces(api, options.state_root, options.keys_namespace,
                            cluster_readers(api), backoff_base=options.backoff_base,
                            policies=options.policies, database_url=options.database_url,
                            fleet_selector=options.fleet_selector)
    if options.metrics_port is not None:
        metrics.serve(options.metrics_port, namespaces.inventories)
    registry = build_registry(namespaces, options.resync)
    kopf.on.login(registry=registry)(_login)
    health = (f"http://0.0.0.0:{options.health_port}/healthz"
              if options.health_port is not None else None)
    # operators of equal priority would both act: a random one makes exactly one active
    priority = options.priority if options.priority is not None else \
        secrets.randbelow(2**31 - 1) + 1
    kopf.run(registry=registry, settings=settings(options), standalone=options.standalone,
             peering_name=None if options.standalone else options.peering, priority=priority,
             liveness_endpoint=health, clusterwide=not options.namespaces,
             namespaces=options.namespaces, stop_flag=stop, ready_flag=ready)
