"""`fleetpki backup` and `fleetpki restore`: the state directory in one file, and back.

Archive contract (format 1, a gzip-compressed tar): `manifest.json` first, then `inventory.db`
(an online SQLite backup, consistent while `serve` or `apply` runs) and `keys/...` (the keystore
files as they are on disk: CA keys stay encrypted, `kek.json` and `ca/orphaned/` included).
`public/` is left out (derived from the inventory), as are `checkouts/` and lock files.
Keys kept in Kubernetes Secrets (`SecretBlobs`, the operator) are out of scope: back up the
Secrets with your cluster's backup tool.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from controller import __version__
from controller.clock import epoch
from controller.stores.keystore import fsync_dir

FORMAT = "fleetpki-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INVENTORY = "inventory.db"
KEYS = "keys"
BACKUP_STEPS = 3  # calls of `step` in backup()


class BackupError(Exception):
    """A backup or restore was refused or failed; nothing was written."""


@dataclass(frozen=True)
class Summary:
    """What a backup holds (also what a restore put in place)."""

    path: Path
    certificates: int
    key_files: int
    size: int


def backup(state_dir: Path, out: Path, now: datetime,
           step: Callable[[str], None] = lambda what: None) -> Summary:
    """Write a consistent snapshot of `state_dir` to `out` (0600, atomically replaced);
    `step(what)` is called before each of BACKUP_STEPS steps."""
    state_dir, out = state_dir.resolve(), out.resolve()
    inventory = state_dir / INVENTORY
    if not inventory.is_file():
        raise BackupError(f"no inventory in {state_dir}: nothing to back up (wrong --state-dir?)")
    if out.is_relative_to(state_dir):
        raise BackupError(f"--out {out} is inside the state directory {state_dir}: a backup must "
                          "survive the loss of that disk")
    if out.is_dir():
        raise BackupError(f"--out {out} is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        snapshot = Path(work) / INVENTORY
        step("snapshot")
        certificates = _snapshot(inventory, snapshot)
        step("keystore")
        keys = dict(_key_files(state_dir / KEYS))
        _check_ca_keys(snapshot, keys)
        members = {INVENTORY: _sha256_file(snapshot),
                   **{name: hashlib.sha256(data).hexdigest() for name, data in keys.items()}}
        manifest = {"format": FORMAT, "formatVersion": FORMAT_VERSION,
                    "fleetpkiVersion": __version__, "created": now.isoformat(),
                    "certificates": certificates, "members": members}
        partial = Path(work) / "archive.tar.gz"
        step("compressing")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            with tarfile.open(fileobj=handle, mode="w:gz", compresslevel=6) as tar:
                stamp = epoch(now)
                _add(tar, MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n", stamp)
                with open(snapshot, "rb") as db:
                    tar.addfile(_member(INVENTORY, snapshot.stat().st_size, stamp), db)
                for name, data in keys.items():
                    _add(tar, name, data, stamp)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, out)
    fsync_dir(out.parent)
    return Summary(out, certificates, len(keys), out.stat().st_size)


def restore(archive: Path, target: Path) -> Summary:
    """Unpack a backup into `target`, which must be absent or empty. The archive is checked
    in full (names, types, format, checksums, SQLite integrity) in a temporary directory, which
    is renamed into place only when everything passed. It is made beside an absent `target`,
    and inside an empty one (which may be the mount point of a new disk)."""
    target = target.absolute()
    existing = target.exists()
    if existing and not (target.is_dir() and not any(target.iterdir())):
        raise BackupError(f"refusing to restore into {target}: it exists and is not an empty "
                          "directory")
    staging = target if existing else target.parent
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(dir=staging, prefix=f".{target.name}.restore-"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                manifest = _unpack(tar, work)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BackupError(f"cannot read backup {archive}: {exc}") from None
        for path in _tree(work):
            path.chmod(0o700 if path.is_dir() else 0o600)
        certificates = _check_database(work / INVENTORY)
        _check_ca_keys(work / INVENTORY, manifest["members"])
        if existing:  # the inventory last: without it a directory is no state directory
            for name in sorted(os.listdir(work), key=lambda n: n == INVENTORY):
                os.rename(work / name, target / name)
            work.rmdir()
            target.chmod(0o700)
        else:
            os.rename(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(target if existing else target.parent)
    return Summary(target, certificates, len(manifest["members"]) - 1, archive.stat().st_size)


# --- backup helpers ----------------------------------------------------------------------------
def _snapshot(source: Path, destination: Path) -> int:
    """Copy the inventory with SQLite's online backup API from a read-only connection, in one
    step (one read transaction: a consistent snapshot; in WAL mode writers are not blocked),
    then check it. Returns the number of certificates in it."""
    try:
        reader = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True, timeout=30)
        with closing(reader), closing(sqlite3.connect(destination)) as copy:
            reader.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read the inventory {source}: {exc}") from None
    return _check_database(destination)


def _check_database(path: Path) -> int:
    """`PRAGMA integrity_check`, then the number of certificates; BackupError if damaged."""
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            verdict = [row[0] for row in db.execute("PRAGMA integrity_check")]
            if verdict != ["ok"]:
                raise BackupError(f"inventory snapshot is damaged: {'; '.join(verdict[:5])}")
            return int(db.execute("SELECT count(*) FROM certificates").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"inventory snapshot is not a usable database: {exc}") from None


def _check_ca_keys(database: Path, members: Mapping[str, object]) -> None:
    """Every CA key the inventory names must be among the archived keystore files."""
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
        key_ids = [row[0] for row in db.execute(
            "SELECT DISTINCT key_id FROM certificates WHERE kind = 'ca' AND key_id IS NOT NULL")]
    missing = sorted(k for k in key_ids if f"{KEYS}/ca/{k}.pem" not in members)
    if missing:
        raise BackupError(f"CA key(s) {', '.join(missing)} named by the inventory are missing "
                          "from the keystore: this state directory cannot sign")


def _key_files(root: Path) -> Iterator[tuple[str, bytes]]:
    """(archive name, content) of every keystore file, sorted; temporary files skipped.
    Read after the inventory snapshot: apply writes a CA key before recording its certificate,
    so every CA in the snapshot finds its key here."""
    if not root.is_dir():
        return
    for path in sorted(_tree(root)):
        try:
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode) or (path.name.startswith(".") and path.name.endswith(".tmp")):
                continue
            if not stat.S_ISREG(mode):
                raise BackupError(f"unexpected non-regular file in the keystore: {path}")
            data = path.read_bytes()
        except FileNotFoundError:  # moved to ca/orphaned/ meanwhile: it signed nothing kept
            continue
        yield f"{KEYS}/{path.relative_to(root).as_posix()}", data


def _tree(root: Path) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            yield Path(directory) / name


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    tar.addfile(_member(name, len(data), mtime), io.BytesIO(data))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- restore helpers ---------------------------------------------------------------------------
def _unpack(tar: tarfile.TarFile, work: Path) -> dict[str, Any]:
    """Check every member against the manifest, extract, and verify the checksums."""
    members = tar.getmembers()
    names = [member.name for member in members]
    for member in members:
        if not member.isfile() or not _allowed_name(member.name):
            raise BackupError(f"unexpected member {member.name!r} in the backup (only regular "
                              f"files {MANIFEST}, {INVENTORY} and {KEYS}/... are allowed)")
    if len(set(names)) != len(names):
        raise BackupError("duplicate members in the backup")
    if MANIFEST not in names:
        raise BackupError(f"the backup has no {MANIFEST}")
    manifest = _manifest(tar)
    expected = manifest["members"]
    if set(names) != {MANIFEST, *expected}:
        missing, extra = set(expected) - set(names), set(names) - {MANIFEST, *expected}
        raise BackupError(f"backup members do not match its manifest (missing: "
                          f"{sorted(missing)}, not listed: {sorted(extra)})")
    tar.extractall(work, members=[m for m in members if m.name != MANIFEST], filter="data")
    for name, digest in expected.items():
        if _sha256_file(work / name) != digest:
            raise BackupError(f"checksum mismatch for {name}: the backup is damaged or was "
                              "altered")
    return manifest


def _allowed_name(name: str) -> bool:
    path = PurePosixPath(name)
    parts = path.parts
    return (not path.is_absolute() and ".." not in parts and "." not in parts and
            str(path) == name and (name in (MANIFEST, INVENTORY) or
                                   (len(parts) > 1 and parts[0] == KEYS)))


def _manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    handle = tar.extractfile(MANIFEST)
    try:
        manifest = json.loads(handle.read() if handle else b"")
        format_name, version = manifest["format"], manifest["formatVersion"]
        members = manifest["members"]
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"the backup's {MANIFEST} is not a fleetpki manifest") from None
    if format_name != FORMAT or not isinstance(members, dict):
        raise BackupError(f"the backup's {MANIFEST} is not a fleetpki manifest")
    if version != FORMAT_VERSION:
        raise BackupError(f"backup format {version} (written by fleetpki "
                          f"{manifest.get('fleetpkiVersion')}) is not supported; this fleetpki "
                          f"({__version__}) reads format {FORMAT_VERSION}")
    if INVENTORY not in members or not all(isinstance(d, str) for d in members.values()):
        raise BackupError(f"the backup's {MANIFEST} lists no {INVENTORY}")
    return manifest
