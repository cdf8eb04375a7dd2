"""Measure the job and the servers at fleet scale against the signing floor of the same run.

`python bench/scale.py --devices N [--keygen device|server] [--database-url URL] [--json FILE]`
builds a throw-away
repository (root + issuing CA, one fleet of N devices from a CSV, a small EST fleet), runs each
stage in a fresh child process (timing and peak memory per stage, worker processes included:
the sum of their proportional set sizes, sampled every 50 ms) and prints a table; `--json FILE`
writes

    {"stages": {STAGE: {"seconds", "per_second", "peak_rss_mb"}},
     "floor": {"openssl_sign_per_s", "cryptography_sign_per_s", "builder_per_s"},
     "peers": {PEER: {"per_second", "ratio"} | {"missing": why}}}

Stages: validate, plan (empty inventory), apply_first (read, validate, plan, policies, sign,
inventory, CRLs, status), noop, renew_sweep (10% of the fleet due, an hour later), revoke_crl
(10,000 marked revoked in the CSV, CRL published, an hour after that), crl_100k (a CRL of
100,000 entries), ocsp (POSTs to `fleetpki serve`: from ApacheBench, `ab` of apache2-utils, with
keep-alive and 16 connections when it is installed, so that the client costs little of the 2
cores; else from Python clients cycling over 1,000 certificates), est_enroll (first enrollment
with a one-time secret) and est_reenroll (mTLS with the current certificate). With
`--database-url postgresql://…` (an empty database; its schema is made) the job's stages run a
second time on a fresh copy of the repository with the inventory in PostgreSQL, reported beside
SQLite's with a `_pg` suffix. With `--keygen device` (default) every device's P-256 public key
is in the CSV (`publicKey` column, PEM), the IoT practice; with `server` the job generates the
keys. Device keys are derived from the device number, so the CSV is cached between runs (in
$XDG_CACHE_HOME/fleetpki-bench) and any sample key can be rebuilt. Stages run in child processes
also report their CPU seconds (workers included), which vary less than wall time on a shared
machine; server stages report the server's CPU seconds alone (its clients run on the same
cores), so that requests per server CPU second is what it could answer per core. Of those, the
system's ("sys s": the kernel's, for page faults, I/O and the like) are given apart: on a
virtual machine that backs its memory only when first touched, they show what memory costs.
`--serve-workers N` runs the servers with `--workers N`; `--only job` runs the job's stages
alone, `--only servers` the first apply and the server stages.

The floor is measured first, in this process, on one core: `openssl speed ecdsap256`,
`cryptography`'s raw ECDSA-P256 sign() and x509.CertificateBuilder for the bench's device
certificate; before the server stages, `openssl s_server` handshakes per server CPU second
under `openssl s_time` (the TLS floor of EST). Peers, on a sample: `openssl x509 -req` and
`cfssl gencert`, one process per certificate as their users run them; their ratio is
fleetpki's apply_first rate over theirs.
Vault's published figure is cited, not run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from controller import jobs
from controller.pki import certificates as certs
from controller.pki.crl import RevokedEntry, build_crl, crl_to_der
from controller.servers.est import new_secret

FLEET, EST_FLEET = "fleet", "est"
REVOKE = 10_000
CRL_ENTRIES = 100_000
# The sweep and the revocations run an hour apart after the first issuance, as they would:
# in its very second a run's audit would read the million certificates it issued as well
LATER = timedelta(hours=1)
VAULT_PER_S = 2_200  # Vault PKI, stored P-256 certificates on one node (published figure)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
CDP = "http://127.0.0.1:8080/crl/issuing.crl"

REPO = """\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root}
spec: {type: root, subject: {commonName: Bench Root}, pathLength: 1}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: issuing}
spec:
  type: intermediate
  parentRef: {name: root}
  subject: {commonName: Bench Issuing CA}
  pathLength: 0
  crl: {distributionPoint: "%(cdp)s"}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: device}
spec:
  keyGeneration: %(keygen)s
  subject: {commonName: "{{ device.id }}"}
  subjectAltNames: {uris: ["urn:bench:{{ device.id }}"]}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: %(fleet)s}
