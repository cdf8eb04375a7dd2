"""`fleetpki serve`: OCSP, CRLs, CA certificates and /metrics over HTTP; EST over HTTPS.

One process, one event loop, an asyncio server per listener: plain HTTP is answered by
`distribution.py`'s protocol, EST by an aiohttp application behind a `ConnectionGuard`.
Handlers are thin: the work is in `ocsp.py` (bytes -> bytes), `est.py` and `state.py`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509

from controller.clock import epoch, now_utc
from controller.pki import certificates as certs
from controller.pki import keys
from controller.servers import audit, est
from controller.servers.distribution import Distribution
from controller.servers.limits import MAX_BODY, ConnectionGuard, Limits
from controller.servers.metrics import ServerMetrics
from controller.servers.state import ServerState
from controller.servers.throttle import Backoff, Throttle
from controller.stores.inventory import CertRecord, EnrollmentSecret

log = logging.getLogger(__name__)

STATE_KEY = web.AppKey("state", ServerState)
THROTTLE_KEY = web.AppKey("throttle", Throttle)
WWW_AUTH = {"WWW-Authenticate": 'Basic realm="fleetpki EST"'}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- EST (HTTPS) -----------------------------------------------------------------------------
def _refusal(exc: est.ESTError, request: web.Request) -> web.Response:
    log.warning("EST %s %s from %s refused (%d): %s", request.method, request.path,
                request.remote, exc.status, exc.detail or exc)
    headers = {**(WWW_AUTH if exc.status == 401 else {}), **exc.headers}
    return web.Response(status=exc.status, text=f"{exc}\n", headers=headers)


def _est(handler: Callable[[web.Request, ServerState], Awaitable[web.Response]]) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        state.refresh()
        try:
            return await handler(request, state)
        except est.ESTError as exc:
            if audit.is_enrollment(request):
                await state.enrollments.record(audit.enrollment(
                    request, _peer_certificate(request), None, exc))
            return _refusal(exc, request)
    return wrapped


async def _enrolled(request: web.Request, state: ServerState, record: CertRecord) -> None:
    """Our write: drop cached OCSP answers, and audit the enrollment before answering."""
    state.changed()
    await state.enrollments.record(audit.enrollment(request, _peer_certificate(request), record,
                                                    None))


def _label_fleet(request: web.Request, state: ServerState) -> str | None:
    label = request.match_info.get("label")
    if label is not None and label not in state.desired.fleets:
        raise est.ESTError(404, f"no fleet {label!r}")
    return label


async def cacerts(request: web.Request, state: ServerState) -> web.Response:
    fleet = _label_fleet(request, state)
    issuer = state.desired.fleets[fleet].fleet.spec.issuerRef.name if fleet else None
    chain = state.ca_certificates(issuer)
    if not chain:
        raise est.ESTError(404, "no CA certificates yet")
    return web.Response(body=est.certs_only(chain), headers={
        "Content-Type": "application/pkcs7-mime", "Content-Transfer-Encoding": "base64"})


async def csrattrs(request: web.Request, state: ServerState) -> web.Response:
    fleet = _label_fleet(request, state)
    if fleet is None:
        return web.Response(status=204)
    profile = state.desired.profile(state.desired.fleets[fleet].fleet.spec.profileRef.name)
    return web.Response(body=est.csr_attributes(profile.spec.keyAlgorithm), headers={
        "Content-Type": "application/csrattrs", "Content-Transfer-Encoding": "base64"})


async def _csr(request: web.Request) -> x509.CertificateSigningRequest:
    return est.load_csr_der(await request.read())  # at most MAX_BODY, else 413


def _issued(record_der: bytes) -> web.Response:
    body = est.certs_only([x509.load_der_x509_certificate(record_der)])
    return web.Response(body=body, headers={"Content-Type": est.CERTS_ONLY,
                                            "Content-Transfer-Encoding": "base64"})


async def _secret_holder(request: web.Request, state: ServerState,
                         fleet: str | None) -> tuple[est.Target, EnrollmentSecret]:
    """The device named by HTTP Basic `device-id:secret`, with its (matching) stored secret.

    The secret is compared with those stored for the device id in each declared fleet (the
    one in the URL, if given), and the device is looked for in the fleet whose secret it is:
    never in every fleet's rows (the first look-up in a fleet reads its rows, tens of seconds
    at a million devices). An undeclared device and a wrong, used or missing secret get the
    same 401, after the same work. Failures are throttled per claimed device id and per client
    address (429 while locked)."""
    credentials = est.parse_basic(request.headers.get("Authorization"))
    if credentials is None:
        raise est.ESTError(401, "HTTP Basic authentication (device-id:secret) required")
    device_id, secret = credentials
    throttle = request.app[THROTTLE_KEY]
    keys = (f"device {device_id!r}", f"client {request.remote}")
    wait = throttle.retry_after(keys)
    if wait > 0:
        seconds = math.ceil(wait)
        raise est.ESTError(429, f"too many failed attempts for {device_id!r}; retry in "
                           f"{seconds} s", {"Retry-After": str(seconds)})
    held = state.inventory.enrollment_secrets(
        device_id, [fleet] if fleet is not None else sorted(state.desired.fleets))
    stored = await asyncio.to_thread(est.matching_secret, held, secret)
    target = await state.look_up(est.declared_device, device_id, stored.fleet) \
        if stored is not None else None
    if target is None:
        for key in keys:
            lock = throttle.failed(key)
            if lock:
                log.warning("EST: %s locked for %g s after repeated failures (device %r, "
                            "client %s)", key, lock, device_id, request.remote)
        reason = "wrong, used or no secret" if stored is None else \
            f"not declared in fleet {stored.fleet!r} any more"
        raise est.ESTError(401, f"wrong or used enrollment secret for {device_id!r}",
                           detail=f"enrollment secret refused for {device_id!r}: {reason}")
    assert stored is not None
    for key in keys:
        throttle.succeeded(key)
    return target, stored


async def simpleenroll(request: web.Request, state: ServerState) -> web.Response:
    """A one-time secret (HTTP Basic), or for `bootstrap: idevid` fleets the manufacturer
    certificate as TLS client certificate (without an Authorization header)."""
    fleet = _label_fleet(request, state)
    now = now_utc()
    stored: EnrollmentSecret | None = None
    if "Authorization" not in request.headers:
        peer = _peer_certificate(request)
        if not peer:
            raise est.ESTError(401, "HTTP Basic authentication (device-id:secret) or an IDevID "
                               "TLS client certificate required")
        csr = await _csr(request)
        target = await state.look_up(est.idevid_identity, peer, fleet, now)
    else:
        csr = await _csr(request)
        target, stored = await _secret_holder(request, state, fleet)
    record = est.issue(state.executor(now), state.inventory, target, csr, now, consume=stored,
                       rules=state.rules,
                       tenancy=state.tenancy, memo=state.policy_memo)
    await _enrolled(request, state, record)
    return _issued(record.der)


async def serverkeygen(request: web.Request, state: ServerState) -> web.Response:
    """RFC 7030 4.4 for `keyGeneration: server` fleets: a one-time secret (first time) or the
    current certificate (TLS client auth); the new key is returned once, over this TLS
    connection, and kept wrapped in the inventory as `apply` keeps server-generated keys."""
    fleet = _label_fleet(request, state)
    csr = await _csr(request)
    consume: EnrollmentSecret | None = None
    now = now_utc()
    peer = _peer_certificate(request)
    if "Authorization" in request.headers or not peer:
        target, consume = await _secret_holder(request, state, fleet)
    else:
        current = est.reenroll_identity(state.inventory, peer, epoch(now))
        if fleet is not None and fleet != current.owner:
            raise est.ESTError(403, f"client certificate belongs to fleet {current.owner!r}")
        target = await state.look_up(est.find_device, current.device, current.owner)
    record = est.issue(state.executor(now), state.inventory, target, csr, now, consume=consume,
                       server_key=True, rules=state.rules,
                       tenancy=state.tenancy, memo=state.policy_memo)
    await _enrolled(request, state, record)
    body, content_type = est.server_key_response(state.keystore, record)
    return web.Response(body=body, headers={"Content-Type": content_type})


def _peer_certificate(request: web.Request) -> bytes | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        return None
    peer: bytes | None = ssl_object.getpeercert(binary_form=True)
    return peer


async def simplereenroll(request: web.Request, state: ServerState) -> web.Response:
    now = now_utc()
    current = est.reenroll_identity(state.inventory, _peer_certificate(request), epoch(now))
    fleet = _label_fleet(request, state)
    if fleet is not None and fleet != current.owner:
        raise est.ESTError(403, f"client certificate belongs to fleet {current.owner!r}")
    csr = await _csr(request)
    target = await state.look_up(est.find_device, current.device, current.owner)
    record = est.issue(state.executor(now), state.inventory, target, csr, now, rules=state.rules,
                       tenancy=state.tenancy, memo=state.policy_memo)
    await _enrolled(request, state, record)
    return _issued(record.der)


# --- application -----------------------------------------------------------------------------
def https_app(state: ServerState, guard: ConnectionGuard, throttle: Throttle,
              metrics: ServerMetrics) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[metrics.middleware, guard.middleware])
    app[STATE_KEY] = state
    app[THROTTLE_KEY] = throttle
    for prefix in ("/.well-known/est", "/.well-known/est/{label}"):
        app.router.add_get(f"{prefix}/cacerts", _est(cacerts))
        app.router.add_get(f"{prefix}/csrattrs", _est(csrattrs))
        app.router.add_post(f"{prefix}/simpleenroll", _est(simpleenroll))
        app.router.add_post(f"{prefix}/simplereenroll", _est(simplereenroll))
        app.router.add_post(f"{prefix}/serverkeygen", _est(serverkeygen))
    return app


def tls_context(certificate: x509.Certificate, key: keys.PrivateKey,
                chain: list[x509.Certificate], client_cas: list[x509.Certificate]
                ) -> ssl.SSLContext:
    """Server context; the key goes through an anonymous memory file, never to disk. Client
    certificates are optional (simplereenroll, IDevID simpleenroll) and verified against the CAs
    (ours and the declared external ones)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    pem = certs.certificates_to_pem([certificate, *chain]) + keys.private_key_to_pem(key)
    descriptor = os.memfd_create("fleetpki-tls", os.MFD_CLOEXEC)
    try:
        os.write(descriptor, pem)
        context.load_cert_chain(f"/proc/self/fd/{descriptor}")
    finally:
        os.close(descriptor)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # an external CA may be intermediate
    context.load_verify_locations(cadata=certs.certificates_to_pem(client_cas).decode())
    return context


