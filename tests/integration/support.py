"""Helpers for the integration tests.

Everything here is real: git repositories in tmp_path, the SQLite inventory, the keystore, the
`fleetpki` CLI in subprocesses and the system `openssl` as the independent verifier.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from typer.testing import CliRunner

from controller.cli import app
from controller.stores.inventory import Inventory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fleet-repo"
PASSPHRASE = "integration-test-passphrase"
API = "fleetpki.io/v1alpha1"
GIT_IDENTITY = ("-c", "user.name=fleetpki tests", "-c", "user.email=tests@example.invalid",
                "-c", "commit.gpgsign=false")
SECRET_MARKER = "PRIVATE KEY"


# --- environments ------------------------------------------------------------------------------
def base_env(home: Path) -> dict[str, str]:
    """A hermetic environment: own HOME (no user git config), no inherited fleetpki settings."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()  # the database of `inventory_backend` only
           if not k.startswith(("FLEETPKI_", "GIT_")) or k == "FLEETPKI_DATABASE_URL"}
    env.update({
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "FLEETPKI_PASSPHRASE": PASSPHRASE,
        "COLUMNS": "400",  # rich wraps stderr at the console width; keep messages on one line
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def one_line(text: str) -> str:
    """Collapse whitespace so messages can be matched whatever the console wrapping."""
    return " ".join(text.split())


# --- the CLI -----------------------------------------------------------------------------------
@dataclass
class Cli:
    """Runs the CLI, checks the exit code and that no private key is ever printed.

    `in_process=False`: `python -m controller.cli` in a subprocess, as a user runs it.
    `in_process=True`: the same Typer app through click's test runner with the same environment
    (no interpreter start-up: most tests use this to keep the suite fast).
    """

    env: dict[str, str]
    cwd: Path
    in_process: bool = False
    outputs: list[str] = field(default_factory=list)

    def command(self, *args: str | Path) -> list[str]:
        return [sys.executable, "-m", "controller.cli", *map(str, args)]

    def __call__(self, *args: str | Path, rc: int | None = 0,
                 env: Mapping[str, str] | None = None,
                 timeout: float = 180) -> subprocess.CompletedProcess[str]:
        full_env = {**self.env, **(env or {})}
        if self.in_process:
            run = self._invoke([str(a) for a in args], full_env)
        else:
            run = subprocess.run(self.command(*args), cwd=self.cwd, env=full_env,
                                 capture_output=True, text=True, timeout=timeout)
        self.outputs.extend([run.stdout, run.stderr])
        assert SECRET_MARKER not in run.stdout + run.stderr, f"key material printed by {args}"
        if rc is not None:
            assert run.returncode == rc, (
                f"fleetpki {' '.join(map(str, args))}: exit {run.returncode}, expected {rc}\n"
                f"--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}")
        return run

    @staticmethod
    def _invoke(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        overrides: dict[str, str | None] = {
            k: None for k in os.environ if k.startswith(("FLEETPKI_", "GIT_")) and k not in env}
        overrides.update(env)
        result = CliRunner().invoke(app, args, env=overrides)
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(result.exception))
        return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)

    def popen(self, *args: str | Path, log: Path) -> subprocess.Popen[bytes]:
        handle = open(log, "wb")  # noqa: SIM115 - the child keeps it; closed at exit
        return subprocess.Popen(self.command(*args), cwd=self.cwd, env=self.env,
                                stdout=handle, stderr=subprocess.STDOUT)


# --- git ---------------------------------------------------------------------------------------
def git(cwd: Path, *args: str, check: bool = True) -> str:
    env = base_env(cwd)  # HOME without a user git config
    run = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=cwd, env=env, capture_output=True,
                         text=True, check=False)
    if check and run.returncode:
        raise AssertionError(f"git {' '.join(args)} failed: {run.stderr}")
    return run.stdout


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def init_repo(repo: Path) -> str:
    git(repo, "init", "-q", "-b", "main")
    return commit_all(repo, "fleet declaration")


def copy_example(dest: Path) -> Path:
    """The example fleet repository as a fresh git repository (one commit on main)."""
    shutil.copytree(EXAMPLE, dest)
    init_repo(dest)
    return dest


def status_files(repo: Path, branch: str = "fleetpki/status") -> dict[str, Any]:
    names = git(repo, "ls-tree", "-r", "--name-only", branch).split()
    return {name: yaml.safe_load(git(repo, "show", f"{branch}:{name}")) for name in names}


def branch_sha(repo: Path, branch: str) -> str | None:
    out = git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    return out.strip() or None


# --- writing fleet repositories -----------------------------------------------------------------
def dump_yaml(path: Path, *documents: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(list(documents), sort_keys=False))


