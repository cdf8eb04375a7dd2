"""Forwarding the audit log to syslog receivers (UDP, TCP, TLS), never blocking the caller for
long and never losing a record: the log itself is the spool. Each destination has a cursor in
`<state>/audit/spool/` (the last `seq` it was sent); a send resumes after it, so records written
while a receiver was down go out the next time anything forwards (`fleetpki audit forward`).
UDP cannot tell a lost datagram: its cursor advances once the datagrams are sent."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import urlsplit

from controller.audit.log import AuditError, log_files
from controller.audit.records import parse
from controller.audit.siem import FORMATS, cef_message, octet_counted, rfc5424

SYSLOG_ENV = "FLEETPKI_AUDIT_SYSLOG"
FORMAT_ENV = "FLEETPKI_AUDIT_FORMAT"
CA_ENV = "FLEETPKI_AUDIT_SYSLOG_CA"
TIMEOUT = 5.0  # seconds to connect or send before giving up until the next time
_CURSOR_EVERY = 1000


@dataclass(frozen=True)
class Destination:
    """A syslog receiver: `udp://`, `tcp://` or `tls://HOST:PORT`, a format, a CA file (TLS)."""

    url: str
    scheme: str
    host: str
    port: int
    format: str = "rfc5424"
    ca_file: Path | None = None

    @classmethod
    def parse(cls, url: str, format: str = "rfc5424",
              ca_file: Path | None = None) -> Destination:
        """A destination, or ValueError saying what is wrong with it."""
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp", "tls"):
            raise ValueError(f"audit syslog destination {url!r}: expected udp://, tcp:// or "
                             "tls://HOST:PORT")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ValueError(f"audit syslog destination {url!r}: expected HOST:PORT")
        if format not in FORMATS:
            raise ValueError(f"audit format {format!r}: expected one of {', '.join(FORMATS)}")
        return cls(url, parts.scheme, parts.hostname, port, format, ca_file)

    @property
    def cursor_name(self) -> str:
        return hashlib.sha256(f"{self.url} {self.format}".encode()).hexdigest()[:16]


def destinations_from_env() -> list[Destination]:
    """The destinations in $FLEETPKI_AUDIT_SYSLOG (comma-separated), with
    $FLEETPKI_AUDIT_FORMAT and $FLEETPKI_AUDIT_SYSLOG_CA; AuditError naming what is wrong."""
    urls = [u.strip() for u in os.environ.get(SYSLOG_ENV, "").split(",") if u.strip()]
    ca = os.environ.get(CA_ENV)
    try:
        return [Destination.parse(u, os.environ.get(FORMAT_ENV, "rfc5424"),
                                  Path(ca) if ca else None) for u in urls]
    except ValueError as exc:
        raise AuditError(f"${SYSLOG_ENV} / ${FORMAT_ENV}: {exc}") from None


def _version() -> str:
    try:
        return version("fleetpki")
    except PackageNotFoundError:
        return "0"


class _Sender:
    """One connection to a receiver."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.version = _version()
        address = (destination.host, destination.port)
        if destination.scheme == "udp":
            self.sock = socket.socket(socket.AF_INET6 if ":" in destination.host
                                      else socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.connect(address)
            return
        sock = socket.create_connection(address, timeout=TIMEOUT)
        if destination.scheme == "tls":
            context = ssl.create_default_context(cafile=destination.ca_file)
            sock = context.wrap_socket(sock, server_hostname=destination.host)
        self.sock = sock

    def send(self, line: bytes) -> None:
        record = parse(line) or {}
        if self.destination.format == "cef":
            message = cef_message(record, self.version, self.hostname, self.pid)
        else:
            message = rfc5424(record, line, self.hostname, self.pid)
        if self.destination.scheme == "udp":
            self.sock.send(message)
        else:
            self.sock.sendall(octet_counted(message))

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Cursor:
    """The last record sent to a destination, and where the next one starts (a hint: the
    file name and byte offset, checked before use)."""

    seq: int = 0
    file: str = ""
    offset: int = 0

    @classmethod
    def read(cls, path: Path) -> Cursor:
        try:
            seq, file, offset = path.read_text(encoding="utf-8").split()[:3]
            return cls(int(seq), file, int(offset))
        except (OSError, ValueError):
            return cls()

    def save(self, path: Path, destination: Destination) -> None:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(f"{self.seq} {self.file or '-'} {self.offset} {destination.url} "
                             f"{destination.format}\n", encoding="utf-8")
        os.replace(temporary, path)


def _pending(directory: Path, cursor: Cursor) -> Iterator[tuple[Cursor, bytes]]:
    """The complete records after `cursor`, across rotated files, each with the cursor that
    follows it."""
    files = log_files(directory)
    for index, path in enumerate(files):
        following = files[index + 1] if index + 1 < len(files) else None
        if following is not None and following.name.startswith("audit-") \
                and int(following.stem.split("-")[1]) <= cursor.seq + 1:
            continue  # every record of this file was sent
        with open(path, "rb") as handle:
            offset = cursor.offset if path.name == cursor.file else 0
            size = os.fstat(handle.fileno()).st_size
            handle.seek(offset)
            first = parse(handle.readline()) if 0 < offset < size else None
            if offset > size or (first or {"seq": cursor.seq + 1})["seq"] != cursor.seq + 1:
                offset = 0  # a stale hint (the file was cut or replaced): from the top
            handle.seek(offset)
            for line in handle:
                offset += len(line)
                record = parse(line) if line.endswith(b"\n") else None
                if record is not None and record["seq"] > cursor.seq:
                    yield Cursor(record["seq"], path.name, offset), line[:-1]


def forward(directory: Path, destination: Destination) -> int:
    """Send what `destination` lacks; the number of records sent. OSError (or ssl.SSLError)
    when the receiver cannot be reached: what was sent so far is recorded."""
    spool = directory / "spool"
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    cursor = spool / f"{destination.cursor_name}.cursor"
    fd = os.open(spool / f"{destination.cursor_name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another process is forwarding to it now
        position = Cursor.read(cursor)
        sent = 0
        sender: _Sender | None = None
        try:
            for after, line in _pending(directory, position):
                sender = sender or _Sender(destination)
                sender.send(line)
                position, sent = after, sent + 1
                if sent % _CURSOR_EVERY == 0:
                    position.save(cursor, destination)
        finally:
            if sender is not None:
                sender.close()
            if sent:
                position.save(cursor, destination)
        return sent
    finally:
        os.close(fd)


def forward_all(directory: Path, destinations: Sequence[Destination]
                ) -> list[tuple[Destination, str]]:
    """Forward to every destination; the ones that failed, with why."""
    failed = []
    for destination in destinations:
        try:
            forward(directory, destination)
        except (OSError, ValueError) as exc:
            failed.append((destination, str(exc) or type(exc).__name__))
    return failed
