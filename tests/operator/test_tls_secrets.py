"""Opt-in per-device `kubernetes.io/tls` Secrets (`DeviceFleet.spec.tlsSecrets`) against the
Kubernetes API emulator: written from the inventory after each apply, replaced on renewal,
deleted on revocation, refused above the limit."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client

from controller.api.resources import MAX_TLS_SECRETS
from controller.operator.tls_secrets import device_name
from tests.kube_emulator import RunningEmulator, wait_for
from tests.kube_objects import (
    API,
    FLEETS,
    MERGE,
    REQUESTED_AT,
    authority,
    condition,
    fleet,
    is_ready,
    profile,
    running_operator,
)
from tests.kube_objects import (
    NAMESPACE as NS,
)

SELECTOR = "app.kubernetes.io/managed-by=fleetpki,fleetpki.io/fleet"


def secrets(api: client.ApiClient) -> dict[str, client.V1Secret]:
    found = client.CoreV1Api(api).list_namespaced_secret(NS, label_selector=SELECTOR).items
    return {s.metadata.name: s for s in found}


def serials(api: client.ApiClient) -> dict[str, str]:
    return {name: s.metadata.annotations["fleetpki.io/serial"]
            for name, s in secrets(api).items()}


def patch(api: client.ApiClient, plural: str, name: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "fleetpki.io", "v1alpha1", NS, plural, name, body, _content_type=MERGE)


def fleet_when(kube: RunningEmulator, check: Any, name: str = "sensors") -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (f := kube.get(FLEETS, NS, name)) and check(f) and f, timeout=60)
    return found


def stalled(body: dict[str, Any]) -> bool:
    return condition(body, "Stalled").get("status") == "True"


def data(secret: client.V1Secret, key: str) -> bytes:
    return base64.b64decode(secret.data[key])


def check_secret(secret: client.V1Secret, device: str, tmp_path: Path) -> None:
    """A kubernetes.io/tls Secret whose tls.crt verifies against ca.crt (openssl, strict) and
    whose tls.key is the certificate's key."""
    assert secret.type == "kubernetes.io/tls"
    assert secret.metadata.labels == {"app.kubernetes.io/managed-by": "fleetpki",
                                      "fleetpki.io/fleet": "sensors"}
    [owner] = secret.metadata.owner_references
    assert (owner.api_version, owner.kind, owner.name) == (API, "DeviceFleet", "sensors")
    assert owner.uid
    chain = x509.load_pem_x509_certificates(data(secret, "tls.crt"))
    leaf = chain[0]
    assert leaf.subject.rfc4514_string() == f"CN={device}"
    assert secret.metadata.annotations["fleetpki.io/serial"] == format(leaf.serial_number, "x")
    key = serialization.load_pem_private_key(data(secret, "tls.key"), password=None)
    assert data(secret, "tls.key").startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, public) == \
        leaf.public_key().public_bytes(serialization.Encoding.DER, public)
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    directory = tmp_path / "verify" / secret.metadata.name
    directory.mkdir(parents=True)
    (directory / "ca.crt").write_bytes(data(secret, "ca.crt"))
    (directory / "tls.crt").write_bytes(data(secret, "tls.crt"))
    done = subprocess.run([openssl, "verify", "-x509_strict", "-CAfile", "ca.crt",
                           "-untrusted", "tls.crt", "tls.crt"], cwd=directory,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "tls.crt: OK" in done.stdout, done.stdout + done.stderr


def test_a_fleet_that_opts_in_gets_one_secret_per_device_following_its_certificates(
        kube_emulator: RunningEmulator, api: client.ApiClient, tmp_path: Path) -> None:
    kube_emulator.create(authority(NS))
    kube_emulator.create(profile(NS))
    kube_emulator.create(fleet(NS, ["s-1", "s-2", "S:3"], tlsSecrets={}))
    kube_emulator.create(fleet(NS, ["o-1"], name="others"))  # does not opt in
    names = {"s-1": "sensors-s-1", "s-2": "sensors-s-2", "S:3": f"sensors-{device_name('S:3')}"}
    assert names["S:3"].startswith("sensors-s-3-")
    with running_operator(tmp_path / "state", (NS,)):
        fleet_when(kube_emulator, is_ready)
        fleet_when(kube_emulator, is_ready, "others")
        wait_for(lambda: len(secrets(api)) == 3, timeout=30)
        found = secrets(api)
        assert set(found) == set(names.values())
        for device, name in names.items():
            check_secret(found[name], device, tmp_path)
        first = serials(api)

        # nothing changed: a reconcile writes no Secret
        writes = len(secret_writes(kube_emulator))
        patch(api, "devicefleets", "sensors",
              {"metadata": {"annotations": {REQUESTED_AT: "2030-01-01T00:00:00Z"}}})
        fleet_when(kube_emulator, lambda f: (f.get("status") or {}).get(
            "lastHandledReconcileAt") == "2030-01-01T00:00:00Z")
        assert len(secret_writes(kube_emulator)) == writes
        assert serials(api) == first

        # a device revoked: its Secret goes
        patch(api, "devicefleets", "sensors", {"spec": {"devices": [
            {"id": "s-1"}, {"id": "s-2", "revoked": {"reason": "keyCompromise"}},
            {"id": "S:3"}]}})
        wait_for(lambda: "sensors-s-2" not in secrets(api), timeout=30)
        assert serials(api) == {k: v for k, v in first.items() if k != "sensors-s-2"}

        # renewal (a profile change re-issues): the Secrets follow with the new serials
        patch(api, "certificateprofiles", "mqtt-client", {"spec": {"subject": {
            "commonName": "{{ device.id }}", "organization": "Example"}}})
        wait_for(lambda: set(serials(api).values()).isdisjoint(first.values()), timeout=30)
        found = secrets(api)
        assert set(found) == {names["s-1"], names["S:3"]}
        for device in ("s-1", "S:3"):
            leaf = x509.load_pem_x509_certificates(data(found[names[device]], "tls.crt"))[0]
            assert "O=Example" in leaf.subject.rfc4514_string()

        # the fleet stops opting in: its Secrets go; the other fleet never had any
        patch(api, "devicefleets", "sensors", {"spec": {"tlsSecrets": None}})
        wait_for(lambda: not secrets(api), timeout=30)


def secret_writes(kube: RunningEmulator) -> list[Any]:
    return [r for r in kube.requests() if "/secrets" in r.url.path
            and f"/namespaces/{NS}/" in r.url.path
            and r.method.value in ("POST", "PUT", "PATCH", "DELETE")]


def test_above_the_limit_the_fleet_stalls_on_the_field_and_no_secret_is_written(
        kube_emulator: RunningEmulator, api: client.ApiClient, tmp_path: Path) -> None:
    kube_emulator.create(authority(NS))
    kube_emulator.create(profile(NS))
    devices = [f"d-{i}" for i in range(MAX_TLS_SECRETS + 1)]
    kube_emulator.create(fleet(NS, devices, tlsSecrets={}))
    with running_operator(tmp_path / "state", (NS,)):
        sensors = fleet_when(kube_emulator, stalled)
    message = condition(sensors, "Stalled")["message"]
    assert "spec.tlsSecrets" in message and str(MAX_TLS_SECRETS) in message
    assert not secrets(api) and not secret_writes(kube_emulator)


def test_a_device_keygen_profile_stalls_the_fleet(kube_emulator: RunningEmulator,
                                                  api: client.ApiClient,
                                                  tmp_path: Path) -> None:
    kube_emulator.create(authority(NS))
    device_keys = profile(NS)
    device_keys["spec"]["keyGeneration"] = "device"
    kube_emulator.create(device_keys)
    kube_emulator.create(fleet(NS, ["s-1"], tlsSecrets={"namePrefix": "tls-"}))
    with running_operator(tmp_path / "state", (NS,)):
        sensors = fleet_when(kube_emulator, stalled)
    message = condition(sensors, "Stalled")["message"]
    assert "spec.tlsSecrets" in message and "keyGeneration: device" in message
    assert not secrets(api)


def test_without_permission_the_certificates_are_applied_and_a_warning_is_told(
        kube_emulator: RunningEmulator, api: client.ApiClient, tmp_path: Path) -> None:
    """A missing RoleBinding (403 on the Secrets): the fleet is Ready, a Warning event on it
    names the HTTP status without any key material, and the operator retries."""
    kube_emulator.create(authority(NS))
    kube_emulator.create(profile(NS))
    kube_emulator.create(fleet(NS, ["s-1"], tlsSecrets={}))
    kube_emulator.fail_next("POST", f"/namespaces/{NS}/secrets", 403, count=2)
    with running_operator(tmp_path / "state", (NS,)):
        fleet_when(kube_emulator, is_ready)
        wait_for(lambda: set(secrets(api)) == {"sensors-s-1"}, timeout=60)
    events = client.CoreV1Api(api).list_namespaced_event(NS).items
    warned = [e for e in events if e.reason == "TLSSecretsFailed"]
    assert warned and all(e.type == "Warning" and e.involved_object.name == "sensors"
                          for e in warned)
    assert "Secret sensors-s-1: HTTP 403" in warned[0].message
    assert "PRIVATE KEY" not in warned[0].message
