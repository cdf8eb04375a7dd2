"""The plain-HTTP listener of `fleetpki serve`: OCSP, CRLs, CA certificates, RFC 3161 time
stamps and /metrics, on an asyncio protocol with httptools' parser (llhttp), not aiohttp.

Every answer here is bytes for bytes, and OCSP is asked for by every device on every
connection it checks: aiohttp's per-request work (about 200 µs on the bench machine, 5,000
answers/s from one process) was the responder's limit, where this protocol answers a cached
OCSP request in a fraction of it (docs/performance.md, round seven).

HTTP/1.1 and 1.0 with keep-alive and pipelining (answers in order), chunked request bodies
and `Expect: 100-continue`; GET routes answer HEAD. The listener enforces what
`ConnectionGuard` enforces for the EST listener (`limits.py`): a request head within
`header_timeout` of the connection's opening or of the previous answer (else the connection is
aborted), a body within `body_timeout` (else 408), at most `max_connections` (else 503), and
a body of at most `MAX_BODY` (else 413); a head larger than `MAX_HEAD` gets 431.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import httptools
from cryptography.x509.ocsp import OCSPResponseStatus
from prometheus_client import CONTENT_TYPE_LATEST

from controller.servers import ocsp
from controller.servers.limits import MAX_BODY, Busy, Limits
from controller.servers.metrics import ServerMetrics, ocsp_refusal
from controller.servers.state import ServerState

log = logging.getLogger(__name__)

MAX_HEAD = 32 * 1024
OCSP_RESPONSE = "application/ocsp-response"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = TEXT
    refusal: str | None = None  # the refusal class of a 200 answer (an unsuccessful OCSP one)
    allow: str = ""  # the methods of a 405's path


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-encoded, without the query
    body: bytes
    keep_alive: bool
    http10: bool
    received: float  # perf_counter() when the request was complete


Answer = Callable[[ServerState, str, bytes], Reply | Awaitable[Reply]]


def _not_found(text: str) -> Reply:
    return Reply(404, text.encode())


def ocsp_reply(state: ServerState, request_der: bytes) -> Reply:
    """Always an OCSP response (RFC 6960 `internalError` if answering failed), never a 500."""
    try:
        der = state.ocsp_response(request_der)
    except Exception:
        log.exception("OCSP: cannot answer a request")
        der = ocsp.unsuccessful(OCSPResponseStatus.INTERNAL_ERROR)
    return Reply(200, der, OCSP_RESPONSE, ocsp_refusal(der))


def ocsp_post(state: ServerState, _: str, body: bytes) -> Reply:
    return ocsp_reply(state, body)


def ocsp_get(state: ServerState, encoded: str, _: bytes) -> Reply:
    """RFC 6960 A.1: the path's last part is the URL-encoded base64 of the DER request."""
    try:
        request_der = base64.b64decode(urllib.parse.unquote(encoded), validate=False)
    except (binascii.Error, ValueError):
        request_der = b""
    return ocsp_reply(state, request_der)


def crl(state: ServerState, name: str, _: bytes) -> Reply:
    der = state.crl_der(name)
    return _not_found("no CRL for this CA\n") if der is None else Reply(
        200, der, "application/pkix-crl")


def ca(state: ServerState, name: str, _: bytes) -> Reply:
    pem = state.ca_pem(name)
    return _not_found("no such CA\n") if pem is None else Reply(
        200, pem, "application/x-pem-file")


def tsa(state: ServerState, name: str, body: bytes) -> Reply:
    """RFC 3161 over HTTP (section 3.4): a TimeStampReq in, a TimeStampResp out (a rejection
    says why in its statusString)."""
    reply = state.timestamp_reply(name, body)
    return _not_found("no such time-stamping SigningProfile\n") if reply is None else Reply(
        200, reply, "application/timestamp-reply")


@dataclass(frozen=True)
class Route:
    """`prefix` + a name (+ `suffix`); `prefix` alone when `exact`."""

    endpoint: str
    method: str  # GET routes answer HEAD too
    prefix: str
    answer: Answer
    suffix: str = ""
    exact: bool = False
    raw: bool = False  # the rest of the path as sent, slashes included (OCSP GET's base64)

    def argument(self, path: str) -> str | None:
        """The name this route takes from `path` (percent-decoded unless `raw`), or None when
        the path is not this route's."""
        if self.exact:
            return "" if path == self.prefix else None
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        name = path[len(self.prefix):len(path) - len(self.suffix)]
        if self.raw:
            return name or None
        return urllib.parse.unquote(name) if name and "/" not in name else None


