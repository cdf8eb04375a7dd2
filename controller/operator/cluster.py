"""The operator's cluster scope: the ClusterCertificateAuthorities, kept once for the cluster.

Its state directory (`<state root>/cluster`, key Secrets of scope `cluster.fleetpki.io`, the
PostgreSQL schema `k8s__cluster`) holds the CAs as a namespace's holds its own: created,
renewed and their CRLs published by the same job. The namespaces that issue from them copy
their certificates into their own inventories and read their keys from here; the CRLs list the
revocations that every namespace recorded under them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client

from controller import jobs
from controller.operator.metrics import ACTIONS, DURATION, reconciled
from controller.sources.kube import write_cluster_declaration
from controller.status.kube import BACKOFF_BASE, KubeStatus

log = logging.getLogger("fleetpki.operator")
CA_CHANGES = ("create-ca", "renew-ca")  # what the namespaces issuing from the CAs must see
METRICS_LABEL = ""  # the `namespace` label of the cluster scope's reconciles and actions


@dataclass
class ClusterScope:
    """Reconciles the cluster-wide CAs, one run at a time."""

    api: client.ApiClient
    state_root: Path
    keys_namespace: str
    namespace_inventories: Callable[[], list[Path | str]]  # whose revocations the CRLs list
    clock: Callable[[], datetime] = jobs.now_utc
    backoff_base: timedelta = BACKOFF_BASE
    policies: Path | None = None
    database_url: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _announced: dict[str, str | None] = field(default_factory=dict)

    def state(self) -> jobs.StateDir:
        return jobs.StateDir.for_cluster(self.state_root / "cluster", self.api,
                                         self.keys_namespace, self.database_url)

    def ready(self, names: Iterable[str]) -> bool:
        """Whether each of the CAs has a certificate already."""
        return jobs.cluster_ready(self.state(), list(names))

    def reconcile(self, bodies: Iterable[Mapping[str, Any]]) -> jobs.ApplyReport | None:
        """Converge the cluster-wide CAs and their CRLs; None when the run was refused (the
        reasons are on the objects' Stalled conditions)."""
        objects = list(bodies)
        result = "error"
        with self._lock, DURATION.labels(METRICS_LABEL).time():
            try:
                report = self._apply(objects)
                result = "applied"
            except jobs.REFUSALS as exc:
                result = "refused"
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("cluster-wide CAs not converged: %s", first)
                return None
            finally:
                reconciled(METRICS_LABEL, result)
        for action, number in report.result.done.items():
            ACTIONS.labels(METRICS_LABEL, action).inc(number)
        done = ", ".join(f"{k} {v}" for k, v in sorted(report.result.done.items()))
        log.info("cluster-wide CAs reconciled: %s", done or "no changes")
        return report

    def _apply(self, objects: list[Mapping[str, Any]]) -> jobs.ApplyReport:
        state = self.state()
        declaration = state.path / "declaration"
        write_cluster_declaration(objects, declaration)
        status = KubeStatus(self.api, None, objects, self.backoff_base, self._announced)
        return jobs.apply(declaration, state, self.clock(), status_store=status,
                          policies=jobs.PolicySource(directory=self.policies, cluster=True),
                          elsewhere=self.namespace_inventories())
