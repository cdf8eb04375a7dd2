"""Builders for small fleet repositories written as YAML strings into a temporary directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller.api.problems import Problem

MakeRepo = Callable[..., Path]

HEADER = "apiVersion: fleetpki.io/v1alpha1\n"

ROOT_CA = HEADER + """\
kind: CertificateAuthority
metadata:
  name: root
spec:
  type: root
  subject:
    commonName: Test Root CA
"""

ISSUING_CA = HEADER + """\
kind: CertificateAuthority
metadata:
  name: issuing
spec:
  type: intermediate
  parentRef:
    name: root
  subject:
    commonName: Test Issuing CA
"""

PROFILE = HEADER + """\
kind: CertificateProfile
metadata:
  name: client
spec:
  keyAlgorithm: ECDSA-P256
  duration: 8760h
  subject:
    commonName: "{{ device.id }}"
"""

FLEET = HEADER + """\
kind: DeviceFleet
metadata:
  name: sensors
spec:
  issuerRef:
    name: issuing
  profileRef:
    name: client
  devices:
    - id: dev-1
    - id: dev-2
"""


def minimal_files() -> dict[str, str]:
    """One root CA, one intermediate, one profile and one fleet with two devices."""
    return {
        "authorities.yaml": ROOT_CA + "---\n" + ISSUING_CA,
        "profiles.yaml": PROFILE,
        "fleets/sensors.yaml": FLEET,
    }


def write_repo(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative path -> text) under `root` and return `root`."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the `occurrence`-th line containing `needle`."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not found {occurrence} time(s)")


def only(problems: list[Problem], **match: object) -> Problem:
    """The single problem whose attributes equal `match`; fails listing all problems otherwise."""
    found = [p for p in problems if all(getattr(p, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one problem with {match}, got: {[str(p) for p in problems]}"
    return found[0]
