"""`fleetpki operator` against the Kubernetes API emulator: objects in, `.status` out."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client
from prometheus_client import REGISTRY

from controller import jobs
from tests.kube_emulator import RunningEmulator, wait_for
from tests.kube_objects import (
    CAS,
    FLEETS,
    KEYS_NAMESPACE,
    MERGE,
    REQUESTED_AT,
    authority,
    condition,
    fleet,
    free_port,
    is_ready,
    profile,
    running_operator,
    scrape,
)
from tests.kube_objects import (
    NAMESPACE as NS,
)


def declare(kube: RunningEmulator, devices: list[str] | None, **spec: Any) -> None:
    for body in (authority(NS), profile(NS), fleet(NS, devices, **spec)):
        kube.create(body)


def patch_fleet(api: client.ApiClient, body: dict[str, Any], name: str = "sensors") -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "fleetpki.io", "v1alpha1", NS, "devicefleets", name, body, _content_type=MERGE)


def sensors_when(kube: RunningEmulator, check: Any, timeout: float = 60) -> dict[str, Any]:
    """The fleet once `check(fleet)` holds (its status written for its current generation)."""
    found: dict[str, Any] = wait_for(
        lambda: (f := kube.get(FLEETS, NS, "sensors")) and check(f) and f, timeout=timeout)
    return found


def test_a_fleet_converges_and_status_follows_changes(kube_emulator: RunningEmulator,
                                                      api: client.ApiClient,
                                                      tmp_path: Path) -> None:
    declare(kube_emulator, ["s-1", "s-2", "s-3"])
    health, metrics = free_port(), free_port()
    labels = {"action": "issue", "namespace": NS}
    issued_before = REGISTRY.get_sample_value("fleetpki_certificate_actions_total", labels) or 0
    with running_operator(tmp_path / "state", (NS,), health_port=health, metrics_port=metrics):
        sensors = sensors_when(kube_emulator, is_ready)
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=10) as probe:
            assert probe.status == 200  # kopf's liveness endpoint
        applied = f'fleetpki_reconciles_total{{namespace="{NS}",result="applied"}}'
        exposition = wait_for(lambda: applied in (text := scrape(metrics)) and text)
        assert 'fleetpki_certificate_actions_total{action="issue"' in exposition
        gauge = (f'fleetpki_certificates{{ca="devices-ca",fleet="sensors",namespace="{NS}",'
                 'state="active"} 3.0')  # the namespace's inventory, read at scrape time
        assert gauge in exposition and f'fleetpki_inventory_up{{namespace="{NS}"}} 1.0' \
            in exposition
        assert "s-1" not in exposition  # device ids are never labels
        assert REGISTRY.get_sample_value("fleetpki_certificate_actions_total", labels) == \
            issued_before + 3  # counters are per process: other tests may have counted before
        assert sensors["status"]["devices"]["active"] == 3
        assert sensors["status"]["observedGeneration"] == sensors["metadata"]["generation"]
        ca = kube_emulator.get(CAS, NS, "devices-ca")
        assert is_ready(ca) and ca["status"]["certificate"]["serial"]

        patch_fleet(api, {"spec": {"devices": [{"id": "s-1"}, {"id": "s-2"}, {"id": "s-3"},
                                               {"id": "s-4"},
                                               {"id": "s-2", "revoked": None}]}})
        patch_fleet(api, {"spec": {"devices": [
            {"id": "s-1"}, {"id": "s-2", "revoked": {"reason": "keyCompromise"}},
            {"id": "s-3"}, {"id": "s-4"}]}})
        sensors = sensors_when(kube_emulator, lambda f: is_ready(f) and
                               f["status"]["devices"]["revoked"] == 1)
        assert sensors["status"]["devices"]["active"] == 3  # s-1, s-3, s-4
        ca = kube_emulator.get(CAS, NS, "devices-ca")
        assert ca["status"]["crl"]["entries"] == 1

    keys = client.CoreV1Api(api).list_namespaced_secret(KEYS_NAMESPACE).items
    assert {s.metadata.labels["fleetpki.io/blob"] for s in keys} == {"kek", "ca-key",
                                                                      "audit-key"}
    assert all(not s.metadata.owner_references for s in keys)
    assert not (tmp_path / "state" / "namespaces" / NS / "keys").exists(), "no CA key files"
    events = client.CoreV1Api(api).list_namespaced_event(NS).items
    issued = [e for e in events if e.reason == "Issued"]
    assert issued and all(e.involved_object.name == "sensors" for e in issued)
    assert {e.message for e in issued} >= {"3 device certificate(s) issued"}
    assert any(e.reason == "Revoked" and e.message == "1 device certificate(s) revoked"
               for e in events)


def test_a_missing_issuer_stalls_with_the_field_then_converges_when_it_appears(
        kube_emulator: RunningEmulator, tmp_path: Path) -> None:
    kube_emulator.create(profile(NS))
    kube_emulator.create(fleet(NS, ["s-1"], issuer="nowhere-ca"))
    with running_operator(tmp_path / "state", (NS,)):
        sensors = sensors_when(kube_emulator,
                               lambda f: condition(f, "Stalled").get("status") == "True")
        stalled = condition(sensors, "Stalled")
        assert stalled["reason"] == "InvalidSpec"
        assert "spec.issuerRef.name" in stalled["message"] and "nowhere-ca" in \
            stalled["message"]
        assert "(attempt 1; next automatic retry at" in stalled["message"]
        assert sensors["status"]["failedAttempts"] == 1
        assert condition(sensors, "Ready")["status"] == "False"
        kube_emulator.create(authority(NS, "nowhere-ca"))
        sensors = sensors_when(kube_emulator, is_ready)
        assert "failedAttempts" not in sensors["status"]


def test_a_policy_deny_stalls_the_fleet(kube_emulator: RunningEmulator, api: client.ApiClient,
                                        tmp_path: Path) -> None:
    declare(kube_emulator, ["s-1", "rogue-1"])
    patch_fleet(api, {"metadata": {"annotations": {
        "fleetpki.io/device-id-pattern": "^s-[0-9]+$"}}})
    with running_operator(tmp_path / "state", (NS,)):
        sensors = sensors_when(kube_emulator,
                               lambda f: condition(f, "Stalled").get("status") == "True")
        assert "policy denial" in condition(sensors, "Stalled")["message"]
        assert sensors["status"]["attention"][0]["device"] == "rogue-1"
    events = client.CoreV1Api(api).list_namespaced_event(NS).items
    assert [e.type for e in events if e.reason == "Denied"] == ["Warning"]


def test_the_reconcile_annotation_is_echoed(kube_emulator: RunningEmulator,
                                            api: client.ApiClient, tmp_path: Path) -> None:
    declare(kube_emulator, ["s-1"])
    with running_operator(tmp_path / "state", (NS,)):
        sensors_when(kube_emulator, is_ready)
        patch_fleet(api, {"metadata": {"annotations": {REQUESTED_AT: "2026-11-29T12:00:00Z"}}})
        sensors = sensors_when(kube_emulator, lambda f: (f.get("status") or {}).get(
            "lastHandledReconcileAt") == "2026-11-29T12:00:00Z")
        assert is_ready(sensors)


def test_a_config_map_fleet(kube_emulator: RunningEmulator, tmp_path: Path) -> None:
    rows = "\n".join(["id,labels.site", *(f"cm-{i},berlin" for i in range(40))]) + "\n"
    kube_emulator.create({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "sensors-list", "namespace": NS},
                          "data": {"devices.csv": rows}})
    declare(kube_emulator, None, deviceSource={"configMapRef": [{"name": "sensors-list"}]})
    with running_operator(tmp_path / "state", (NS,)):
        sensors = sensors_when(kube_emulator, is_ready)
    assert sensors["status"]["devices"]["active"] == 40


@pytest.fixture
def artifact_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Flux-like artifact (tar.gz with fleets/sensors.jsonl) served on loopback:
    (url, digest)."""
    payload = "".join(f'{{"id": "oci-{i}"}}\n' for i in range(25)).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member = tarfile.TarInfo("fleets/sensors.jsonl")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    root = tmp_path / "artifacts"
    root.mkdir()
    (root / "fleet.tar.gz").write_bytes(buffer.getvalue())
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler,
                                                           directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield (f"http://127.0.0.1:{server.server_address[1]}/fleet.tar.gz",
               "sha256:" + hashlib.sha256(buffer.getvalue()).hexdigest())
    finally:
        server.shutdown()
        server.server_close()


