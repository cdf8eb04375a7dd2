"""`fleetpki backup` / `fleetpki restore`: a state directory survives the loss of its disk."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import socket
import sqlite3
import stat
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.stores.keystore import FileKeyStore

from .support import (
    PASSPHRASE,
    Applied,
    Cli,
    branch_sha,
    commit_all,
    der_to_pem,
    edit_csv,
    one_line,
    openssl,
    query,
)

STATUS = "fleetpki/status"
CA_COLUMNS = "SELECT owner, serial, state, key_id, fingerprint, der FROM certificates " \
             "WHERE kind = 'ca' ORDER BY serial"


@contextmanager
def serving(cli: Cli, repo: Path, state: Path, log: Path) -> Iterator[str]:
    """`fleetpki serve --http` in a subprocess on a free port; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = cli.popen("serve", repo, "--state-dir", state, "--http", f"127.0.0.1:{port}",
                        log=log)
    try:
        deadline = time.monotonic() + 60
        while f"serving http on 127.0.0.1:{port}" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def ocsp(url: str, issuer: Path, cert: Path, bundle: Path) -> str:
    checked = openssl("ocsp", "-issuer", issuer, "-cert", cert, "-url", f"{url}/ocsp",
                      "-CAfile", bundle, "-no_nonce", "-resp_text")
    assert "Response verify OK" in checked.stderr, checked.stderr
    return checked.stdout


def certificate(state: Path, serial: str, path: Path) -> Path:
    (der,), = query(state, "SELECT der FROM certificates WHERE serial = ?", (serial,))
    return der_to_pem(der, path)


def device_serial(state: Path, device: str, status: str) -> str:
    (serial,), = query(state, "SELECT serial FROM certificates WHERE owner = 'sensors' AND "
                       "device = ? AND state = ?", (device, status))
    return str(serial)


def backup_and_restore(cli: Cli, state: Path, tmp_path: Path) -> Path:
    """Back up `state`, lose it (the disk died), restore into a new state directory."""
    archive = tmp_path / "backups" / "fleet.tgz"
    cli("backup", "--state-dir", state, "--out", archive)
    shutil.rmtree(state)
    new = tmp_path / "new-disk" / "state"
    cli("restore", archive, "--state-dir", new)
    return new


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- restore, then carry on --------------------------------------------------------------------
def test_restored_state_applies_as_a_no_op_with_the_same_cas(
        applied_example: Applied, cli: Cli, cli_process: Cli, tmp_path: Path) -> None:
    repo, state = applied_example
    status_before = cli("status", repo, "--state-dir", state, "-o", "json").stdout
    cas_before = query(state, CA_COLUMNS)
    status_commit = branch_sha(repo, STATUS)
    public = {p.relative_to(state): p.read_bytes() for p in state.rglob("public/*/*")}
    assert len(public) == 6

    archive = tmp_path / "backups" / "fleet.tgz"
    made = cli_process("backup", "--state-dir", state, "--out", archive)  # as scripts run it
    # kek.json, two CA keys, two signing keys (firmware, acme-tsa) and the audit signing key
    assert "1004 certificate(s), 6 keystore file(s)" in one_line(made.stdout)
    shutil.rmtree(state)
    new = tmp_path / "new-disk" / "state"
    restored = cli_process("restore", archive, "--state-dir", new)
    assert "FLEETPKI_PASSPHRASE" in one_line(restored.stdout)

    assert stat.S_IMODE(new.stat().st_mode) == 0o700
    for path in new.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert {p.relative_to(new).as_posix() for p in new.rglob("*") if p.is_file()} >= {
        "inventory.db", "keys/kek.json"}
    assert leftovers(new.parent) == ["state"]

    assert query(new, CA_COLUMNS) == cas_before
    applied = json.loads(cli("apply", repo, "--state-dir", new, "-o", "json").stdout)
    assert applied["done"] == {} and applied["statusCommit"] is None
    assert branch_sha(repo, STATUS) == status_commit
    assert {p.relative_to(new): p.read_bytes() for p in new.rglob("public/*/*")} == public
    assert cli("status", repo, "--state-dir", new, "-o", "json").stdout == status_before
    cli("plan", repo, "--state-dir", new, "--detailed-exitcode")


