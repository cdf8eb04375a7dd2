"""The operator on a real kube-apiserver, used as the README says: `kubectl apply -k deploy/`,
`kubectl apply -k examples/kubernetes/`, `kubectl wait`, `kubectl annotate`; the operator runs
with the ServiceAccount's identity, so deploy/'s RBAC is proven sufficient; `fleetpki serve`
serves the namespace's CRL, checked with openssl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import jobs
from controller.operator.main import shard_name
from controller.stores.database import in_schema, namespace_schema
from tests.kube_emulator import wait_for
from tests.kube_objects import (
    REQUESTED_AT,
    authority,
    fleet,
    profile,
    reachable,
    running_operator,
)
from tests.postgres import Cluster as PostgresCluster

from .cluster import PASSPHRASE, ROOT, Cluster, free_port

DEMO = "fleet-demo"


def get(cluster: Cluster, kind: str, name: str, namespace: str = DEMO) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    return found


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(state: Path) -> str:
        port = free_port()
        command = [str(Path(sys.executable).parent / "fleetpki"), "serve",
                   str(state / "declaration"), "--state-dir", str(state),
                   "--http", f"127.0.0.1:{port}"]
        with open(tmp_path / "serve.log", "wb") as log:
            processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: reachable(url + "/ca/devices-ca.pem"), timeout=30)
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def test_the_readme_flow(as_operator: Cluster, tmp_path: Path, serve: Any) -> None:
    cluster = as_operator
    state = tmp_path / "state"
    with running_operator(state, (), standalone=False, peering="fleetpki"):
        cluster.kubectl("apply", "-k", str(ROOT / "examples" / "kubernetes"))
        waited = cluster.kubectl("wait", "--for=condition=Ready", "--timeout=300s", "-n", DEMO,
                                 "devicefleet/sensors", "devicefleet/gateways",
                                 "certificateauthority/acme-root",
                                 "certificateauthority/devices-ca", timeout=320)
        assert waited.stdout.count("condition met") == 4
        listing = cluster.kubectl("get", "devicefleets", "-n", DEMO).stdout
        print(listing)
        rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
        assert rows["sensors"][:6] == ["sensors", "devices-ca", "True", "1000", "0", "0"]
        assert rows["gateways"][:6] == ["gateways", "devices-ca", "True", "2", "0", "0"]
        everything = cluster.kubectl("get", "fleetpki", "-n", DEMO).stdout
        assert "certificateprofile.fleetpki.io/mqtt-client" in everything

        cluster.kubectl("annotate", "-n", DEMO, "devicefleet/sensors",
                        f"{REQUESTED_AT}=2026-11-29T23:00:00Z", "--overwrite")
        wait_for(lambda: get(cluster, "devicefleet", "sensors")["status"].get(
            "lastHandledReconcileAt") == "2026-11-29T23:00:00Z", timeout=60)

        # a device revoked with kubectl is on the CRL `fleetpki serve` publishes for the namespace
        cluster.kubectl("patch", "-n", DEMO, "devicefleet/gateways", "--type=json", "-p",
                        json.dumps([{"op": "add", "path": "/spec/devices/0/revoked",
                                     "value": {"reason": "keyCompromise"}}]))
        wait_for(lambda: (f := get(cluster, "devicefleet", "gateways"))["status"]["devices"][
            "revoked"] == 1 and f["status"]["observedGeneration"] == 2, timeout=60)
        url = serve(state / "namespaces" / DEMO)
        with urllib.request.urlopen(url + "/crl/devices-ca.crl", timeout=10) as response:
            crl = response.read()
        text = subprocess.run(["openssl", "crl", "-inform", "DER", "-noout", "-text"],
                              input=crl, capture_output=True, check=True).stdout.decode()
        with jobs.StateDir(state / "namespaces" / DEMO).reader() as inventory:
            (revoked,) = [r for r in inventory.device_records("gateways")
                          if r.state == "revoked"]
        assert revoked.serial.upper().lstrip("0") in text.replace(" ", "").upper()
        ca = get(cluster, "certificateauthority", "devices-ca")
        assert ca["status"]["crl"]["entries"] == 1
    secrets = json.loads(cluster.kubectl("get", "secrets", "-n", "fleetpki-system", "-l",
                                         f"fleetpki.io/scope={DEMO}", "-o",
                                         "json").stdout)["items"]
    assert sorted(s["metadata"]["labels"]["fleetpki.io/blob"] for s in secrets) == \
        ["audit-key", "ca-key", "ca-key", "ca-key", "ca-key", "kek"]  # 2 CAs, 2 signing keys


class OperatorProcess:
    """`fleetpki operator` as its own process (as in the Deployment), logging to a file."""

    def __init__(self, cluster: Cluster, state: Path, namespace: str, log: Path,
                 *args: str) -> None:
        self.log = log
        environment = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig("operator")),
                       "FLEETPKI_PASSPHRASE": PASSPHRASE}
        command = [str(Path(sys.executable).parent / "fleetpki"), "operator", "-n", namespace,
                   "--state-dir", str(state), "--keys-namespace", "fleetpki-system",
                   "--resync", "2s", *args]
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                            env=environment)

    def said(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    def stop(self, signal_number: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
            self.process.wait(60)


@pytest.fixture
def operators() -> Iterator[list[OperatorProcess]]:
    started: list[OperatorProcess] = []
    yield started
    for operator in started:
        operator.stop(signal.SIGKILL)


def namespace_with_fleet(cluster: Cluster, namespace: str, devices: int) -> None:
    """A namespace holding a CA, a profile and a fleet of `devices` from a ConfigMap."""
    rows = "\n".join(["id", *(f"d-{i:05d}" for i in range(devices))]) + "\n"
    documents = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                 {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "devices", "namespace": namespace},
                  "data": {"devices.csv": rows}},
                 authority(namespace), profile(namespace),
                 fleet(namespace, None, deviceSource={"configMapRef": [{"name": "devices"}]})]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": documents}))


def active(state: Path, namespace: str) -> int:
    path = state / "namespaces" / namespace
    if not (path / "inventory.db").exists():
        return 0
    with jobs.StateDir(path).reader() as inventory:
        return inventory.active_count("sensors")


def test_killed_mid_apply_the_operator_converges_and_issues_nothing_twice(
        deployed: Cluster, tmp_path: Path, operators: list[OperatorProcess]) -> None:
    namespace, devices, state = "crash-test", 3000, tmp_path / "state"
    namespace_with_fleet(deployed, namespace, devices)
    first = OperatorProcess(deployed, state, namespace, tmp_path / "first.log", "--standalone")
    operators.append(first)
    wait_for(lambda: 0 < active(state, namespace) < devices, timeout=120, interval=0.01)
    first.stop(signal.SIGKILL)
    assert active(state, namespace) < devices
    operators.append(OperatorProcess(deployed, state, namespace, tmp_path / "second.log",
                                     "--standalone"))
    deployed.kubectl("wait", "--for=condition=Ready", "--timeout=300s", "-n", namespace,
                     "devicefleet/sensors", timeout=320)
    with jobs.StateDir(state / "namespaces" / namespace).reader() as inventory:
        records = inventory.device_records("sensors")
    assert len(records) == devices, "each device has exactly one certificate: none twice"
    assert {r.state for r in records} == {"active"}
    assert get(deployed, "devicefleet", "sensors", namespace)["status"]["devices"][
        "active"] == devices


def test_of_two_operators_one_acts_and_the_other_takes_over(
        deployed: Cluster, tmp_path: Path, operators: list[OperatorProcess]) -> None:
    namespace, state = "peering-test", tmp_path / "state"
    namespace_with_fleet(deployed, namespace, 3)
    deployed.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
        "metadata": {"name": "fleetpki", "namespace": namespace}}))
    high = OperatorProcess(deployed, state, namespace, tmp_path / "high.log", "--priority", "200")
    operators.append(high)
    deployed.kubectl("wait", "--for=condition=Ready", "--timeout=120s", "-n", namespace,
                     "devicefleet/sensors", timeout=140)
    low = OperatorProcess(deployed, state, namespace, tmp_path / "low.log", "--priority", "100")
    operators.append(low)
    # both are peers now; the one of lower priority starts paused and stays so
    wait_for(lambda: len(get(deployed, "kopfpeering", "fleetpki", namespace).get(
        "status") or {}) == 2, timeout=60)
    deployed.kubectl("annotate", "-n", namespace, "devicefleet/sensors",
                     f"{REQUESTED_AT}=while-both-run", "--overwrite")
    wait_for(lambda: get(deployed, "devicefleet", "sensors", namespace)["status"].get(
        "lastHandledReconcileAt") == "while-both-run", timeout=60)
    assert high.said("reconciled:") and not low.said("reconciled:")
    high.stop()  # SIGTERM: kopf leaves the peering object, the other resumes
    wait_for(lambda: low.said("Resuming operations after the pause"), timeout=60)
    deployed.kubectl("patch", "-n", namespace, "configmap/devices", "--type=merge", "-p",
                     json.dumps({"data": {"devices.csv": "id\nd-00000\nd-00001\nd-00002\n"
                                                         "d-00003\n"}}))
    deployed.kubectl("annotate", "-n", namespace, "devicefleet/sensors",
                     f"{REQUESTED_AT}=takeover", "--overwrite")
    wait_for(lambda: get(deployed, "devicefleet", "sensors", namespace)["status"]["devices"][
        "active"] == 4, timeout=60)
    assert high.process.poll() is not None and low.said("reconciled:")  # the other one did it


def test_two_shards_on_one_database_split_a_namespace(
        deployed: Cluster, tmp_path: Path, operators: list[OperatorProcess],
        postgres: PostgresCluster) -> None:
    """Two operator shards at once (own --fleet-selector, own peering, own state directory),
    one PostgreSQL: each converges its fleet, both use the namespace's one CA."""
    namespace, url = "shards-test", postgres.database(schema=False)
    namespace_with_fleet(deployed, namespace, 300)
    deployed.kubectl("label", "-n", namespace, "devicefleet/sensors", "shard=a")
    meters = fleet(namespace, [f"m-{i:04d}" for i in range(300)], name="meters")
    meters["metadata"]["labels"]["shard"] = "b"
    peerings = [{"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                 "metadata": {"name": f"fleetpki-{shard}", "namespace": namespace}}
                for shard in "ab"]
    deployed.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [meters, *peerings]}))
    for shard in "ab":
        operators.append(OperatorProcess(
            deployed, tmp_path / f"state-{shard}", namespace, tmp_path / f"{shard}.log",
            "--database-url", url, "--fleet-selector", f"shard={shard}",
            "--peering", f"fleetpki-{shard}"))
    deployed.kubectl("wait", "--for=condition=Ready", "--timeout=300s", "-n", namespace,
                     "devicefleet/sensors", "devicefleet/meters",
                     "certificateauthority/devices-ca", timeout=320)
    a, b = operators
    wait_for(lambda: a.said("reconciled:") and b.said("reconciled:"), timeout=30)  # logged last
    with jobs.StateDir(tmp_path / "state-a", database_url=in_schema(
            url, namespace_schema(namespace))).reader() as inventory:
        assert len(inventory.device_records("sensors")) == 300
        assert len(inventory.device_records("meters")) == 300
        assert len(inventory.ca_names()) == 1
    ca = get(deployed, "certificateauthority", "devices-ca", namespace)
    assert len(ca["metadata"]["finalizers"]) == 2  # each shard's own
    sensors = get(deployed, "devicefleet", "sensors", namespace)
    assert sensors["metadata"]["finalizers"] == [f"{shard_name({'shard': 'a'})}.fleetpki.io/"
                                                 "finalizer"]
    assert get(deployed, "devicefleet", "meters", namespace)["status"]["devices"][
        "active"] == 300