spec:
  issuerRef: {name: issuing}
  profileRef: {name: device}
  deviceSource: {path: devices.csv}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateProfile
metadata: {name: enrolled}
spec:
  keyGeneration: device
  subject: {commonName: "{{ device.id }}"}
---
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata: {name: %(est)s}
spec:
  issuerRef: {name: issuing}
  profileRef: {name: enrolled}
  enrollment: {bootstrap: secret}
  deviceSource: {path: est.csv}
"""


# --- the fleet ---------------------------------------------------------------------------------
def device_id(number: int) -> str:
    return f"dev-{number:07d}"


def device_key(number: int, family: str = "fleet") -> ec.EllipticCurvePrivateKey:
    """The bench's P-256 key of a device, derived from its number (reproducible, bench only)."""
    digest = hashlib.sha256(f"fleetpki-bench/{family}/{number}".encode()).digest()
    return ec.derive_private_key(int.from_bytes(digest) % (P256_ORDER - 1) + 1, ec.SECP256R1())


def _csv_rows(span: tuple[int, int, bool]) -> str:
    start, stop, with_keys = span
    lines = []
    for number in range(start, stop):
        if with_keys:
            pem = device_key(number).public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            lines.append(f'{device_id(number)},site-{number % 50},"{pem.decode()}",\n')
        else:
            lines.append(f"{device_id(number)},site-{number % 50},\n")
    return "".join(lines)


def fleet_csv(devices: int, keygen: str) -> Path:
    """The fleet's CSV (header `id,labels.site[,publicKey],revoked`), built on 2 cores once."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleetpki-bench"
    path = cache / f"devices-{keygen}-{devices}.csv"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    header = "id,labels.site,publicKey,revoked\n" if keygen == "device" else \
        "id,labels.site,revoked\n"
    step = 10_000
    spans = [(s, min(s + step, devices), keygen == "device") for s in range(0, devices, step)]
    partial = path.with_suffix(".partial")
    with multiprocessing.get_context("fork").Pool(2) as pool, open(partial, "w") as handle:
        handle.write(header)
        for text in pool.imap(_csv_rows, spans):
            handle.write(text)
    partial.rename(path)
    return path


def mark_revoked(source: Path, target: Path, count: int) -> None:
    """Copy the CSV with the first `count` devices marked revoked (keyCompromise)."""
    with open(source) as reading, open(target, "w") as writing:
        writing.write(reading.readline())
        pending = ""
        marked = 0
        for line in reading:
            pending += line
            if pending.count('"') % 2:  # inside a quoted multi-line PEM
                continue
            if marked < count:
                pending = pending[:-1] + "keyCompromise\n"
                marked += 1
            writing.write(pending)
            pending = ""


def build_repo(work: Path, devices: int, keygen: str, est_devices: int) -> Path:
    repo = work / "repo"
    repo.mkdir(parents=True)
    (repo / "fleet.yaml").write_text(REPO % {"cdp": CDP, "keygen": keygen, "fleet": FLEET,
                                             "est": EST_FLEET})
    shutil.copyfile(fleet_csv(devices, keygen), repo / "devices.csv")
    (repo / "est.csv").write_text("id\n" + "".join(f"est-{n:05d}\n" for n in range(est_devices)))
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    commit(repo, "the fleet")
    return repo


def commit(repo: Path, message: str) -> None:
    """Commit every file, as a merged pull request would (what is applied is committed)."""
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=bench", "-c",
                    "user.email=bench@example.invalid", "-c", "commit.gpgsign=false", "commit",
                    "-q", "-m", message], check=True)


# --- measuring a stage in its own process ------------------------------------------------------
def tree_rss_kb(pid: int) -> int:
    """Memory of a process and all its descendants (kB): the sum of their proportional set
    sizes (a page shared by k processes counts 1/k in each, so forked workers are not counted
    twice), or of their RSS where /proc has no smaps_rollup."""
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            rollup = proc / "smaps_rollup"
            wanted, text = ("Pss:", rollup.read_text()) if rollup.exists() else \
                ("VmRSS:", (proc / "status").read_text())
            total += next(int(line.split()[1]) for line in text.splitlines()
                          if line.startswith(wanted))
    return total


def process_tree(pid: int) -> Iterator[Path]:
    """/proc/PID of a process and of each live descendant (one that is gone is left out)."""
    pending = [pid]
    while pending:
        proc = Path(f"/proc/{pending.pop()}")
        yield proc
        with contextlib.suppress(OSError):
            for task in (proc / "task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]


class RSSWatch:
    """Samples the memory of a process tree in a thread (`tree_rss_kb`): every 50 ms, or less
    often where a sample takes longer (the kernel walks every mapped page for smaps_rollup, so
    at a million devices one sample costs about a tenth of a second), so that sampling costs
    at most about 5% of one core, not the CPU of the stage it measures."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = 0.05
        while not self._stop.wait(interval):
            started = time.perf_counter()
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.pid))
            interval = max(0.05, 20 * (time.perf_counter() - started))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