@dataclass
class Listener:
    host: str
    port: int


@dataclass
class ServeOptions:
    directory: Path
    http: Listener | None
    https: Listener | None
    tls_ca: str | None  # None: ServerState.default_tls_ca()
    tls_name: str | None
    limits: Limits = field(default_factory=Limits)
    backoff: Backoff = field(default_factory=Backoff)


def server_tls(state: ServerState, options: ServeOptions) -> ssl.SSLContext:
    """The HTTPS context, with a server certificate issued now (options.https must be set)."""
    assert options.https is not None
    ca_name = options.tls_ca or state.default_tls_ca()
    name = options.tls_name or options.https.host
    certificate, key, chain = state.server_certificate(ca_name, name, now_utc())
    return tls_context(certificate, key, chain, state.ca_certificates()
                       + state.external_certificates())


class Server:
    """Start/stop the listeners on the current event loop; `ports` are the bound ports. Each
    listener is an asyncio server whose protocol factory is a `ConnectionGuard`. Given
    `sockets` (kind -> a listening socket) and the HTTPS `context`, a worker of
    `serve --workers` (`workers.py`) serves on those instead of binding and issuing its own
    (HTTPS only if given its socket); its metrics are then `multiprocess` ones."""

    def __init__(self, state: ServerState, options: ServeOptions,
                 multiprocess: bool = False) -> None:
        self.state = state
        self.options = options
        self.runners: list[web.AppRunner] = []
        self.listeners: list[asyncio.Server] = []
        self.ports: dict[str, int] = {}
        self.distribution: Distribution | None = None
        self.metrics = ServerMetrics(state.state.inventory_location, multiprocess)

    async def start(self, sockets: dict[str, socket.socket] | None = None,
                    context: ssl.SSLContext | None = None) -> None:
        opts = self.options
        given = sockets or {}
        if opts.http is not None:
            self.distribution = Distribution(self.state, opts.limits, self.metrics)
            await self._serve("http", self.distribution, opts.http, None, given.get("http"))
        if opts.https is not None and (sockets is None or "https" in sockets):
            guard = ConnectionGuard(opts.limits, "https")
            app = https_app(self.state, guard, Throttle(opts.backoff), self.metrics)
            await self._listen(guard, app, opts.https, context or server_tls(self.state, opts),
                               given.get("https"))

    async def _listen(self, guard: ConnectionGuard, app: web.Application, listener: Listener,
                      context: ssl.SSLContext | None, sock: socket.socket | None) -> None:
        # no lingering read of an unread body (after a 408 or 413): the connection just closes
        runner = web.AppRunner(app, access_log=None, lingering_time=0)
        await runner.setup()
        self.runners.append(runner)
        server = runner.server
        assert server is not None
        await self._serve(guard.kind, lambda: guard.factory(server), listener, context, sock)

    async def _serve(self, kind: str, factory: Callable[[], asyncio.BaseProtocol],
                     listener: Listener, context: ssl.SSLContext | None,
                     sock: socket.socket | None) -> None:
        where = {"sock": sock} if sock is not None else {"host": listener.host,
                                                         "port": listener.port}
        listening = await asyncio.get_running_loop().create_server(
            factory, ssl=context,
            ssl_handshake_timeout=self.options.limits.header_timeout if context else None,
            **where)
        self.listeners.append(listening)
        self.ports[kind] = listening.sockets[0].getsockname()[1]
        log.info("serving %s on %s:%d", kind, listener.host, self.ports[kind])

    async def stop(self) -> None:
        for listening in self.listeners:
            listening.close()
        if self.distribution is not None:
            self.distribution.close()
        for runner in self.runners:
            await runner.cleanup()
        self.listeners.clear()
        self.runners.clear()


def parse_listener(value: str) -> Listener:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 1 to 65535, got {value!r}")
    return Listener(host.strip("[]") or "0.0.0.0", int(port))


async def serve_forever(state: ServerState, options: ServeOptions,
                        ready: Callable[[dict[str, int]], None] = lambda ports: None) -> None:
    server = Server(state, options)
    await server.start()
    ready(server.ports)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
