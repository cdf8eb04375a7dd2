"""Flux source artifacts: a real HTTP server on loopback serving real gzip tarballs."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from controller.api.devices import DeviceSourceError, read_fleet_devices
from controller.api.loading import parse_documents
from controller.api.problems import Problem
from controller.api.resources import DeviceSource
from controller.sources.artifacts import (
    ArtifactCache,
    artifact_device_text,
    artifact_of,
    fetch_artifact_file,
    parse_digest,
)

CSV = "id,labels.site\nsensor-1,berlin\nsensor-2,paris\n"
LIMITS: dict[str, Any] = {"max_bytes": 1024 * 1024, "timeout": 10.0}


def tarball(files: dict[str, bytes | str], *, kinds: dict[str, bytes] | None = None) -> bytes:
    """A gzip tarball of regular files (and members of other `kinds`: name -> tar type)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, kind in (kinds or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "fleets/devices.csv"
            archive.addfile(info)
    return out.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Server:
    """Serves `files` (path -> bytes); counts requests; `/redirect` redirects."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests = 0
        self.announce_length = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests += 1
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/artifact.tar.gz")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                if server.announce_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, data: bytes, name: str = "/artifact.tar.gz") -> str:
        self.files[name] = data
        return self.url + name


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join()


def test_good_digest_gives_the_file(server: Server) -> None:
    data = tarball({"README.md": "hi", "fleets/devices.csv": "\ufeff" + CSV})
    url = server.serve(data)
    assert fetch_artifact_file(url, sha256(data), "fleets/devices.csv", **LIMITS) == CSV
    assert fetch_artifact_file(url, sha256(data), "./fleets/devices.csv", **LIMITS) == CSV


def test_members_named_with_a_leading_dot_slash_are_found(server: Server) -> None:
    data = tarball({"./fleets/devices.csv": CSV})
    assert fetch_artifact_file(server.serve(data), sha256(data), "fleets/devices.csv",
                               **LIMITS) == CSV


@pytest.mark.parametrize("algorithm", ["sha384", "sha512"])
def test_other_sha2_digests_and_the_old_checksum(server: Server, algorithm: str) -> None:
    data = tarball({"devices.csv": CSV})
    url = server.serve(data)
    digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    assert fetch_artifact_file(url, digest, "devices.csv", **LIMITS) == CSV
    checksum = hashlib.sha256(data).hexdigest()  # Flux's older status.artifact.checksum
    assert fetch_artifact_file(url, checksum, "devices.csv", **LIMITS) == CSV


def test_wrong_digest_names_expected_and_got(server: Server) -> None:
    data = tarball({"devices.csv": CSV})
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DeviceSourceError) as error:
        fetch_artifact_file(server.serve(data), wrong, "devices.csv", **LIMITS)
    message = str(error.value)
    assert "digest mismatch" in message
    assert f"expected {wrong}" in message and f"got {sha256(data)}" in message


@pytest.mark.parametrize(("digest", "expected"), [
    ("blake3:" + "0" * 64, "'blake3' is not supported"),
    ("sha1:" + "0" * 40, "'sha1' is not supported"),
    ("sha256:abc", "not a sha256 digest"),
    ("0" * 40, "not a sha256 digest"),
])
def test_unknown_or_malformed_digests_are_refused_before_downloading(
        server: Server, digest: str, expected: str) -> None:
    url = server.serve(tarball({"devices.csv": CSV}))
    with pytest.raises(DeviceSourceError, match=expected):
        fetch_artifact_file(url, digest, "devices.csv", **LIMITS)
    assert server.requests == 0
    with pytest.raises(DeviceSourceError):
        parse_digest(digest)


def test_missing_path_is_an_error(server: Server) -> None:
    data = tarball({"fleets/other.csv": CSV})
    with pytest.raises(DeviceSourceError, match="no file 'fleets/devices.csv' in the artifact"):
        fetch_artifact_file(server.serve(data), sha256(data), "fleets/devices.csv", **LIMITS)


@pytest.mark.parametrize("member", ["../devices.csv", "/etc/devices.csv",
                                    "fleets/../../devices.csv", "C:/devices.csv",
                                    "fleets\\..\\devices.csv"])
def test_an_archive_with_an_unsafe_member_name_is_refused(server: Server, member: str) -> None:
    data = tarball({"fleets/devices.csv": CSV, member: "id\nevil\n"})
    with pytest.raises(DeviceSourceError, match="unsafe member name"):
        fetch_artifact_file(server.serve(data), sha256(data), "fleets/devices.csv", **LIMITS)


@pytest.mark.parametrize("path", ["../devices.csv", "/devices.csv", "", "."])
def test_a_path_leaving_the_artifact_is_refused(server: Server, path: str) -> None:
    data = tarball({"devices.csv": CSV})
    with pytest.raises(DeviceSourceError, match="stay inside the artifact"):
        fetch_artifact_file(server.serve(data), sha256(data), path, **LIMITS)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE])
def test_only_a_regular_file_is_read(server: Server, kind: bytes) -> None:
    data = tarball({"fleets/devices.csv": CSV}, kinds={"fleets/link.csv": kind})
    with pytest.raises(DeviceSourceError, match="not a regular file"):
        fetch_artifact_file(server.serve(data), sha256(data), "fleets/link.csv", **LIMITS)


def test_a_file_twice_in_the_archive_is_refused(server: Server) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for text in (CSV, "id\nother\n"):
            info = tarfile.TarInfo("devices.csv")
            info.size = len(text)
            archive.addfile(info, io.BytesIO(text.encode()))
    data = out.getvalue()
    with pytest.raises(DeviceSourceError, match="in the artifact twice"):
        fetch_artifact_file(server.serve(data), sha256(data), "devices.csv", **LIMITS)


@pytest.mark.parametrize("announced", [True, False])
def test_an_oversized_download_is_refused(server: Server, announced: bool) -> None:
    data = tarball({"devices.csv": CSV, "noise.bin": os.urandom(4096)})
    server.announce_length = announced  # without Content-Length, the stream is cut
    with pytest.raises(DeviceSourceError, match="more than the limit of 1000"):
        fetch_artifact_file(server.serve(data), sha256(data), "devices.csv", max_bytes=1000,
                            timeout=10)


def test_an_oversized_member_is_refused(server: Server) -> None:
    data = tarball({"devices.csv": CSV + "".join(f"s-{n},x\n" for n in range(1000))})
    with pytest.raises(DeviceSourceError, match="more than the limit of 4096"):
        fetch_artifact_file(server.serve(data), sha256(data), "devices.csv", **LIMITS,
                            max_file_bytes=4096)


def test_a_gzip_bomb_stops_at_the_unpack_limit(server: Server) -> None:
    data = tarball({"zeros.bin": bytes(1024 * 1024), "devices.csv": CSV})
    assert len(data) < 10_000
    with pytest.raises(DeviceSourceError, match="unpacks to more than its limit"):
        fetch_artifact_file(server.serve(data), sha256(data), "devices.csv", **LIMITS,
                            max_file_bytes=64 * 1024)


def test_not_a_tarball_not_utf8_http_errors_and_redirects(server: Server) -> None:
    junk = b"not gzip at all"
    with pytest.raises(DeviceSourceError, match="not a gzip tarball"):
        fetch_artifact_file(server.serve(junk), sha256(junk), "devices.csv", **LIMITS)
    latin = tarball({"devices.csv": "id\ng\xe4rtner\n".encode("latin-1")})
    with pytest.raises(DeviceSourceError, match="not UTF-8 text"):
        fetch_artifact_file(server.serve(latin, "/l.tar.gz"), sha256(latin), "devices.csv",
                            **LIMITS)
    with pytest.raises(DeviceSourceError, match="HTTP 404"):
        fetch_artifact_file(server.url + "/gone.tar.gz", sha256(junk), "devices.csv", **LIMITS)
    data = tarball({"devices.csv": CSV})
    server.serve(data)
    with pytest.raises(DeviceSourceError, match="HTTP 302"):  # only the URL Flux published
        fetch_artifact_file(server.url + "/redirect", sha256(data), "devices.csv", **LIMITS)


def test_only_http_urls_are_fetched(tmp_path: Any) -> None:
    (tmp_path / "a.tar.gz").write_bytes(tarball({"devices.csv": CSV}))
    with pytest.raises(DeviceSourceError, match="not http or https"):
        fetch_artifact_file(f"file://{tmp_path}/a.tar.gz", "sha256:" + "0" * 64, "devices.csv",
                            **LIMITS)


def test_unreachable_server_is_an_error(server: Server) -> None:
    url = server.url + "/artifact.tar.gz"
    server.httpd.server_close()  # nobody listens any more
    with pytest.raises(DeviceSourceError, match="artifact http://127.0.0.1"):
        fetch_artifact_file(url, "sha256:" + "0" * 64, "devices.csv", max_bytes=1000,
                            timeout=2)


def test_the_cache_avoids_downloading_an_unchanged_artifact(server: Server) -> None:
    cache = ArtifactCache(max_entries=1)
    first = tarball({"devices.csv": CSV})
    second = tarball({"devices.csv": CSV + "sensor-3,rome\n"})
    url = server.serve(first)
    for _ in range(3):
        assert fetch_artifact_file(url, sha256(first), "devices.csv", **LIMITS,
                                   cache=cache) == CSV
    assert server.requests == 1
    server.serve(second)  # a new revision: a new digest
    assert "sensor-3" in fetch_artifact_file(url, sha256(second), "devices.csv", **LIMITS,
                                             cache=cache)
    assert server.requests == 2
    server.serve(first)
    fetch_artifact_file(url, sha256(first), "devices.csv", **LIMITS, cache=cache)
    assert server.requests == 3  # one entry only: the first was evicted


def test_a_mismatch_is_not_cached(server: Server) -> None:
    cache = ArtifactCache()
    data = tarball({"devices.csv": CSV})
    url = server.serve(data)
    for _ in range(2):
        with pytest.raises(DeviceSourceError, match="digest mismatch"):
            fetch_artifact_file(url, "sha256:" + "1" * 64, "devices.csv", **LIMITS, cache=cache)
    assert server.requests == 2


# --- status.artifact -------------------------------------------------------------------------


def flux_object(kind: str = "GitRepository", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": kind,
            "metadata": {"name": "fleet-repo", "namespace": "flux-system", "generation": 2},
            **({"status": status} if status else {})}


READY = [{"type": "Ready", "status": "True", "reason": "Succeeded",
          "message": "stored artifact for revision 'main@sha1:abc'"}]
ARTIFACT = {"url": "http://source-controller.flux-system.svc.cluster.local./gitrepository/"
                   "flux-system/fleet-repo/abc.tar.gz",
            "digest": "sha256:" + "a" * 64, "revision": "main@sha1:abc",
            "path": "gitrepository/flux-system/fleet-repo/abc.tar.gz"}


def test_artifact_of_a_ready_source() -> None:
    found = artifact_of(flux_object(artifact=ARTIFACT, conditions=READY, observedGeneration=2))
    assert found == (ARTIFACT["url"], ARTIFACT["digest"], "main@sha1:abc")
    old = {k: v for k, v in ARTIFACT.items() if k != "digest"} | {"checksum": "b" * 64}
    assert artifact_of(flux_object("OCIRepository", artifact=old, conditions=READY))[1] == \
        "b" * 64


@pytest.mark.parametrize(("status", "expected"), [
    ({}, "GitRepository/fleet-repo has no artifact yet (status.artifact)"),
    ({"conditions": READY}, "has no artifact yet (status.artifact)"),
    ({"artifact": ARTIFACT}, "not ready, no Ready condition"),
    ({"artifact": ARTIFACT, "conditions": [{"type": "Ready", "status": "False",
                                            "reason": "GitOperationFailed",
                                            "message": "auth failed"}]},
     "not ready, Ready=False (GitOperationFailed: auth failed)"),
    ({"artifact": ARTIFACT, "conditions": READY, "observedGeneration": 1},
     "for generation 2 (observed 1): still reconciling"),
    ({"artifact": {"url": "http://x/a.tar.gz"}, "conditions": READY}, "has no digest"),
])
def test_artifact_of_a_source_without_a_usable_artifact(status: dict[str, Any],
                                                        expected: str) -> None:
    with pytest.raises(DeviceSourceError) as error:
        artifact_of(flux_object(**status))
    assert expected in str(error.value)
    assert error.value.field == "sourceRef"


# --- the operator's path: Flux object -> DeviceText -> devices ------------------------------


FLEET = """\
apiVersion: fleetpki.io/v1alpha1
kind: DeviceFleet
metadata:
  name: sensors
spec:
  issuerRef:
    name: issuing
  profileRef:
    name: client
  deviceSource:
    sourceRef:
      kind: GitRepository
      name: fleet-repo
    path: fleets/devices.csv
"""


def test_devices_from_a_flux_artifact_through_the_shared_loader(server: Server) -> None:
    data = tarball({"fleets/devices.csv": CSV + "bad id!,x\n"})
    status = {"artifact": {**ARTIFACT, "url": server.serve(data), "digest": sha256(data)},
              "conditions": READY}
    (item,), parse_problems = parse_documents(FLEET, "DeviceFleet/sensors")
    assert parse_problems == []

    def read(source: DeviceSource) -> list[Any]:
        return [artifact_device_text(flux_object(**status), source, **LIMITS)]

    problems: list[Problem] = []
    device_set = read_fleet_devices(item, problems, read)
    device_set.parse(problems)
    devices, lines, _ = device_set.parsed
    assert [d.id for d in devices] == ["sensor-1", "sensor-2"]
    label = "GitRepository/fleet-repo@main@sha1:abc fleets/devices.csv"
    assert lines["sensor-2"] == (label, 3)
    (problem,) = problems
    assert (problem.file, problem.line, problem.field) == (label, 4, "id")

    status["artifact"]["digest"] = "sha256:" + "0" * 64
    problems = []
    assert read_fleet_devices(item, problems, read).parsed == ((), {}, {})
    (problem,) = problems
    assert problem.field == "spec.deviceSource.sourceRef"
    assert problem.message.startswith(
        "cannot read device source GitRepository/fleet-repo@main@sha1:abc file "
        "'fleets/devices.csv': artifact http://127.0.0.1:")
    assert "digest mismatch" in problem.message and "never zero devices" in problem.message