def test_a_flux_artifact_fleet(kube_emulator: RunningEmulator, api: client.ApiClient,
                               artifact_server: tuple[str, str], tmp_path: Path) -> None:
    url, digest = artifact_server
    kube_emulator.create({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                          "metadata": {"name": "fleet-repo", "namespace": NS},
                          "spec": {"url": "https://git.example/fleet", "interval": "1m"}})
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        "source.toolkit.fluxcd.io", "v1", NS, "gitrepositories", "fleet-repo",
        {"status": {"observedGeneration": 1,
                    "artifact": {"url": url, "digest": digest, "revision": "main@sha1:abc"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                                    "message": "stored", "lastTransitionTime":
                                    "2026-11-29T00:00:00Z"}]}}, _content_type=MERGE)
    declare(kube_emulator, None, deviceSource={
        "sourceRef": {"kind": "GitRepository", "name": "fleet-repo"},
        "path": "fleets/sensors.jsonl"})
    with running_operator(tmp_path / "state", (NS,)):
        sensors = sensors_when(kube_emulator, is_ready)
    assert sensors["status"]["devices"]["active"] == 25


def test_a_lost_state_directory_never_makes_a_second_ca(kube_emulator: RunningEmulator,
                                                        tmp_path: Path) -> None:
    declare(kube_emulator, ["s-1"])
    with running_operator(tmp_path / "state", (NS,)):
        serial = kube_emulator.get(CAS, NS, "devices-ca") and sensors_when(
            kube_emulator, is_ready) and kube_emulator.get(CAS, NS, "devices-ca")
    assert serial
    first = serial["status"]["certificate"]["serial"]
    shutil.rmtree(tmp_path / "state")  # the volume is gone; the Secrets and .status are not
    with running_operator(tmp_path / "state", (NS,)):
        ca = wait_for(lambda: (c := kube_emulator.get(CAS, NS, "devices-ca"))
                      and condition(c, "Stalled").get("status") == "True" and c, timeout=60)
    message = condition(ca, "Stalled")["message"]
    assert "exists already" in message and first in message
    assert ca["status"]["certificate"]["serial"] == first
    with jobs.StateDir(tmp_path / "state" / "namespaces" / NS).reader() as inventory:
        assert inventory.ca_names() == []