@dataclass
class Stage:
    name: str
    count: int
    seconds: float
    peak_rss_mb: float
    detail: str = ""
    cpu_seconds: float | None = None  # job: CPU time, workers included; servers: theirs
    system_seconds: float | None = None  # of cpu_seconds, the kernel's (page faults, I/O)

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


Timed = Callable[[], str]  # runs the measured work, returns a detail for the table


class CPU(NamedTuple):
    """CPU seconds: user + system, and system alone."""

    total: float
    system: float

    def __sub__(self, other: CPU) -> CPU:
        return CPU(self.total - other[0], self.system - other[1])


def cpu_seconds() -> CPU:
    """CPU time of this process and its waited-for children (workers)."""
    usages = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return CPU(sum(u.ru_utime + u.ru_stime for u in usages), sum(u.ru_stime for u in usages))


def _child(setup: Callable[[], Timed], pipe: multiprocessing.connection.Connection) -> None:
    try:
        work = setup()
        cpu, start = cpu_seconds(), time.perf_counter()
        detail = work()
        seconds = time.perf_counter() - start
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        pipe.send((seconds, detail, own, cpu_seconds() - cpu))
    except BaseException as exc:  # reported by the parent, which fails the bench
        pipe.send(exc)
        raise


def in_child(name: str, count: int, setup: Callable[[], Timed]) -> Stage:
    """Run `setup()` (untimed) then the work it returns (timed) in a forked child."""
    receive, send = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(target=_child, args=(setup, send))
    process.start()
    assert process.pid is not None
    watch = RSSWatch(process.pid)
    answer = receive.recv()
    process.join()
    sampled = watch.stop()
    if isinstance(answer, BaseException):
        raise RuntimeError(f"stage {name} failed") from answer
    seconds, detail, own_kb, cpu = answer
    return Stage(name, count, seconds, max(sampled, own_kb / 1024), detail, *cpu)


