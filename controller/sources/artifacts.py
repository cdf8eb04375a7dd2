"""A device file from a Flux source artifact (`deviceSource.sourceRef`, Kubernetes mode).

Flux's source-controller publishes a GitRepository's or OCIRepository's content as a gzip
tarball at `status.artifact.url` (plain HTTP inside the cluster) with `status.artifact.digest`
(`sha256:<hex>`; older APIs had `checksum`, the bare SHA-256 hex). The download is checked
against that digest before anything in it is read, so what is applied is exactly the revision
Flux reports, and every read is bounded (bytes, time, member size).

Synchronous on purpose: the operator calls it from a worker thread. urllib (stdlib) is enough
for one GET with a timeout and no redirects; aiohttp would need an event loop in that thread.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import posixpath
import re
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from controller.api.devices import DeviceSourceError, DeviceText
from controller.api.resources import DeviceSource

ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}  # name -> hex length
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
UNPACK_FACTOR = 4  # the archive may unpack to 4 times the file limit in all (gzip bombs)
CHUNK = 64 * 1024
_HEX = re.compile(r"^[0-9a-f]+$")


class ArtifactCache:
    """In-memory cache of downloaded artifacts by digest (a digest names the content), so an
    unchanged artifact is not downloaded again on every reconcile. Thread-safe, least recently
    used first out. Only verified bytes go in."""

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._entries.get(digest)
            if data is not None:
                self._entries.move_to_end(digest)
            return data

    def put(self, digest: str, data: bytes) -> None:
        with self._lock:
            self._entries[digest] = data
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def parse_digest(digest: str) -> tuple[str, str]:
    """(algorithm, lower-case hex) of `sha256:<hex>` (or sha384/sha512); a bare 64-digit hex
    is Flux's older `checksum` (SHA-256). Other algorithms are refused."""
    algorithm, _, value = digest.strip().rpartition(":")
    algorithm = algorithm.lower() or "sha256"
    value = value.lower()
    if algorithm not in ALGORITHMS:
        raise DeviceSourceError(f"artifact digest algorithm {algorithm!r} is not supported "
                                f"(supported: {', '.join(ALGORITHMS)})", field="sourceRef")
    if len(value) != ALGORITHMS[algorithm] or not _HEX.match(value):
        raise DeviceSourceError(f"artifact digest {digest!r} is not a {algorithm} digest",
                                field="sourceRef")
    return algorithm, value


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Only the URL status.artifact names is fetched: a redirect is an error."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def download(url: str, digest: str, *, max_bytes: int, timeout: float) -> bytes:
    """The bytes at `url` (http or https), at most `max_bytes`, within `timeout` seconds in
    all, and matching `digest`; DeviceSourceError otherwise."""
    algorithm, expected = parse_digest(digest)
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise DeviceSourceError(f"artifact URL {url!r} is not http or https", field="sourceRef")
    deadline = time.monotonic() + timeout
    hasher = hashlib.new(algorithm)
    body = bytearray()
    try:
        with _OPENER.open(urllib.request.Request(url), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise DeviceSourceError(f"artifact {url} is {int(length)} bytes, more than the "
                                        f"limit of {max_bytes}", field="sourceRef")
            while chunk := response.read(CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise DeviceSourceError(f"artifact {url} is more than the limit of "
                                            f"{max_bytes} bytes", field="sourceRef")
                if time.monotonic() > deadline:
                    raise DeviceSourceError(f"artifact {url}: download took more than "
                                            f"{timeout:g} s", field="sourceRef")
                hasher.update(chunk)
    except urllib.error.HTTPError as exc:
        raise DeviceSourceError(f"artifact {url}: HTTP {exc.code} {exc.reason}",
                                field="sourceRef") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DeviceSourceError(f"artifact {url}: {reason}", field="sourceRef") from None
    got = hasher.hexdigest()
    if got != expected:
        raise DeviceSourceError(f"artifact {url}: digest mismatch: expected "
                                f"{algorithm}:{expected}, got {algorithm}:{got}",
                                field="sourceRef")
    return bytes(body)


def _member_name(name: str) -> str | None:
    """A member's name as a relative path (`./a/b` -> `a/b`); None if it could leave the
    directory it is unpacked into (absolute, `..`, a drive or backslash trickery)."""
    if name.startswith(("/", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return None
    if ".." in name.split("/"):
        return None
    normal = posixpath.normpath(name)
    return "" if normal == "." else normal


class _Bounded(io.RawIOBase):
    """A reader that fails once more than `limit` bytes were read from `inner`."""

    def __init__(self, inner: gzip.GzipFile, limit: int) -> None:
        self.inner = inner
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(min(len(buffer), self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise DeviceSourceError("artifact unpacks to more than its limit (4 times the "
                                    "file limit)", field="sourceRef")
        buffer[:len(data)] = data
        return len(data)


def read_tar_member(data: bytes, path: str, *, max_file_bytes: int) -> str:
    """The UTF-8 text of regular file `path` in gzip tarball `data`. Every member name is
    checked (an unsafe one refuses the whole archive) and `path` must appear exactly once."""
    wanted = _member_name(path)
    if not wanted:
        raise DeviceSourceError(f"path {path!r} must be relative and stay inside the artifact",
                                field="path")
    found: bytes | None = None
    stream = _Bounded(gzip.GzipFile(fileobj=io.BytesIO(data)), max_file_bytes * UNPACK_FACTOR)
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as archive:
            for member in archive:
                name = _member_name(member.name)
                if name is None:
                    raise DeviceSourceError(f"artifact has an unsafe member name "
                                            f"{member.name!r}: refused", field="sourceRef")
                if name != wanted:
                    continue
                if found is not None:
                    raise DeviceSourceError(f"{path!r} is in the artifact twice", field="path")
                if not member.isreg():
                    raise DeviceSourceError(f"{path!r} in the artifact is not a regular file",
                                            field="path")
                if member.size > max_file_bytes:
                    raise DeviceSourceError(f"{path!r} in the artifact is {member.size} bytes, "
                                            f"more than the limit of {max_file_bytes}",
                                            field="path")
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file
                found = extracted.read()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DeviceSourceError(f"artifact is not a gzip tarball: {exc}",
                                field="sourceRef") from None
    if found is None:
        raise DeviceSourceError(f"no file {path!r} in the artifact", field="path")
    try:
        return found.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DeviceSourceError(f"{path!r} in the artifact is not UTF-8 text: {exc}",
                                field="path") from None


def fetch_artifact_file(
    url: str, digest: str, path: str, *, max_bytes: int, timeout: float,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, cache: ArtifactCache | None = None,
) -> str:
    """The text of `path` inside the Flux artifact at `url`, whose bytes must match `digest`.

    At most `max_bytes` are downloaded, within `timeout` seconds; the file itself may be at
    most `max_file_bytes`. With a `cache`, an artifact already fetched (same digest) is not
    downloaded again. Every failure is a DeviceSourceError saying what and where.
    """
    algorithm, value = parse_digest(digest)
    key = f"{algorithm}:{value}"
    data = cache.get(key) if cache is not None else None
    if data is None:
        data = download(url, digest, max_bytes=max_bytes, timeout=timeout)
        if cache is not None:
            cache.put(key, data)
    return read_tar_member(data, path, max_file_bytes=max_file_bytes)


def _ready(status: Mapping[str, Any]) -> tuple[bool, str]:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            state = condition.get("status")
            detail = ": ".join(str(condition[k]) for k in ("reason", "message")
                               if condition.get(k))
            return state == "True", f"Ready={state}" + (f" ({detail})" if detail else "")
    return False, "no Ready condition"


def artifact_of(flux_object: Mapping[str, Any]) -> tuple[str, str, str]:
    """(url, digest, revision) of a GitRepository's or OCIRepository's `status.artifact`;
    DeviceSourceError when it has none yet or is not Ready (a stale generation counts as not
    ready: the artifact may not be the declared source yet)."""
    metadata = flux_object.get("metadata") or {}
    ref = f"{flux_object.get('kind', 'source')}/{metadata.get('name', '?')}"
    status = flux_object.get("status") or {}
    artifact = status.get("artifact") if isinstance(status, Mapping) else None
    if not isinstance(artifact, Mapping) or not artifact.get("url"):
        raise DeviceSourceError(f"{ref} has no artifact yet (status.artifact): is Flux's "
                                "source-controller running and the source reachable?",
                                field="sourceRef", source=ref)
    ready, why = _ready(status)
    if not ready:
        raise DeviceSourceError(f"{ref} has no artifact yet (status.artifact) for its "
                                f"current spec: not ready, {why}", field="sourceRef", source=ref)
    generation, observed = metadata.get("generation"), status.get("observedGeneration")
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        raise DeviceSourceError(f"{ref} has no artifact yet (status.artifact) for generation "
                                f"{generation} (observed {observed}): still reconciling",
                                field="sourceRef", source=ref)
    digest = artifact.get("digest") or artifact.get("checksum")
    if not isinstance(digest, str) or not digest:
        raise DeviceSourceError(f"{ref}: status.artifact has no digest (nor checksum)",
                                field="sourceRef", source=ref)
    return str(artifact["url"]), digest, str(artifact.get("revision") or "")


def artifact_device_text(
    flux_object: Mapping[str, Any], source: DeviceSource, *, max_bytes: int, timeout: float,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, cache: ArtifactCache | None = None,
) -> DeviceText:
    """The operator's part for `deviceSource.sourceRef`: `source.path` in the artifact of
    `flux_object` (the GitRepository/OCIRepository as the Kubernetes API returns it),
    labelled `Kind/name@revision path` for problems."""
    assert source.path is not None and source.sourceRef is not None
    url, digest, revision = artifact_of(flux_object)
    ref = f"{source.sourceRef.kind}/{source.sourceRef.name}"
    try:
        text = fetch_artifact_file(url, digest, source.path, max_bytes=max_bytes,
                                   timeout=timeout, max_file_bytes=max_file_bytes, cache=cache)
    except DeviceSourceError as exc:
        exc.source = exc.source or f"{ref}@{revision or digest} file {source.path!r}"
        raise
    return DeviceText(f"{ref}@{revision or digest} {source.path}", text,
                      source.resolved_format())
