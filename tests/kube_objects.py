"""Fleetpki objects as a cluster holds them, and the operator run in a thread, for the
Kubernetes tests (emulator and real API server alike)."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from controller.operator.main import OperatorOptions, run

API = "fleetpki.io/v1alpha1"
REQUESTED_AT = "fleetpki.io/reconcile.requestedAt"
KEYS_NAMESPACE = "fleetpki-system"
NAMESPACE = "fleet-demo"  # of the emulator tests
FLEETS = "fleetpki.io/v1alpha1/devicefleets"
CAS = "fleetpki.io/v1alpha1/certificateauthorities"
PASSPHRASE = "operator-tests-passphrase"
MERGE = "application/merge-patch+json"


def authority(namespace: str, name: str = "devices-ca") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "CertificateAuthority",
            "metadata": {"name": name, "namespace": namespace, "labels": {"team": "platform"}},
            "spec": {"type": "root", "subject": {"commonName": f"{name} (test)"},
                     "keyAlgorithm": "ECDSA-P256", "duration": "8760h", "pathLength": 0,
                     "crl": {"duration": "168h"}}}


def profile(namespace: str, name: str = "mqtt-client") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "CertificateProfile",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"keyAlgorithm": "ECDSA-P256", "keyGeneration": "server",
                     "duration": "2160h", "renewBefore": "720h",
                     "usages": ["digital signature", "client auth"],
                     "subject": {"commonName": "{{ device.id }}"}}}


def fleet(namespace: str, devices: list[str] | None = None, name: str = "sensors",
          issuer: str = "devices-ca", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": API, "kind": "DeviceFleet",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "platform"}},
        "spec": {"issuerRef": {"name": issuer}, "profileRef": {"name": "mqtt-client"}, **spec}}
    if devices is not None:
        body["spec"]["devices"] = [{"id": d} for d in devices]
    return body


def condition(body: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any]:
    conditions = ((body or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


def is_ready(body: Mapping[str, Any] | None) -> bool:
    """Ready=True for the object's current generation (what `kubectl wait` and Flux check)."""
    ready = condition(body, "Ready")
    return ready.get("status") == "True" and \
        ready.get("observedGeneration") == (body or {}).get("metadata", {}).get("generation")


@contextmanager
def running_operator(state_root: Path, namespaces: tuple[str, ...], **options: Any
                     ) -> Iterator[threading.Event]:
    """`fleetpki operator` in a thread (credentials from $KUBECONFIG); stopped on exit."""
    stop, ready = threading.Event(), threading.Event()
    settings = OperatorOptions(state_root, options.pop("keys_namespace", KEYS_NAMESPACE),
                               namespaces, standalone=options.pop("standalone", True),
                               resync=options.pop("resync", timedelta(seconds=1)), **options)
    thread = threading.Thread(target=run, args=(settings, stop, ready), name="operator")
    thread.start()
    try:
        assert ready.wait(30), "the operator did not start"
        yield stop
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the operator did not stop"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int) -> str:
    """The operator's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text: str = page.read().decode()
        return text


def reachable(url: str) -> bool:
    """Whether `url` answers at all (a server started by a test is up)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
