"""Measure the job at fleet scale: `python bench/scale.py [--devices N ...]` prints a table.

Builds a throw-away fleet repo (root + intermediate, one server-keygen profile, one fleet from
a CSV of N devices) and times each phase with the real stores, as `fleetpki` would run it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from controller import jobs

REPO = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root}
spec: {type: root, subject: {commonName: Bench Root}, pathLength: 1}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: issuing}
spec:
  type: intermediate
  parentRef: {name: root}
  subject: {commonName: Bench Issuing CA}
  pathLength: 0
  crl: {distributionPoint: "http://127.0.0.1:8080/crl/issuing.crl"}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: device}
spec:
  subject: {commonName: "{{ device.id }}"}
  subjectAltNames: {uris: ["urn:bench:{{ device.id }}"]}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: fleet}
spec:
  issuerRef: {name: issuing}
  profileRef: {name: device}
  deviceSource: {path: devices.csv}
"""


def write_repo(directory: Path, devices: int, revoked: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fleet.yaml").write_text(REPO)
    with open(directory / "devices.csv", "w") as handle:
        handle.write("id,labels.site,revoked\n")
        for number in range(devices):
            reason = "keyCompromise" if number < revoked else ""
            handle.write(f"dev-{number:07d},site-{number % 50},{reason}\n")


def timed(label: str, rows: list[tuple[str, float, str]], call: Callable[[], Any],
          detail: Callable[[Any], str] = lambda r: "") -> Any:
    start = time.perf_counter()
    result = call()
    rows.append((label, time.perf_counter() - start, detail(result)))
    return result


def run(devices: int, revoke: int) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    work = Path(tempfile.mkdtemp(prefix="fleetpki-bench-"))
    try:
        repo, state = work / "repo", jobs.StateDir(work / "state")
        write_repo(repo, devices)
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        now = jobs.now_utc()
        timed("validate", rows, lambda: jobs.validate(repo, now),
              lambda r: f"{len(r[0])} problems, {len(r[1])} policy findings")
        timed("plan (empty inventory)", rows, lambda: jobs.plan(repo, state, now),
              lambda p: f"{len(p.actions)} actions")
        timed("apply (create CAs, issue all)", rows, lambda: jobs.apply(repo, state, now),
              lambda r: f"{sum(r.result.done.values())} actions")
        timed("plan (no-op)", rows, lambda: jobs.plan(repo, state, now),
              lambda p: f"{len(p.actions)} actions")
        timed("apply (no-op)", rows, lambda: jobs.apply(repo, state, now),
              lambda r: f"{sum(r.result.done.values())} actions")
        write_repo(repo, devices, revoked=revoke)
        timed(f"apply (revoke {revoke}, publish CRL)", rows,
              lambda: jobs.apply(repo, state, now, allow_mass_revocation=True),
              lambda r: f"{r.result.done}")
        later = now + timedelta(days=330)
        timed("plan (renewal window, +330d)", rows, lambda: jobs.plan(repo, state, later),
              lambda p: f"{len(p.actions)} actions")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(("peak RSS", 0.0, f"{rss:.0f} MiB"))
    finally:
        shutil.rmtree(work)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--revoke", type=int, default=1_000)
    args = parser.parse_args()
    os.environ.setdefault("FLEETPKI_PASSPHRASE", "bench-only-passphrase")
    rows = run(args.devices, args.revoke)
    print(f"fleetpki bench: {args.devices:,} devices, {os.cpu_count()} CPUs")
    print(f"{'phase':<36} {'seconds':>9}  {'per device':>11}  detail")
    for label, seconds, detail in rows:
        per = f"{seconds / args.devices * 1e6:8.1f} µs" if seconds else ""
        shown = f"{seconds:9.2f}" if seconds else ""
        print(f"{label:<36} {shown:>9}  {per:>11}  {detail}")


if __name__ == "__main__":
    main()
