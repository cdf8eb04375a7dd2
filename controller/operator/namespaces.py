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
from controller.operator.metrics import ACTIONS, DURATION, reconciled
from controller.operator.tls_secrets import FAILED_REASON, TLSSecretSync, opted_in
from controller.sources.kube import Readers, write_declaration
from controller.status.kube import BACKOFF_BASE, KubeStatus

log = logging.getLogger("fleetpki.operator")
Bodies = Callable[[], Iterable[Mapping[str, Any]]]


def state_path(root: Path, namespace: str) -> Path:
    """A namespace's own state directory: inventory, public files and declaration."""
    return root / "namespaces" / namespace


def namespace_inventories(root: Path) -> dict[str, Path]:
    """namespace -> inventory file, for each namespace with a state directory under `root`."""
    pattern = (state_path(Path(), "*") / "inventory.db").as_posix()
    return {path.parent.name: path for path in sorted(root.glob(pattern))}


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
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _announced: dict[str, dict[str, str | None]] = field(default_factory=dict)
    _tls_announced: dict[str, dict[str, str]] = field(default_factory=dict)

    def _lock(self, namespace: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(namespace, threading.Lock())

    def reconcile(self, namespace: str, bodies: Bodies) -> jobs.ApplyReport | None:
        """Converge the namespace; None when another run covered the request or the run was
        refused (its reasons are on the objects' Stalled conditions)."""
        requested = time.monotonic()
        with self._lock(namespace):
            if self._started.get(namespace, float("-inf")) > requested:
                return None
            self._started[namespace] = time.monotonic()
            with DURATION.labels(namespace).time():
                return self._run(namespace, list(bodies()))

    def _run(self, namespace: str, objects: list[Mapping[str, Any]]) -> jobs.ApplyReport | None:
        result = "error"
        try:
            state = jobs.StateDir.with_secret_keys(state_path(self.state_root, namespace),
                                                   self.api, self.keys_namespace, namespace)
            declaration = state.path / "declaration"
            problems = write_declaration(namespace, objects, declaration, self.readers)
            status = KubeStatus(self.api, namespace, objects, self.backoff_base,
                                self._announced.setdefault(namespace, {}))
            try:
                report = jobs.apply(declaration, state, self.clock(), status_store=status,
                                    source_problems=problems,
                                    policies=jobs.PolicySource(directory=self.policies,
                                                               namespace=namespace))
            except jobs.REFUSALS as exc:
                result = "refused"
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("namespace %s not converged: %s", namespace, first)
                return None
            for action, number in report.result.done.items():
                ACTIONS.labels(namespace, action).inc(number)
            done = ", ".join(f"{k} {v}" for k, v in sorted(report.result.done.items()))
            log.info("namespace %s reconciled: %s", namespace, done or "no changes")
            self._sync_tls_secrets(namespace, state, objects, status)
            result = "applied"
            return report
        finally:
            reconciled(namespace, result)

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
