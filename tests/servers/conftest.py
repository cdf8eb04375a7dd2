"""A small applied repository and an in-process server (own thread, own event loop) on
loopback ports chosen by the OS."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from controller import jobs
from controller.pki import keys
from controller.servers.app import Listener, ServeOptions, Server
from controller.servers.limits import Limits
from controller.servers.state import ServerState
from controller.servers.throttle import Backoff
from tests.hierarchy import two_cas

CAS = two_cas("Test") + """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: sensor}
spec:
  keyGeneration: device
  subject: {commonName: "{{ device.id }}"}
  subjectAltNames: {uris: ["urn:dev:{{ device.id }}"]}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: gateway}
spec: {subject: {commonName: "{{ device.id }}"}}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: gateways}
spec:
  issuerRef: {name: issuing}
  profileRef: {name: gateway}
  devices: [{id: gw-1}]
"""
DEVICES = ("dev-1", "dev-2", "dev-3", "dev-4")
# A fleet whose devices declare no key: they enroll over EST with a key of their own.
ENROLLEES = """\
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: enrollees}
spec:
  issuerRef: {name: issuing}
  profileRef: {name: sensor}
  enrollment: {bootstrap: secret}
  devices: [{id: new-1}]
"""


def fleet_yaml(key_dir: Path, revoked: dict[str, str]) -> str:
    lines = ["apiVersion: fleetpki.io/v1alpha1", "kind: DeviceFleet", "metadata: {name: sensors}",
             "spec:", "  issuerRef: {name: issuing}", "  profileRef: {name: sensor}",
             "  devices:"]
    for device in DEVICES:
        pem = (key_dir / f"{device}.pub").read_text().replace("\n", "\\n")
        extra = f", revoked: {{reason: {revoked[device]}}}" if device in revoked else ""
        lines.append(f'    - {{id: {device}, publicKey: "{pem}"{extra}}}')
    return "\n".join(lines) + "\n"


@dataclass
class Env:
    repo: Path
    state: jobs.StateDir
    keys: Path
    work: Path

    def write(self, revoked: dict[str, str] | None = None) -> None:
        (self.repo / "fleet.yaml").write_text(fleet_yaml(self.keys, revoked or {}))
        (self.repo / "enrollees.yaml").write_text(ENROLLEES)

    def apply(self) -> jobs.ApplyReport:
        return jobs.apply(self.repo, self.state, jobs.now_utc(), write_status=False)

    def pem(self, name: str, data: bytes) -> Path:
        path = self.work / name
        path.write_bytes(data)
        return path


def fleetpki_command() -> list[str]:
    """The `fleetpki` console script beside this interpreter (or the module, if it is not there)."""
    script = Path(sys.executable).parent / "fleetpki"
    return [str(script)] if script.exists() else [sys.executable, "-m", "controller.cli"]


FLEETPKI = fleetpki_command()


def run(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, check=False, timeout=30)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    os.environ["FLEETPKI_PASSPHRASE"] = "test-passphrase"
    base = tmp_path_factory.mktemp("servers")
    environment = Env(base / "repo", jobs.StateDir(base / "state"), base / "keys", base / "work")
    for directory in (environment.repo, environment.keys, environment.work):
        directory.mkdir()
    for device in DEVICES:
        key = ec.generate_private_key(ec.SECP256R1())
        (environment.keys / f"{device}.key").write_bytes(keys.private_key_to_pem(key))
        (environment.keys / f"{device}.pub").write_bytes(keys.public_key_to_pem(key.public_key()))
    (environment.repo / "cas.yaml").write_text(CAS)
    environment.write()
    report = environment.apply()
    assert report.result.done == {"create-ca": 2, "issue": 5, "publish-crl": 2}
    yield environment
    del os.environ["FLEETPKI_PASSPHRASE"]


class Running:
    """The server on 127.0.0.1, ports picked by the OS."""

    def __init__(self, env: Env, limits: Limits | None = None,
                 backoff: Backoff | None = None) -> None:
        self.env = env
        self.limits = limits or Limits()
        self.backoff = backoff or Backoff()
        self.ports: dict[str, int] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        state = ServerState(self.env.repo, self.env.state)
        options = ServeOptions(self.env.repo, Listener("127.0.0.1", 0),
                               Listener("127.0.0.1", 0), "issuing", "127.0.0.1", self.limits,
                               self.backoff)
        server = Server(state, options)
        try:
            self._loop.run_until_complete(server.start())
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()
            return
        self.ports = server.ports
        self._stop = self._loop.create_future()
        self._ready.set()
        self._loop.run_until_complete(self._stop)
        self._loop.run_until_complete(server.stop())
        state.close()
        self._loop.close()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.ports['https']}"

    def stop(self) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set_result, None)
        self._thread.join(30)


@pytest.fixture(scope="module")
def server(env: Env) -> Iterator[Running]:
    running = Running(env)
    yield running
    running.stop()


def ca_files(env: Env) -> tuple[Path, Path]:
    """(issuing CA PEM, bundle PEM of issuing + root)."""
    with env.state.inventory() as inventory:
        issuing = inventory.active_ca("issuing")
        root = inventory.active_ca("root")
        assert issuing is not None and root is not None
        ders = [issuing.der, root.der]
    pems = [x509.load_der_x509_certificate(d).public_bytes(
        Encoding.PEM) for d in ders]
    return env.pem("issuing.pem", pems[0]), env.pem("bundle.pem", pems[0] + pems[1])


def device_cert(env: Env, device: str) -> tuple[Path, str]:
    """(PEM file of the device's active certificate, its serial hex)."""
    with env.state.inventory() as inventory:
        record = inventory.active_device("sensors", device)
        assert record is not None
    pem = x509.load_der_x509_certificate(record.der).public_bytes(
        Encoding.PEM)
    return env.pem(f"{device}-{record.serial[:8]}.pem", pem), record.serial


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(env: Env, tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    http, https = free_port(), free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [*FLEETPKI, "serve", str(env.repo), "--state-dir", str(env.state.path), "--http",
             f"127.0.0.1:{http}", "--https", f"127.0.0.1:{https}"],  # --tls-ca: the default
            stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        for _ in range(200):
            if run("curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{http}/ca/root.pem"
                   ).returncode == 0 or process.poll() is not None:
                break
            time.sleep(0.05)
        assert process.poll() is None, log.read_text()
        yield http, https, log
    finally:
        process.terminate()
        process.wait(10)
