"""`/metrics` of `fleetpki serve`: OCSP, CRL, CA and EST requests, refusals by reason class and
latency by endpoint, plus the inventory gauges (one registry per server)."""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web
from cryptography.x509 import ocsp
from cryptography.x509.ocsp import OCSPResponseStatus
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from controller.clock import epoch, now_utc
from controller.servers.limits import Handler
from controller.status.metrics import InventoryCollector

EST_PREFIX = "/.well-known/est"
OCSP_REASONS = {OCSPResponseStatus.MALFORMED_REQUEST: "malformed",
                OCSPResponseStatus.UNAUTHORIZED: "unauthorized",
                OCSPResponseStatus.INTERNAL_ERROR: "error"}
UNSUCCESSFUL_SIZE = 16  # an unsuccessful OCSPResponse is 5 bytes, a successful one hundreds
REASONS = {400: "bad-request", 401: "unauthenticated", 403: "forbidden", 404: "not-found",
           408: "timeout", 409: "conflict", 413: "too-large", 429: "throttled"}


def endpoint(request: web.Request) -> str:
    """The EST route a request matched (`est-simpleenroll`, ...), `unmatched` otherwise: never
    a path or a label taken from the request. (The plain-HTTP listener names its own.)"""
    resource = request.match_info.route.resource
    if resource is None or not resource.canonical.startswith(EST_PREFIX):
        return "unmatched"
    return "est-" + resource.canonical.rsplit("/", 1)[1]


def reason(status: int) -> str:
    """The class of a refusal's HTTP status."""
    return REASONS.get(status, "error" if status >= 500 else "other")


def ocsp_refusal(der: bytes) -> str | None:
    """The reason class of an unsuccessful OCSP response (malformedRequest, unauthorized,
    internalError): answered with HTTP 200, still a refusal."""
    if len(der) >= UNSUCCESSFUL_SIZE:
        return None
    return OCSP_REASONS.get(ocsp.load_der_ocsp_response(der).response_status, "other")


class ServerMetrics:
    """The request metrics and the exposition. `multiprocess` (a worker of `serve --workers`,
    PROMETHEUS_MULTIPROC_DIR set by its parent): the counters live in that directory's files,
    one per process, and every worker's exposition sums them all (prometheus_client's
    multi-process mode), so a scrape answered by any worker counts every worker's requests,
    including those of a worker that died since."""

    def __init__(self, inventory: Path | str, multiprocess: bool = False) -> None:
        self.registry = CollectorRegistry()
        own: CollectorRegistry | None = self.registry
        if multiprocess:
            values.ValueClass = values.MultiProcessValue()  # chosen per metric, at creation
            MultiProcessCollector(self.registry)
            own = None  # collected from the files, by MultiProcessCollector
        self.requests = Counter("fleetpki_server_requests_total", "Requests by endpoint.",
                                ["endpoint"], registry=own)
        self.refusals = Counter("fleetpki_server_refusals_total", "Requests answered with an "
                                "HTTP error, by endpoint and reason class.",
                                ["endpoint", "reason"], registry=own)
        self.latency = Histogram("fleetpki_server_request_duration_seconds", "Time to answer a "
                                 "request, by endpoint.", ["endpoint"], registry=own,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self._children: dict[str, tuple[Counter, Histogram]] = {}
        self.registry.register(InventoryCollector(lambda: {"": inventory},
                                                  lambda: epoch(now_utc())))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.record(endpoint(request), status, None, time.perf_counter() - started)

    def record(self, name: str, status: int, refused: str | None, seconds: float) -> None:
        """One answered request: `refused` is the class of a refusal answered with 200."""
        children = self._children.get(name)
        if children is None:  # labels() costs more than the counting itself
            children = self._children[name] = (self.requests.labels(name),
                                               self.latency.labels(name))
        children[0].inc()
        if status >= 400 or refused:
            self.refusals.labels(name, refused or reason(status)).inc()
        children[1].observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition (call it off the event loop: the gauges run SQL aggregates)."""
        return generate_latest(self.registry)
