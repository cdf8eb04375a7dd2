"""kmock's KubernetesEmulator over real HTTP in a background thread, for synchronous clients.

kmock 0.8 serves from an asyncio loop (its pytest fixture is async); the `kubernetes` client is
synchronous, so `EmulatedCluster` runs the emulator and its aiohttp server in a thread with its
own event loop and hands out `CoreV1Api` clients configured for its URL.

What kmock 0.8 lacks and `LabelledEmulator` adds:

- label selectors on list requests (kmock ignores `labelSelector` and lists every object of the
  namespace). Equality-based selectors only (`k=v`, `k==v`, `k!=v`, `k`, `!k`); a set-based one
  is answered 400, like a malformed one on a real API server;
- Secrets as a known resource: kmock answers a list of a resource it has never seen an object
  of with 404 (a real server lists nothing).

404 on absent objects and 409 on a duplicate create are kmock's own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import kmock
from kmock import KubernetesEmulator, KubernetesError, Server
from kubernetes import client

T = TypeVar("T")


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Whether `labels` satisfy an equality-based label selector; ValueError if unsupported."""
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if any(f" {word} " in f" {term} " for word in ("in", "notin")) or "(" in term:
            raise ValueError(f"set-based selector {term!r} not supported")
        if "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class LabelledEmulator(KubernetesEmulator):
    """KubernetesEmulator whose list requests honour `labelSelector`, knowing Secrets."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources["v1/secrets"] = {"kind": "Secret", "singular": "secret",
                                        "namespaced": True,
                                        "verbs": ["get", "list", "create", "patch", "delete"]}

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            try:
                result["items"] = [
                    item for item in result["items"]
                    if selector_matches(selector, item.get("metadata", {}).get("labels") or {})]
            except ValueError as exc:
                raise KubernetesError(status=400, reason="BadRequest", message=str(exc)) from None
        return result


class EmulatedCluster:
    """A LabelledEmulator served on 127.0.0.1 from a background thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self.emulator: LabelledEmulator | None = None
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._failure = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with LabelledEmulator() as emulator, Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> EmulatedCluster:
        self._thread.start()
        if not self._ready.wait(30) or self._failure is not None:
            raise RuntimeError(f"kmock did not start: {self._failure!r}")
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def in_loop(self, function: Callable[[], T]) -> T:
        """Run `function` in the emulator's loop thread (to change its reactions safely)."""
        async def call() -> T:
            return function()
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(30)

    def api(self) -> client.CoreV1Api:
        """A synchronous CoreV1Api client of this cluster (no credentials)."""
        configuration = client.Configuration()
        configuration.host = self.url
        return client.CoreV1Api(client.ApiClient(configuration))

    def respond(self, status: int, method: str, name: str) -> None:
        """Answer `method` requests for objects named `name` with a Kubernetes error `status`
        (e.g. 403 Forbidden on reading one Secret), from now on."""
        emulator = self.emulator
        assert emulator is not None
        error = KubernetesError(status=status, reason={403: "Forbidden"}.get(status, "Error"),
                                message=f"{method} {name}: {status} from the test")
        self.in_loop(lambda: emulator[method.lower(), kmock.name(name)] << error)


@contextmanager
def emulated_cluster() -> Iterator[EmulatedCluster]:
    cluster = EmulatedCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()
