"""Mosquitto admits devices by their fleetpki certificates and refuses revoked ones.

A real broker (the `mosquitto` binary, a private config, a free loopback port) and the real
clients (`mosquitto_pub`, `mosquitto_sub`), with certificates and CRLs made by `fleetpki apply`
and `fleetpki export` from `examples/mqtt/fleet-repo/`. What these tests pin down about
Mosquitto 2.0.x (Debian bookworm ships 2.0.11):

- `cafile` needs the self-signed root: with only the issuing intermediate, every client fails
  verification (no partial-chain trust). With the root and the issuing CA, a client may send
  just its leaf certificate.
- `cafile` with the root admits clients of every CA under that root whose CRL is in
  `crlfile`; a client whose issuer has no CRL there is refused (the CRL check is mandatory).
- `crlfile` is read as PEM; a DER file stops the broker from starting.
- The broker keeps the CRL it loaded until SIGHUP: a revoked device is still admitted after the
  file is replaced, and refused once the broker has been signalled (SIGHUP re-reads the TLS
  files of the listeners in 2.0.11; no restart is needed).
- A CRL past its nextUpdate makes the broker refuse every client, revoked or not, until a fresh
  CRL is exported and the broker reloaded.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from controller import jobs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mqtt"
ISSUING_CA = "mqtt-devices-ca"
PASSPHRASE = "mqtt-test-passphrase"


def _find(tool: str) -> str | None:
    """`mosquitto` lives in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which(tool)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/bin"):
        if os.access(f"{directory}/{tool}", os.X_OK):
            return f"{directory}/{tool}"
    return None


MOSQUITTO = _find("mosquitto")
MOSQUITTO_PUB = _find("mosquitto_pub")
MOSQUITTO_SUB = _find("mosquitto_sub")

pytestmark = pytest.mark.skipif(
    MOSQUITTO is None or MOSQUITTO_PUB is None or MOSQUITTO_SUB is None,
    reason="mosquitto / mosquitto-clients not installed (apt-get install mosquitto "
           "mosquitto-clients; .ci/run installs them)")


def fleetpki_bin() -> str:
    """The `fleetpki` script of the interpreter running the tests (the venv's)."""
    candidate = Path(sys.executable).parent / "fleetpki"
    return str(candidate) if candidate.exists() else "fleetpki"