def routes(metrics: ServerMetrics) -> tuple[Route, ...]:
    async def exposition(_: ServerState, __: str, ___: bytes) -> Reply:
        """Built off the event loop: the gauges run SQL aggregates."""
        body = await asyncio.to_thread(metrics.exposition)
        return Reply(200, body, CONTENT_TYPE_LATEST)

    return (Route("metrics", "GET", "/metrics", exposition, exact=True),
            Route("ocsp", "POST", "/ocsp", ocsp_post, exact=True),
            Route("ocsp", "POST", "/ocsp/", ocsp_post, exact=True),
            Route("ocsp", "GET", "/ocsp/", ocsp_get, raw=True),
            Route("crl", "GET", "/crl/", crl, suffix=".crl"),
            Route("ca", "GET", "/ca/", ca, suffix=".pem"),
            Route("tsa", "POST", "/tsa/", tsa))


class Distribution:
    """The protocol factory of the plain-HTTP listener, and its open connections."""

    def __init__(self, state: ServerState, limits: Limits, metrics: ServerMetrics) -> None:
        self.state = state
        self.limits = limits
        self.metrics = metrics
        self.routes = routes(metrics)
        self.connections: set[Connection] = set()
        self.loop_time = asyncio.get_running_loop().time
        self.sweep: asyncio.TimerHandle | None = None

    def __call__(self) -> asyncio.Protocol:
        """Called by the event loop for each accepted TCP connection."""
        if len(self.connections) >= self.limits.max_connections:
            log.warning("http: %d connections, refusing another", len(self.connections))
            return Busy()
        if self.sweep is None:
            self._sweep_later()
        return Connection(self)

    def _sweep_later(self) -> None:
        period = min(1.0, self.limits.header_timeout / 4, self.limits.body_timeout / 4)
        self.sweep = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        """Expire the connections past their deadline, a few times per timeout while there
        are connections: one timer per listener, not two per request."""
        now = self.loop_time()
        for connection in list(self.connections):
            connection.expire_by(now)
        self.sweep = None
        if self.connections:
            self._sweep_later()

    def dispatch(self, request: Request) -> tuple[str, Reply | Awaitable[Reply]]:
        """The endpoint (metrics label) and the answer, or its awaitable."""
        method = "GET" if request.method == "HEAD" else request.method
        allowed = []
        for route in self.routes:
            argument = route.argument(request.path)
            if argument is None:
                continue
            if route.method == method:
                return route.endpoint, route.answer(self.state, argument, request.body)
            allowed.append(route)
        if allowed:
            methods = sorted({m for r in allowed
                              for m in ((r.method, "HEAD") if r.method == "GET" else (r.method,))})
            return allowed[0].endpoint, Reply(405, b"method not allowed\n",
                                              allow=", ".join(methods))
        return "unmatched", _not_found("not found\n")

    def endpoint(self, path: str) -> str:
        """The metrics label of a path: its route's endpoint, else `unmatched`."""
        return next((route.endpoint for route in self.routes
                     if route.argument(path) is not None), "unmatched")

    def close(self) -> None:
        if self.sweep is not None:
            self.sweep.cancel()
            self.sweep = None
        for connection in list(self.connections):
            connection.abort()


