"""An in-memory Kubernetes API over real HTTP for fast operator tests.

`KubeEmulator` is a small subclass of kmock's `KubernetesEmulator` (kmock 0.8, pinned in the
`test` extra). kmock serves discovery, lists, watches and plain JSON merges; this subclass
adds what the kopf operator and the `kubernetes` client rely on:

* server-set metadata: `uid`, `resourceVersion` (one counter for the whole "cluster", as etcd's),
  `creationTimestamp`, `generation` (1 on create, +1 when anything outside `metadata` and
  `status` changes); `generateName` (kopf posts its events with it);
* the status subresource, for resources that declare it: writes to the main resource ignore
  `.status` (also on create), writes to `/status` change only `.status`;
* PATCH as JSON merge patch (RFC 7386), JSON patch (RFC 6902; a failed `test` op or a bad path is
  422 Invalid), strategic merge (approximated as merge patch; 415 on custom resources, as a real
  API server does); PUT (replace); server-side apply is 415;
* optimistic concurrency: 409 Conflict when `metadata.resourceVersion` in a PUT or patch is not
  the current one (or DeleteOptions preconditions mismatch); a PUT on a custom resource without
  `metadata.resourceVersion` is 422, as on a real cluster; 409 AlreadyExists on creating an
  existing name; 404 NotFound on a missing object or an unknown resource;
* `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and `fieldSelector` (any
  dotted path, `=`, `==`, `!=`) on lists and watches; lists carry the current resourceVersion;
* watches: ADDED/MODIFIED/DELETED with the object's resourceVersion; `resourceVersion=N`
  resumes after N (410 Gone as an ERROR event if N was compacted away, see `compact`),
  without it every live object comes first as ADDED; `timeoutSeconds` ends the stream;
* deletion with finalizers: DELETE sets `deletionTimestamp` while finalizers remain (MODIFIED);
  the write that removes the last finalizer removes the object (DELETED); no new finalizers on
  an object being deleted (422);
* fault injection: `fail_next` (the next N requests matching a method and a substring of
  "path?query" fail with a status), `add_delay` (matching requests wait before being served),
  `close_watches` (end the open watch streams, as an API server or a load balancer does).

Writes are always served by the emulator (faults come first and leave the state untouched);
kmock's own DSL (`emulator[...] << payload`) still applies to reads and discovery. Objects are
kept in kmock's `emulator.objects` with their history (`emulator.objects[res, ns, name].history`).

Not emulated: schema validation and defaulting, admission, namespace existence and cascading
namespace deletion, owner-reference garbage collection, `limit`/`continue` pagination (lists
return everything), BOOKMARK events, managedFields, `dryRun`, deletecollection.

`RunningEmulator` runs one in a background thread with its own event loop on a free loopback
port; the `kube_emulator` fixture (tests/conftest.py) yields one. Starting kopf against
it (documented here so that the operator tests copy one way of doing it)::

    import asyncio, threading, kopf
    from tests.kube_emulator import wait_for

    registry = kopf.OperatorRegistry()           # or the operator's own registry
    # ... @kopf.on.create("fleetpki.io", "v1alpha1", "devicefleets", registry=registry) ...

    @kopf.on.login(registry=registry)            # kopf connects to the emulator, not ~/.kube
    def login(**_: object) -> kopf.ConnectionInfo:
        return kube_emulator.connection_info()   # kopf.ConnectionInfo(server=url, token=...)

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True            # no CRD/namespace scanning (no such API here)
    settings.watching.server_timeout = 10        # watches end and resume now and then
    settings.networking.error_backoffs = [0.1]   # retry quickly after injected faults
    stop_flag, ready_flag = threading.Event(), threading.Event()

    def run() -> None:
        asyncio.run(kopf.operator(                 # its own loop in its own thread
            registry=registry, settings=settings, standalone=True, clusterwide=False,
            namespaces=[namespace], stop_flag=stop_flag, ready_flag=ready_flag))

    thread = threading.Thread(target=run, name="kopf")
    thread.start()
    try:
        assert ready_flag.wait(10)               # logged in; watches start right after
        wait_for(lambda: kube_emulator.open_watches)  # optional: kopf is watching now
        ...                                      # create objects, poll for their status
    finally:
        stop_flag.set()                          # kopf stops its watchers and returns
        thread.join(10)
        assert not thread.is_alive()

`kopf.run(registry=..., ..., stop_flag=..., ready_flag=...)` as the thread's target works too.
A plain `kopf.OperatorRegistry()` has no login handlers at all (kopf's default registry, a
`SmartOperatorRegistry`, has the fallback ones): give it one, either the one above or kopf's
kubeconfig login with the environment pointing at the emulator::

    kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig))
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import datetime
import functools
import gzip
import importlib.resources
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch  # a dependency of kmock
import jsonpointer
import kmock
import yaml

T = TypeVar("T")

CRD_DIR = Path(__file__).resolve().parent.parent / "crds"
VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}

#: Registered on every emulator besides the bundled built-in resources (kmock's K3s snapshot,
#: which has namespaces, configmaps, secrets, v1 events and events.k8s.io/v1 events):
#: (group/version/plural, kind, namespaced, subresources).
EXTRA_RESOURCES: tuple[tuple[str, str, bool, tuple[str, ...]], ...] = (
    ("kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", False, ()),
    ("kopf.dev/v1/kopfpeerings", "KopfPeering", True, ()),
    ("source.toolkit.fluxcd.io/v1/gitrepositories", "GitRepository", True, ("status",)),
    ("source.toolkit.fluxcd.io/v1beta2/ocirepositories", "OCIRepository", True, ("status",)),
)
BUILTIN_RESOURCES = ("v1/namespaces", "v1/configmaps", "v1/secrets", "v1/events",
                     "events.k8s.io/v1/events")

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def crd_resources(directory: Path = CRD_DIR) -> list[tuple[str, kmock.ResourceInfo]]:
    """The resources of the CustomResourceDefinitions in `directory` (each served version)."""
    found: list[tuple[str, kmock.ResourceInfo]] = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec, names = doc["spec"], doc["spec"]["names"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                found.append((f"{spec['group']}/{version['name']}/{names['plural']}",
                              kmock.ResourceInfo(
                                  namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                                  kind=names["kind"], singular=names.get("singular"),
                                  verbs=VERBS, shortnames=names.get("shortNames", ()),
                                  categories=names.get("categories", ()),
                                  subresources=version.get("subresources", {}).keys())))
    return found


@functools.cache
def _bundled_resources() -> bytes:
    bundle = importlib.resources.files("kmock._internal").joinpath("resources.json.gz")
    return gzip.decompress(bundle.read_bytes())


class ApiError(kmock.KubernetesError):
    """An error answered as a Kubernetes `Status` (kmock renders `KubernetesError`s)."""


def _error(status: int, reason: str, message: str, **details: Any) -> ApiError:
    # Never empty: kmock puts its traceback in the place of empty details.
    details.setdefault("causes", [{"reason": reason, "message": message}])
    return ApiError(status=status, reason=reason, message=message, details=details)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, `None` removes a key, everything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _split_terms(selector: str) -> list[str]:
    """Split a selector on the commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


