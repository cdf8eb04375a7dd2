"""Builders for the policy and pull-request plan tests.

Fleet repositories are plain Python data (one dict per YAML document) written into tmp_path, so
a test states exactly the field it changes. The default repository passes every default policy.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner, Result

from controller import jobs
from controller.api.problems import Finding, Problem
from controller.cli import app
from controller.plan.model import Action, Plan

NOW = datetime(2030, 1, 1, tzinfo=UTC)
API = "fleetpki.io/v1alpha1"
PROJECT = Path(__file__).resolve().parents[2]
EXAMPLE = PROJECT / "examples" / "fleet-repo"
PASSPHRASE = "policy-tests-passphrase"
GIT_CONFIG = ("-c", "user.name=policy tests", "-c", "user.email=policy-tests@example.invalid",
              "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null")
Doc = dict[str, Any]


# --- documents -----------------------------------------------------------------------------------
def document(kind: str, name: str, spec: Doc, *, labels: Mapping[str, str] | None = None,
             annotations: Mapping[str, str] | None = None) -> Doc:
    metadata: Doc = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": API, "kind": kind, "metadata": metadata, "spec": spec}


def rule(name: str, expression: str, *, action: str = "deny", message: str | None = None) -> Doc:
    return {"name": name, "expression": expression, "action": action,
            "message": message or f"{name} does not hold"}


def policy(name: str, *rules: Doc, selector: Doc | None = None, disabled: bool = False) -> Doc:
    spec: Doc = {"rules": list(rules)}
    if selector is not None:
        spec["selector"] = selector
    if disabled:
        spec["disabled"] = True
    return document("CertificatePolicy", name, spec)


def devices(*ids: str, site: str = "berlin") -> list[Doc]:
    return [{"id": device_id, "labels": {"site": site}} for device_id in ids]


def fleet_doc(name: str, device_list: list[Doc], *, issuer: str = "issuing",
              profile: str = "client", labels: Mapping[str, str] | None = None,
              annotations: Mapping[str, str] | None = None, **spec: Any) -> Doc:
    body: Doc = {"issuerRef": {"name": issuer}, "profileRef": {"name": profile}}
    if device_list:
        body["devices"] = device_list
    body.update(spec)
    return document("DeviceFleet", name, body, labels=labels, annotations=annotations)


def profile_doc(name: str, **spec: Any) -> Doc:
    body: Doc = {"keyAlgorithm": "ECDSA-P256", "keyGeneration": "server",
                 "duration": "8760h", "subject": {"commonName": "{{ device.id }}"}}
    body.update(spec)
    return document("CertificateProfile", name, body)


def ca_doc(name: str, *, parent: str | None = None, labels: Mapping[str, str] | None = None,
           **spec: Any) -> Doc:
    body: Doc = {"type": "intermediate" if parent else "root",
                 "subject": {"commonName": f"{name} CA"}, "pathLength": 0 if parent else 1}
    if parent:
        body["parentRef"] = {"name": parent}
    body.update(spec)
    return document("CertificateAuthority", name, body, labels=labels)


@dataclass
class FleetRepo:
    """CAs `root` (pathLength 1) -> `issuing` (pathLength 0), profile `client` (one year,
    server keys) and fleet `sensors` with dev-1..dev-3; repository policies optional."""

    authorities: dict[str, Doc] = field(default_factory=lambda: {
        "root": ca_doc("root"), "issuing": ca_doc("issuing", parent="root")})
    profiles: dict[str, Doc] = field(default_factory=lambda: {"client": profile_doc("client")})
    fleets: dict[str, Doc] = field(default_factory=lambda: {
        "sensors": fleet_doc("sensors", devices("dev-1", "dev-2", "dev-3"))})
    policies: dict[str, Doc] = field(default_factory=dict)

    def copy(self) -> FleetRepo:
        return copy.deepcopy(self)

    def add_policy(self, doc: Doc) -> FleetRepo:
        self.policies[doc["metadata"]["name"]] = doc
        return self

    def write(self, root: Path) -> Path:
        """Write (or rewrite) the repository under `root`; files of removed objects go."""
        for stale in ("fleets", "policies"):
            shutil.rmtree(root / stale, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        dump(root / "authorities.yaml", *self.authorities.values())
        dump(root / "profiles.yaml", *self.profiles.values())
        for name, doc in self.fleets.items():
            dump(root / "fleets" / f"{name}.yaml", doc)
        for name, doc in self.policies.items():
            dump(root / "policies" / f"{name}.yaml", doc)
        return root


def dump(path: Path, *documents: Doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(list(documents), sort_keys=False), encoding="utf-8")


# --- running the job layer -----------------------------------------------------------------------
def check(repo: FleetRepo, tmp_path: Path, *,
          defaults: bool = True) -> tuple[list[Problem], list[Finding]]:
    """`jobs.validate` of the repository written to a fresh directory."""
    root = repo.write(tmp_path / f"repo-{len(list(tmp_path.glob('repo-*')))}")
    return jobs.validate(root, NOW, jobs.PolicySource(defaults))


def findings_of(repo: FleetRepo, tmp_path: Path, *, defaults: bool = True) -> list[Finding]:
    problems, findings = check(repo, tmp_path, defaults=defaults)
    assert problems == [], [str(p) for p in problems]
    return findings


def keyed(findings: Iterable[Finding]) -> set[tuple[str, str, str, str | None]]:
    """(action, policy/rule, object, device) per finding: easy to compare as a set."""
    return {(f.action, f"{f.policy}/{f.rule}", f.object, f.device) for f in findings}


def of_rule(findings: Iterable[Finding], ref: str) -> list[Finding]:
    return [f for f in findings if f"{f.policy}/{f.rule}" == ref]


def actions(plan: Plan | Iterable[Action]) -> set[tuple[str, str, str | None]]:
    items = plan.actions if isinstance(plan, Plan) else plan
    return {(a.action, a.name, a.device) for a in items}


# --- git and the CLI -----------------------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    run = subprocess.run(["git", *GIT_CONFIG, *args], cwd=repo, env=env, capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0, f"git {' '.join(args)}: {run.stderr}"
    return run.stdout


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def init_repo(repo: Path) -> str:
    git(repo, "init", "-q", "-b", "main")
    return commit_all(repo, "fleet declaration")


def show(repo: Path, ref: str, path: str) -> Any:
    return yaml.safe_load(git(repo, "show", f"{ref}:{path}"))


def invoke(*args: str | Path, rc: int | None = 0) -> Result:
    """`fleetpki ARGS` in-process; stdout and stderr are captured separately."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    if rc is not None:
        assert result.exit_code == rc, (
            f"fleetpki {' '.join(map(str, args))}: exit {result.exit_code}, expected {rc}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n{result.exception!r}")
    return result


def one_line(text: str) -> str:
    return " ".join(text.split())
