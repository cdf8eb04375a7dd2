"""Bad input never erases status: every object keeps its last known status, the broken ones
become Stalled with the error; only an object removed on purpose loses its status file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .support import Applied, Cli, commit_all, status_files

GATEWAYS = "status/DeviceFleet/gateways.yaml"
SENSORS = "status/DeviceFleet/sensors.yaml"


def replace_in(path: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(repo: Path) -> None:
        text = (repo / path).read_text()
        assert old in text
        (repo / path).write_text(text.replace(old, new, 1))
    return edit


MISTAKES = {
    "yaml-syntax": (replace_in("fleets/gateways.yaml", "  devices:\n", "  devices: [\n"),
                    "fleets/gateways.yaml"),
    "unknown-field": (replace_in("fleets/gateways.yaml", "  issuerRef:\n",
                                 "  issuerRefs: {}\n  issuerRef:\n"), "issuerRefs"),
    "missing-profile": (replace_in("fleets/gateways.yaml", "name: gateway-csr", "name: nope"),
                        "nope"),
    "bad-device-id": (replace_in("fleets/gateways.yaml", "id: gw-berlin-02", "id: 'gw berlin'"),
                      "fleets/gateways.yaml"),
    "wrong-api-version": (replace_in("fleets/gateways.yaml", "fleetpki.io/v1alpha1",
                                     "fleetpki.io/v9"), "apiVersion"),
    "bad-duration": (replace_in("profiles.yaml", "duration: ", "duration: forever #"),
                     "profiles.yaml"),
}


def conditions(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in document["status"]["conditions"]}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_bad_input_keeps_every_status(applied_example: Applied, cli: Cli, mistake: str) -> None:
    repo, state = applied_example
    before = status_files(repo)
    edit, named = MISTAKES[mistake]
    edit(repo)
    commit_all(repo, f"a mistake: {mistake}")

    refused = cli("apply", repo, "--state-dir", state, rc=1)
    assert named in refused.stderr and "Traceback" not in refused.stderr
    after = status_files(repo)
    assert sorted(after) == sorted(before), "no status file is lost"
    stalled = [path for path, doc in after.items()
               if conditions(doc)["Stalled"]["status"] == "True"]
    assert stalled, "the objects the error concerns are Stalled"
    for path in stalled:
        condition = conditions(after[path])
        assert condition["Ready"]["status"] == "False"
        assert condition["Stalled"]["reason"] == "InvalidSpec"
        assert named in condition["Stalled"]["message"]
    kept = before[SENSORS]["status"]
    assert after[SENSORS]["status"]["devices"] == kept["devices"], "counts are the last known"
    if mistake != "bad-duration":  # a broken profile concerns every fleet
        assert GATEWAYS in stalled


def test_an_object_removed_on_purpose_loses_its_status(applied_example: Applied,
                                                       cli: Cli) -> None:
    repo, state = applied_example
    (repo / "fleets" / "gateways.yaml").unlink()
    commit_all(repo, "decommission the gateways")
    cli("apply", repo, "--state-dir", state)
    assert GATEWAYS not in status_files(repo)
    assert SENSORS in status_files(repo)
