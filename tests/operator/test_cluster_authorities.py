"""Cluster-wide CAs (ClusterCertificateAuthority) against the Kubernetes API emulator: one CA
for several namespaces, refused to the others, one CRL listing every namespace's revocations."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kubernetes import client

from controller import jobs
from tests.kube_emulator import RunningEmulator, wait_for
from tests.kube_objects import (
    API,
    FLEETS,
    KEYS_NAMESPACE,
    MERGE,
    condition,
    fleet,
    free_port,
    is_ready,
    profile,
    reachable,
    running_operator,
    scrape,
)

CLUSTER_CAS = "fleetpki.io/v1alpha1/clustercertificateauthorities"
OPENSSL = shutil.which("openssl")


def cluster_authority(name: str = "fleet-root", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ClusterCertificateAuthority", "metadata": {"name": name},
            "spec": {"type": "root", "subject": {"commonName": f"{name} (test)"},
                     "duration": "8760h", "pathLength": 0, "allowedNamespaces": ["team-*"],
                     **spec}}


def shared_fleet(namespace: str, devices: list[str]) -> dict[str, Any]:
    body = fleet(namespace, devices)
    body["spec"]["issuerRef"] = {"kind": "ClusterCertificateAuthority", "name": "fleet-root"}
    return body


def declare(kube: RunningEmulator, namespace: str, devices: list[str]) -> None:
    kube.create(profile(namespace))
    kube.create(shared_fleet(namespace, devices))


def fleet_when(kube: RunningEmulator, namespace: str, check: Any) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (f := kube.get(FLEETS, namespace, "sensors")) and check(f) and f, timeout=90)
    return found


def stalled(body: dict[str, Any] | None) -> bool:
    return condition(body, "Stalled").get("status") == "True"


def openssl_verify(root: Path, certificate: bytes, tmp_path: Path, crl: Path | None = None
                   ) -> subprocess.CompletedProcess[str]:
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(certificate)
    assert OPENSSL is not None
    command = [OPENSSL, "verify", "-x509_strict", "-CAfile", str(root)]
    if crl is not None:
        command += ["-crl_check", "-CRLfile", str(crl)]
    return subprocess.run([*command, str(leaf)], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def served(state: Path, url: str | None) -> Iterator[str]:
    """`fleetpki serve` on a state directory the operator made (credentials from the
    environment: $KUBECONFIG for the key Secrets, the passphrase)."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "fleetpki"), "serve", str(state / "declaration"),
               "--state-dir", str(state), "--http", f"127.0.0.1:{port}",
               *(["--database-url", url] if url else [])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: reachable(f"{base}/metrics") or process.poll() is not None, timeout=30)
        assert process.poll() is None, process.communicate()[1].decode()
        yield base
    finally:
        process.terminate()
        process.wait(10)


def ocsp_status(root: Path, certificate: bytes, url: str, tmp_path: Path) -> str:
    """What `openssl ocsp` says of the certificate, the response verified against the root."""
    leaf = tmp_path / "ocsp-leaf.pem"
    leaf.write_bytes(certificate)
    assert OPENSSL is not None
    answer = subprocess.run([OPENSSL, "ocsp", "-issuer", str(root), "-cert", str(leaf),
                             "-url", f"{url}/ocsp", "-CAfile", str(root)],
                            capture_output=True, text=True, check=True)
    assert "Response verify OK" in answer.stderr + answer.stdout
    return answer.stdout.split(f"{leaf}: ", 1)[1].split()[0]


def certificates(state_root: Path, namespace: str, url: str | None) -> dict[str, bytes]:
    """device -> certificate PEM, read from the namespace's state as `fleetpki export` would."""
    state = jobs.StateDir.resolve(state_root / "namespaces" / namespace, url)
    return {found.device: found.pem.certificate
            for found in jobs.device_tls_bundles(state, "sensors")}


