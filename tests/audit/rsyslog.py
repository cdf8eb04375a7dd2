"""A real rsyslogd on loopback for the forwarding tests: UDP and TCP (plain or TLS with the gtls
driver) inputs writing MSGID, structured data and message of every message to a file."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SEPARATOR = "\x1f"  # between MSGID, structured data and message in the received file


def rsyslogd() -> str:
    """rsyslogd lives in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    assert found, "rsyslogd is missing: install Debian's rsyslog (.ci/run does)"
    return found


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Receiver:
    udp: int
    tcp: int
    output: Path

    def received(self, count: int, deadline: float = 30.0) -> list[tuple[str, str, str]]:
        """(msgid, structured data, message) of the first `count` messages, once written."""
        end = time.monotonic() + deadline
        while True:
            lines = self.output.read_text(encoding="utf-8").splitlines() \
                if self.output.exists() else []
            if len(lines) >= count or time.monotonic() > end:
                parts = [line.split(SEPARATOR) for line in lines]
                return [(p[0], p[1], p[2].removeprefix("\ufeff")) for p in parts]
            time.sleep(0.1)


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (CA file, certificate, key)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syslog test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName(
                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@contextmanager
def rsyslog(directory: Path, tls: tuple[Path, Path, Path] | None = None,
            tcp: int | None = None) -> Iterator[Receiver]:
    """rsyslogd listening on 127.0.0.1 (UDP, and TCP: TLS-only with `tls`) until the end."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "work").mkdir(exist_ok=True)
    receiver = Receiver(free_port(socket.SOCK_DGRAM), tcp or free_port(),
                        directory / "received.log")
    driver = ""
    if tls is not None:
        driver = (f'global(DefaultNetstreamDriverCAFile="{tls[0]}" '
                  f'DefaultNetstreamDriverCertFile="{tls[1]}" '
                  f'DefaultNetstreamDriverKeyFile="{tls[2]}")\n')
    tcp_module = ('module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
                  'StreamDriver.AuthMode="anon")' if tls else 'module(load="imtcp")')
    config = directory / "rsyslog.conf"
    config.write_text(
        f'global(workDirectory="{directory / "work"}" maxMessageSize="64k")\n{driver}'
        f'module(load="imudp")\n{tcp_module}\n'
        f'input(type="imudp" address="127.0.0.1" port="{receiver.udp}")\n'
        f'input(type="imtcp" address="127.0.0.1" port="{receiver.tcp}")\n'
        'template(name="fields" type="list") {\n'
        f'  property(name="msgid") constant(value="{SEPARATOR}")\n'
        f'  property(name="structured-data") constant(value="{SEPARATOR}")\n'
        '  property(name="msg") constant(value="\\n")\n}\n'
        f'action(type="omfile" file="{receiver.output}" template="fields")\n',
        encoding="utf-8")
    process = subprocess.Popen([rsyslogd(), "-n", "-f", str(config), "-i",
                                str(directory / "rsyslogd.pid")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout \
                else "rsyslogd exited"
            try:
                socket.create_connection(("127.0.0.1", receiver.tcp), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < end, "rsyslogd does not listen"
                time.sleep(0.1)
        yield receiver
    finally:
        process.terminate()
        process.wait(timeout=30)