_LABEL_TERM = re.compile(r"^(?P<neg>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*(?:"
                         r"(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
                         r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?$")


def label_selector(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate on objects for a `labelSelector` query parameter (400 when malformed)."""
    terms: list[tuple[str, str, set[str]]] = []  # (key, operator, values)
    for term in _split_terms(selector or ""):
        match = _LABEL_TERM.match(term)
        if match is None or (match["neg"] and (match["op"] or match["setop"])):
            raise _error(400, "BadRequest", f"unable to parse requirement: {term!r}")
        values = {v.strip() for v in (match["values"] or "").split(",") if v.strip()}
        operator = "!exists" if match["neg"] else match["setop"] or match["op"] or "exists"
        terms.append((match["key"], "in" if operator in ("=", "==") else
                      "notin" if operator == "!=" else operator,
                      values if match["setop"] else {match["value"] or ""}))

    def check(obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(key in labels if operator == "exists" else
                   key not in labels if operator == "!exists" else
                   labels.get(key) in values if operator == "in" else
                   labels.get(key) not in values
                   for key, operator, values in terms)
    return check


def field_selector(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate for a `fieldSelector` (`metadata.name=x`, `involvedObject.kind!=Pod`, ...)."""
    terms: list[tuple[str, bool, str]] = []  # (dotted path, equal?, value)
    for term in _split_terms(selector or ""):
        match = re.match(r"^([A-Za-z0-9._-]+)\s*(==|=|!=)\s*(.*)$", term)
        if match is None:
            raise _error(400, "BadRequest", f"invalid field selector: {term!r}")
        terms.append((match[1], match[2] != "!=", match[3]))

    def lookup(obj: Mapping[str, Any], path: str) -> str:
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        if isinstance(current, bool):
            return str(current).lower()
        return "" if current is None else str(current)

    def check(obj: Mapping[str, Any]) -> bool:
        return all((lookup(obj, path) == value) == equal for path, equal, value in terms)
    return check


_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces((?:/[^/]+(?:/status|/finalize)?)?)/?")
_NAMESPACES_ALIAS = "kube-emulator-namespaces"


@dataclass
class Fault:
    """`fail_next`'s record: `remaining` requests still to fail, `hits` failed so far."""

    method: str | None
    path: str
    status: int
    remaining: int | None
    reason: str
    message: str
    hits: int = 0

    def matches(self, method: str, path_qs: str) -> bool:
        return (self.method is None or self.method.upper() == method.upper()) \
            and self.path in path_qs


@dataclass
class Delay:
    """`add_delay`'s record (`remaining=None`: until removed with `remove_delay`)."""

    method: str | None
    path: str
    seconds: float
    remaining: int | None
    hits: int = 0

    def matches(self, method: str, path_qs: str) -> bool:
        return (self.method is None or self.method.upper() == method.upper()) \
            and self.path in path_qs


@dataclass(frozen=True)
class _Event:
    rv: int
    resource: kmock.resource
    namespace: str | None
    name: str
    event: dict[str, Any]


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with Kubernetes' server-side semantics (see the module docstring).

    Construct it in the event loop that serves it (kmock creates asyncio primitives).
    """

    _rv: int = attrs.field(default=0, init=False)
    _log: list[_Event] = attrs.field(factory=list, init=False)
    _log_rvs: list[int] = attrs.field(factory=list, init=False)
    _compacted: int = attrs.field(default=0, init=False)
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _watch_epoch: int = attrs.field(default=0, init=False)
    _custom: set[kmock.resource] = attrs.field(factory=set, init=False)
    _faults: list[Fault] = attrs.field(factory=list, init=False)
    _delays: list[Delay] = attrs.field(factory=list, init=False)
    _hooks_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    open_watches: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_data(_bundled_resources())  # kmock's load_bundled(), warning-free
        for key, info in crd_resources():
            self.register(key, info, custom=True)
        for key, kind, namespaced, subresources in EXTRA_RESOURCES:
            self.register(key, kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=VERBS, subresources=subresources,
                singular=kind.lower()), custom=True)
        for key in BUILTIN_RESOURCES:
            assert key in self.resources, f"kmock's bundled resources lack {key}"

    def register(self, key: str, info: kmock.ResourceInfo, *, custom: bool = True) -> None:
        """Serve one more resource ("group/version/plural"); `custom` as a CRD's resource."""
        self.resources[key] = info
        if custom:
            self._custom.add(kmock.resource(key))

    # Fault injection (thread-safe: the fixture calls these from the test's thread).

    def fail_next(self, method: str | None, path: str, status: int, count: int | None = 1, *,
                  reason: str = "InjectedFault", message: str = "injected by the test") -> Fault:
        """The next `count` requests (None: all until `clear_faults`) whose method is `method`
        (None: any) and whose "path?query" contains `path` fail with `status`, changing nothing."""
        fault = Fault(method, path, status, count, reason, message)
        with self._hooks_lock:
            self._faults.append(fault)
        return fault

    def add_delay(self, method: str | None, path: str, seconds: float,
                  count: int | None = None) -> Delay:
        """Matching requests (as in `fail_next`) wait `seconds` before being served."""
        delay = Delay(method, path, seconds, count)
        with self._hooks_lock:
            self._delays.append(delay)
        return delay

    def remove_delay(self, delay: Delay) -> None:
        with self._hooks_lock:
            if delay in self._delays:
                self._delays.remove(delay)

    def clear_faults(self) -> None:
        with self._hooks_lock:
            self._faults.clear()
            self._delays.clear()

    async def close_watches(self) -> None:
        """End every open watch stream (cleanly, as on a server-side timeout)."""
        async with self._changed:
            self._watch_epoch += 1
            self._changed.notify_all()

    async def compact(self) -> None:
        """Forget the change history: watches resuming from an older resourceVersion get
        410 Gone (as after etcd's compaction), and must list again."""
        async with self._changed:
            self._compacted = self._rv
            self._log.clear()
            self._log_rvs.clear()

    def _take_hooks(self, request: kmock.Request) -> tuple[Fault | None, float]:
        method, path_qs = request.method.value, str(request.url.raw_path_qs)
        with self._hooks_lock:
            fault = next((f for f in self._faults if f.matches(method, path_qs)), None)
            if fault is not None:
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
            seconds = 0.0
            for delay in [d for d in self._delays if d.matches(method, path_qs)]:
                seconds += delay.seconds
                delay.hits += 1
                if delay.remaining is not None:
                    delay.remaining -= 1
                    if delay.remaining <= 0:
                        self._delays.remove(delay)
        return fault, seconds

    # Request handling.

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock 0.8 reads /api/v1/namespaces/{name} as a namespace prefix without a resource
        # (and fails on /api/v1/namespaces): it parses them under an alias, _handle restores them.
        match = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is not None:
            alias = f"/api/v1/{_NAMESPACES_ALIAS}{match[1] or ''}"
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_path(alias))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural == _NAMESPACES_ALIAS:
            path = request.url.path.replace(_NAMESPACES_ALIAS, "namespaces", 1)
            fixed = attrs.evolve(request, resource=kmock.resource("", "v1", "namespaces"),
                                 url=request.url.with_path(path).with_query(request.url.query))
            # kmock's views select requests by identity among the logged ones: log the fixed one.
            index = next(i for i, logged in enumerate(self._requests) if logged is request)
            self._requests[index] = request = fixed
        fault, seconds = self._take_hooks(request)
        if seconds:
            await asyncio.sleep(seconds)
        if fault is not None:
            raise _error(fault.status, fault.reason, fault.message)
        if (request.resource is not None and request.resource.plural
                and request.method.value in ("POST", "PUT", "PATCH", "DELETE")):
            status, payload = await self._write(request)
            return aiohttp.web.json_response(payload, status=status)
        # kmock's KubernetesEmulator._handle would store the writes its own way: skip it.
        return await kmock.RawHandler._handle(self, request)

    def _info(self, request: kmock.Request) -> kmock.ResourceInfo:
        resource = request.resource
        if resource is None or resource not in self.resources:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        info = self.resources[resource]
        if bool(info.namespaced) != (request.namespace is not None) and request.name is not None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return info

    def _live(self, key: tuple[kmock.resource, str | None, str]) -> dict[str, Any] | None:
        if key in self.objects and not self.objects[key].deleted:
            return copy.deepcopy(self.objects[key].raw)
        return None

    async def _store(self, key: tuple[kmock.resource, str | None, str], obj: dict[str, Any],
                     event: str) -> None:
        """Record a new state (or a deletion) and wake the watches; the caller bumped `_rv`."""
        if event == "DELETED":
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].create(copy.deepcopy(obj))
        else:
            self.objects[key] = copy.deepcopy(obj)
        entry = _Event(self._rv, key[0], key[1], key[2],
                       {"type": event, "object": copy.deepcopy(obj)})
        async with self._changed:
            self._log.append(entry)
            self._log_rvs.append(entry.rv)
            self._changed.notify_all()

    async def _write(self, request: kmock.Request) -> tuple[int, dict[str, Any]]:
        info = self._info(request)
        async with self._lock:
            if request.method == kmock.method.POST and request.name is None:
                return 201, await self._create(request, info, request.data)
            if request.name is None:
                raise _error(405, "MethodNotAllowed", "collection writes are not emulated")
            if request.subresource not in (None, "status") or (
                    request.subresource == "status" and "status" not in info.subresources):
                raise _error(404, "NotFound", f"no subresource {request.subresource!r}")
            if request.method == kmock.method.DELETE:
                return 200, await self._delete(request, info)
            return 200, await self._update(request, info)

    async def _create(self, request: kmock.Request, info: kmock.ResourceInfo,
                      body: Any) -> dict[str, Any]:
        assert request.resource is not None
        if bool(info.namespaced) != (request.namespace is not None):
            raise _error(404, "NotFound", "the server could not find the requested resource")
        if not isinstance(body, dict):
            raise _error(400, "BadRequest", "the body is not a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace") not in (None, request.namespace):
            raise _error(400, "BadRequest", "the namespace of the provided object does not "
                                            "match the namespace sent on the request")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _error(422, "Invalid", "metadata.name: Required value: name or "
                                             "generateName is required")
            suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits)
                             for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        key = (request.resource, request.namespace, meta["name"])
        if self._live(key) is not None:
            raise _error(409, "AlreadyExists",
                         f'{request.resource.plural} "{meta["name"]}" already exists',
                         name=meta["name"], group=request.resource.group,
                         kind=request.resource.plural)
        for server_set in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                           "deletionGracePeriodSeconds", "generation", "managedFields"):
            meta.pop(server_set, None)
        if request.namespace is not None:
            meta["namespace"] = request.namespace
        if "status" in info.subresources:
            obj.pop("status", None)
        group, version = request.resource.group, request.resource.version
        obj["apiVersion"] = f"{group}/{version}" if group else version
        obj["kind"] = info.kind or obj.get("kind")
        self._rv += 1
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(self._rv),
                    creationTimestamp=_now(), generation=1)
        await self._store(key, obj, "ADDED")
        return obj

    def _patched(self, request: kmock.Request, current: dict[str, Any]) -> Any:
        headers = {key.lower(): value for key, value in request.headers.items()}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == kmock.method.PUT:
            return request.data
        if content_type == JSON_PATCH:
            if not isinstance(request.data, list):
                raise _error(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                return jsonpatch.apply_patch(current, request.data)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise _error(422, "Invalid", f"the server rejected our request due to an error "
                                             f"in our request: {exc}") from exc
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise _error(422, "Invalid", f"the JSON patch cannot be applied: {exc}") from exc
        if content_type == STRATEGIC_MERGE_PATCH and request.resource in self._custom:
            raise _error(415, "UnsupportedMediaType", "strategic merge patch is not supported "
                                                      "for custom resources")
        if content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
            if not isinstance(request.data, dict):
                raise _error(400, "BadRequest", "a merge patch must be a JSON object")
            return merge_patch(current, request.data)
        raise _error(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")

    def _existing(self, request: kmock.Request) -> tuple[Any, dict[str, Any]]:
        """(key, live object) the request names; 404 when there is none."""
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        current = self._live(key)
        if current is None:
            raise self._not_found(request)
        return key, current

    async def _update(self, request: kmock.Request, info: kmock.ResourceInfo) -> dict[str, Any]:
        key, current = self._existing(request)
        new = copy.deepcopy(self._patched(request, current))  # shares nothing with current
        if not isinstance(new, dict):
            raise _error(400, "BadRequest", "the result is not a JSON object")
        new_meta = new.setdefault("metadata", {})
        if not isinstance(new_meta, dict):
            raise _error(400, "BadRequest", "metadata is not a JSON object")
        meta = current["metadata"]
        if new_meta.get("name", meta["name"]) != meta["name"]:
            raise _error(400, "BadRequest", "the name of the object does not match the URL")
        sent_rv = new_meta.get("resourceVersion")
        if request.method == kmock.method.PUT and not sent_rv and request.resource in self._custom:
            raise _error(422, "Invalid", "metadata.resourceVersion: Invalid value: 0x0: "
                                         "must be specified for an update")
        if sent_rv is not None and sent_rv != meta["resourceVersion"]:
            raise _error(409, "Conflict", f'Operation cannot be fulfilled on '
                         f'{request.resource.plural} "{request.name}": the object has been '
                         f'modified; please apply your changes to the latest version and try again',
                         name=request.name, group=request.resource.group,
                         kind=request.resource.plural)
        if "status" in info.subresources:
            if request.subresource == "status":  # only .status changes
                status, new = new.get("status"), copy.deepcopy(current)
                new.pop("status", None)
                if status is not None:
                    new["status"] = status
            else:  # .status is kept as is
                new.pop("status", None)
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
        new_meta = new.setdefault("metadata", {})
        for server_set in ("uid", "creationTimestamp", "deletionTimestamp",
                           "deletionGracePeriodSeconds", "generation", "name", "namespace",
                           "resourceVersion"):
            new_meta.pop(server_set, None)
            if server_set in meta:
                new_meta[server_set] = meta[server_set]
        new["apiVersion"], new["kind"] = current["apiVersion"], current.get("kind")
        if new == current:
            return current  # a no-op write changes nothing, no resourceVersion, no event
        finalizers = set(new_meta.get("finalizers") or ())
        if meta.get("deletionTimestamp") and finalizers - set(meta.get("finalizers") or ()):
            raise _error(422, "Invalid", "metadata.finalizers: Forbidden: no new finalizers can "
                                         "be added if the object is being deleted")

        def spec(obj: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in obj.items() if k not in ("metadata", "status")}
        if spec(new) != spec(current):
            new_meta["generation"] = meta.get("generation", 1) + 1
        self._rv += 1
        new_meta["resourceVersion"] = str(self._rv)
        released = bool(meta.get("deletionTimestamp")) and not finalizers
        await self._store(key, new, "DELETED" if released else "MODIFIED")
        return new

    async def _delete(self, request: kmock.Request, info: kmock.ResourceInfo) -> dict[str, Any]:
        key, current = self._existing(request)
        meta = current["metadata"]
        options = request.data if isinstance(request.data, dict) else {}
        preconditions = options.get("preconditions") or {}
        for field_name in ("uid", "resourceVersion"):
            wanted = preconditions.get(field_name)
            if wanted is not None and wanted != meta.get(field_name):
                raise _error(409, "Conflict", f"Precondition failed: {field_name} in "
                             f"precondition: {wanted}, {field_name} in object meta: "
                             f"{meta.get(field_name)}", name=request.name)
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["deletionGracePeriodSeconds"] = 0
                self._rv += 1
                meta["resourceVersion"] = str(self._rv)
                await self._store(key, current, "MODIFIED")
            return current
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        await self._store(key, current, "DELETED")
        if request.resource.group == "":  # core objects answer with a Status
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": request.name, "kind": request.resource.plural,
                                "uid": meta["uid"]}}
        return current

    def _not_found(self, request: kmock.Request) -> ApiError:
        assert request.resource is not None
        group = f".{request.resource.group}" if request.resource.group else ""
        return _error(404, "NotFound", f'{request.resource.plural}{group} "{request.name}" '
                      f"not found", name=request.name, group=request.resource.group,
                      kind=request.resource.plural)

    # Reads (kmock's fallbacks call these by name).

    def _selected(self, request: kmock.Request) -> Callable[[Mapping[str, Any]], bool]:
        labels = label_selector(request.params.get("labelSelector"))
        fields = field_selector(request.params.get("fieldSelector"))
        return lambda obj: labels(obj) and fields(obj)

    def _matches(self, request: kmock.Request, resource: kmock.resource,
                 namespace: str | None, name: str) -> bool:
        return (resource == request.resource
                and (request.namespace is None or namespace == request.namespace)
                and (request.name is None or name == request.name))

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        info = self._info(request)
        assert request.resource is not None
        selected = self._selected(request)
        items = [copy.deepcopy(obj.raw) for (res, ns, name), obj in self.objects.items()
                 if not obj.deleted and self._matches(request, res, ns, name)]
        items = sorted((obj for obj in items if selected(obj)),
                       key=lambda obj: (obj["metadata"].get("namespace") or "",
                                        obj["metadata"]["name"]))
        group, version = request.resource.group, request.resource.version
        return {"apiVersion": f"{group}/{version}" if group else version,
                "kind": f"{info.kind}List", "metadata": {"resourceVersion": str(self._rv)},
                "items": items}

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        info = self._info(request)
        assert request.resource is not None and request.name is not None
        if request.subresource not in (None, "status") or (
                request.subresource == "status" and "status" not in info.subresources):
            raise _error(404, "NotFound", f"no subresource {request.subresource!r}")
        obj = self._live((request.resource, request.namespace, request.name))
        if obj is None:
            raise self._not_found(request)
        return obj

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        self._info(request)
        selected = self._selected(request)
        timeout = request.params.get("timeoutSeconds")
        deadline = time.monotonic() + float(timeout) if timeout else None
        since = request.params.get("resourceVersion")
        initial: list[dict[str, Any]] = []
        async with self._changed:
            epoch = self._watch_epoch
            if since in (None, "", "0"):
                initial = [{"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                           for (res, ns, name), obj in self.objects.items()
                           if not obj.deleted and self._matches(request, res, ns, name)]
                cursor = len(self._log)
            else:
                try:
                    since_rv = int(since)
                except ValueError:
                    raise _error(400, "BadRequest", f"invalid resourceVersion {since!r}") from None
                cursor = bisect.bisect_right(self._log_rvs, since_rv)
                if since_rv < self._compacted:
                    initial = [{"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Expired", "code": 410,
                        "message": f"too old resource version: {since_rv} ({self._compacted})"}}]
                    epoch = -1  # end after the error
        yield b""  # the headers go now: the client sees a live stream even if nothing happens
        self.open_watches += 1
        try:
            for event in initial:
                if event["type"] == "ERROR" or selected(event["object"]):
                    yield event
            while epoch == self._watch_epoch:
                while cursor < len(self._log):
                    entry = self._log[cursor]
                    cursor += 1
                    if self._matches(request, entry.resource, entry.namespace, entry.name) \
                            and selected(entry.event["object"]):
                        yield entry.event
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                async with self._changed:
                    if cursor >= len(self._log) and epoch == self._watch_epoch:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), remaining)
        finally:
            self.open_watches -= 1


