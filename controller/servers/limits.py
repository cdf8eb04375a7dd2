"""Protection of a listener against slow and excess clients: the `Limits`, and for the EST
listener (aiohttp) their enforcement; the plain-HTTP listener enforces them in its own protocol
(`distribution.py`).

aiohttp waits for a request head, and the handlers for a body, as long as the client likes;
`ConnectionGuard` bounds both and the number of connections:

- a connection must complete its TLS handshake, then each request head, within
  `header_timeout` (of opening, or of the end of the previous request: an idle keep-alive
  connection is closed after as long); otherwise it is aborted;
- a request body must arrive within `body_timeout` (408, connection closed);
- beyond `max_connections` established connections (per listener; a TLS connection counts once
  its handshake is done), a new connection gets `503` and is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
         b"Content-Length: 0\r\n\r\n")


MAX_BODY = 64 * 1024  # of a request, on either listener (else 413)


@dataclass(frozen=True)
class Limits:
    """Per listener; the defaults are what `fleetpki serve` uses."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 256


class Busy(asyncio.Protocol):
    """A connection over the limit: answered 503 and closed, never read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class ConnectionGuard:
    """The protocol factory of one listener (`factory`) and the middleware of its app."""

    def __init__(self, limits: Limits, kind: str) -> None:
        self.limits = limits
        self.kind = kind
        self._deadlines: dict[RequestHandler, asyncio.TimerHandle] = {}

    def factory(self, server: web.Server) -> asyncio.Protocol:
        """Called by the event loop for each accepted TCP connection."""
        if len(server.connections) >= self.limits.max_connections:
            log.warning("%s: %d connections, refusing another", self.kind,
                        len(server.connections))
            return Busy()
        handler = server()
        self._arm(handler)
        return handler

    def _arm(self, handler: RequestHandler) -> None:
        self._disarm(handler)
        self._deadlines[handler] = asyncio.get_running_loop().call_later(
            self.limits.header_timeout, self._expire, handler)

    def _disarm(self, handler: RequestHandler) -> None:
        timer = self._deadlines.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, handler: RequestHandler) -> None:
        self._deadlines.pop(handler, None)
        transport = handler.transport
        if transport is not None:
            peer = transport.get_extra_info("peername")
            log.info("%s: no complete request from %s within %gs, closing", self.kind,
                     peer[0] if peer else "?", self.limits.header_timeout)
            transport.abort()

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Handler) -> web.StreamResponse:
        """The head is complete: stop its clock, read the body within `body_timeout`, handle,
        then give the connection `header_timeout` for its next request head."""
        protocol = request.protocol
        self._disarm(protocol)
        try:
            try:
                async with asyncio.timeout(self.limits.body_timeout):
                    await request.read()
            except TimeoutError:
                log.warning("%s: request body from %s not received within %gs", self.kind,
                            request.remote, self.limits.body_timeout)
                response = web.Response(status=408, text="request body too slow\n")
                response.force_close()
                return response
            return await handler(request)
        finally:
            if protocol.transport is not None:
                self._arm(protocol)