def ca_key_secrets(core: client.CoreV1Api) -> list[client.V1Secret]:
    return [s for s in core.list_namespaced_secret(KEYS_NAMESPACE).items
            if s.metadata.labels["fleetpki.io/blob"] == "ca-key"]


def test_an_unreadable_ca_key_secret_is_an_error_not_a_new_ca(
        kube_emulator: RunningEmulator, api: client.ApiClient, tmp_path: Path) -> None:
    declare(kube_emulator, ["s-1"])
    core = client.CoreV1Api(api)
    with running_operator(tmp_path / "state", (NS,)):
        sensors_when(kube_emulator, is_ready)
        (key,) = ca_key_secrets(core)
        kube_emulator.fail_next("GET", f"/secrets/{key.metadata.name}", 403, count=None)
        patch_fleet(api, {"spec": {"devices": [{"id": "s-1"}, {"id": "s-2"}]}})
        sensors = sensors_when(kube_emulator,
                               lambda f: condition(f, "Stalled").get("status") == "True")
    message = condition(sensors, "Stalled")["message"]
    assert key.metadata.name in message and "403" in message
    assert sensors["status"]["devices"]["active"] == 1
    assert len(ca_key_secrets(core)) == 1, "no second CA key"


def test_a_ca_key_secret_holding_another_key_is_an_error_not_a_new_ca(
        kube_emulator: RunningEmulator, api: client.ApiClient, tmp_path: Path) -> None:
    """A Secret restored from the wrong backup: it is there, but does not decrypt."""
    declare(kube_emulator, ["s-1"])
    core = client.CoreV1Api(api)
    with running_operator(tmp_path / "state", (NS,)):
        sensors_when(kube_emulator, is_ready)
        (key,) = ca_key_secrets(core)
        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"another passphrase"))
        core.patch_namespaced_secret(key.metadata.name, KEYS_NAMESPACE,
                                     {"data": {"blob": base64.b64encode(other).decode()}})
        patch_fleet(api, {"spec": {"devices": [{"id": "s-1"}, {"id": "s-2"}]}})
        sensors = sensors_when(kube_emulator,
                               lambda f: condition(f, "Stalled").get("status") == "True")
    message = condition(sensors, "Stalled")["message"]
    assert "cannot decrypt CA key" in message and "BEGIN" not in message
    assert sensors["status"]["devices"]["active"] == 1
    ca = kube_emulator.get(CAS, NS, "devices-ca")
    with jobs.StateDir(tmp_path / "state" / "namespaces" / NS).reader() as inventory:
        assert [r.serial for r in inventory.ca_generations("devices-ca")] == \
            [ca["status"]["certificate"]["serial"]], "no second CA"


