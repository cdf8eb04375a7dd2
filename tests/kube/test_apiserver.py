"""The real-kube-apiserver tier works: a kube-apiserver 1.20 + etcd that serves the repository's
CRDs the way a real cluster does (schema, printer columns, status subresource, generation) and
enforces RBAC on the operator's identity. If any of these fail, the tier is broken, not the
operator."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from .cluster import (
    CRDS,
    OPERATOR_NAMESPACE,
    OPERATOR_SERVICE_ACCOUNT,
    OPERATOR_USER,
    ROOT,
    Cluster,
    running_cluster,
)

EXAMPLE_FLEET = ROOT / "examples" / "fleet-repo" / "fleets" / "sensors.yaml"
FLEETS = "/apis/fleetpki.io/v1alpha1/namespaces/{ns}/devicefleets"
MERGE = "application/merge-patch+json"


def new_namespace(cluster: Cluster) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    return name


def example_fleet(namespace: str) -> dict[str, Any]:
    """The example repository's `sensors` DeviceFleet, placed in `namespace`."""
    fleet: dict[str, Any] = yaml.safe_load(EXAMPLE_FLEET.read_text())
    fleet["metadata"]["namespace"] = namespace
    return fleet


def apply_fleet(cluster: Cluster, namespace: str) -> str:
    """kubectl-apply the example fleet; returns its API path."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(example_fleet(namespace)))
    return f"{FLEETS.format(ns=namespace)}/sensors"


def test_crds_apply_and_become_established(kube_cluster: Cluster) -> None:
    kube_cluster.kubectl("apply", "-f", str(CRDS))
    kube_cluster.kubectl("wait", "--for", "condition=established", "--timeout=60s",
                         "crd/devicefleets.fleetpki.io")
    served = kube_cluster.kubectl("api-resources", "--api-group=fleetpki.io", "-o", "name")
    assert sorted(served.stdout.split()) == sorted(
        f"{path.stem.split('_', 1)[1]}.fleetpki.io" for path in CRDS.glob("fleetpki.io_*.yaml"))


def test_fleet_lists_with_the_crd_printer_columns(fleetpki_crds: Cluster) -> None:
    namespace = new_namespace(fleetpki_crds)
    apply_fleet(fleetpki_crds, namespace)
    listing = fleetpki_crds.kubectl("get", "devicefleets", "-n", namespace).stdout.splitlines()
    assert listing[0].split() == ["NAME", "ISSUER", "READY", "ISSUED", "DUE", "REVOKED", "AGE"]
    assert listing[1].split()[:2] == ["sensors", "devices-ca"]
    # the short name and category from the CRD work too
    assert "sensors" in fleetpki_crds.kubectl("get", "fleet", "-n", namespace, "-o", "name").stdout
    assert "devicefleet.fleetpki.io/sensors" in fleetpki_crds.kubectl(
        "get", "fleetpki", "-n", namespace, "-o", "name").stdout


def test_schema_refuses_a_fleet_without_profile(fleetpki_crds: Cluster) -> None:
    namespace = new_namespace(fleetpki_crds)
    fleet = example_fleet(namespace)
    del fleet["spec"]["profileRef"]
    # --validate=false: the server refuses it, not kubectl's client-side OpenAPI check
    result = fleetpki_crds.kubectl("apply", "--validate=false", "-f", "-",
                                   input=json.dumps(fleet), check=False)
    assert result.returncode != 0
    assert "spec.profileRef: Required value" in result.stderr


def test_status_is_a_subresource_and_generation_follows_spec(fleetpki_crds: Cluster) -> None:
    namespace = new_namespace(fleetpki_crds)
    path = apply_fleet(fleetpki_crds, namespace)
    status, fleet = fleetpki_crds.request("GET", path)
    assert status == 200 and fleet["metadata"]["generation"] == 1

    # status written through the main resource is dropped
    status, fleet = fleetpki_crds.request(
        "PATCH", path, {"status": {"devices": {"active": 7}}}, content_type=MERGE)
    assert status == 200, fleet
    assert "status" not in fleetpki_crds.request("GET", path)[1]

    # through /status it sticks, and does not bump the generation
    report = {"observedGeneration": 1, "devices": {"declared": 9, "active": 7, "revoked": 1,
                                                   "due": 2, "expired": 0, "failed": 0},
              "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                              "message": "7 device certificate(s) current",
                              "lastTransitionTime": "2026-11-29T00:00:00Z"}]}
    status, fleet = fleetpki_crds.request(
        "PATCH", f"{path}/status", {"status": report, "spec": {"suspend": True}},
        content_type=MERGE)
    assert status == 200, fleet
    fleet = fleetpki_crds.request("GET", path)[1]
    assert fleet["status"] == report
    assert "suspend" not in fleet["spec"]  # spec written through /status is dropped
    assert fleet["metadata"]["generation"] == 1
    row = fleetpki_crds.kubectl("get", "devicefleets", "-n", namespace, "--no-headers").stdout
    assert row.split()[:6] == ["sensors", "devices-ca", "True", "7", "2", "1"]

    # a spec change bumps the generation and keeps the status
    status, fleet = fleetpki_crds.request(
        "PATCH", path, {"spec": {"suspend": True}}, content_type=MERGE)
    assert status == 200, fleet
    fleet = fleetpki_crds.request("GET", path)[1]
    assert fleet["spec"]["suspend"] is True
    assert fleet["metadata"]["generation"] == 2
    assert fleet["status"] == report


def test_rbac_denies_the_operator_before_any_binding(kube_cluster: Cluster) -> None:
    namespace = new_namespace(kube_cluster)
    kube_cluster.kubectl("create", "secret", "generic", "ca-key", "-n", namespace,
                         "--from-literal=key=not-really")
    result = kube_cluster.kubectl("get", "secrets", "-n", namespace, user="operator",
                                  check=False)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr and OPERATOR_USER in result.stderr, result.stderr
    status, body = kube_cluster.request(
        "GET", f"/api/v1/namespaces/{namespace}/secrets/ca-key", user="operator")
    assert status == 403, body
    # the admin reads it (the token authenticates; RBAC decides)
    assert kube_cluster.request(
        "GET", f"/api/v1/namespaces/{namespace}/secrets/ca-key")[0] == 200


def test_a_service_account_binding_grants_the_operator_user(kube_cluster: Cluster) -> None:
    """The static `operator` token stands in for the service account's token: a RoleBinding to
    the ServiceAccount subject applies to it."""
    namespace = new_namespace(kube_cluster)
    kube_cluster.kubectl("create", "secret", "generic", "ca-key", "-n", namespace,
                         "--from-literal=key=not-really")
    kube_cluster.kubectl("create", "role", "read-secrets", "-n", namespace,
                         "--verb=get,list", "--resource=secrets")
    kube_cluster.kubectl("create", "rolebinding", "operator-reads-secrets", "-n", namespace,
                         "--role=read-secrets",
                         f"--serviceaccount={OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}")
    deadline = time.monotonic() + 15  # the RBAC authorizer reads from watch caches
    while True:
        result = kube_cluster.kubectl("get", "secret", "ca-key", "-n", namespace, "-o", "name",
                                      user="operator", check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.stdout.strip() == "secret/ca-key", result.stderr
    # ... and nothing more: other namespaces stay closed
    other = new_namespace(kube_cluster)
    assert kube_cluster.request("GET", f"/api/v1/namespaces/{other}/secrets",
                                user="operator")[0] == 403


def test_kubeconfigs_name_their_user(kube_cluster: Cluster) -> None:
    for user in ("admin", "operator"):
        config = yaml.safe_load(kube_cluster.kubeconfig(user).read_text())
        assert config["current-context"] == user
        assert config["users"][0]["user"]["token"] == kube_cluster.token(user)
        assert config["clusters"][0]["cluster"]["server"] == kube_cluster.server
    unauthenticated = Cluster(server=kube_cluster.server, ca_file=kube_cluster.ca_file,
                              directory=kube_cluster.directory,
                              kubectl_bin=kube_cluster.kubectl_bin, tokens={"x": "wrong"})
    assert unauthenticated.request("GET", "/api/v1/namespaces", user="x")[0] == 401


def test_a_cluster_leaves_no_process_behind(tmp_path: Path, kube_tools: None) -> None:
    """A second, short-lived cluster: once its context exits, its etcd and apiserver are gone
    (the session's cluster is stopped the same way)."""
    with running_cluster(tmp_path / "kube") as cluster:
        assert cluster.request("GET", "/readyz")[0] == 200
        mine = [pid for pid in _pids() if str(tmp_path) in _cmdline(pid)]
        assert len(mine) == 2, [_cmdline(pid) for pid in mine]
    assert [pid for pid in _pids() if str(tmp_path) in _cmdline(pid)] == []


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
