"""Kubernetes mode without a cluster: a namespace's objects (as the API returns them) become a
declaration directory, and the same job converges it, writing status through a StatusStore."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import jobs
from controller.api.devices import DeviceSourceError, DeviceText
from controller.api.problems import InvalidDeclaration
from controller.api.status import STATUS_KINDS
from controller.sources.kube import Readers, write_declaration
from controller.status.store import StatusUpdate

from .support import EXAMPLE, PASSPHRASE

NAMESPACE = "fleet-demo"


class MemoryStatus:
    """A StatusStore that keeps what the job writes."""

    where = "in memory"

    def __init__(self) -> None:
        self.updates: list[StatusUpdate] = []

    def observed(self) -> str | None:
        return None

    def read(self) -> dict[str, bytes]:
        return self.updates[-1].files if self.updates else {}

    def history(self, path: str) -> Iterable[bytes]:
        return [u.files[path] for u in reversed(self.updates) if path in u.files]

    def write(self, update: StatusUpdate) -> str | None:
        self.updates.append(update)
        return None

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return yaml.safe_load(self.read()[f"status/{kind}/{name}.yaml"])["status"]


def as_served(document: Mapping[str, Any]) -> dict[str, Any]:
    """A repository document as the API server returns it: namespaced, with server fields."""
    served = copy.deepcopy(dict(document))
    served["metadata"] |= {"namespace": NAMESPACE, "uid": "u-" + document["metadata"]["name"],
                           "generation": 1, "resourceVersion": "7",
                           "annotations": {"kopf.zalando.org/last-handled-configuration": "{}",
                                           **document["metadata"].get("annotations", {})}}
    served["status"] = {"conditions": []}
    return served


def by_digest(artifact: dict[str, Any]) -> dict[str, Any]:
    if "path" not in artifact:
        return artifact
    data = (EXAMPLE / artifact["path"]).read_bytes()
    return {"name": Path(artifact["path"]).name, "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data)}


def example_bodies() -> list[dict[str, Any]]:
    bodies = []
    for path in sorted(EXAMPLE.rglob("*.yaml")):  # the kinds that are custom resources
        bodies += [as_served(d) for d in yaml.safe_load_all(path.read_text())
                   if d and d["kind"] in STATUS_KINDS]
    for body in bodies:  # a cluster has no repository: artifacts by name, SHA-256 and size
        if body["kind"] == "Release":
            body["spec"]["artifacts"] = [by_digest(a) for a in body["spec"]["artifacts"]]
    sensors = next(b for b in bodies if b["metadata"]["name"] == "sensors")
    sensors["spec"]["deviceSource"] = {"configMapRef": [{"name": "sensors-a", "key": "a.csv"},
                                                        {"name": "sensors-b", "key": "b.csv"}]}
    return bodies


def readers(config_maps: Mapping[str, Mapping[str, str]]) -> Readers:
    def flux(*_: str) -> None:
        return None

    def artifact(*_: Any) -> DeviceText:
        raise DeviceSourceError("no artifacts here")

    def config_map(namespace: str, name: str) -> Mapping[str, Any] | None:
        return {"data": config_maps[name]} if name in config_maps else None

    return Readers(config_map, flux, artifact)


def split_sensors() -> dict[str, dict[str, str]]:
    lines = (EXAMPLE / "fleets" / "sensors.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    half = len(rows) // 2
    return {"sensors-a": {"a.csv": "\n".join([header, *rows[:half]]) + "\n"},
            "sensors-b": {"b.csv": "\n".join([header, *rows[half:]]) + "\n"}}


@pytest.fixture(autouse=True)
def passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)


def test_a_namespace_converges_through_the_same_job(tmp_path: Path) -> None:
    target = tmp_path / "state" / "declaration"
    problems = write_declaration(NAMESPACE, example_bodies(), target, readers(split_sensors()))
    assert problems == []
    written = yaml.safe_load((target / "devicefleets" / "sensors.yaml").read_text())
    assert written["spec"]["deviceSource"] == {"path": "devices/sensors.csv", "format": "csv"}
    assert "namespace" not in written["metadata"] and "status" not in written
    assert not any(k.startswith("kopf") for k in written["metadata"].get("annotations", {}))
    store = MemoryStatus()
    report = jobs.apply(target, jobs.StateDir(tmp_path / "state"), jobs.now_utc(),
                        status_store=store)
    declared = len((EXAMPLE / "fleets" / "sensors.csv").read_text().splitlines()) - 1
    sensors = store.status("DeviceFleet", "sensors")
    assert sensors["devices"]["active"] == declared > 1
    assert next(c for c in sensors["conditions"] if c["type"] == "Ready")["status"] == "True"
    assert store.updates[-1].done["issue"] == report.result.done["issue"]
    assert "CertificateProfile/mqtt-client" in {
        f"{p.split('/')[1]}/{p.split('/')[2][:-5]}" for p in store.read()}
    assert report.result.done["sign-release"] == 1
    signed = store.status("Release", "sensor-fw-1.4.2")
    assert signed["state"] == "Signed" and signed["artifacts"] == 2
    assert store.status("SigningProfile", "firmware")["certificate"]["serial"] == \
        signed["signature"]["serial"]


def test_a_path_artifact_is_refused_naming_the_field_and_nothing_is_applied(
        tmp_path: Path) -> None:
    bodies = example_bodies()
    release = next(b for b in bodies if b["kind"] == "Release")
    # even a file the declaration directory holds is never read as an artifact
    release["spec"]["artifacts"].append({"path": "devicefleets/gateways.yaml"})
    target = tmp_path / "state" / "declaration"
    problems = write_declaration(NAMESPACE, bodies, target, readers(split_sensors()))
    assert [(p.object, p.field) for p in problems] == [
        ("Release/sensor-fw-1.4.2", "spec.artifacts[2].path")]
    assert "give name, sha256 and size" in problems[0].message
    assert not (target / "releases").exists()  # left out of the declaration
    store = MemoryStatus()
    state = jobs.StateDir(tmp_path / "state")
    with pytest.raises(InvalidDeclaration):
        jobs.apply(target, state, jobs.now_utc(), status_store=store, source_problems=problems)
    with state.reader() as inventory:
        assert inventory.ca_names() == []  # not half-applied: nothing at all
    stalled = next(c for c in store.status("Release", "sensor-fw-1.4.2")["conditions"]
                   if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
    assert "spec.artifacts[2].path" in stalled["message"]
    assert not list((tmp_path / "state" / "keys").glob("ca/signing.*"))


def test_a_missing_config_map_is_a_problem_of_the_fleet_and_nothing_is_applied(
        tmp_path: Path) -> None:
    config_maps = split_sensors()
    del config_maps["sensors-b"]
    target = tmp_path / "state" / "declaration"
    problems = write_declaration(NAMESPACE, example_bodies(), target, readers(config_maps))
    assert [(p.object, p.field) for p in problems] == [
        ("DeviceFleet/sensors", "spec.deviceSource.configMapRef[1]")]
    assert "ConfigMap/sensors-b: not found in the fleet's namespace" in problems[0].message
    store = MemoryStatus()
    state = jobs.StateDir(tmp_path / "state")
    with pytest.raises(InvalidDeclaration):
        jobs.apply(target, state, jobs.now_utc(), status_store=store, source_problems=problems)
    with state.reader() as inventory:
        assert inventory.ca_names() == []
    stalled = next(c for c in store.status("DeviceFleet", "sensors")["conditions"]
                   if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "sensors-b: not found" in stalled["message"]


def test_csv_parts_must_share_their_header(tmp_path: Path) -> None:
    config_maps = split_sensors()
    config_maps["sensors-b"] = {"b.csv": "id,labels.other\nx-1,y\n"}
    problems = write_declaration(NAMESPACE, example_bodies(), tmp_path / "d", readers(config_maps))
    assert "differs from the first part's" in problems[0].message


def test_the_directory_holds_exactly_the_namespace(tmp_path: Path) -> None:
    target = tmp_path / "d"
    bodies = example_bodies()
    write_declaration(NAMESPACE, bodies, target, readers(split_sensors()))
    kept = [b for b in bodies if b["kind"] != "DeviceFleet"]
    write_declaration(NAMESPACE, kept, target, readers({}))
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) \
        == sorted(f"{d}/{b['metadata']['name']}.yaml" for b in kept for d in
                  [{"CertificateAuthority": "certificateauthorities",
                    "CertificateProfile": "certificateprofiles",
                    "CertificatePolicy": "certificatepolicies",
                    "SigningProfile": "signingprofiles", "Release": "releases"}[b["kind"]]])
