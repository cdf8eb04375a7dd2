"""`fleetpki serve --workers 2`: two processes answer on the same ports, `openssl ocsp` gets
verified answers from both, /metrics counts both (and a dead one's requests), both answer EST
and enroll devices, a killed worker is replaced, and stopping the parent stops them all and
removes the metrics directory."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from prometheus_client.multiprocess import MultiProcessCollector

from tests.servers.conftest import DEVICES, FLEETPKI, Env, ca_files, device_cert, free_port, run
from tests.servers.test_est import certificate_from, csr, post, secret, verify

REQUESTS = 24


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    http: int
    https: int
    log: Path
    temporary: Path  # the server's TMPDIR: where its metrics directory is made

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def metrics_directory(self) -> Path | None:
        found = list(self.temporary.glob("fleetpki-metrics-*"))
        return found[0] if found else None


def wait_until(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    """Poll (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def two_workers(env: Env, tmp_path: Path) -> Iterator[Served]:
    http, https = free_port(), free_port()
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    log = tmp_path / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [*FLEETPKI, "serve", str(env.repo), "--state-dir", str(env.state.path), "--http",
             f"127.0.0.1:{http}", "--https", f"127.0.0.1:{https}", "--workers", "2"],
            stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(temporary)})
    served = Served(process, http, https, log, temporary)
    try:
        wait_until(lambda: log.read_text().count("serving http on") == 2
                   or process.poll() is not None, "two workers")
        assert process.poll() is None, log.read_text()
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def ocsp_good(served: Served, env: Env, device: str = "dev-1") -> None:
    issuer, bundle = ca_files(env)
    cert, _ = device_cert(env, device)
    result = run("openssl", "ocsp", "-issuer", issuer, "-cert", cert, "-url",
                 f"http://127.0.0.1:{served.http}/ocsp", "-CAfile", bundle, "-no_nonce")
    assert result.returncode == 0 and "Response verify OK" in result.stderr, result.stderr
    assert f"{cert}: good" in result.stdout, result.stdout


def request_counts(directory: Path, endpoint: str = "ocsp") -> dict[int, float]:
    """Requests to `endpoint` counted by each worker (pid), from its own counter file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        counts[int(path.stem.split("_")[1])] = sum(
            s.value for metric in MultiProcessCollector.merge([str(path)])
            for s in metric.samples if s.name == "fleetpki_server_requests_total"
            and s.labels == {"endpoint": endpoint})
    return counts


def est_answers(served: Served, env: Env) -> bool:
    _, bundle = ca_files(env)
    return run("curl", "-sSf", "-o", "/dev/null", "--cacert", bundle,
               f"https://127.0.0.1:{served.https}/.well-known/est/cacerts").returncode == 0


def scraped_ocsp(served: Served) -> float:
    text = run("curl", "-sSf", f"http://127.0.0.1:{served.http}/metrics").stdout
    line = next(line for line in text.splitlines()
                if line.startswith('fleetpki_server_requests_total{endpoint="ocsp"}'))
    return float(line.split()[-1])


def test_two_workers_answer_count_and_replace_each_other(two_workers: Served, env: Env) -> None:
    served = two_workers
    first = served.workers()
    assert len(first) == 2
    for _ in range(REQUESTS):  # one connection each: the kernel spreads them
        ocsp_good(served, env)
    directory = served.metrics_directory()
    assert directory is not None and directory.stat().st_mode & 0o777 == 0o700
    counts = request_counts(directory)
    assert sorted(counts) == sorted(first) and all(counts[pid] > 0 for pid in first), counts
    assert sum(counts.values()) == REQUESTS
    assert [scraped_ocsp(served) for _ in range(6)] == [REQUESTS] * 6  # whoever answers
    assert all(est_answers(served, env) for _ in range(REQUESTS))
    counts = request_counts(directory, "est-cacerts")
    assert all(counts[pid] > 0 for pid in first), counts  # EST from both
    assert served.log.read_text().count("serving https on") == 2

    killed = first[0]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: f"(pid {killed}) was killed by SIGKILL" in served.log.read_text(),
               "the parent to notice")
    for _ in range(8):  # the other worker (and soon the replacement) answers
        ocsp_good(served, env)
    wait_until(lambda: len(served.workers()) == 2, "a replacement")
    assert killed not in served.workers() and first[1] in served.workers()
    assert est_answers(served, env)  # the other worker, without waiting for the replacement
    assert scraped_ocsp(served) == REQUESTS + 8  # the dead worker's requests still count

    last = served.workers()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(30) == 0, served.log.read_text()
    assert served.metrics_directory() is None
    assert not [pid for pid in last if Path(f"/proc/{pid}").exists()]  # reaped by the parent


def test_workers_stop_when_their_parent_is_killed(two_workers: Served) -> None:
    workers = two_workers.workers()
    two_workers.process.kill()
    two_workers.process.wait(10)
    wait_until(lambda: not [pid for pid in workers if alive(pid)], "orphaned workers to stop")
    assert run("curl", "-s", "-o", "/dev/null",
               f"http://127.0.0.1:{two_workers.http}/ca/root.pem").returncode != 0


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for init to reap it)."""
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except FileNotFoundError:
        return False


def test_both_workers_enroll_and_reenroll_devices(two_workers: Served, env: Env) -> None:
    """Every device enrolls with a one-time secret and then re-enrolls with the certificate it
    got, each request on a new connection (so either worker may answer either): a certificate
    one worker issued authenticates at the other, and each device ends with one active
    certificate, the last one issued."""
    server = SimpleNamespace(https=f"https://127.0.0.1:{two_workers.https}")
    renewed: dict[str, int] = {}
    for device in DEVICES:
        request = csr(env, device, f"/CN={device}")
        status, body, _ = post(server, env, "/simpleenroll", request, "--user",  # type: ignore[arg-type]
                               f"{device}:{secret(env, device)}", name=f"{device}-enrolled")
        assert status == "200", body.read_text()
        enrolled = certificate_from(env, body, f"{device}-enrolled")
        status, body, _ = post(server, env, "/simplereenroll", request, "--cert",  # type: ignore[arg-type]
                               enrolled, "--key", env.keys / f"{device}.key", name=f"{device}-re")
        assert status == "200", body.read_text()
        verify(env, pem := certificate_from(env, body, f"{device}-renewed"))
        renewed[device] = x509.load_pem_x509_certificate(pem.read_bytes()).serial_number
    with env.state.reader() as inventory:
        for device, serial in renewed.items():
            active = inventory.active_device("sensors", device)
            assert active is not None and int(active.serial, 16) == serial
            assert [r.state for r in inventory.device_history("sensors", device)].count(
                "active") == 1
    counts = request_counts(two_workers.metrics_directory() or Path("-"), "est-simpleenroll")
    assert sum(counts.values()) == len(DEVICES)