def test_restored_state_serves_ocsp_for_the_old_serials(
        applied_example: Applied, cli: Cli, cli_process: Cli, tmp_path: Path) -> None:
    repo, state = applied_example
    edit_csv(repo / "fleets" / "sensors.csv", revoke={"sensor-0042": "keyCompromise"})
    commit_all(repo, "revoke sensor-0042")
    cli("apply", repo, "--state-dir", state)
    good = certificate(state, device_serial(state, "sensor-0001", "active"),
                       tmp_path / "sensor-0001.pem")
    revoked = certificate(state, device_serial(state, "sensor-0042", "revoked"),
                          tmp_path / "sensor-0042.pem")
    (issuer_serial,), = query(state, "SELECT serial FROM certificates WHERE kind = 'ca' AND "
                              "owner = 'devices-ca' AND state = 'active'")
    issuer = certificate(state, issuer_serial, tmp_path / "devices-ca.pem")

    new = backup_and_restore(cli, state, tmp_path)
    bundle = tmp_path / "bundle.pem"
    cli("export", "bundle", repo, "--out", bundle, "--state-dir", new)
    with serving(cli_process, repo, new, tmp_path / "serve.log") as url:
        assert f"{good}: good" in ocsp(url, issuer, good, bundle)
        answer = ocsp(url, issuer, revoked, bundle)
        assert f"{revoked}: revoked" in answer and "Reason: keyCompromise" in answer


def test_backup_while_serve_runs_and_an_apply_holds_a_write(
        applied_example: Applied, cli: Cli, cli_process: Cli, tmp_path: Path) -> None:
    """Committed changes still in the WAL are in the snapshot, an uncommitted one is not, and
    neither an open reader nor an open write transaction delays the backup."""
    repo, state = applied_example
    committed = device_serial(state, "sensor-0001", "active")
    pending = device_serial(state, "sensor-0002", "active")
    revoke = ("UPDATE certificates SET state = 'revoked', reason = 'keyCompromise', "
              "revoked_at = 1 WHERE serial = ?")
    with serving(cli_process, repo, state, tmp_path / "serve.log"), \
            closing(sqlite3.connect(state / "inventory.db", isolation_level=None)) as reader, \
            closing(sqlite3.connect(state / "inventory.db", isolation_level=None,
                                    timeout=1)) as writer:
        writer.execute(revoke, (committed,))  # committed, not yet checkpointed
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM certificates").fetchone()[0] == 1004
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(revoke, (pending,))
        started = time.monotonic()
        cli("backup", "--state-dir", state, "--out", tmp_path / "backups" / "fleet.tgz")
        assert time.monotonic() - started < 10
        assert (state / "inventory.db-wal").stat().st_size > 0
        writer.execute("ROLLBACK")
        reader.execute("COMMIT")
    shutil.rmtree(state)
    new = tmp_path / "new"
    cli("restore", tmp_path / "backups" / "fleet.tgz", "--state-dir", new)
    assert query(new, "SELECT serial, state FROM certificates WHERE serial IN (?, ?) "
                 "ORDER BY serial = ?", (committed, pending, pending)) == [
        (committed, "revoked"), (pending, "active")]


# --- what a backup holds -----------------------------------------------------------------------
def test_backup_is_private_and_keys_stay_encrypted(applied_example: Applied, cli: Cli,
                                                   tmp_path: Path) -> None:
    repo, state = applied_example
    export = ("export", "cert", repo, "--fleet", "sensors", "--device", "sensor-0001")
    cli(*export, "--out", tmp_path / "before", "--state-dir", state)
    device_key = serialization.load_pem_private_key(
        (tmp_path / "before" / "key.pem").read_bytes(), password=None)
    (key_id,), = query(state, "SELECT key_id FROM certificates WHERE kind = 'ca' AND "
                       "owner = 'devices-ca'")
    ca_key = FileKeyStore(state / "keys", PASSPHRASE.encode()).get_ca_key(key_id)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(device_key, ec.EllipticCurvePrivateKey)
    secrets = [key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()) for key in (ca_key, device_key)]
    secrets += [key.private_numbers().private_value.to_bytes(32, "big")
                for key in (ca_key, device_key)]

    archive = tmp_path / "backups" / "fleet.tgz"
    archive.parent.mkdir()
    archive.write_text("yesterday's backup")
    archive.chmod(0o644)
    cli("backup", "--state-dir", state, "--out", archive)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert leftovers(archive.parent) == ["fleet.tgz"]
    raw = gzip.decompress(archive.read_bytes())
    # two CA keys, two signing keys, the audit key
    assert raw.count(b"BEGIN ENCRYPTED PRIVATE KEY") == 5
    for marker in (b"BEGIN PRIVATE KEY", b"BEGIN EC PRIVATE KEY", b"BEGIN RSA PRIVATE KEY",
                   *secrets):
        assert marker not in raw
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and "inventory.db" in names and "keys/kek.json" in names
    assert not any(n.startswith(("public/", "checkouts/")) or "lock" in n for n in names)

    new = tmp_path / "new"
    cli("restore", archive, "--state-dir", new)
    cli(*export, "--out", tmp_path / "after", "--state-dir", new)
    assert (tmp_path / "after" / "key.pem").read_bytes() == (
        tmp_path / "before" / "key.pem").read_bytes()