def profile(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"keyAlgorithm": "ECDSA-P256", "keyGeneration": "server",
                            "subject": {"commonName": "{{ device.id }}"}}
    body.update(spec)
    return {"apiVersion": API, "kind": "CertificateProfile", "metadata": {"name": name},
            "spec": body}


def fleet(name: str, profile_name: str, *, source: str | None = None,
          devices: Sequence[Mapping[str, Any]] = (), **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"issuerRef": {"name": "devices-ca"},
                            "profileRef": {"name": profile_name}}
    if devices:
        body["devices"] = [dict(d) for d in devices]
    if source:
        body["deviceSource"] = {"path": source}
    body.update(spec)
    return {"apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": name}, "spec": body}


def device_ids(prefix: str, count: int, start: int = 1) -> list[str]:
    return [f"{prefix}-{n:05d}" for n in range(start, start + count)]


def write_csv(path: Path, ids: Iterable[str], revoked: Mapping[str, str] | None = None) -> None:
    revoked = revoked or {}
    lines = ["id,labels.site,revoked"] + [f"{i},lab,{revoked.get(i, '')}" for i in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def small_repo(root: Path, ids: Sequence[str], *, fleet_name: str = "meters",
               profile_spec: Mapping[str, Any] | None = None, git_init: bool = True) -> Path:
    """The example's CA hierarchy plus one server-keygen fleet listed in a CSV."""
    root.mkdir(parents=True)
    shutil.copy(EXAMPLE / "authorities.yaml", root / "authorities.yaml")
    dump_yaml(root / "profiles.yaml", profile("meter", **dict(profile_spec or {})))
    dump_yaml(root / "fleets" / f"{fleet_name}.yaml",
              fleet(fleet_name, "meter", source=f"fleets/{fleet_name}.csv"))
    write_csv(root / "fleets" / f"{fleet_name}.csv", ids)
    if git_init:
        init_repo(root)
    return root


def edit_csv(path: Path, *, revoke: Mapping[str, str] | None = None,
             delete: Iterable[str] = (), add: Iterable[str] = ()) -> None:
    """Edit a device CSV (whatever its line endings) by device id: set the `revoked` column,
    delete rows, append raw rows."""
    revoke = dict(revoke or {})
    gone = set(delete)
    header, *rows = path.read_text().splitlines()
    columns = header.split(",")
    kept = []
    for row in rows:
        fields = row.split(",")
        if fields[0] in gone:
            continue
        if fields[0] in revoke:
            fields += [""] * (len(columns) - len(fields))
            fields[columns.index("revoked")] = revoke[fields[0]]
        kept.append(",".join(fields))
    path.write_text("\n".join([header, *kept, *add]) + "\n")


# --- the inventory -----------------------------------------------------------------------------
def query(state: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Read the inventory read-only, as an outside observer would (the database of
    `inventory_backend` if it set one)."""
    if os.environ.get("FLEETPKI_DATABASE_URL"):
        with Inventory(os.environ["FLEETPKI_DATABASE_URL"], read_only=True) as inventory:
            return [tuple(row) for row in inventory.db.execute(sql, tuple(params))]
    db = sqlite3.connect(f"file:{state / 'inventory.db'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, tuple(params)).fetchall()
    finally:
        db.close()


def active_serials(state: Path, fleet_name: str) -> dict[str, str]:
    rows = query(state, "SELECT device, serial FROM certificates WHERE kind = 'device' "
                 "AND owner = ? AND state = 'active'", (fleet_name,))
    return dict(rows)


def ca_rows(state: Path) -> list[tuple[Any, ...]]:
    return query(state, "SELECT serial, owner, state, key_id FROM certificates "
                 "WHERE kind = 'ca' ORDER BY serial")


def duplicate_actives(state: Path) -> list[tuple[Any, ...]]:
    return query(state, "SELECT owner, device, count(*) FROM certificates WHERE state = 'active' "
                 "GROUP BY 1, 2 HAVING count(*) > 1")


# --- openssl -----------------------------------------------------------------------------------
def openssl(*args: str | Path, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=False)
    if check:
        assert run.returncode == 0, f"openssl {args}: {run.stdout}{run.stderr}"
    return run


def der_to_pem(der: bytes, path: Path, kind: str = "x509") -> Path:
    source = path.with_suffix(".der")
    source.write_bytes(der)
    openssl(kind, "-inform", "DER", "-in", source, "-out", path)
    return path


def openssl_serial(serial_hex: str) -> str:
    """How `openssl crl -text` prints a serial: upper-case hex without leading zeros (even
    length)."""
    text = format(int(serial_hex, 16), "X")
    return text if len(text) % 2 == 0 else "0" + text


class Applied(NamedTuple):
    """A fleet repository and the state directory it was applied with."""

    repo: Path
    state: Path
