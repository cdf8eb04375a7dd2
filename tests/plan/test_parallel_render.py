"""The planner renders devices on forked workers (`jobs.render_on_every_core`): the plan, its
problems (file, line, field) and intents are exactly those of rendering every device here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controller import jobs, parallel
from controller.pki import keys
from controller.plan import planner
from controller.plan.model import Observed

from .support import NOW

DECLARATION = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root}
spec: {type: root, subject: {commonName: Render Root}}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: sensor}
spec:
  subject: {commonName: "{{ device.id }}", organizationalUnit: "{{ fleet.name }}"}
  keyGeneration: device
  subjectAltNames: {dnsNames: ["{{ device.id }}.{{ device.labels.site }}.example"]}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: sensors}
spec:
  issuerRef: {name: root}
  profileRef: {name: sensor}
  deviceSource: {path: devices.csv}
"""


def fleet_repo(root: Path, count: int) -> Path:
    """`count` devices; every 7th has a broken key, every 11th no site, every 13th a P-384 key."""
    root.mkdir()
    (root / "fleet.yaml").write_text(DECLARATION)
    rows = ["id,labels.site,publicKey"]
    for number in range(count):
        curve = ec.SECP384R1() if number % 13 == 5 else ec.SECP256R1()
        pem = keys.public_key_to_pem(ec.generate_private_key(curve).public_key()).decode()
        if number % 7 == 3:
            pem = pem.replace("MF", "MX", 1)
        rows.append(f'd{number:03d},{"" if number % 11 == 4 else "berlin"},"{pem}"')
    (root / "devices.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_plan_rendered_by_workers_is_the_plan_rendered_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = fleet_repo(tmp_path / "repo", 90)
    rendered_here: list[str] = []
    real = planner.device_intent

    def counting(*args: Any) -> Any:
        rendered_here.append(args[2].id)
        return real(*args)

    monkeypatch.setattr(planner, "device_intent", counting)
    monkeypatch.setattr(parallel, "MIN_PARALLEL", 1)
    monkeypatch.setattr(parallel.threading, "active_count", lambda: 1)  # threads other tests left
    monkeypatch.setattr(jobs, "RENDER_BATCH", 8)
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")
    declaration = jobs.load(repo)
    by_workers = declaration.plan(Observed(), NOW)
    assert rendered_here == []  # every device was rendered in a worker
    monkeypatch.setenv(parallel.WORKERS_ENV, "0")
    here = declaration.plan(Observed(), NOW)
    assert len(rendered_here) == 90

    assert by_workers.problems == here.problems
    assert {(p.device, p.field) for p in here.problems} >= {
        ("d003", "publicKey"), ("d004", "labels"), ("d005", "publicKey")}
    assert all(p.file == "devices.csv" and p.line for p in here.problems)
    assert len(here.problems) == len([n for n in range(90)
                                      if n % 7 == 3 or n % 11 == 4 or n % 13 == 5])
    assert by_workers.actions == here.actions
    assert by_workers.intents == here.intents and len(here.intents) == 90 - len(here.problems)