def test_backup_refusals(applied_example: Applied, cli: Cli, tmp_path: Path) -> None:
    _, state = applied_example
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = cli("backup", "--state-dir", empty, "--out", tmp_path / "b.tgz", rc=1)
    assert f"no inventory in {empty}" in one_line(refused.stderr)
    (empty / "inventory.db").write_bytes(b"")
    refused = cli("backup", "--state-dir", empty, "--out", tmp_path / "b.tgz", rc=1)
    assert "not a usable database" in one_line(refused.stderr)
    refused = cli("backup", "--state-dir", state, "--out", state / "b.tgz", rc=1)
    assert "inside the state directory" in one_line(refused.stderr)
    (state / "keys" / "ca" / "elsewhere.pem").symlink_to(tmp_path / "elsewhere.pem")
    refused = cli("backup", "--state-dir", state, "--out", tmp_path / "b.tgz", rc=1)
    assert "unexpected non-regular file in the keystore" in one_line(refused.stderr)
    assert not (tmp_path / "b.tgz").exists() and not (state / "b.tgz").exists()
    assert leftovers(tmp_path) == ["empty", "home", "repo", "state"]


# --- restore refuses, and leaves nothing behind ------------------------------------------------
@pytest.fixture
def archive(applied_example: Applied, cli: Cli, tmp_path: Path) -> Path:
    path = tmp_path / "backups" / "fleet.tgz"
    cli("backup", "--state-dir", applied_example.state, "--out", path)
    return path


def repack(source: Path, dest: Path, files: dict[str, bytes],
           extra: Sequence[tarfile.TarInfo] = ()) -> Path:
    """A copy of `source` with the given member contents (and extra raw members)."""
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return dest


def contents(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def hostile(archive: Path, case: str) -> Path:
    files = contents(archive)
    manifest = json.loads(files["manifest.json"])
    bad = archive.with_name(f"{case}.tgz")
    if case == "tampered":
        files["keys/kek.json"] = files["keys/kek.json"].replace(b'"salt"', b'"Salt"')
    elif case == "traversal":
        files["../escape.txt"] = b"outside"
    elif case == "absolute":
        files[str(archive.parent / "escape.txt")] = b"outside"
    elif case == "newer-format":
        manifest["formatVersion"] = 2
    elif case == "missing":
        del files["keys/kek.json"]
    elif case == "unlisted":
        files["keys/ca/extra.pem"] = b"not in the manifest"
    elif case == "truncated":
        bad.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
        return bad
    files["manifest.json"] = json.dumps(manifest).encode()
    extra = {"symlink": [link("keys/ca/evil.pem", tarfile.SYMTYPE, "/etc/passwd")],
             "hardlink": [link("keys/ca/evil.pem", tarfile.LNKTYPE, "inventory.db")]}
    return repack(archive, bad, files, extra.get(case, []))


@pytest.mark.parametrize(("case", "message"), [
    ("tampered", "checksum mismatch for keys/kek.json"),
    ("traversal", "unexpected member '../escape.txt'"),
    ("absolute", "unexpected member '/"),
    ("symlink", "unexpected member 'keys/ca/evil.pem'"),
    ("hardlink", "unexpected member 'keys/ca/evil.pem'"),
    ("newer-format", "backup format 2"),
    ("missing", "missing: ['keys/kek.json']"),
    ("unlisted", "not listed: ['keys/ca/extra.pem']"),
    ("truncated", "cannot read backup"),
])
def test_restore_refuses_a_damaged_or_hostile_archive(archive: Path, cli: Cli, tmp_path: Path,
                                                      case: str, message: str) -> None:
    bad = hostile(archive, case)
    target = tmp_path / "restored" / "state"
    refused = cli("restore", bad, "--state-dir", target, rc=1)
    assert message in one_line(refused.stderr)
    assert leftovers(target.parent) == []
    assert not list(tmp_path.rglob("escape.txt"))
    cli("restore", archive, "--state-dir", target)  # the intact backup still restores


def test_restore_refuses_a_non_empty_directory(archive: Path, cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "in-use"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    refused = cli("restore", archive, "--state-dir", target, rc=1)
    assert f"refusing to restore into {target}" in one_line(refused.stderr)
    assert leftovers(target) == ["notes.txt"] and leftovers(tmp_path).count("in-use") == 1
    assert not [n for n in leftovers(tmp_path) if n.startswith(".in-use")]
    (target / "notes.txt").unlink()  # now empty, like the mount point of a new disk
    target.chmod(0o755)
    cli("restore", hostile(archive, "tampered"), "--state-dir", target, rc=1)
    assert leftovers(target) == []
    cli("restore", archive, "--state-dir", target)
    assert leftovers(target) == ["inventory.db", "keys"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
