"""One namespace's reconcile: its objects -> a declaration directory -> the job -> `.status`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client

from controller import jobs
from controller.operator.cluster import ClusterScope
from controller.operator.metrics import ACTIONS, DURATION, reconciled
from controller.operator.tls_secrets import FAILED_REASON, TLSSecretSync, opted_in
from controller.sources.kube import Readers, cluster_authorities_used, write_declaration
from controller.status.kube import BACKOFF_BASE, KubeStatus

log = logging.getLogger("fleetpki.operator")
Bodies = Callable[[], Iterable[Mapping[str, Any]]]
REVOKING = ("revoke", "renew", "rekey")  # done actions that revoke: the CRLs list them


def state_path(root: Path, namespace: str) -> Path:
    """A namespace's own state directory: inventory, public files and declaration."""
    return root / "namespaces" / namespace


def namespace_inventories(root: Path) -> dict[str, Path]:
    """namespace -> inventory file, for each namespace with a state directory under `root`."""
    pattern = (state_path(Path(), "*") / "inventory.db").as_posix()
    return {path.parent.name: path for path in sorted(root.glob(pattern))}


def selects(selector: Mapping[str, str], body: Mapping[str, Any]) -> bool:
    """Whether the object's labels have every `selector` label with its value."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass
class Namespaces:
    """Reconciles namespaces, one run at a time per namespace. A request made before a run
    started is covered by that run (it reads the objects when it starts) and is not repeated:
    a burst of changes costs one run, not one per object."""

    api: client.ApiClient
    state_root: Path
    keys_namespace: str  # where the CA key Secrets are (the operator's namespace)
    readers: Readers
    clock: Callable[[], datetime] = jobs.now_utc
    backoff_base: timedelta = BACKOFF_BASE
    policies: Path | None = None  # trusted policy directory: its Tenants map namespaces
    database_url: str | None = None  # PostgreSQL: each namespace's inventory in its own schema
    fleet_selector: Mapping[str, str] | None = None  # a shard: only fleets with these labels
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _announced: dict[str, dict[str, str | None]] = field(default_factory=dict)
    _tls_announced: dict[str, dict[str, str]] = field(default_factory=dict)
    _inventories: dict[str, Path | str] = field(default_factory=dict)
    cluster: ClusterScope = field(init=False)

    def __post_init__(self) -> None:
        self.cluster = ClusterScope(self.api, self.state_root, self.keys_namespace,
                                    self._namespace_inventories, self.clock, self.backoff_base,
                                    self.policies, self.database_url)

    def _namespace_inventories(self) -> list[Path | str]:
        if self.database_url is not None:
            return list(jobs.namespace_databases(self.database_url))
        return list(namespace_inventories(self.state_root).values())

    def _lock(self, namespace: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(namespace, threading.Lock())

    def reconcile(self, namespace: str, bodies: Bodies,
                  cluster_bodies: Bodies = lambda: ()) -> jobs.ApplyReport | None:
        """Converge the namespace (its objects are `bodies`; the cluster-wide CAs are
        `cluster_bodies`); None when another run covered the request or the run was refused
        (its reasons are on the objects' Stalled conditions)."""
        requested = time.monotonic()
        with self._lock(namespace):
            if self._started.get(namespace, float("-inf")) > requested:
                return None
            self._started[namespace] = time.monotonic()
            with DURATION.labels(namespace).time():
                return self._run(namespace, list(bodies()), list(cluster_bodies()))

    def inventories(self) -> dict[str, Path | str]:
        """namespace -> inventory (file or URL) of the namespaces reconciled, for metrics; with
        SQLite, also those of earlier processes (their files under the state root)."""
        found: dict[str, Path | str] = {}
        if self.database_url is None:
            found.update(namespace_inventories(self.state_root))
        with self._guard:
            found.update(self._inventories)
        return dict(sorted(found.items()))

    def _owned(self, objects: list[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]],
                                                                 frozenset[str]]:
        """The objects whose status this operator writes, and its fleets (empty: all): with a
        fleet selector, the fleets it selects and every object that is not a fleet."""
        if self.fleet_selector is None:
            return objects, frozenset()
        selector = self.fleet_selector
        owned = [b for b in objects if b["kind"] != "DeviceFleet" or selects(selector, b)]
        return owned, frozenset(b["metadata"]["name"] for b in owned
                                if b["kind"] == "DeviceFleet")

    def _run(self, namespace: str, objects: list[Mapping[str, Any]],
             cluster_objects: list[Mapping[str, Any]]) -> jobs.ApplyReport | None:
        owned, fleets = self._owned(objects)
        if self.fleet_selector is not None and not fleets:
            log.debug("namespace %s: no fleet matches the fleet selector", namespace)
            return None
        result = "error"
        try:
            used = cluster_authorities_used(
                objects, {b["metadata"]["name"]: b for b in cluster_objects})
            state = jobs.StateDir.for_namespace(state_path(self.state_root, namespace),
                                                self.api, self.keys_namespace, namespace,
                                                self.database_url,
                                                self.cluster.state() if used else None)
            if self.database_url is not None:
                with self._guard:
                    self._inventories[namespace] = state.inventory_location
            self._use_cluster_cas(state, [b["metadata"]["name"] for b in used], cluster_objects)
            declaration = state.path / "declaration"
            problems = write_declaration(namespace, [*objects, *used], declaration,
                                         self.readers)
            status = KubeStatus(self.api, namespace, owned, self.backoff_base,
                                self._announced.setdefault(namespace, {}))
            try:
                report = jobs.apply(declaration, state, self.clock(), status_store=status,
                                    source_problems=problems, fleets=fleets,
                                    policies=jobs.PolicySource(directory=self.policies,
                                                               namespace=namespace))
            except jobs.REFUSALS as exc:
                result = "refused"
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("namespace %s not converged: %s", namespace, first)
                return None
            for action, number in report.result.done.items():
                ACTIONS.labels(namespace, action).inc(number)
            if used and any(report.result.done.get(action) for action in REVOKING):
                self.cluster.reconcile(cluster_objects)  # their CRLs list our revocations
            done = ", ".join(f"{k} {v}" for k, v in sorted(report.result.done.items()))
            log.info("namespace %s reconciled: %s", namespace, done or "no changes")
            self._sync_tls_secrets(namespace, state, owned, status)
            result = "applied"
            return report
        finally:
            reconciled(namespace, result)

    def _use_cluster_cas(self, state: jobs.StateDir, names: list[str],
                         cluster_objects: list[Mapping[str, Any]]) -> None:
        """Make the cluster-wide CAs the namespace uses exist (the first use reconciles the
        cluster scope now, not at its next event) and copy their certificates in."""
        if not names:
            return
        if not self.cluster.ready(names):
            self.cluster.reconcile(cluster_objects)
        jobs.mirror_cluster_cas(state, names)

    def _sync_tls_secrets(self, namespace: str, state: jobs.StateDir,
                          objects: list[Mapping[str, Any]], status: KubeStatus) -> None:
        """The opt-in per-device Secrets, from the inventory just applied (raises
        TLSSecretsError, retried, when some could not be written)."""
        now = self.clock()
        sync = TLSSecretSync(self.api, namespace, state,
                             lambda body, message: status.event(body, "Warning", FAILED_REASON,
                                                                message, now),
                             self._tls_announced.setdefault(namespace, {}))
        written = sync.sync(opted_in(objects))
        if any(written.values()):
            log.info("namespace %s device TLS Secrets: %s", namespace,
                     ", ".join(f"{k} {v}" for k, v in sorted(written.items()) if v))