# --- the job's stages --------------------------------------------------------------------------
def job_stages(repo: Path, state: jobs.StateDir, devices: int, now: datetime,
               suffix: str = "", first_only: bool = False) -> list[Stage]:
    def validate() -> Timed:
        def work() -> str:
            problems, findings = jobs.validate(repo, now)
            assert not problems, problems[:3]
            return f"{len(problems)} problems, {len(findings)} findings"
        return work

    def plan() -> Timed:
        return lambda: f"{len(jobs.plan(repo, state, now).actions)} actions"

    def apply(expect: str, at: datetime = now, **options: Any) -> Callable[[], Timed]:
        def setup() -> Timed:
            def work() -> str:
                report = jobs.apply(repo, state, at, **options)
                done = dict(sorted(report.result.done.items()))
                assert not report.result.failed, report.result.failed
                return f"{done}" if done else "no changes"
            return work
        return setup

    def renew_sweep() -> Timed:
        with state.inventory() as inventory, inventory.transaction():  # every tenth device
            inventory.db.execute("UPDATE certificates SET renew_at = 0 WHERE kind = 'device' "
                                 "AND owner = ? AND state = 'active' AND device LIKE '%0'",
                                 (FLEET,))
        return apply("renew", now + LATER)()

    def revoke() -> Timed:
        partial = repo / "devices.csv.new"
        mark_revoked(repo / "devices.csv", partial, min(REVOKE, devices // 10))
        partial.rename(repo / "devices.csv")
        commit(repo, "revoke")
        return apply("revoke", now + 2 * LATER, allow_mass_revocation=True)()

    if first_only:
        return [in_child("apply_first" + suffix, devices, apply("issue"))]
    stages = [in_child("validate" + suffix, devices, validate),
              in_child("plan" + suffix, devices, plan),
              in_child("apply_first" + suffix, devices, apply("issue")),
              in_child("noop" + suffix, devices, apply("noop"))]
    sweep = in_child("renew_sweep" + suffix, 0, renew_sweep)
    sweep.count = sum(int(n) for n in re.findall(r"'(?:renew|rekey)': (\d+)", sweep.detail))
    stages.append(sweep)
    stages.append(in_child("revoke_crl" + suffix, min(REVOKE, devices // 10), revoke))
    return stages


def postgres_stages(url: str, work: Path, args: argparse.Namespace) -> list[Stage]:
    """The job's stages again, on a fresh copy of the repository, the inventory in `url`."""
    state = jobs.StateDir(work / "state", database_url=url)
    jobs.migrate_inventory(state)
    with state.reader() as inventory:
        if inventory.fleet_names() or inventory.ca_names():
            raise SystemExit(f"--database-url: {inventory.db.name} is not empty")
    repo = build_repo(work, args.devices, args.keygen, args.est)
    return job_stages(repo, state, args.devices, jobs.now_utc(), suffix="_pg")


def crl_stage() -> Stage:
    def setup() -> Timed:
        issuer_key = ec.generate_private_key(ec.SECP256R1())
        issuer = _self_signed(issuer_key, "Bench CRL Issuer")
        now = datetime.now(UTC)
        entries = [RevokedEntry(certs.random_serial(), now, "keyCompromise")
                   for _ in range(CRL_ENTRIES)]

        def work() -> str:
            der = crl_to_der(build_crl(issuer_certificate=issuer, issuer_key=issuer_key,
                                       entries=entries, crl_number=1, this_update=now,
                                       next_update=now + timedelta(days=1)))
            return f"{len(der) / 1e6:.1f} MB DER"
        return work
    return in_child("crl_100k", CRL_ENTRIES, setup)


def _self_signed(key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(certs.random_serial())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256()))


def tls_floor(work: Path, seconds: int = 3) -> float:
    """TLS handshakes per server CPU second of `openssl s_server` (P-256 certificate, the
    library's default protocol and groups) under `openssl s_time` (a new connection each,
    nothing sent): what one core does for TLS alone, before any EST work."""
    key = ec.generate_private_key(ec.SECP256R1())
    files = work / "tls-floor"
    files.mkdir(mode=0o700)
    certificate, private = files / "cert.pem", files / "key.pem"
    certificate.write_bytes(_self_signed(key, "127.0.0.1").public_bytes(
        serialization.Encoding.PEM))
    private.touch(mode=0o600)
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    port = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-cert", str(certificate), "-key",
                               str(private), "-accept", str(port), "-quiet"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(port, 30)
        cpu = tree_cpu_seconds(server.pid)
        output = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                                 "-time", str(seconds)], capture_output=True, text=True,
                                check=True).stdout
        used = (tree_cpu_seconds(server.pid) - cpu).total
    finally:
        server.kill()
        server.wait()
    found = re.search(r"^(\d+) connections in [\d.]+s", output, re.M)
    assert found is not None, output
    return int(found.group(1)) / used


# --- the servers -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"fleetpki serve did not listen on {port} within {seconds:.0f} s")


def parallel(clients: int, jobs_: list[Any], run: Callable[[list[Any]], None]) -> float:
    """Split `jobs_` over `clients` forked processes started together; the wall time."""
    context = multiprocessing.get_context("fork")
    go = context.Event()
    processes = [context.Process(target=_client, args=(go, run, jobs_[i::clients]))
                 for i in range(clients)]
    for process in processes:
        process.start()
    time.sleep(0.3)
    start = time.perf_counter()
    go.set()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError("a bench client failed")
    return time.perf_counter() - start


def _client(go: Any, run: Callable[[list[Any]], None], share: list[Any]) -> None:
    go.wait()
    run(share)


def _ocsp_requests(share: list[tuple[int, bytes]]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", share[0][0])
    for _, body in share:
        connection.request("POST", "/ocsp", body, {"Content-Type": "application/ocsp-request"})
        reply = connection.getresponse()
        reply.read()
        assert reply.status == 200, reply.status


def _ab(ab: str, body: Path, url: str, count: int) -> float:
    """Seconds ApacheBench takes for `count` POSTs of `body` (every answer a 200). ab counts
    an answer whose length differs from the first one's as failed ("Length"): each server
    worker signs its own answer, and ECDSA signatures vary in length, so those are not
    failures; connection, receive and exception failures are."""
    run = subprocess.run([ab, "-q", "-k", "-c", "16", "-n", str(count), "-p", str(body), "-T",
                          "application/ocsp-request", url], capture_output=True, text=True,
                         check=True)
    non_2xx = re.search(r"^Non-2xx responses:\s+(\d+)", run.stdout, re.M)
    failed = re.search(r"Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)",
                       run.stdout)
    if (non_2xx and int(non_2xx.group(1))) or (failed and any(map(int, failed.groups()))):
        raise RuntimeError(f"ab: {run.stdout}")
    taken = re.search(r"^Time taken for tests:\s+([\d.]+) seconds", run.stdout, re.M)
    assert taken is not None, run.stdout
    return float(taken.group(1))


def _est_requests(share: list[tuple[int, str, bytes, str | None, tuple[str, str] | None,
                                    str]]) -> None:
    shared: dict[str, ssl.SSLContext] = {}  # one context per chain when there is no client key
    for port, path, body, auth, client_files, chain in share:
        if client_files:
            context = ssl.create_default_context(cadata=chain)
            context.load_cert_chain(*client_files)
        else:
            context = shared.get(chain) or shared.setdefault(
                chain, ssl.create_default_context(cadata=chain))
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
        headers = {"Content-Type": "application/pkcs10"}
        if auth:
            headers["Authorization"] = f"Basic {auth}"
        connection.request("POST", path, body, headers)
        reply = connection.getresponse()
        reply.read()
        assert reply.status == 200, (reply.status, path)
        connection.close()


def server_stages(repo: Path, state: jobs.StateDir, work: Path, ocsp_count: int,
                  est_count: int, clients: int, workers: int = 1) -> list[Stage]:
    """OCSP, first enrollment and re-enrollment against `fleetpki serve --workers N` on
    loopback."""
    now = jobs.now_utc()
    with state.inventory() as inventory:
        issuer = x509.load_der_x509_certificate(inventory.active_ca("issuing").der)  # type: ignore[union-attr]
        rows = inventory.db.execute(
            "SELECT der FROM certificates WHERE owner = ? AND state = 'active' LIMIT 1000",
            (FLEET,)).fetchall()
        chain = "".join(x509.load_der_x509_certificate(g.der).public_bytes(
            serialization.Encoding.PEM).decode() for name in inventory.ca_names()
            for g in inventory.ca_generations(name))
        secrets: dict[str, str] = {}
        with multiprocessing.get_context("fork").Pool(2) as pool:
            made = pool.starmap(new_secret, [(EST_FLEET, f"est-{n:05d}", now)
                                             for n in range(est_count)])
        with inventory.transaction():
            for number, (secret, record) in enumerate(made):
                secrets[f"est-{number:05d}"] = secret
                inventory.put_enrollment_secret(record)
    bodies = [ocsp.OCSPRequestBuilder().add_certificate(
        x509.load_der_x509_certificate(der), issuer, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER) for (der,) in rows]
    http_port, https_port = free_port(), free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "fleetpki"), "serve", str(repo), "--state-dir",
         str(state.path), "--http", f"127.0.0.1:{http_port}", "--https",
         f"127.0.0.1:{https_port}", "--tls-ca", "issuing", "--workers", str(workers)],
        stderr=(log := work / "serve.log").open("wb"))
    stages = []
    try:
        wait_for(https_port, 900)
        # warm the OCSP response cache once per certificate, as a running server has it
        _ocsp_requests([(http_port, body) for body in bodies])
        bench = shutil.which("ab")
        if bench:
            request = work / "ocsp-request.der"
            request.write_bytes(bodies[0])
            stages.append(_server_stage(
                "ocsp", server.pid, ocsp_count,
                lambda: _ab(bench, request, f"http://127.0.0.1:{http_port}/ocsp", ocsp_count),
                "ab, keep-alive, 16 connections, cached"))
        else:
            load = [(http_port, bodies[i % len(bodies)]) for i in range(ocsp_count)]
            stages.append(_server_stage("ocsp", server.pid, len(load),
                                        lambda: parallel(clients, load, _ocsp_requests),
                                        f"{len(bodies)} certificates, cached, {clients} "
                                        "Python clients"))
        keys_ = {f"est-{n:05d}": device_key(n, "est") for n in range(est_count)}
        enroll = []
        for device, key in keys_.items():
            auth = base64.b64encode(f"{device}:{secrets[device]}".encode()).decode()
            enroll.append((https_port, "/.well-known/est/simpleenroll", _csr(device, key), auth,
                           None, chain))
        stages.append(_server_stage("est_enroll", server.pid, len(enroll),
                                    lambda: parallel(clients, enroll, _est_requests),
                                    f"one-time secret, TLS per device, {clients} clients"))
        files = work / "clients"
        files.mkdir(mode=0o700)
        reenroll = []
        with state.reader() as inventory:
            for device, key in keys_.items():
                enrolled = inventory.active_device(EST_FLEET, device)
                assert enrolled is not None, device
                certificate, private = files / f"{device}.crt", files / f"{device}.key"
                certificate.write_bytes(x509.load_der_x509_certificate(enrolled.der).public_bytes(
                    serialization.Encoding.PEM))
                private.touch(mode=0o600)
                private.write_bytes(key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()))
                reenroll.append((https_port, "/.well-known/est/simplereenroll",
                                 _csr(device, key), None, (str(certificate), str(private)),
                                 chain))
        stages.append(_server_stage("est_reenroll", server.pid, len(reenroll),
                                    lambda: parallel(clients, reenroll, _est_requests),
                                    f"mTLS per device, {clients} clients"))
    except Exception as exc:
        lines = log.read_text(errors="replace").splitlines()
        raise RuntimeError("a server stage failed; the server's last log lines:\n"
                           + "\n".join(lines[-40:])) from exc
    finally:
        server.terminate()
        server.wait(30)
    return stages