@dataclass
class Fleet:
    """A copy of the example fleet repository with its own state directory."""

    repo: Path
    state: Path
    out: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "FLEETPKI_PASSPHRASE": PASSPHRASE,
                "FLEETPKI_STATE_DIR": str(self.state)}

    def fleetpki(self, *args: str) -> str:
        result = subprocess.run([fleetpki_bin(), *args], cwd=self.repo, env=self.env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"fleetpki {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def export_all(self) -> None:
        """Certificates of the broker and devices, the client trust file and the PEM CRL."""
        self.fleetpki("export", "cert", ".", "--fleet", "brokers", "--device", "broker-01",
                      "--out", str(self.out / "broker-01"))
        self.fleetpki("export", "fleet", ".", "--fleet", "sensors", "--out", str(self.out))
        broker = self.out / "broker-01"
        # root + issuing CA: the broker's `cafile`, and the clients' trust file for the broker
        (self.out / "cafile.pem").write_bytes((broker / "ca.pem").read_bytes()
                                              + (broker / "chain.pem").read_bytes())
        self.export_crl()

    def export_crl(self) -> None:
        self.fleetpki("export", "crl", ".", "--ca", ISSUING_CA, "--out", str(self.crl))

    @property
    def crl(self) -> Path:
        return self.out / "crl.pem"

    def revoke(self, device: str, reason: str = "keyCompromise") -> None:
        path = self.repo / "fleets" / "sensors.yaml"
        text = path.read_text()
        entry = f"    - id: {device}\n"
        assert entry in text
        path.write_text(text.replace(entry, f"{entry}      revoked: {{reason: {reason}}}\n"))


def make_fleet(tmp_path: Path) -> Fleet:
    repo = tmp_path / "fleet-repo"
    shutil.copytree(EXAMPLE / "fleet-repo", repo)
    out = tmp_path / "out"
    out.mkdir()
    return Fleet(repo, tmp_path / "state", out)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """One mosquitto process on a loopback port, configured for fleetpki certificates."""

    fleet: Fleet
    port: int = field(default_factory=free_port)
    cafile: Path | None = None  # default: root + issuing CA (out/cafile.pem)
    crlfile: Path | None = None  # default: the exported PEM CRL (out/crl.pem)
    process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.fleet.out / "mosquitto.conf"

    @property
    def log(self) -> Path:
        return self.fleet.out / "mosquitto.log"

    def write_conf(self) -> None:
        out = self.fleet.out
        self.conf.write_text("\n".join([
            # as root, mosquitto would switch to user `mosquitto`, who cannot read tmp_path
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type all",
            f"listener {self.port} 127.0.0.1",
            f"cafile {self.cafile or out / 'cafile.pem'}",
            f"certfile {out / 'broker-01' / 'cert.pem'}",
            f"keyfile {out / 'broker-01' / 'key.pem'}",
            "require_certificate true",
            "use_identity_as_username true",
            f"crlfile {self.crlfile or self.fleet.crl}",
            "",
        ]))

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.write_conf()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mosquitto exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on {self.port}:\n{self.logs()}")

    def reload(self) -> None:
        """SIGHUP, then wait until the broker has logged the reload (its loop is single-threaded,
        so a connection accepted after the log line sees the reloaded files)."""
        assert self.process is not None
        before = self.logs().count("Reloading config.")
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.logs().count("Reloading config.") == before:
            assert time.monotonic() < deadline, f"no reload logged:\n{self.logs()}"
            time.sleep(0.05)
        time.sleep(0.1)
        assert self.process.poll() is None, self.logs()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client_args(self, device: str) -> list[str]:
        out = self.fleet.out
        return ["-h", "127.0.0.1", "-p", str(self.port), "--cafile", str(out / "cafile.pem"),
                "--cert", str(out / device / "cert.pem"), "--key", str(out / device / "key.pem")]

    def publish(self, device: str, message: str = "hello") -> subprocess.CompletedProcess[str]:
        assert MOSQUITTO_PUB is not None
        return subprocess.run([MOSQUITTO_PUB, *self.client_args(device), "-t", "test",
                               "-m", message], capture_output=True, text=True, timeout=15,
                              check=False)

    def assert_admits(self, device: str) -> None:
        result = self.publish(device)
        assert result.returncode == 0, f"{device} refused: {result.stderr}\n{self.logs()}"
        # use_identity_as_username: the certificate's common name is the MQTT username
        self.wait_for_log(lambda text: f"u'{device}'" in text)

    def assert_refuses(self, device: str) -> None:
        failures = self.logs().count("certificate verify failed")
        result = self.publish(device)
        assert result.returncode != 0, f"{device} was admitted\n{self.logs()}"
        # refused by certificate verification, not by a broker that went away
        assert self.process is not None and self.process.poll() is None
        # (the client may exit before the broker has written its log line)
        self.wait_for_log(lambda text: text.count("certificate verify failed") > failures)

    def wait_for_log(self, seen: Callable[[str], bool], timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while not seen(self.logs()):
            assert time.monotonic() < deadline, f"not in the broker log:\n{self.logs()}"
            time.sleep(0.02)


@pytest.fixture
def broker_for(tmp_path: Path) -> Iterator[list[Broker]]:
    started: list[Broker] = []
    yield started
    for broker in started:
        broker.stop()


def start_broker(fleet: Fleet, started: list[Broker], cafile: Path | None = None,
                 crlfile: Path | None = None) -> Broker:
    broker = Broker(fleet, cafile=cafile, crlfile=crlfile)
    started.append(broker)
    broker.start()
    return broker


def test_devices_connect_and_a_revoked_device_is_refused_after_sighup(
        tmp_path: Path, broker_for: list[Broker]) -> None:
    fleet = make_fleet(tmp_path)
    assert "4 issue" in fleet.fleetpki("apply", ".")
    fleet.export_all()
    assert fleet.crl.read_text().startswith("-----BEGIN X509 CRL-----")  # mosquitto needs PEM
    broker = start_broker(fleet, broker_for)

    # sensor-a publishes; sensor-c, subscribed, receives it
    assert MOSQUITTO_SUB is not None
    subscriber = subprocess.Popen([MOSQUITTO_SUB, *broker.client_args("sensor-c"), "-t", "test",
                                   "-C", "1", "-W", "10"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while "Received SUBSCRIBE" not in broker.logs():
            assert time.monotonic() < deadline, broker.logs()
            assert subscriber.poll() is None, subscriber.communicate()
            time.sleep(0.05)
        broker.assert_admits("sensor-a")
        received, errors = subscriber.communicate(timeout=10)
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.wait()
    assert subscriber.returncode == 0, errors
    assert received.strip() == "hello"
    broker.assert_admits("sensor-b")

    # no client certificate at all: refused (require_certificate true, nothing anonymous)
    assert MOSQUITTO_PUB is not None
    anonymous = subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port),
                                "--cafile", str(fleet.out / "cafile.pem"), "-t", "test",
                                "-m", "x"], capture_output=True, timeout=15, check=False)
    assert anonymous.returncode != 0

    # revoke sensor-a in the YAML, apply, export the CRL over the broker's crlfile
    fleet.revoke("sensor-a")
    applied = fleet.fleetpki("apply", ".")
    assert "1 revoke" in applied and "1 publish-crl" in applied
    fleet.export_crl()

    # Pitfall: the broker still holds the CRL it loaded at start-up
    broker.assert_admits("sensor-a")

    # SIGHUP re-reads crlfile (mosquitto 2.0.11): sensor-a is refused, sensor-b still admitted
    broker.reload()
    broker.assert_refuses("sensor-a")
    broker.assert_admits("sensor-b")

    # and a restarted broker refuses it from the start
    broker.stop()
    restarted = start_broker(fleet, broker_for)
    restarted.assert_refuses("sensor-a")
    restarted.assert_admits("sensor-c")


def test_a_crl_past_next_update_makes_the_broker_refuse_everyone(
        tmp_path: Path, broker_for: list[Broker]) -> None:
    fleet = make_fleet(tmp_path)
    authorities = fleet.repo / "authorities.yaml"
    text = authorities.read_text()
    assert "duration: 168h" in text
    authorities.write_text(text.replace("duration: 168h", "duration: 1h"))
    # an apply two hours ago: the issuing CA's CRL expired an hour ago, certificates are valid
    earlier = jobs.now_utc() - timedelta(hours=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
        jobs.apply(fleet.repo, jobs.StateDir(fleet.state), earlier, write_status=False)
    fleet.export_all()
    broker = start_broker(fleet, broker_for)

    # nobody is revoked, yet nobody gets in
    broker.assert_refuses("sensor-b")
    broker.assert_refuses("sensor-c")

    # the fix: apply now (the CRL is past half its life, so it is re-published), export, reload
    assert "publish-crl" in fleet.fleetpki("apply", ".")
    fleet.export_crl()
    broker.reload()
    broker.assert_admits("sensor-b")


OTHER_CA = """---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata:
  name: other-ca
spec:
  type: intermediate
  parentRef:
    name: mqtt-root
  subject:
    commonName: Another issuing CA under the same root
  pathLength: 0
"""

OTHER_FLEET = """apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata:
  name: other
spec:
  issuerRef:
    name: other-ca
  profileRef:
    name: device-client
  devices:
    - id: intruder
"""


def test_which_cas_admit_clients_and_which_crl_files_load(
        tmp_path: Path, broker_for: list[Broker]) -> None:
    """`cafile` and `crlfile` together decide which issuing CAs admit clients."""
    fleet = make_fleet(tmp_path)
    with open(fleet.repo / "authorities.yaml", "a") as handle:
        handle.write(OTHER_CA)
    (fleet.repo / "fleets" / "other.yaml").write_text(OTHER_FLEET)
    fleet.fleetpki("apply", ".")
    fleet.export_all()
    fleet.fleetpki("export", "cert", ".", "--fleet", "other", "--device", "intruder",
                   "--out", str(fleet.out / "intruder"))
    intruder = fleet.out / "intruder"
    # the intruder sends its chain (the broker's cafile does not hold other-ca)
    full = (intruder / "cert.pem").read_bytes() + (intruder / "chain.pem").read_bytes()
    (intruder / "cert.pem").write_bytes(full)

    # root + mqtt-devices-ca in cafile, only mqtt-devices-ca's CRL in crlfile: a client of
    # another CA under the same root is refused, because its issuer has no CRL there
    broker = start_broker(fleet, broker_for)
    broker.assert_refuses("intruder")
    broker.assert_admits("sensor-b")
    broker.stop()

    # with other-ca's CRL added, the root in cafile admits other-ca's clients too
    other_crl = fleet.out / "other-ca.crl.pem"
    fleet.fleetpki("export", "crl", ".", "--ca", "other-ca", "--out", str(other_crl))
    both = fleet.out / "both.crl.pem"
    both.write_bytes(fleet.crl.read_bytes() + other_crl.read_bytes())
    broker = start_broker(fleet, broker_for, crlfile=both)
    broker.assert_admits("intruder")
    broker.stop()

    # only the issuing CA in cafile: no partial-chain trust, so nobody gets in
    broker = start_broker(fleet, broker_for, cafile=fleet.out / "broker-01" / "chain.pem")
    broker.assert_refuses("sensor-b")
    broker.stop()

    # a DER crlfile (public/crl/<ca>.crl) stops the broker from starting at all
    der = fleet.state / "public" / "crl" / f"{ISSUING_CA}.crl"
    assert der.exists()
    broker = Broker(fleet, crlfile=der)
    broker.write_conf()
    assert MOSQUITTO is not None
    failed = subprocess.run([MOSQUITTO, "-c", str(broker.conf)], capture_output=True, text=True,
                            timeout=10, check=False)
    assert failed.returncode != 0
    assert "no start line" in failed.stdout + failed.stderr
    # while the PEM file next to it is what `fleetpki export crl` writes
    pem = fleet.state / "public" / "crl" / f"{ISSUING_CA}.pem"
    assert pem.read_text().startswith("-----BEGIN X509 CRL-----")


def test_run_sh_end_to_end() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", str(EXAMPLE / "run.sh")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    for expected in ("publish as sensor-a: accepted",
                     "publish as sensor-b: accepted",
                     "before reload: publish as sensor-a: accepted",
                     "after SIGHUP: publish as sensor-a: refused",
                     "after SIGHUP: publish as sensor-b: accepted",
                     "MQTT demo passed"):
        assert any(line.startswith(expected) for line in lines), f"{expected!r} not in:\n{output}"
