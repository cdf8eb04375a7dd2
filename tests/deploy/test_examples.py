"""examples/kubernetes: the bundled example as namespaced custom resources, valid for the models
and equal to examples/fleet-repo (the sensors CSV as inline devices)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import pytest

from controller import jobs
from controller.api.resources import KINDS, ClusterCertificateAuthority, DeviceFleet
from controller.api.status import STATUS_KINDS
from controller.clock import now_utc

from .support import ROOT, documents, objects

KUBERNETES = ROOT / "examples" / "kubernetes"
FLEET_REPO = ROOT / "examples" / "fleet-repo"


def fleetpki_objects(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(directory.rglob("*.yaml")):
        for doc in documents(path):
            if str(doc.get("apiVersion", "")).startswith("fleetpki.io/"):
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def artifact_by_digest(artifact: dict[str, Any]) -> dict[str, Any]:
    if "path" not in artifact:
        return artifact
    data = (FLEET_REPO / artifact["path"]).read_bytes()
    return {"name": artifact["path"].rsplit("/", 1)[-1], "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data)}


def test_the_cluster_wide_ca_example_is_valid_for_the_models() -> None:
    """examples/cluster-wide-ca: one cluster-scoped CA (no namespace), and in each namespace it
    allows a profile and a fleet that name it."""
    found = fleetpki_objects(ROOT / "examples" / "cluster-wide-ca")
    models = {key: KINDS[key[0]].model_validate(doc) for key, doc in found.items()}
    (ca,) = [m for m in models.values() if isinstance(m, ClusterCertificateAuthority)]
    assert "namespace" not in found[("ClusterCertificateAuthority", ca.name)]["metadata"]
    fleets = [(doc["metadata"]["namespace"], models[key]) for key, doc in found.items()
              if key[0] == "DeviceFleet"]
    assert len(fleets) == 2
    for namespace, fleet in fleets:
        assert isinstance(fleet, DeviceFleet)
        assert fleet.spec.issuerRef.kind == "ClusterCertificateAuthority"
        assert fleet.spec.issuerRef.name == ca.name and ca.spec.allows(namespace, "")
    assert not ca.spec.allows("fleet-demo", "")


@pytest.mark.parametrize("key", sorted(fleetpki_objects(KUBERNETES)), ids="/".join)
def test_every_resource_is_namespaced_and_valid_for_the_models(key: tuple[str, str]) -> None:
    document = fleetpki_objects(KUBERNETES)[key]
    assert document["metadata"]["namespace"] == "fleet-demo"
    # ObjectMeta ignores keys it does not know, so metadata.namespace passes as it is
    model = KINDS[key[0]].model_validate(document)
    assert model.name == key[1]


def test_the_directory_is_a_valid_declaration() -> None:
    """References, CSRs and the default policies, as `fleetpki validate` checks them (the
    Namespace and kustomization.yaml are of other API groups and ignored)."""
    problems, findings = jobs.validate(KUBERNETES, now_utc())
    assert problems == [] and [f for f in findings if f.action == "deny"] == []


def test_same_objects_as_the_fleet_repository() -> None:
    """Every kind that is a custom resource; a Release's artifacts of the repository are given
    by name, SHA-256 and size (a cluster has no repository)."""
    ours = fleetpki_objects(KUBERNETES)
    theirs = {key: doc for key, doc in fleetpki_objects(FLEET_REPO).items()
              if key[0] in STATUS_KINDS}
    assert sorted(ours) == sorted(theirs)
    for key, doc in theirs.items():
        mine = ours[key]
        assert {k: v for k, v in mine["metadata"].items() if k != "namespace"} == doc["metadata"]
        spec = dict(doc["spec"])
        if key[0] == "CertificateAuthority":  # URLs of the in-cluster Service
            for url in ("crl", "ocsp"):
                spec.pop(url, None)
            assert {k: v for k, v in mine["spec"].items() if k not in ("crl", "ocsp")} == spec
            assert "fleetpki.fleetpki-system.svc" in mine["spec"]["crl"]["distributionPoint"]
            continue
        if key[0] == "Release":
            spec["artifacts"] = [artifact_by_digest(a) for a in spec["artifacts"]]
        if "deviceSource" in spec:
            source = spec.pop("deviceSource")
            spec["devices"] = csv_devices(FLEET_REPO / source["path"])
        assert mine["spec"] == spec, key


def csv_devices(path: Path) -> list[dict[str, Any]]:
    devices = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            device: dict[str, Any] = {"id": row["id"], "labels": {
                k.split(".", 1)[1]: v for k, v in row.items() if k.startswith("labels.") and v}}
            if row.get("revoked"):
                device["revoked"] = {"reason": row["revoked"]}
            devices.append(device)
    return devices


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    kinds = {d["kind"] for d in objects(KUBERNETES)}
    assert kinds == {"Namespace", "CertificateAuthority", "CertificateProfile", "DeviceFleet",
                     "SigningProfile", "Release"}
