"""A real Kubernetes API server for tests: kube-apiserver 1.20.2 + etcd on loopback.

`.ci/build-kube-apiserver` builds the server from Debian bookworm's `kubernetes` source package
into a cache outside the tree (`${FLEETPKI_KUBE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/fleetpki/
kube-1.20.2}`); etcd is Debian's `etcd-server` and the client Debian's `kubectl` 1.20 (from
`kubernetes-client`, or unpacked into the same cache when PATH holds another kubectl).

What the cluster is, and is not:

- One kube-apiserver and one etcd member, both on 127.0.0.1 with free ports and private data in
  a temporary directory; both are terminated when the test session ends.
- There is NO controller-manager and no scheduler or kubelet. So: no garbage collector (owner
  references never cascade, foreground deletion never finishes), no namespace controller (a
  deleted namespace stays Terminating forever), no service-account or token controller (no
  `default` ServiceAccount in new namespaces, no token Secrets), and Pods never run.
- Authentication is static bearer tokens (`--token-auth-file`): `admin` (group
  `system:masters`) and `operator`, the user `system:serviceaccount:fleetpki-system:
  fleetpki-operator` with the groups a real service-account token carries. RBAC subjects of kind
  ServiceAccount (namespace `fleetpki-system`, name `fleetpki-operator`) match that user, so the
  operator's real Role/ClusterRole bindings apply to it unchanged.
- Authorization is RBAC only: the operator user starts with nothing beyond what the bootstrap
  policy grants every authenticated user (discovery, self-reviews).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
KUBE_VERSION = "1.20.2"
OPERATOR_NAMESPACE = "fleetpki-system"
OPERATOR_SERVICE_ACCOUNT = "fleetpki-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    # kubeconfig/user key: (user name, groups)
    "admin": ("admin", ("system:masters",)),
    "operator": (OPERATOR_USER, ("system:serviceaccounts",
                                 f"system:serviceaccounts:{OPERATOR_NAMESPACE}",
                                 "system:authenticated")),
}
READY_TIMEOUT = 60.0
PASSPHRASE = "cluster-tests-passphrase"  # the operator's keystore passphrase in these tests
BUILD_HINT = "run .ci/build-kube-apiserver"


def cache_dir() -> Path:
    """Where `.ci/build-kube-apiserver` puts its binaries (same rule as the script)."""
    if os.environ.get("FLEETPKI_KUBE_CACHE"):
        return Path(os.environ["FLEETPKI_KUBE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleetpki" / f"kube-{KUBE_VERSION}"


def _executable(path: str | Path | None) -> str | None:
    return str(path) if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def find_apiserver() -> str | None:
    """$FLEETPKI_KUBE_APISERVER, else the cached build."""
    override = os.environ.get("FLEETPKI_KUBE_APISERVER")
    if override:
        return _executable(override)
    return _executable(cache_dir() / "kube-apiserver")


def find_etcd() -> str | None:
    """Debian's `etcd-server` installs /usr/bin/etcd."""
    return _executable(shutil.which("etcd")) or _executable("/usr/bin/etcd")


def find_kubectl() -> str | None:
    """$FLEETPKI_KUBECTL, else the cached kubectl 1.20 (present when PATH's kubectl is another
    version), else kubectl on PATH."""
    override = os.environ.get("FLEETPKI_KUBECTL")
    if override:
        return _executable(override)
    return _executable(cache_dir() / "kubectl") or _executable(shutil.which("kubectl"))


