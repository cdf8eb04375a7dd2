"""Keys and secrets: file modes, passphrase and lost-key failures, nothing secret in git/output."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from .support import (
    SECRET_MARKER,
    Applied,
    Cli,
    active_serials,
    ca_rows,
    commit_all,
    edit_csv,
    one_line,
    openssl,
    query,
    status_files,
)

NEW_SENSOR = "sensor-1001,TS-100,berlin,"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_files(state: Path) -> set[str]:
    return {str(p.relative_to(state)) for p in (state / "keys").rglob("*") if p.is_file()}


def add_a_sensor(applied: Applied) -> None:
    """A change that needs the issuing CA's key."""
    edit_csv(applied.repo / "fleets" / "sensors.csv", add=[NEW_SENSOR])
    commit_all(applied.repo, "one more sensor")


def test_state_files_are_private(applied_example: Applied) -> None:
    _, state = applied_example
    assert mode(state) == 0o700
    assert mode(state / "inventory.db") == 0o600
    assert mode(state / "keys") == 0o700
    assert mode(state / "keys" / "ca") == 0o700
    ca_keys = sorted((state / "keys" / "ca").glob("*.pem"))  # with the signing keys
    assert len(ca_keys) == 4 and len([k for k in ca_keys if k.name.startswith("signing.")]) == 2
    for path in ca_keys:
        assert mode(path) == 0o600, path
        assert path.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        # Encrypted for real: openssl cannot read it without the (derived) password.
        assert openssl("pkey", "-in", path, "-passin", "pass:", "-noout",
                       check=False).returncode != 0
    for path in (state / "keys").rglob("*"):
        if path.is_file():
            assert mode(path) == 0o600, path


def test_wrong_or_missing_passphrase_fails_cleanly(applied_example: Applied,
                                                   cli_process: Cli) -> None:
    cli = cli_process  # the real command, in a subprocess
    repo, state = applied_example
    add_a_sensor(applied_example)
    cas, keys = ca_rows(state), key_files(state)
    before = active_serials(state, "sensors")

    wrong = cli("apply", repo, "--state-dir", state, rc=1,
                env={"FLEETPKI_PASSPHRASE": "not-the-passphrase"})
    assert "wrong FLEETPKI_PASSPHRASE" in one_line(wrong.stderr)
    assert "Traceback" not in wrong.stderr
    missing = cli("apply", repo, "--state-dir", state, rc=1, env={"FLEETPKI_PASSPHRASE": ""})
    assert "FLEETPKI_PASSPHRASE is not set" in one_line(missing.stderr)
    assert ca_rows(state) == cas, "no CA created or replaced"
    assert key_files(state) == keys
    assert active_serials(state, "sensors") == before

    assert "1 issue" in cli("apply", repo, "--state-dir", state).stdout
    assert "sensor-1001" in active_serials(state, "sensors")


def test_lost_ca_key_is_never_replaced_by_a_new_ca(applied_example: Applied, cli: Cli) -> None:
    repo, state = applied_example
    add_a_sensor(applied_example)
    cas = ca_rows(state)
    issuing_key = next(key for _, owner, _, key in cas if owner == "devices-ca")
    (state / "keys" / "ca" / f"{issuing_key}.pem").unlink()
    keys = key_files(state)

    failed = cli("apply", repo, "--state-dir", state, rc=1)
    message = one_line(failed.stderr)
    assert f"CA key '{issuing_key}' not found in keystore" in message
    assert "Traceback" not in failed.stderr
    assert ca_rows(state) == cas
    assert key_files(state) == keys, "no new key written"
    assert "sensor-1001" not in active_serials(state, "sensors")
    # Planning needs no key and still shows the pending issuance.
    assert "sensor-1001" in cli("plan", repo, "--state-dir", state).stdout


