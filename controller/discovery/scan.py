"""Read certificates from TLS endpoints and file trees (the I/O half of discovery).

TLS endpoints are read with `openssl s_client -showcerts`: Python 3.11's `ssl` module only
gives the peer's leaf certificate (the chain API arrives in 3.13), openssl is already required,
and it shows the chain exactly as the server sends it, verified or not.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from controller.discovery.classify import Sighting

PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
PKCS12_SUFFIXES = {".p12", ".pfx"}
DER_SUFFIXES = {".der", ".cer", ".crt"}
MAX_FILE_BYTES = 4 * 1024 * 1024  # certificate files are small; larger files are skipped
TLS_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    sni: str | None = None

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """`HOST:PORT` or `HOST:PORT=SNI` (IPv6 in brackets: `[::1]:443`). Without SNI, a
        host name is sent as SNI, an address is not."""
        address, _, sni = text.partition("=")
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not HOST:PORT or HOST:PORT=SNI")
        return cls(host, int(port), sni or None)

    def __str__(self) -> str:
        return f"tls:{self.host}:{self.port}" + (f"={self.sni}" if self.sni else "")


def openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        raise FileNotFoundError("openssl is needed to read TLS endpoints; install it")
    return found


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def read_endpoint(endpoint: Endpoint, timeout: float = TLS_TIMEOUT) -> Sighting:
    """The chain `endpoint` presents (leaf first), or why it could not be read."""
    command = [openssl(), "s_client", "-connect", f"{endpoint.host}:{endpoint.port}",
               "-showcerts"]
    sni = endpoint.sni or (None if _is_address(endpoint.host) else endpoint.host)
    command += ["-servername", sni] if sni else ["-noservername"]
    try:
        run = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Sighting(str(endpoint), error=f"no TLS handshake within {timeout:g}s")
    blocks = PEM_BLOCK.findall(run.stdout)
    if not blocks:
        lines = [line for line in run.stderr.decode(errors="replace").splitlines() if line]
        why = lines[-1] if lines else f"openssl s_client exited {run.returncode}"
        return Sighting(str(endpoint), error=f"no certificate presented: {why}")
    return Sighting(str(endpoint), tuple(x509.load_pem_x509_certificate(b) for b in blocks),
                    presented_chain=True)


def read_tree(root: Path, passphrase: bytes | None = None) -> Iterator[Sighting]:
    """A sighting per certificate file under `root` (a file or a directory): PEM (bundles too),
    DER and PKCS#12. Files that are not certificates are skipped; certificate files that cannot
    be read (permissions, a wrong PKCS#12 passphrase, damage) yield an error sighting."""
    if not root.exists():
        yield Sighting(f"file:{root}", error="no such file or directory")
        return
    if root.is_file():
        paths = [root]
    else:  # os.walk does not follow links to directories: no loops
        paths = sorted(Path(top) / name for top, _dirs, names in os.walk(root)
                       for name in names)
    for path in (p for p in paths if p.is_file()):  # regular files only: never a FIFO
        sighting = read_file(path, passphrase)
        if sighting is not None:
            yield sighting


def read_file(path: Path, passphrase: bytes | None = None) -> Sighting | None:
    source = f"file:{path}"
    suffix = path.suffix.lower()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
    except OSError as exc:
        return Sighting(source, error=f"cannot read: {exc.strerror}")
    try:
        if suffix in PKCS12_SUFFIXES:
            return Sighting(source, _pkcs12_certificates(data, passphrase))
        blocks = PEM_BLOCK.findall(data)
        if blocks:
            return Sighting(source, tuple(x509.load_pem_x509_certificate(b) for b in blocks))
        if suffix in DER_SUFFIXES or data[:2] == b"\x30\x82":
            return Sighting(source, (x509.load_der_x509_certificate(data),))
    except ValueError as exc:
        if suffix in PKCS12_SUFFIXES:
            return Sighting(source, error="cannot open the PKCS#12 file (wrong --p12-passphrase "
                            "or damaged)")
        if suffix in DER_SUFFIXES or b"-----BEGIN CERTIFICATE-----" in data:
            return Sighting(source, error=f"damaged certificate: {exc}")
    return None


def _pkcs12_certificates(data: bytes, passphrase: bytes | None) -> tuple[x509.Certificate, ...]:
    """The certificate and the extra certificates of a PKCS#12 file (its key is dropped)."""
    _key, certificate, extra = pkcs12.load_key_and_certificates(data, passphrase)
    return tuple(([certificate] if certificate else []) + list(extra))
