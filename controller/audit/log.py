"""The audit log on disk: `<state>/audit/audit.jsonl`, rotated beside it as
`audit-<first seq>.jsonl`, appended under a lock (several processes write it: apply, serve),
fsynced, files 0600 in a 0700 directory; the public half of the signing key in `audit-key.pub`.

Every append is one write of its records and their seal. A write cut short (a crash) or made
without the key (a run refused for a wrong passphrase) leaves an unsealed tail: the next append
keeps its complete, well-chained records, drops a partial line, and records what it did in an
`audit.recovered` record before sealing (verify then warns about it).
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from controller.audit.records import (
    RECOVERED,
    SEALED,
    Event,
    Line,
    Tail,
    Verdict,
    chain,
    digest,
    key_fingerprint,
    parse,
    split_lines,
    verify,
)
from controller.clock import epoch, rfc3339

LOG = "audit.jsonl"
PUBLIC_KEY = "audit-key.pub"
MAX_BYTES = 64 * 1024 * 1024
_TAIL_CHUNK = 64 * 1024


class AuditError(Exception):
    """The audit log cannot be written or read; the message names the file."""


KeySource = Callable[[], ed25519.Ed25519PrivateKey | None]


def audit_dir(state: Path) -> Path:
    return state / "audit"


def log_files(directory: Path) -> list[Path]:
    """The rotated files, oldest first, then the current one (when they exist)."""
    rotated = sorted(p for p in directory.glob("audit-*.jsonl") if p.is_file())
    current = directory / LOG
    return rotated + ([current] if current.is_file() else [])


def read_lines(directory: Path) -> Iterator[Line]:
    for path in log_files(directory):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AuditError(f"cannot read {path}: {exc.strerror or exc}") from None
        yield from split_lines(str(path), data)


def public_key(directory: Path) -> ed25519.Ed25519PublicKey | None:
    """The audit public key written beside the log, None when there is none yet."""
    path = directory / PUBLIC_KEY
    try:
        key = load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read the audit public key {path}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise AuditError(f"{path} is not an Ed25519 public key")
    return key


def verify_log(directory: Path, key: ed25519.Ed25519PublicKey | None = None) -> Verdict:
    """Verify every file of the log with `key` (default: the one written beside it). A log
    whose files hold no record at all was emptied: that is reported too."""
    verdict = verify(read_lines(directory), key or public_key(directory))
    files = log_files(directory)
    if verdict.intact and verdict.records == 0 and files:
        verdict.bad = Line(str(files[0]), 1, b"")
        verdict.reason = "no record at all: the log was emptied"
    return verdict


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if directory.stat().st_mode & 0o077:
        directory.chmod(0o700)


class AuditLog:
    """Appends events to the log of one state directory, as one run (`run` id)."""

    def __init__(self, state: Path, key: KeySource, max_bytes: int = MAX_BYTES) -> None:
        self.directory = audit_dir(state)
        self.run = uuid.uuid4().hex[:16]
        self._key_source = key
        self._key: ed25519.Ed25519PrivateKey | None = None
        self.max_bytes = max_bytes

    @contextmanager
    def _locked(self) -> Iterator[None]:
        _private_dir(self.directory)
        fd = os.open(self.directory / "audit.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def signing_key(self) -> ed25519.Ed25519PrivateKey | None:
        """The signing key, once it can be had (None while the keystore is locked)."""
        if self._key is None:
            self._key = self._key_source()
            if self._key is not None:
                self._publish(self._key.public_key())
        return self._key

    def _publish(self, key: ed25519.Ed25519PublicKey) -> None:
        path = self.directory / PUBLIC_KEY
        existing = public_key(self.directory)
        if existing is not None:
            if key_fingerprint(existing) != key_fingerprint(key):
                raise AuditError(f"{path} is not the public half of the keystore's audit "
                                 f"signing key ({key_fingerprint(key)}): refusing to seal")
            return
        _private_dir(self.directory)
        path.write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        path.chmod(0o644)

    def append(self, events: Sequence[Event], now: datetime) -> None:
        """Chain `events` after the log's last record and seal them (unsealed without a key)."""
        try:
            with self._locked():
                key = self.signing_key()
                tail, recovered = self._recover()
                self._rotate()
                lines, _ = chain([*recovered, *events], tail, rfc3339(epoch(now)), self.run, key)
                path = self.directory / LOG
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.fchmod(fd, 0o600)
                    _write_all(fd, b"".join(line + b"\n" for line in lines))
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise AuditError(f"cannot write the audit log in {self.directory}: "
                             f"{exc.strerror or exc}") from None

    def _recover(self) -> tuple[Tail, list[Event]]:
        """The tail to chain after; an unsealed tail is kept up to its last well-chained
        complete record (a partial line is cut off) and reported in an `audit.recovered`."""
        files = [path for path in log_files(self.directory) if path.stat().st_size]
        if not files:
            return Tail(), []
        last = _last_line(files[-1])
        record = parse(last)
        if record is not None and record["action"] == SEALED and last.endswith(b"\n"):
            return _tail_of(last), []
        lines = list(split_lines(str(files[-1]), files[-1].read_bytes()))
        seals = [i for i, line in enumerate(lines) if line.data.endswith(b"\n")
                 and (r := parse(line.data)) is not None and r["action"] == SEALED]
        tail, cut = (_tail_of(_last_line(files[-2])) if len(files) > 1 else Tail()), 0
        if seals:
            tail, cut = _tail_of(lines[seals[-1]].data), seals[-1] + 1
        first_kept = tail.seq + 1
        for line in lines[cut:]:
            record = parse(line.data)
            if (record is None or not line.data.endswith(b"\n") or record["seq"] != tail.seq + 1
                    or record["prev"] != tail.digest):
                break
            tail = Tail(record["seq"], digest(line.data[:-1]))
            cut += 1
        dropped = b"".join(line.data for line in lines[cut:])
        if dropped:
            with open(files[-1], "r+b") as handle:
                handle.truncate(sum(len(line.data) for line in lines[:cut]))
                os.fsync(handle.fileno())
        fields: dict[str, object] = {
            "reason": f"records {first_kept}..{tail.seq} were written without a seal "
                      "(an interrupted write, or the keystore was locked); sealed now"
                      if tail.seq >= first_kept else "an unsealed write was cut short",
            "droppedBytes": len(dropped)}
        if dropped:
            fields["droppedSha256"] = digest(dropped)
        return tail, [Event(RECOVERED, "success", "audit", {}, fields)]

    def _rotate(self) -> None:
        path = self.directory / LOG
        if not path.is_file() or path.stat().st_size < self.max_bytes:
            return
        with open(path, "rb") as handle:
            first = parse(handle.readline())
        if first is None:
            return
        target = self.directory / f"audit-{first['seq']:012d}.jsonl"
        os.replace(path, target)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tail_of(line: bytes) -> Tail:
    """The tail a complete record line leaves (genesis if it is not one)."""
    record = parse(line) if line.endswith(b"\n") else None
    return Tail(record["seq"], digest(line[:-1])) if record is not None else Tail()


def _last_line(path: Path) -> bytes:
    """The last line of a file (with its newline, if it has one)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        data = b""
        position = size
        while position > 0:
            step = min(_TAIL_CHUNK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
            newline = data.rfind(b"\n", 0, len(data) - 1)
            if newline >= 0:
                return data[newline + 1:]
        return data