def missing_tools() -> list[str]:
    """What is missing to start a cluster, as readable phrases (empty: all there)."""
    missing = []
    if find_apiserver() is None:
        where = os.environ.get("FLEETPKI_KUBE_APISERVER") or cache_dir() / "kube-apiserver"
        missing.append(f"kube-apiserver ({where})")
    if find_etcd() is None:
        missing.append("etcd (apt-get install etcd-server)")
    if find_kubectl() is None:
        missing.append("kubectl (apt-get install kubernetes-client)")
    return missing


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl run; unlike its base class, the message carries kubectl's output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@dataclass
class Cluster:
    """A running apiserver: its URL, CA, and per-user tokens, kubeconfigs and kubectl."""

    server: str
    ca_file: Path
    directory: Path
    kubectl_bin: str
    tokens: dict[str, str]
    _kubeconfigs: dict[str, Path] = field(default_factory=dict)

    def token(self, user: str) -> str:
        """The bearer token of `user` ("admin" or "operator")."""
        try:
            return self.tokens[user]
        except KeyError:
            raise KeyError(f"no such test user {user!r}; known: {sorted(self.tokens)}") from None

    def kubeconfig(self, user: str) -> Path:
        """A kubeconfig file for `user`, whose current context (named after the user) holds
        the user's token and the cluster's CA file. Usable by kubectl, the `kubernetes` client
        (`config.load_kube_config(config_file=...)`) and kopf (KUBECONFIG=...)."""
        if user not in self._kubeconfigs:
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fleetpki-test",
                              "cluster": {"server": self.server,
                                          "certificate-authority": str(self.ca_file)}}],
                "users": [{"name": user, "user": {"token": self.token(user)}}],
                "contexts": [{"name": user,
                              "context": {"cluster": "fleetpki-test", "user": user}}],
                "current-context": user,
                "preferences": {},
            }
            path = self.directory / f"{user}.kubeconfig"
            path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
            path.chmod(0o600)
            self._kubeconfigs[user] = path
        return self._kubeconfigs[user]

    def kubectl(self, *args: str, user: str = "admin", input: str | None = None,
                check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """Run kubectl as `user`; with `check`, a non-zero exit raises KubectlError."""
        cmd = [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig(user)),
               "--cache-dir", str(self.directory / "kubectl-cache"), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, body: Any = None, *, user: str = "admin",
                content_type: str = "application/json") -> tuple[int, Any]:
        """One HTTP call to the API as `user`: (status, decoded JSON body or text). Use
        content_type "application/merge-patch+json" for merge patches; HTTP errors are
        returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token(user)}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


# --- certificates and keys -------------------------------------------------------------------

def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _make_pki(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a serving certificate for 127.0.0.1/localhost, and the service-account
    signing key pair."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetpki-test-kube-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"), x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    files = {name: directory / name for name in
             ("ca.crt", "ca.key", "server.crt", "server.key", "sa.key", "sa.pub")}
    files["ca.crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files["ca.key"], ca_key)
    files["server.crt"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files["server.key"], server_key)
    _write_key(files["sa.key"], sa_key)
    files["sa.pub"].write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return files


# --- processes -------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so a killed pytest run leaves no
    etcd or apiserver behind (prctl PR_SET_PDEATHSIG; Linux only, best effort)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ClusterStartError(RuntimeError):
    pass


def _wait(what: str, probe: Any, process: subprocess.Popen[bytes], log: Path,
          timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterStartError(f"{what} exited with status {process.returncode} before "
                                    f"it was ready; log tail ({log}):\n{log_tail(log)}")
        try:
            ok, last = probe()
            if ok:
                return
        except (OSError, ValueError) as error:
            last = repr(error)
        time.sleep(0.25)
    raise ClusterStartError(f"{what} not ready after {timeout:.0f} s (last probe: {last}); "
                            f"log tail ({log}):\n{log_tail(log)}")


@contextlib.contextmanager
def running_cluster(directory: Path, ready_timeout: float = READY_TIMEOUT) -> Iterator[Cluster]:
    """Start etcd and kube-apiserver with their state under `directory`; stop both on exit.
    Raises ClusterStartError (with the log tail) when either does not come up."""
    apiserver, etcd, kubectl = find_apiserver(), find_etcd(), find_kubectl()
    if apiserver is None or etcd is None or kubectl is None:
        raise ClusterStartError("missing: " + ", ".join(missing_tools()))
    directory.mkdir(parents=True, exist_ok=True)
    pki = _make_pki(directory)
    tokens = {user: secrets.token_hex(24) for user in USERS}
    token_file = directory / "tokens.csv"
    token_file.write_text("".join(
        f'{tokens[key]},{name},{key}-uid,"{",".join(groups)}"\n'
        for key, (name, groups) in USERS.items()))
    token_file.chmod(0o600)

    etcd_client, etcd_peer, secure_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_client}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"
    etcd_log, apiserver_log = directory / "etcd.log", directory / "kube-apiserver.log"
    etcd_process = apiserver_process = None
    try:
        etcd_process = _spawn([
            etcd, "--name", "fleetpki-test", "--data-dir", str(directory / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"fleetpki-test={peer_url}",
            "--initial-cluster-state", "new", "--logger=zap", "--log-level=warn",
        ], etcd_log)

        def etcd_healthy() -> tuple[bool, str]:
            with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as resp:
                body = resp.read().decode()
            return json.loads(body).get("health") == "true", body

        _wait("etcd", etcd_healthy, etcd_process, etcd_log, ready_timeout)

        server = f"https://127.0.0.1:{secure_port}"
        apiserver_process = _spawn([
            apiserver,
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={secure_port}",
            "--insecure-port=0",  # 1.20 still opens 127.0.0.1:8080 without auth by default
            f"--cert-dir={directory / 'apiserver-certs'}",
            f"--tls-cert-file={pki['server.crt']}",
            f"--tls-private-key-file={pki['server.key']}",
            f"--token-auth-file={token_file}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={pki['sa.pub']}",
            f"--service-account-signing-key-file={pki['sa.key']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/24",
            # the `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints refuse
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ], apiserver_log)
        context = ssl.create_default_context(cafile=str(pki["ca.crt"]))

        def apiserver_ready() -> tuple[bool, str]:
            req = urllib.request.Request(f"{server}/readyz")
            req.add_header("Authorization", f"Bearer {tokens['admin']}")
            try:
                with urllib.request.urlopen(req, context=context, timeout=5) as resp:
                    return resp.status == 200, f"HTTP {resp.status}"
            except urllib.error.HTTPError as error:
                return False, f"HTTP {error.code}: {error.read().decode(errors='replace')}"

        _wait("kube-apiserver", apiserver_ready, apiserver_process, apiserver_log, ready_timeout)
        yield Cluster(server=server, ca_file=pki["ca.crt"], directory=directory,
                      kubectl_bin=kubectl, tokens=tokens)
    finally:
        _stop(apiserver_process)
        _stop(etcd_process)


def rows(listing: str) -> dict[str, list[str]]:
    """kubectl's table by name, cut at the header's column starts (a cell may be empty)."""
    header, *lines = listing.splitlines()
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    ends = [*starts[1:], None]
    return {line.split()[0]: [line[a:b].strip() for a, b in zip(starts, ends, strict=True)]
            for line in lines}
