"""A small applied PKI for the discovery and report tests, and loopback TLS servers."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.policy.support import (
    FleetRepo,
    commit_all,
    devices,
    fleet_doc,
    init_repo,
    invoke,
    policy,
    profile_doc,
    rule,
)


@dataclass
class Applied:
    repo: Path
    state: Path
    exported: dict[str, Path]  # device id -> directory with cert.pem, chain.pem, key.pem


def fleet_repo() -> FleetRepo:
    """`sensors` (dev-1..dev-3, ECDSA-P256) and `cameras` (cam-1, cam-2, ECDSA-P384); a
    repository policy warns about cam-2."""
    repo = FleetRepo()
    repo.add_policy(policy("lab", rule("no-lab-devices", 'device.id != "cam-2"', action="warn",
                                       message="cam-2 is a lab camera")))
    repo.profiles["p384"] = profile_doc("p384", keyAlgorithm="ECDSA-P384", duration="720h")
    repo.fleets["cameras"] = fleet_doc("cameras", devices("cam-1", "cam-2"), profile="p384")
    return repo


def apply_and_revoke(tmp_path: Path, export: tuple[str, ...] = ("dev-1", "dev-2", "dev-3"),
                     ) -> Applied:
    """Apply `fleet_repo()`, export the sensors in `export`, then revoke dev-3
    (keyCompromise) with a second apply. Needs FLEETPKI_PASSPHRASE set."""
    spec = fleet_repo()
    repo = spec.write(tmp_path / "repo")
    state = tmp_path / "state"
    init_repo(repo)
    invoke("apply", repo, "--state-dir", state)
    exported = {}
    for device in export:
        exported[device] = tmp_path / "export" / device
        invoke("export", "cert", repo, "--fleet", "sensors", "--device", device, "--out",
               exported[device], "--state-dir", state)
    sensors = spec.fleets["sensors"]["spec"]["devices"]
    sensors[2]["revoked"] = {"reason": "keyCompromise"}
    spec.write(repo)
    commit_all(repo, "revoke dev-3: stolen")
    invoke("apply", repo, "--state-dir", state)
    return Applied(repo, state, exported)


def self_signed(directory: Path, name: str = "rogue.example") -> tuple[Path, Path]:
    """A self-signed P-256 certificate and key (PEM files) that fleetpki never issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=365)).sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "rogue.pem", directory / "rogue.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Server:
    address: str  # 127.0.0.1:PORT
    server_names: list[str | None]  # the SNI of each handshake


@contextmanager
def tls_server(cert_chain: Path, key: Path) -> Iterator[Server]:
    """A TLS server on a free loopback port presenting `cert_chain` (leaf first). Each
    connection is handshaken and closed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_chain, key)
    names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: names.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(10)
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Server(f"127.0.0.1:{listener.getsockname()[1]}", names)
    finally:
        stop.set()
        thread.join()
        listener.close()
