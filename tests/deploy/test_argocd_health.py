"""The Argo CD health checks (deploy/argocd), run for real with Lua 5.1 (Argo CD's gopher-lua
implements Lua 5.1) on sample objects."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.crds import PLURALS

from .support import DEPLOY, tool

HEALTH = DEPLOY / "argocd" / "health.lua"
KINDS = sorted(PLURALS)


def lua(value: Any) -> str:
    """A Lua table literal for JSON-like data (what Argo CD hands the script as `obj`)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                   .replace("\r", "\\r"))
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua(str(k))}] = {lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def health(script: Path, obj: dict[str, Any]) -> tuple[str, str]:
    program = (f"obj = {lua(obj)}\nlocal function check()\n{script.read_text()}\nend\n"
               "local hs = check()\nprint(hs.status)\nprint(hs.message)\n")
    run = subprocess.run([tool("lua5.1")], input=program, capture_output=True, text=True,
                         timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    status, message = run.stdout.rstrip("\n").split("\n", 1)
    return status, message


def condition(type_: str, status: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": "Succeeded" if status == "True" else "x",
            "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z", **extra}


def sample(kind: str, generation: int = 3, status: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "fleetpki.io/v1alpha1", "kind": kind,
                           "metadata": {"name": "x", "namespace": "fleet-demo",
                                        "generation": generation}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


READY = {"observedGeneration": 3, "conditions": [
    condition("Ready", "True", "1000 device certificate(s) current"),
    condition("Reconciling", "False"), condition("Stalled", "False")]}
STALLED = {"observedGeneration": 3, "conditions": [
    condition("Ready", "False", "policy denied"), condition("Reconciling", "False"),
    condition("Stalled", "True", '1 policy denial(s); first: "house/no-rsa": weak key')]}
RECONCILING = {"observedGeneration": 3, "conditions": [
    condition("Ready", "False", "2 device(s) without certificate, 0 due for renewal"),
    condition("Reconciling", "True", "2 device(s) without certificate, 0 due for renewal"),
    condition("Stalled", "False")]}
CASES = {
    "ready": (sample("K", status=READY), "Healthy", "1000 device certificate(s) current"),
    "stalled": (sample("K", status=STALLED), "Degraded",
                '1 policy denial(s); first: "house/no-rsa": weak key'),
    "no-status": (sample("K"), "Progressing", "Waiting for the operator"),
    "empty-status": (sample("K", status={}), "Progressing", "Waiting for the operator"),
    "stale-generation": (sample("K", generation=4, status=READY), "Progressing",
                         "Waiting for the operator to observe generation 4"),
    "stale-generation-stalled": (sample("K", generation=4, status=STALLED), "Progressing",
                                 "Waiting for the operator to observe generation 4"),
    "no-observed-generation": (sample("K", status={"conditions": READY["conditions"]}),
                               "Progressing", "Waiting for the operator to observe generation 3"),
    "generation-on-the-condition": (sample("K", status={"conditions": [
        condition("Ready", "True", "CA certificate is current", observedGeneration=3)]}),
        "Healthy", "CA certificate is current"),
    "reconciling": (sample("K", status=RECONCILING), "Progressing",
                    "2 device(s) without certificate, 0 due for renewal"),
}


def test_argocd_cm_patch_carries_the_scripts() -> None:
    patch = yaml.safe_load((DEPLOY / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"] == {f"resource.customizations.health.fleetpki.io_{kind}":
                             HEALTH.read_text() for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_health(kind: str, case: str) -> None:
    obj, status, message = CASES[case]
    assert health(HEALTH, {**obj, "kind": kind}) == (status, message)
