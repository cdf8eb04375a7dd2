"""The operator on one PostgreSQL database: each namespace's inventory in its own schema, a
replica with an empty state directory carries on where another left off, and shards
(`--fleet-selector`) split one namespace's fleets while sharing its CAs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client
from typer.testing import CliRunner

from controller.cli import app
from controller.operator.main import shard_name
from tests.kube_emulator import RunningEmulator, wait_for
from tests.kube_objects import (
    CAS,
    FLEETS,
    MERGE,
    authority,
    condition,
    fleet,
    free_port,
    is_ready,
    profile,
    running_operator,
    scrape,
)
from tests.kube_objects import NAMESPACE as NS
from tests.postgres import Cluster

OTHER = "fleet-other"


def ready(kube: RunningEmulator, plural: str, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (body := kube.get(plural, namespace, name)) and is_ready(body) and body,
        timeout=90)
    return found


def device_counts(url: str, schema: str) -> dict[str, int]:
    with psycopg.connect(url) as db:
        rows = db.execute(f"SELECT kind, count(*) FROM {schema}.certificates "
                          "WHERE state = 'active' GROUP BY kind").fetchall()
    return {kind: count for kind, count in rows}



def test_namespaces_share_one_database_and_a_new_replica_needs_no_local_state(
        kube_emulator: RunningEmulator, postgres: Cluster, tmp_path: Path) -> None:
    url = postgres.database(schema=False)
    for namespace, devices in ((NS, ["s-1", "s-2"]), (OTHER, ["s-1"])):
        for body in (authority(namespace), profile(namespace), fleet(namespace, devices)):
            kube_emulator.create(body)
    metrics = free_port()
    with running_operator(tmp_path / "one", (NS, OTHER), database_url=url,
                          metrics_port=metrics):
        first = {ns: ready(kube_emulator, FLEETS, ns, "sensors") for ns in (NS, OTHER)}
        serials = {ns: ready(kube_emulator, CAS, ns, "devices-ca")["status"]["certificate"][
            "serial"] for ns in (NS, OTHER)}
        gauge = 'fleetpki_certificates{{ca="devices-ca",fleet="sensors",namespace="{}",' \
            'state="active"}} {}'
        exposition = wait_for(lambda: gauge.format(OTHER, "1.0") in (text := scrape(metrics))
                              and text)
        assert gauge.format(NS, "2.0") in exposition
    assert first[NS]["status"]["devices"]["active"] == 2
    assert first[OTHER]["status"]["devices"]["active"] == 1
    assert serials[NS] != serials[OTHER], "the same names, two namespaces: two CAs"
    assert device_counts(url, "k8s_fleet_demo") == {"ca": 1, "device": 2}
    assert device_counts(url, "k8s_fleet_other") == {"ca": 1, "device": 1}
    assert not (tmp_path / "one" / "namespaces" / NS / "inventory.db").exists()
    # the state directory records the schema: commands on it with the database URL find it
    served = CliRunner().invoke(app, ["status", str(tmp_path / "one" / "namespaces" / OTHER /
                                                    "declaration"),
                                      "--state-dir", str(tmp_path / "one" / "namespaces" / OTHER),
                                      "--database-url", url])
    assert served.exit_code == 0, served.output
    assert "│ sensors │ 1 │" in " ".join(served.stdout.split())  # 1 active, in k8s_fleet_other

    # another replica, its own empty state directory: the database is the inventory
    shutil.rmtree(tmp_path / "one")
    client.CustomObjectsApi(kube_emulator.api_client()).patch_namespaced_custom_object(
        "fleetpki.io", "v1alpha1", NS, "devicefleets", "sensors",
        {"spec": {"devices": [{"id": "s-1"}, {"id": "s-2"}, {"id": "s-3"}]}},
        _content_type=MERGE)
    with running_operator(tmp_path / "two", (NS,), database_url=url):
        sensors = wait_for(lambda: (f := kube_emulator.get(FLEETS, NS, "sensors")) and
                           is_ready(f) and f["status"]["devices"]["active"] == 3 and f,
                           timeout=90)
    ca = kube_emulator.get(CAS, NS, "devices-ca")
    assert is_ready(ca) and condition(ca, "Stalled").get("status") != "True"
    assert ca["status"]["certificate"]["serial"] == serials[NS], "no second CA"
    assert sensors["status"]["devices"]["active"] == 3
    assert device_counts(url, "k8s_fleet_demo") == {"ca": 1, "device": 3}



def test_shards_split_the_fleets_of_a_namespace_and_share_its_ca(
        kube_emulator: RunningEmulator, postgres: Cluster, tmp_path: Path) -> None:
    url = postgres.database(schema=False)
    sensors, meters = fleet(NS, ["s-1", "s-2"]), fleet(NS, ["m-1"], name="meters")
    sensors["metadata"]["labels"]["shard"], meters["metadata"]["labels"]["shard"] = "a", "b"
    for body in (authority(NS), profile(NS), sensors, meters):
        kube_emulator.create(body)
    with running_operator(tmp_path / "a", (NS,), database_url=url,
                          fleet_selector={"shard": "a"}):
        ready(kube_emulator, FLEETS, NS, "sensors")
        serial = ready(kube_emulator, CAS, NS, "devices-ca")["status"]["certificate"]["serial"]
    done_a = kube_emulator.get(FLEETS, NS, "sensors")
    assert not (kube_emulator.get(FLEETS, NS, "meters") or {}).get("status"), \
        "shard a leaves shard b's fleet alone"
    assert device_counts(url, "k8s_fleet_demo") == {"ca": 1, "device": 2}

    with running_operator(tmp_path / "b", (NS,), database_url=url,
                          fleet_selector={"shard": "b"}):
        done_b = ready(kube_emulator, FLEETS, NS, "meters")
    assert done_b["status"]["devices"]["active"] == 1
    ca = kube_emulator.get(CAS, NS, "devices-ca")
    assert ca["status"]["certificate"]["serial"] == serial, "both shards use the one CA"
    assert device_counts(url, "k8s_fleet_demo") == {"ca": 1, "device": 3}
    after = kube_emulator.get(FLEETS, NS, "sensors")
    assert after == done_a, "shard b never wrote shard a's fleet (nor took its finalizer)"
    assert after["metadata"]["finalizers"] == [f"{shard_name({'shard': 'a'})}.fleetpki.io/"
                                               "finalizer"]
    assert len(ca["metadata"]["finalizers"]) == 2, "each shard's own, on the shared CA"


def test_a_fleet_selector_needs_a_shared_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["operator", "-n", NS, "--keys-namespace", "k",
                                      "--state-dir", str(tmp_path), "--fleet-selector",
                                      "shard=a"], env={"FLEETPKI_DATABASE_URL": None})
    assert result.exit_code == 2 and "--database-url" in result.stderr
    result = CliRunner().invoke(app, ["operator", "-n", NS, "--keys-namespace", "k",
                                      "--fleet-selector", "shard"])
    assert result.exit_code == 2 and "expected LABEL=VALUE" in result.stderr
    result = CliRunner().invoke(app, ["operator", "-n", NS, "--keys-namespace", "k",
                                      "--fleet-selector", "shard=a"],
                                env={"FLEETPKI_DATABASE_URL": "postgresql://db/pki"})
    assert result.exit_code == 2 and "its own --peering" in result.stderr