def test_lost_state_directory_does_not_silently_start_a_new_pki(applied_example: Applied,
                                                                cli: Cli, tmp_path: Path) -> None:
    repo, _ = applied_example
    empty = tmp_path / "wrong-state"
    refused = cli("apply", repo, "--state-dir", empty, rc=1)
    message = one_line(refused.stderr)
    assert "CertificateAuthority/acme-root exists already" in message
    assert "--new-ca acme-root" in message
    assert not list(empty.glob("keys/ca/*.pem")), "no CA key generated"
    assert not (empty / "inventory.db").exists() or not query(
        empty, "SELECT 1 FROM certificates"), "no CA certificate recorded"


def git_objects(repo: Path) -> dict[str, bytes]:
    """Every blob reachable from any ref (rev-list + ls-tree), plus every object in the store."""
    blobs: dict[str, bytes] = {}
    commits = subprocess.run(["git", "rev-list", "--all"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.split()
    shas = set()
    for commit in commits:
        tree = subprocess.run(["git", "ls-tree", "-r", commit], cwd=repo, capture_output=True,
                              text=True, check=True).stdout
        shas |= {line.split()[2] for line in tree.splitlines() if line.split()[1] == "blob"}
    for sha in sorted(shas):
        blobs[sha] = subprocess.run(["git", "cat-file", "blob", sha], cwd=repo,
                                    capture_output=True, check=True).stdout
    everything = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=repo,
                                capture_output=True, check=True).stdout
    blobs["(all objects)"] = everything
    return blobs


def test_no_private_key_in_git_or_output(applied_example: Applied, cli: Cli,
                                         tmp_path: Path) -> None:
    repo, state = applied_example
    # Some history: a revocation, an export, a new device.
    edit_csv(repo / "fleets" / "sensors.csv", revoke={"sensor-0010": "keyCompromise"},
             add=[NEW_SENSOR])
    commit_all(repo, "revoke one, add one")
    cli("apply", repo, "--state-dir", state)
    out = tmp_path / "export"
    cli("export", "cert", repo, "--state-dir", state, "--fleet", "sensors", "--device",
        "sensor-1001", "--out", out)
    cli("status", repo, "--state-dir", state, "--fleet", "sensors", "--devices", "-o", "yaml")
    assert SECRET_MARKER in (out / "key.pem").read_text(), "the export itself holds the key"

    objects = git_objects(repo)
    assert len(objects) > 5
    assert any(b"CERTIFICATE REQUEST" in blob for blob in objects.values()), "scan sanity"
    assert any(b"kind: DeviceFleet" in blob and b"observedCommit" in blob
               for blob in objects.values()), "the status files were scanned"
    for sha, blob in objects.items():
        assert SECRET_MARKER.encode() not in blob, f"private key material in git object {sha}"
    for path, document in status_files(repo).items():
        assert SECRET_MARKER not in str(document), path
    for text in cli.outputs:
        assert SECRET_MARKER not in text

    # The device key is stored only encrypted: its PKCS#8 DER is nowhere in the state files.
    der = subprocess.run(["openssl", "pkey", "-in", out / "key.pem", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    assert len(der) > 100
    for file in state.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            assert der not in data, file
            if file.parent.relative_to(state).as_posix() in ("keys/ca", "keys/audit"):
                assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"), file
            elif file.parent.name != "ca":
                assert SECRET_MARKER.encode() not in data, file


def test_failed_apply_is_reported_on_the_status_branch(applied_example: Applied,
                                                       cli: Cli) -> None:
    repo, state = applied_example
    add_a_sensor(applied_example)
    issuing_key = next(key for _, owner, _, key in ca_rows(state) if owner == "devices-ca")
    (state / "keys" / "ca" / f"{issuing_key}.pem").unlink()
    cli("apply", repo, "--state-dir", state, rc=1)
    sensors = status_files(repo)["status/DeviceFleet/sensors.yaml"]["status"]
    conditions = {c["type"]: c for c in sensors["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Stalled"]["status"] == "True"
    assert "not found in keystore" in conditions["Stalled"]["message"]