def _csr(device: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)])).sign(key, hashes.SHA256()))
    return base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))


def _server_stage(name: str, pid: int, count: int, run: Callable[[], float],
                  detail: str) -> Stage:
    """The clients' wall time; the CPU seconds are the server's alone (parent and workers),
    so that `count / CPU s` is what the server could answer per core without its clients."""
    watch = RSSWatch(pid)
    cpu = tree_cpu_seconds(pid)
    seconds = run()
    return Stage(name, count, seconds, watch.stop(), detail, *(tree_cpu_seconds(pid) - cpu))


def tree_cpu_seconds(pid: int) -> CPU:
    """CPU time of a process and its live descendants (/proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime
    return CPU((user + system) / tick, system / tick)


# --- the floor and the peers -------------------------------------------------------------------
def rate_for(seconds: float, call: Callable[[], object]) -> float:
    """Calls per second of `call`, repeated for about `seconds`."""
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            call()
        count += 50
    return count / elapsed


def floor(seconds: float = 2.0) -> dict[str, float]:
    """Single-core signing rates: openssl's, cryptography's raw sign(), CertificateBuilder."""
    output = subprocess.run(["openssl", "speed", "-seconds", str(int(seconds)), "ecdsap256"],
                            capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if "nistp256" in line and "ecdsa" in line)
    openssl_rate = float(line.split()[-2])
    key = ec.generate_private_key(ec.SECP256R1())
    tbs = os.urandom(300)
    raw = rate_for(seconds, lambda: key.sign(tbs, ec.ECDSA(hashes.SHA256())))
    issuer = _self_signed(key, "Bench Floor CA")
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    publics = [device_key(n, "floor").public_key() for n in range(200)]
    numbers = iter(range(10**9))
    now = datetime.now(UTC)

    def build() -> x509.Certificate:
        number = next(numbers)
        public = publics[number % len(publics)]
        name = device_id(number)
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(issuer.subject).public_key(public)
                .serial_number(certs.random_serial())
                .not_valid_before(now).not_valid_after(now + timedelta(days=365))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                             False, False), True)
                .add_extension(aki, False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"urn:bench:{name}")]), False)
                .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                    [x509.UniformResourceIdentifier(CDP)], None, None, None)]), False)
                .sign(key, hashes.SHA256()))
    return {"openssl_sign_per_s": openssl_rate, "cryptography_sign_per_s": raw,
            "builder_per_s": rate_for(seconds, build)}


def peers(work: Path, sample: int) -> dict[str, dict[str, Any]]:
    """Per-certificate rates of `openssl x509 -req` and `cfssl gencert` on `sample` devices."""
    place = work / "peers"
    place.mkdir(mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())  # a throw-away CA, in a 0700 directory
    (place / "ca.key").touch(mode=0o600)
    (place / "ca.key").write_bytes(ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (place / "ca.pem").write_bytes(_self_signed(ca_key, "Bench Peer CA").public_bytes(
        serialization.Encoding.PEM))
    (place / "ext.cnf").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        f"crlDistributionPoints=URI:{CDP}\n")
    for number in range(sample):
        key = device_key(number, "peer")
        csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, device_id(number))])).sign(
            key, hashes.SHA256()))
        (place / f"{number}.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    result: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for number in range(sample):
        subprocess.run(["openssl", "x509", "-req", "-in", str(place / f"{number}.csr"),
                        "-CA", str(place / "ca.pem"), "-CAkey", str(place / "ca.key"),
                        "-set_serial", str(certs.random_serial()), "-days", "365", "-sha256",
                        "-extfile", str(place / "ext.cnf"), "-out", str(place / "out.pem")],
                       check=True, capture_output=True)
    result["openssl_x509_req"] = {"per_second": sample / (time.perf_counter() - start),
                                  "sample": sample}
    if shutil.which("cfssl") is None:
        result["cfssl_gencert"] = {"missing": "cfssl not installed (Debian golang-cfssl)"}
    else:
        (place / "config.json").write_text(json.dumps({"signing": {"default": {
            "expiry": "8760h", "usages": ["digital signature", "client auth"]}}}))
        start = time.perf_counter()
        for number in range(sample):
            request = json.dumps({"CN": device_id(number), "key": {"algo": "ecdsa", "size": 256}})
            subprocess.run(["cfssl", "gencert", "-ca", str(place / "ca.pem"), "-ca-key",
                            str(place / "ca.key"), "-config", str(place / "config.json"), "-"],
                           input=request, text=True, check=True, capture_output=True)
        result["cfssl_gencert"] = {"per_second": sample / (time.perf_counter() - start),
                                   "sample": sample, "note": "generates the key too"}
    result["vault_published"] = {"per_second": VAULT_PER_S, "cited": True}
    return result


# --- report ------------------------------------------------------------------------------------
def report(args: argparse.Namespace, floor_rates: dict[str, float], stages: list[Stage],
           peer_rates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    first = next(s for s in stages if s.name == "apply_first").per_second
    for values in peer_rates.values():
        if "per_second" in values:
            values["ratio"] = first / values["per_second"]
    return {"devices": args.devices, "keygen": args.keygen, "cpus": os.cpu_count(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "stages": {s.name: {"seconds": s.seconds, "per_second": s.per_second,
                                "peak_rss_mb": s.peak_rss_mb, "count": s.count,
                                "cpu_seconds": s.cpu_seconds,
                                "system_seconds": s.system_seconds,
                                "detail": s.detail} for s in stages},
            "floor": floor_rates, "peers": peer_rates}


def print_table(data: dict[str, Any]) -> None:
    floor_rates = data["floor"]
    builder = floor_rates.get("builder_per_s")
    print(f"fleetpki bench: {data['devices']:,} devices, keygen {data['keygen']}, "
          f"{data['cpus']} CPUs, {data['date']}")
    if builder:
        print(f"floor (1 core): openssl sign {floor_rates['openssl_sign_per_s']:,.0f}/s, "
              f"cryptography sign {floor_rates['cryptography_sign_per_s']:,.0f}/s, "
              f"CertificateBuilder {builder:,.0f}/s")
    if "tls_handshakes_per_cpu_s" in floor_rates:
        print(f"floor (TLS): openssl s_server {floor_rates['tls_handshakes_per_cpu_s']:,.0f} "
              "handshakes per CPU second (the server stages' CPU s are the server's)")
    print(f"{'stage':<13} {'n':>9} {'seconds':>9} {'per second':>11} {'x builder':>9} "
          f"{'peak RSS':>9} {'CPU s':>7} {'sys s':>6}  detail")
    for name, stage in data["stages"].items():
        ratio = f"{stage['per_second'] / builder:.2f}" if builder and name in (
            "apply_first", "renew_sweep", "apply_first_pg", "renew_sweep_pg") else ""
        cpu, system = ("" if stage.get(key) is None else f"{stage[key]:.1f}"
                       for key in ("cpu_seconds", "system_seconds"))
        print(f"{name:<13} {stage['count']:>9,} {stage['seconds']:>9.2f} "
              f"{stage['per_second']:>11,.0f} {ratio:>9} {stage['peak_rss_mb']:>7.0f} MB "
              f"{cpu:>7} {system:>6}  {stage['detail']}")
    print("peers (fleetpki apply_first rate / theirs):")
    for name, values in data["peers"].items():
        if "missing" in values:
            print(f"  {name:<18} missing: {values['missing']}")
        else:
            cited = " (published figure, not run)" if values.get("cited") else \
                f" (sample {values['sample']})"
            print(f"  {name:<18} {values['per_second']:>9,.0f}/s  ratio "
                  f"{values['ratio']:.1f}{cited}")


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="fleetpki-bench-"))
    try:
        yield work
    finally:
        shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--keygen", choices=("device", "server"), default="device")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--ocsp", type=int, default=20_000, help="OCSP requests")
    parser.add_argument("--est", type=int, default=500, help="EST (re)enrollments")
    parser.add_argument("--clients", type=int, default=2, help="client processes (servers)")
    parser.add_argument("--peer-sample", type=int, default=200)
    parser.add_argument("--database-url", help="also run the job's stages on this (empty) "
                        "PostgreSQL database")
    parser.add_argument("--serve-workers", type=int, default=1,
                        help="`fleetpki serve --workers N` for the server stages")
    parser.add_argument("--only", choices=("job", "servers"), help="job: the job's stages "
                        "alone (no floor, CRL, servers or peers), e.g. to compare two commits; "
                        "servers: the first apply, then the server stages")
    args = parser.parse_args()
    os.environ.setdefault(jobs.PASSPHRASE_ENV, "bench-only-passphrase")
    floor_rates = floor() if args.only is None else {}
    peer_rates: dict[str, dict[str, Any]] = {}
    with workspace() as work:
        repo = build_repo(work, args.devices, args.keygen, args.est)
        state = jobs.StateDir(work / "state")
        stages = job_stages(repo, state, args.devices, jobs.now_utc(),
                            first_only=args.only == "servers")
        if args.only is None:
            stages.append(crl_stage())
        if args.only != "job":
            floor_rates["tls_handshakes_per_cpu_s"] = tls_floor(work)
            try:
                stages += server_stages(repo, state, work, args.ocsp, args.est, args.clients,
                                        args.serve_workers)
            except Exception:
                print_table(report(args, floor_rates, stages, {}))  # what was measured
                raise
        if args.database_url:
            (work / "pg").mkdir()
            stages += postgres_stages(args.database_url, work / "pg", args)
        if args.only is None:
            peer_rates = peers(work, args.peer_sample)
    data = report(args, floor_rates, stages, peer_rates)
    print_table(data)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