class _Refused(Exception):
    """A request this connection answers with `status` and then closes."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class Connection(asyncio.Protocol):
    """One client connection: httptools calls the `on_*` methods while `data_received` feeds
    it; complete requests queue up and are answered in order."""

    def __init__(self, listener: Distribution) -> None:
        self.listener = listener
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.deadline: tuple[float, Callable[[], None]] | None = None  # (loop time, on expiry)
        self.queue: deque[Request] = deque()
        self.task: asyncio.Future[None] | None = None  # an awaited answer, running
        self.writable = True
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.body: list[bytes] = []
        self.body_size = 0
        self.head_size = 0  # of the URL and headers, as parsed
        self.unparsed = 0  # bytes received since the head began (an unfinished one's bound)
        self.in_body = False
        self.continue_expected = False

    # --- the connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.listener.connections.add(self)
        self._arm(self.listener.limits.header_timeout, self._no_head)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.listener.connections.discard(self)
        self.transport = None
        self.queue.clear()

    def _open(self) -> asyncio.Transport | None:
        """The transport, unless the connection is closed or closing."""
        transport = self.transport
        return transport if transport is not None and not transport.is_closing() else None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.in_body:
            self.unparsed += len(data)  # at least the unfinished head's size
        try:
            self.parser.feed_data(data)
            if not self.in_body and self.unparsed > MAX_HEAD:
                self._refuse(431, "request head too large")
        except httptools.HttpParserError as exc:  # a callback's _Refused is its context
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, str(refused))
            else:
                self._refuse(400, f"bad request: {exc}")
        except httptools.HttpParserUpgrade:
            self._refuse(400, "no protocol upgrade here")
        self._answer_queued()

    def pause_writing(self) -> None:
        self.writable = False
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable = True
        if self.transport is not None and self.task is None:
            self.transport.resume_reading()

    # --- deadlines (checked by the listener's sweep) ---------------------------------------------
    def _arm(self, seconds: float, expired: Callable[[], None]) -> None:
        self.deadline = (self.listener.loop_time() + seconds, expired)

    def _disarm(self) -> None:
        self.deadline = None

    def expire_by(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline[0]:
            expired = self.deadline[1]
            self.deadline = None
            expired()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if peer else "?"

    def _no_head(self) -> None:
        log.info("http: no complete request from %s within %gs, closing", self._peer(),
                 self.listener.limits.header_timeout)
        self.abort()

    def _slow_body(self) -> None:
        log.warning("http: request body from %s not received within %gs", self._peer(),
                    self.listener.limits.body_timeout)
        self._refuse(408, "request body too slow")

    # --- httptools callbacks -------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        if len(name) not in (6, 14):  # neither Expect nor Content-Length: most headers
            return
        header = name.lower()
        if header == b"content-length" and value.strip().isdigit() \
                and int(value) > MAX_BODY:
            raise _Refused(413, "request body too large")
        if header == b"expect" and value.strip().lower() == b"100-continue":
            self.continue_expected = True

    def _count_head(self, size: int) -> None:
        self.head_size += size
        if self.head_size > MAX_HEAD:
            raise _Refused(431, "request head too large")

    def on_headers_complete(self) -> None:
        self.in_body = True
        if self.continue_expected and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._arm(self.listener.limits.body_timeout, self._slow_body)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_BODY:
            raise _Refused(413, "request body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._disarm()
        method = self.parser.get_method().decode("ascii", "replace")
        self.queue.append(Request(method, self._path(), b"".join(self.body),
                                  self.parser.should_keep_alive(),
                                  self.parser.get_http_version() == "1.0", time.perf_counter()))
        self._reset()

    # --- answers -------------------------------------------------------------------------------
    def _answer_queued(self) -> None:
        while self.queue and self.task is None and (transport := self._open()) is not None:
            request = self.queue.popleft()
            try:
                endpoint, reply = self.listener.dispatch(request)
            except Exception:
                log.exception("http: cannot answer %s %s", request.method, request.path)
                endpoint, reply = "unmatched", Reply(500, b"internal error\n")
            if isinstance(reply, Reply):
                self._send(transport, request, endpoint, reply)
            else:
                transport.pause_reading()
                self.task = asyncio.ensure_future(self._await(request, endpoint, reply))
        if not self.queue and self.task is None and self._open() and self.deadline is None:
            self._arm(self.listener.limits.header_timeout, self._no_head)

    async def _await(self, request: Request, endpoint: str, pending: Awaitable[Reply]) -> None:
        try:
            reply = await pending
        except Exception:
            log.exception("http: cannot answer %s %s", request.method, request.path)
            reply = Reply(500, b"internal error\n")
        self.task = None
        if (transport := self._open()) is None:
            return
        self._send(transport, request, endpoint, reply)
        if self.writable and not transport.is_closing():
            transport.resume_reading()
        self._answer_queued()

    def _send(self, transport: asyncio.Transport, request: Request, endpoint: str,
              reply: Reply) -> None:
        transport.write(head(reply, request.keep_alive, request.http10)
                        + (b"" if request.method == "HEAD" else reply.body))
        self.listener.metrics.record(endpoint, reply.status, reply.refusal,
                                     time.perf_counter() - request.received)
        if not request.keep_alive:
            self.queue.clear()
            transport.close()

    def _path(self) -> str:
        """The path of the request being read, as far as it was ("" if none yet)."""
        try:
            return httptools.parse_url(self.url).path.decode("latin-1") if self.url else ""
        except httptools.HttpParserInvalidURLError:
            return ""

    def _refuse(self, status: int, text: str) -> None:
        """Answer `status` and close: the rest of what the client sent is not read."""
        self._disarm()
        self.queue.clear()
        if (transport := self._open()) is not None:
            self.listener.metrics.record(self.listener.endpoint(self._path()), status, None, 0.0)
            body = f"{text}\n".encode()
            transport.write(head(Reply(status, body), False, False) + body)
            transport.close()


_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header's value, formatted once a second."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, formatdate(second, usegmt=True).encode("ascii"))
    return _date[1]


def head(reply: Reply, keep_alive: bool, http10: bool) -> bytes:
    """Status line and headers; HTTP/1.0 keep-alive is said, and so is the close."""
    connection = (b"Connection: close\r\n" if not keep_alive
                  else b"Connection: keep-alive\r\n" if http10 else b"")
    allow = b"Allow: %s\r\n" % reply.allow.encode("ascii") if reply.allow else b""
    return (b"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n"
            % (reply.status, HTTPStatus(reply.status).phrase.encode("ascii"), http_date(),
               reply.content_type.encode("ascii"), len(reply.body), connection, allow))
