"""A small fleet repository with signing profiles and a release, applied in-process with real
crypto, git and keystore; the files `fleetpki export release` writes; OpenSSL as the
independent verifier."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import exports, jobs

PASSPHRASE = "release-test-passphrase"
GIT = ("-c", "user.name=fleetpki tests", "-c", "user.email=tests@example.invalid",
       "-c", "commit.gpgsign=false")
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
ARTIFACT = b"\x7fELF fleetpki sample firmware image\n" * 64

PKI = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root}
spec: {type: root, subject: {commonName: Release Test Root}, pathLength: 1}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: signing-ca}
spec: {type: intermediate, parentRef: {name: root}, subject: {commonName: Release Signing CA},
       pathLength: 0, crl: {duration: 720h}}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: device}
spec: {subject: {commonName: "{{ device.id }}"}}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: sensors, labels: {team: firmware, product: sensor}}
spec: {issuerRef: {name: signing-ca}, profileRef: {name: device}, devices: [{id: s-1}]}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: gateways, labels: {team: platform, product: gateway}}
spec: {issuerRef: {name: signing-ca}, profileRef: {name: device}, devices: [{id: g-1}]}
---
apiVersion: fleetpki.io/v1alpha1
kind: SigningProfile
metadata: {name: tsa}
spec:
  issuerRef: {name: signing-ca}
  usage: timeStamping
  duration: 43800h
  subject: {commonName: Release Test TSA}
"""


def signing_profile(name: str = "firmware", algorithm: str = "ECDSA-P256",
                    timestamps: bool = True, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"issuerRef": {"name": "signing-ca"}, "keyAlgorithm": algorithm,
                            "duration": "720h",
                            "subject": {"commonName": f"{name} signing", "organization": "ACME"}}
    if timestamps:
        spec["timestampAuthorityRef"] = {"name": "tsa"}
    spec.update(extra)
    return {"apiVersion": "fleetpki.io/v1alpha1", "kind": "SigningProfile",
            "metadata": {"name": name}, "spec": spec}


def release(name: str = "fw-1", profile: str = "firmware", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"signingProfileRef": {"name": profile}, "version": "1.0.0",
                            "artifacts": [{"path": "artifacts/firmware.bin"}],
                            "targets": {"fleets": ["sensors"]}}
    spec.update(extra)
    return {"apiVersion": "fleetpki.io/v1alpha1", "kind": "Release",
            "metadata": {"name": name}, "spec": spec}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT, *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


class Setup:
    """A git repository `repo`, a state directory and the clock apply runs at."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
        for name in ("FLEETPKI_STATE_DIR", "FLEETPKI_AUDIT_SYSLOG"):
            monkeypatch.delenv(name, raising=False)
        self.tmp = tmp_path
        self.repo = tmp_path / "repo"
        (self.repo / "artifacts").mkdir(parents=True)
        (self.repo / "artifacts" / "firmware.bin").write_bytes(ARTIFACT)
        (self.repo / "pki.yaml").write_text(PKI)
        self.state = jobs.StateDir(tmp_path / "state")
        self.now = jobs.now_utc()
        self.crls = 0
        git(self.repo, "init", "-q", "-b", "main")

    def declare(self, *documents: dict[str, Any]) -> None:
        (self.repo / "signing.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "--allow-empty", "-m", "change")

    def apply(self, now: datetime | None = None) -> jobs.ApplyReport:
        return jobs.apply(self.repo, self.state, now or self.now)

    def export(self, name: str = "fw-1", out: str = "out") -> Path:
        target = self.tmp / out
        with self.state.reader() as inventory:
            exports.export_release(inventory, name, target)
        return target

    def crl(self, ca: str = "signing-ca") -> Path:
        """The CA's current CRL, in a new file each time."""
        self.crls += 1
        path = self.tmp / f"{ca}.{self.crls}.crl.pem"
        with self.state.reader() as inventory:
            path.write_bytes(exports.crl_bytes(inventory, ca, der=False))
        return path

    def root(self) -> Path:
        return self.tmp / "out" / "ca.pem"

    def verify(self, out: Path, *, artifact: Path | None = None, crls: Sequence[Path] = (),
               fleet: str | None = None, now: datetime | None = None) -> Any:
        return jobs.verify_release(artifact or self.repo / "artifacts" / "firmware.bin",
                                   out / "manifest.json", out / "manifest.p7s",
                                   out / "ca.pem", list(crls), fleet, now or self.now)


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_bytes())
    return data


def openssl_cms_verify(out: Path, trust: Path, *, crl: Path | None = None,
                       attime: datetime | None = None) -> subprocess.CompletedProcess[str]:
    """`openssl cms -verify` of the detached signature over manifest.json's exact bytes;
    a CRL is given through the CAfile (OpenSSL 3.0's cms has no -CRLfile)."""
    assert OPENSSL is not None
    ca_file = trust
    args = []
    if crl is not None:
        ca_file = out / "trust-and-crl.pem"
        ca_file.write_bytes(trust.read_bytes() + crl.read_bytes())
        args.append("-crl_check")
    if attime is not None:
        args += ["-attime", str(int(attime.timestamp()))]
    return subprocess.run([OPENSSL, "cms", "-verify", "-binary", "-inform", "DER",
                           "-in", str(out / "manifest.p7s"), "-content",
                           str(out / "manifest.json"), "-CAfile", str(ca_file),
                           "-purpose", "any", "-out", str(out / "verified.json"), *args],
                          capture_output=True, text=True, check=False)