@dataclass
class RunningEmulator:
    """A `KubeEmulator` served on a free loopback port by a background thread with its own
    event loop. A context manager; the `kube_emulator` fixture is one of these.

    `url`, `token` and `kubeconfig` (a file in `directory` with one context, `emulator`, whose
    user `emulator` authenticates with `token`) are set once entered. The methods are called
    from the test's thread; they run in the emulator's loop.
    """

    directory: Path
    startup_timeout: float = 10.0
    token: str = "emulator-token"
    url: str = ""
    kubeconfig: Path = field(default_factory=Path)
    emulator: KubeEmulator | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stopping: asyncio.Event | None = None
    _failure: BaseException | None = None
    _clients: list[Any] = field(default_factory=list)

    def __enter__(self) -> RunningEmulator:
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,),
                                        name="kube-emulator", daemon=True)
        self._thread.start()
        if not started.wait(self.startup_timeout) or self._failure is not None:
            self._stop()
            raise RuntimeError("the Kubernetes emulator did not start") from self._failure
        self.directory.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self.directory / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": self.token}}],
            "contexts": [{"name": "emulator", "context": {
                "cluster": "emulator", "user": "emulator", "namespace": "default"}}],
            "current-context": "emulator",
        }), encoding="utf-8")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def _serve(self, started: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            emulator = KubeEmulator()
            # handler_cancellation: a handler (a watch) ends when its client disconnects.
            runner = aiohttp.web.ServerRunner(
                aiohttp.web.Server(emulator, handler_cancellation=True), shutdown_timeout=2)
            async with emulator:
                await runner.setup()
                try:
                    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
                    await site.start()
                    port = runner.addresses[0][1]
                    self.url = f"http://127.0.0.1:{port}"
                    self.emulator = emulator
                    started.set()
                    await self._stopping.wait()
                    await emulator.close_watches()
                finally:
                    await runner.cleanup()
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by __enter__ / _stop
            self._failure = exc
            started.set()

    def _stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(15)
            assert not self._thread.is_alive(), "the Kubernetes emulator did not stop"
        if self._failure is not None:
            raise RuntimeError("the Kubernetes emulator failed") from self._failure

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run a coroutine in the emulator's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def kube(self) -> KubeEmulator:
        assert self.emulator is not None, "the emulator is not running"
        return self.emulator

    # Clients.

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` for the emulator (closed on teardown)."""
        from kubernetes import config
        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self._clients.append(api)
        return api

    def connection_info(self) -> Any:
        """For a kopf `@kopf.on.login` handler: `kopf.ConnectionInfo` to the emulator."""
        import kopf
        return kopf.ConnectionInfo(server=self.url, scheme="Bearer", token=self.token,
                                   default_namespace="default")

    # Direct access to the state (no HTTP, no faults; watches see the changes).

    def _resource_of(self, api_version: str, kind: str) -> kmock.resource:
        group, _, version = api_version.rpartition("/")
        resources = self.kube.resources
        for resource in resources:
            if (resource.group, resource.version, resources[resource].kind) \
                    == (group, version, kind):
                return kmock.resource(resource)
        raise KeyError(f"no resource for {api_version} {kind}")

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create `obj` (with apiVersion, kind, metadata.name and, if namespaced, namespace)
        as the API would: server-set metadata, watch event. Returns the stored object."""
        resource = self._resource_of(obj["apiVersion"], obj["kind"])
        request = kmock.Request(method="POST", resource=resource,
                                namespace=obj.get("metadata", {}).get("namespace"))
        info = self.kube.resources[resource]

        async def create() -> dict[str, Any]:
            async with self.kube._lock:
                return await self.kube._create(request, info, dict(obj))
        return self.call(create())

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object ("fleetpki.io/v1alpha1/devicefleets", "ns", "name"), or None."""
        key = (kmock.resource(resource), namespace, name)

        async def get() -> dict[str, Any] | None:
            return self.kube._live(key)
        return self.call(get())

    def fail_next(self, method: str | None, path: str, status: int, count: int | None = 1,
                  **kwargs: Any) -> Fault:
        """See `KubeEmulator.fail_next`."""
        return self.kube.fail_next(method, path, status, count, **kwargs)

    def add_delay(self, method: str | None, path: str, seconds: float,
                  count: int | None = None) -> Delay:
        """See `KubeEmulator.add_delay`."""
        return self.kube.add_delay(method, path, seconds, count)

    def remove_delay(self, delay: Delay) -> None:
        self.kube.remove_delay(delay)

    def clear_faults(self) -> None:
        self.kube.clear_faults()

    def close_watches(self) -> None:
        """End every open watch stream now."""
        self.call(self.kube.close_watches())

    def compact(self) -> None:
        """See `KubeEmulator.compact`: resuming old watches gets 410 Gone."""
        self.call(self.kube.compact())

    @property
    def open_watches(self) -> int:
        """How many watch streams are open now (kopf's ready_flag is set before its watches
        start: `wait_for(lambda: kube_emulator.open_watches)` to be sure kopf is watching)."""
        return self.kube.open_watches

    def requests(self) -> list[kmock.Request]:
        """The requests served so far (kmock's log), oldest first."""
        return list(self.kube)


def wait_for(predicate: Callable[[], T], timeout: float = 10, interval: float = 0.02) -> T:
    """Poll until `predicate()` is truthy; return it (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


__all__ = ["Delay", "Fault", "KubeEmulator", "RunningEmulator", "crd_resources",
           "field_selector", "label_selector", "merge_patch", "wait_for"]