def schema_counts(url: str, schema: str) -> dict[str, int]:
    with psycopg.connect(url) as db:
        rows = db.execute(f"SELECT kind, count(*) FROM {schema}.certificates GROUP BY kind")
        return {kind: count for kind, count in rows.fetchall()}


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_namespaces_issue_from_one_cluster_wide_ca_and_share_its_crl(
        kube_emulator: RunningEmulator, api: client.ApiClient, tmp_path: Path, backend: str,
        request: pytest.FixtureRequest) -> None:
    kube = kube_emulator
    url = request.getfixturevalue("postgres").database(schema=False) \
        if backend == "postgresql" else None
    kube.create(cluster_authority())
    declare(kube, "team-a", ["a-1", "a-2"])
    declare(kube, "team-b", ["b-1"])
    declare(kube, "outsiders", ["o-1"])
    state_root = tmp_path / "state"
    metrics = free_port()
    with running_operator(state_root, ("team-a", "team-b", "outsiders"), database_url=url,
                          metrics_port=metrics):
        for namespace in ("team-a", "team-b"):
            ready = fleet_when(kube, namespace, is_ready)
            assert ready["status"]["devices"]["active"] == len(ready["spec"]["devices"])
        refused = fleet_when(kube, "outsiders", stalled)
        assert "ClusterCertificateAuthority/fleet-root does not allow namespace 'outsiders'" \
            in condition(refused, "Stalled")["message"]
        assert "spec.issuerRef.name" in condition(refused, "Stalled")["message"]
        root_ca = wait_for(lambda: (c := kube.get(CLUSTER_CAS, None, "fleet-root"))
                           and is_ready(c) and c)
        serial = root_ca["status"]["certificate"]["serial"]

        root = state_root / "cluster" / "public" / "ca" / "fleet-root.pem"
        issued = {**certificates(state_root, "team-a", url),
                  **certificates(state_root, "team-b", url)}
        assert sorted(issued) == ["a-1", "a-2", "b-1"]
        for pem in issued.values():  # one CA for both namespaces, checked by OpenSSL
            assert openssl_verify(root, pem, tmp_path).returncode == 0

        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "fleetpki.io", "v1alpha1", "team-a", "devicefleets", "sensors",
            {"spec": {"devices": [{"id": "a-1", "revoked": {"reason": "keyCompromise"}},
                                  {"id": "a-2"}]}}, _content_type=MERGE)
        fleet_when(kube, "team-a", lambda f: is_ready(f) and f["status"]["devices"]["revoked"])
        root_ca = wait_for(lambda: (c := kube.get(CLUSTER_CAS, None, "fleet-root"))
                           and (c["status"].get("crl") or {}).get("entries") == 1 and c)
        assert root_ca["status"]["certificate"]["serial"] == serial  # the same CA throughout
        exposition = scrape(metrics)  # the cluster scope's runs: namespace ""
        assert 'fleetpki_reconciles_total{namespace="",result="applied"}' in exposition
        assert 'fleetpki_certificate_actions_total{action="create-ca",namespace=""}' \
            in exposition

    crl = state_root / "cluster" / "public" / "crl" / "fleet-root.pem"
    revoked = openssl_verify(root, issued["a-1"], tmp_path, crl)
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
    for device in ("a-2", "b-1"):
        assert openssl_verify(root, issued[device], tmp_path, crl).returncode == 0

    # `fleetpki serve` on the cluster scope publishes the CRL; on a namespace, it answers OCSP
    # for that namespace's certificates, signed with the cluster-wide CA's key
    with served(state_root / "cluster", url) as cluster_url, \
            urllib.request.urlopen(f"{cluster_url}/crl/fleet-root.crl", timeout=10) as answer:
        assert answer.read() == crl.with_suffix(".crl").read_bytes()
    with served(state_root / "namespaces" / "team-a", url) as team_url:
        assert ocsp_status(root, issued["a-1"], team_url, tmp_path) == "revoked"
        assert ocsp_status(root, issued["a-2"], team_url, tmp_path) == "good"

    secrets = client.CoreV1Api(api).list_namespaced_secret(KEYS_NAMESPACE).items
    ca_keys = {s.metadata.labels["fleetpki.io/scope"] for s in secrets
               if s.metadata.labels["fleetpki.io/blob"] == "ca-key"}
    assert ca_keys == {"cluster.fleetpki.io"}  # one key, kept once: no copy per namespace
    assert not certificates(state_root, "outsiders", url)
    if url is not None:  # the CA in the cluster scope's schema; each namespace holds a copy
        assert schema_counts(url, "k8s__cluster") == {"ca": 1}
        assert schema_counts(url, "k8s_team_a") == {"ca": 1, "device": 2}
        assert schema_counts(url, "k8s_team_b") == {"ca": 1, "device": 1}


def test_a_lost_cluster_state_never_makes_a_second_cluster_wide_ca(
        kube_emulator: RunningEmulator, api: client.ApiClient, tmp_path: Path) -> None:
    """The volume is gone, the key Secrets and `.status` are not: the CA is Stalled, its fleets
    issue nothing, and no second key is made."""
    kube_emulator.create(cluster_authority())
    declare(kube_emulator, "team-a", ["a-1"])
    with running_operator(tmp_path / "state", ("team-a",)):
        fleet_when(kube_emulator, "team-a", is_ready)
    first = kube_emulator.get(CLUSTER_CAS, None, "fleet-root")
    assert first is not None
    serial = first["status"]["certificate"]["serial"]
    shutil.rmtree(tmp_path / "state")
    with running_operator(tmp_path / "state", ("team-a",)):
        ca = wait_for(lambda: (c := kube_emulator.get(CLUSTER_CAS, None, "fleet-root"))
                      and stalled(c) and c, timeout=60)
    message = condition(ca, "Stalled")["message"]
    assert "exists already" in message and serial in message
    keys = [s for s in client.CoreV1Api(api).list_namespaced_secret(KEYS_NAMESPACE).items
            if s.metadata.labels["fleetpki.io/blob"] == "ca-key"]
    assert len(keys) == 1
    assert not certificates(tmp_path / "state", "team-a", None)