def test_trusted_tenants_bind_namespaces(kube_emulator: RunningEmulator, api: client.ApiClient,
                                         tmp_path: Path) -> None:
    """With --policies DIR, a namespace's objects belong to the tenant naming the namespace:
    a namespace no tenant names is refused, and the tenant's allowances bind its fleets."""
    trusted = tmp_path / "platform"
    trusted.mkdir()

    def tenant(namespace: str) -> None:
        """Replace the tenants file at once, as a mounted ConfigMap changes: a reconcile
        running meanwhile reads the old file or the new, never an empty one."""
        written = trusted / "tenants.yaml.new"
        written.write_text(
            "apiVersion: fleetpki.io/v1alpha1\nkind: Tenant\nmetadata: {name: sensors}\n"
            f"spec:\n  namespaces: [{namespace}]\n"
            "  allowed: {deviceIdPatterns: ['^s-[0-9]+$']}\n", encoding="utf-8")
        written.replace(trusted / "tenants.yaml")

    tenant("elsewhere")
    declare(kube_emulator, ["s-1", "rogue-1"])
    with running_operator(tmp_path / "state", (NS,), policies=trusted):
        sensors = sensors_when(kube_emulator,
                               lambda f: condition(f, "Stalled").get("status") == "True")
        assert f"namespace '{NS}' is in no tenant's namespaces (sensors)" in \
            condition(sensors, "Stalled")["message"]
        assert kube_emulator.get(CAS, NS, "devices-ca")["status"].get("certificate") is None
        tenant(NS)
        patch_fleet(api, {"metadata": {"annotations": {REQUESTED_AT: "again"}}})
        sensors = sensors_when(kube_emulator, lambda f: "policy denial" in condition(
            f, "Stalled").get("message", ""))
        assert [(a["device"], a["reason"]) for a in sensors["status"]["attention"]] == [
            ("rogue-1", "policy tenants/device-id: device id matches none of the tenant's "
             "allowed.deviceIdPatterns")]
        assert sensors["status"]["devices"]["active"] == 1  # s-1 issued
