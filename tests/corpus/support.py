"""Helpers of the bad-input corpus: PEM material made at test time, placeholder rendering, the
`fleetpki` CLI in subprocesses, and snapshots of what a failing command must not change.

No private key is ever written: the device keys behind the CSRs live only in this process.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from controller.cli import app

CORPUS = Path(__file__).resolve().parent
BASE = CORPUS / "base"
CASES = CORPUS / "cases"
PASSPHRASE = "corpus-test-passphrase"
STATUS_BRANCH = "fleetpki/status"
GIT_IDENTITY = ("-c", "user.name=fleetpki corpus", "-c", "user.email=corpus@example.invalid",
                "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main")
PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")
REPEAT = re.compile(r"^REPEAT_([0-9]+)$")
SECRET_MARKER = "PRIVATE KEY"


# --- PEM material ------------------------------------------------------------------------------
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _csr_pem(key: PrivateKey, common_name: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    request = x509.CertificateSigningRequestBuilder().subject_name(name)
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _with_bad_signature(pem: bytes) -> bytes:
    """The same CSR with one bit of its signature flipped: still parses, no longer verifies.

    The last byte of an ECDSA CSR is the low byte of the signature's `s` integer.
    """
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    corrupted = x509.load_der_x509_csr(bytes(der))
    assert not corrupted.is_signature_valid
    return corrupted.public_bytes(serialization.Encoding.PEM)


def make_pem_values() -> dict[str, str]:
    """Every `{{NAME}}` placeholder of the base and the cases (except REPEAT_<n>)."""
    p256 = [ec.generate_private_key(ec.SECP256R1()) for _ in range(7)]
    values: dict[str, bytes] = {}
    for number in range(1, 5):  # the base's gateways gw-01..gw-04; gw-05 has a bare key
        values[f"CSR_GW_0{number}"] = _csr_pem(p256[number - 1], f"gw-0{number}")
    values["PUBKEY_GW_05"] = _public_pem(p256[4])
    values["CSR_GW_06"] = _csr_pem(p256[5], "gw-06")  # gw-06: the device the cases add
    values["PUBKEY_GW_06"] = _public_pem(p256[5])
    values["CSR_OTHER_DEVICE"] = _csr_pem(p256[5], "gw-02")  # gw-06's key, gw-02's name
    values["CSR_BAD_SIGNATURE"] = _with_bad_signature(_csr_pem(p256[5], "gw-06"))
    values["CSR_P384"] = _csr_pem(ec.generate_private_key(ec.SECP384R1()), "gw-06")
    values["CSR_RSA2048"] = _csr_pem(rsa.generate_private_key(65537, 2048), "gw-06")
    values["CSR_SENSOR_01"] = _csr_pem(p256[6], "sensor-01")
    values["PEM_GARBAGE"] = (b"-----BEGIN PUBLIC KEY-----\nthis is not base64 at all!\n"
                             b"-----END PUBLIC KEY-----\n")
    values["CSR_GARBAGE"] = (b"-----BEGIN CERTIFICATE REQUEST-----\n"
                             b"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
                             b"-----END CERTIFICATE REQUEST-----\n")
    return {k: v.decode().strip() for k, v in values.items()}


def placeholder_value(name: str, values: Mapping[str, str]) -> str:
    repeat = REPEAT.match(name)
    if repeat:
        return "x" * int(repeat.group(1))
    if name not in values:
        raise KeyError(f"unknown corpus placeholder {{{{{name}}}}}")
    return values[name]


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace `{{NAME}}` placeholders. A placeholder that starts a line (after indentation)
    gets every line of a multi-line value indented the same, as a YAML block scalar needs;
    elsewhere the value is inserted as it is. fleetpki's own `{{ device.id }}` templates
    (lower case, spaces) are left alone."""
    lines = []
    for line in text.split("\n"):
        indent = line[: len(line) - len(line.lstrip())]
        at_start = PLACEHOLDER.match(line.lstrip()) is not None

        def substitute(match: re.Match[str], indent: str = indent, at_start: bool = at_start,
                       ) -> str:
            value = placeholder_value(match.group(1), values)
            return value.replace("\n", "\n" + indent) if at_start else value

        lines.append(PLACEHOLDER.sub(substitute, line))
    return "\n".join(lines)


# --- processes ---------------------------------------------------------------------------------
def hermetic_env(home: Path) -> dict[str, str]:
    """Own HOME (no user git config), no inherited fleetpki or git settings."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETPKI_", "GIT_"))}
    env.update({"HOME": str(home), "XDG_STATE_HOME": str(home / "state"),
                "GIT_CONFIG_NOSYSTEM": "1", "FLEETPKI_PASSPHRASE": PASSPHRASE,
                "COLUMNS": "400", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def git(repo: Path, *args: str) -> str:
    run = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=repo, capture_output=True,
                         text=True, check=False, env=hermetic_env(repo.parent / "git-home"))
    if run.returncode:
        raise AssertionError(f"git {' '.join(args)} failed: {run.stderr}")
    return run.stdout


def fleetpki_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "controller.cli", *map(str, args)]


@dataclass(frozen=True)
class Applied:
    """A fleet repository (git, `main` committed) and the state directory it was applied to."""

    repo: Path
    state: Path
    env: dict[str, str]

    def fleetpki(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(fleetpki_command(*args), cwd=self.repo, env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)


# --- snapshots ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """What a failing command must leave as it was."""

    status_json: str
    certificates: str  # sha256 of the inventory's certificate rows
    head: str
    porcelain: str
    refs: str  # every ref but the status branch


def inventory_digest(state: Path) -> str:
    uri = f"file:{state / 'inventory.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute("SELECT serial, kind, owner, device, state, revoked_at, reason "
                          "FROM certificates ORDER BY serial").fetchall()
    db.close()
    assert rows, "the base apply issued nothing"
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def status_json(fleet: Applied) -> str:
    result = CliRunner().invoke(app, ["status", str(fleet.repo), "--state-dir", str(fleet.state),
                                      "-o", "json"])
    assert result.exit_code == 0, result.output
    return result.stdout


def snapshot(fleet: Applied) -> Snapshot:
    refs = git(fleet.repo, "for-each-ref", "--format=%(refname) %(objectname)")
    other_refs = "\n".join(r for r in refs.splitlines()
                           if not r.startswith(f"refs/heads/{STATUS_BRANCH} "))
    return Snapshot(status_json(fleet), inventory_digest(fleet.state),
                    git(fleet.repo, "rev-parse", "HEAD").strip(),
                    git(fleet.repo, "status", "--porcelain", "--untracked-files=all"),
                    other_refs)


def status_branch_secrets(repo: Path) -> list[str]:
    """Files on the status branch that look like, or contain, private key material."""
    names = git(repo, "ls-tree", "-r", "--name-only", STATUS_BRANCH).splitlines()
    found = [name for name in names if name.endswith((".key", ".p12", ".pfx"))]
    grep = subprocess.run(["git", "grep", "-I", "-l", "-F", SECRET_MARKER, STATUS_BRANCH],
                          cwd=repo, capture_output=True, text=True, check=False,
                          env=hermetic_env(repo.parent / "git-home"))
    assert grep.returncode in (0, 1), grep.stderr  # 1: nothing found
    return found + grep.stdout.splitlines()


def write_tree(source: Path, target: Path, values: Mapping[str, str],
               skip: frozenset[str] = frozenset()) -> None:
    """Copy `source` into `target`, rendering placeholders (text files are all UTF-8)."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or str(relative) in skip:
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(render(path.read_text(encoding="utf-8"), values),
                               encoding="utf-8")
