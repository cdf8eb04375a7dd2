"""`fleetpki serve`: OCSP, CRLs and CA certificates over HTTP; EST over HTTPS (aiohttp).

One process, one event loop, one `AppRunner` with a `TCPSite` per listener. Handlers are thin:
the work is in `ocsp.py` (bytes -> bytes), `est.py` and `state.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509

from controller.clock import now_utc
from controller.pki import certificates as certs
from controller.pki import keys
from controller.servers import est
from controller.servers.state import ServerState
from controller.stores.inventory import EnrollmentSecret

log = logging.getLogger(__name__)

STATE_KEY = web.AppKey("state", ServerState)
OCSP_RESPONSE = "application/ocsp-response"
WWW_AUTH = {"WWW-Authenticate": 'Basic realm="fleetpki EST"'}
MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- distribution (plain HTTP) -------------------------------------------------------------------
async def ocsp_post(request: web.Request) -> web.Response:
    body = await request.read()
    der = request.app[STATE_KEY].ocsp_response(body)
    return web.Response(body=der, content_type=OCSP_RESPONSE)


async def ocsp_get(request: web.Request) -> web.Response:
    encoded = urllib.parse.unquote(request.match_info["request"])
    try:
        body = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError):
        body = b""
    der = request.app[STATE_KEY].ocsp_response(body)
    return web.Response(body=der, content_type=OCSP_RESPONSE)


async def crl(request: web.Request) -> web.Response:
    der = request.app[STATE_KEY].crl_der(request.match_info["name"])
    if der is None:
        raise web.HTTPNotFound(text="no CRL for this CA\n")
    return web.Response(body=der, content_type="application/pkix-crl")


async def ca(request: web.Request) -> web.Response:
    pem = request.app[STATE_KEY].ca_pem(request.match_info["name"])
    if pem is None:
        raise web.HTTPNotFound(text="no such CA\n")
    return web.Response(body=pem, content_type="application/x-pem-file")


# --- EST (HTTPS) -----------------------------------------------------------------------------
def _refusal(exc: est.ESTError, request: web.Request) -> web.Response:
    log.warning("EST %s %s refused (%d): %s", request.method, request.path, exc.status, exc)
    headers = WWW_AUTH if exc.status == 401 else None
    return web.Response(status=exc.status, text=f"{exc}\n", headers=headers)


def _est(handler: Callable[[web.Request, ServerState], Awaitable[web.Response]]) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        state.refresh()
        try:
            return await handler(request, state)
        except est.ESTError as exc:
            return _refusal(exc, request)
    return wrapped


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
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise est.ESTError(413, "request too large")
    return est.load_csr_der(await request.content.read(MAX_BODY))


def _issued(record_der: bytes) -> web.Response:
    body = est.certs_only([x509.load_der_x509_certificate(record_der)])
    return web.Response(body=body, headers={"Content-Type": est.CERTS_ONLY,
                                            "Content-Transfer-Encoding": "base64"})


async def _secret_holder(request: web.Request, state: ServerState,
                         fleet: str | None) -> tuple[est.Target, EnrollmentSecret]:
    """The device named by HTTP Basic `device-id:secret`, with its (matching) stored secret."""
    credentials = est.parse_basic(request.headers.get("Authorization"))
    if credentials is None:
        raise est.ESTError(401, "HTTP Basic authentication (device-id:secret) required")
    device_id, secret = credentials
    target = est.find_device(state.desired, device_id, fleet)
    stored = state.inventory.enrollment_secret(target.decl.fleet.name, device_id)
    if stored is None or not await asyncio.to_thread(est.secret_matches, stored, secret):
        raise est.ESTError(401, f"wrong or used enrollment secret for {device_id!r}")
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
        target = est.idevid_identity(state.desired, peer, fleet, now)
    else:
        csr = await _csr(request)
        target, stored = await _secret_holder(request, state, fleet)
    record = est.issue(state.executor(now), state.inventory, target, csr, now, consume=stored,
                       rules=state.rules)
    state.changed()
    return _issued(record.der)


async def serverkeygen(request: web.Request, state: ServerState) -> web.Response:
    """RFC 7030 4.4 for `keyGeneration: server` fleets: a one-time secret (first time) or the
    current certificate (TLS client auth); the new key is returned once, over this TLS
    connection, and kept wrapped in the inventory as `apply` keeps server-generated keys."""
    fleet = _label_fleet(request, state)
    csr = await _csr(request)
    consume: EnrollmentSecret | None = None
    peer = _peer_certificate(request)
    if "Authorization" in request.headers or not peer:
        target, consume = await _secret_holder(request, state, fleet)
    else:
        current = est.reenroll_identity(state.inventory, peer)
        if fleet is not None and fleet != current.owner:
            raise est.ESTError(403, f"client certificate belongs to fleet {current.owner!r}")
        target = est.find_device(state.desired, current.device, current.owner)
    now = now_utc()
    record = est.issue(state.executor(now), state.inventory, target, csr, now, consume=consume,
                       server_key=True, rules=state.rules)
    state.changed()
    body, content_type = est.server_key_response(state.keystore, record)
    return web.Response(body=body, headers={"Content-Type": content_type})


def _peer_certificate(request: web.Request) -> bytes | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        return None
    peer: bytes | None = ssl_object.getpeercert(binary_form=True)
    return peer


async def simplereenroll(request: web.Request, state: ServerState) -> web.Response:
    current = est.reenroll_identity(state.inventory, _peer_certificate(request))
    fleet = _label_fleet(request, state)
    if fleet is not None and fleet != current.owner:
        raise est.ESTError(403, f"client certificate belongs to fleet {current.owner!r}")
    csr = await _csr(request)
    target = est.find_device(state.desired, current.device, current.owner)
    now = now_utc()
    record = est.issue(state.executor(now), state.inventory, target, csr, now, rules=state.rules)
    state.changed()
    return _issued(record.der)


# --- application -----------------------------------------------------------------------------
def http_app(state: ServerState) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE_KEY] = state
    app.router.add_post("/ocsp", ocsp_post)
    app.router.add_post("/ocsp/", ocsp_post)
    app.router.add_get("/ocsp/{request:.+}", ocsp_get)
    app.router.add_get("/crl/{name}.crl", crl)
    app.router.add_get("/ca/{name}.pem", ca)
    return app


def https_app(state: ServerState) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE_KEY] = state
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
    tls_ca: str | None
    tls_name: str | None


class Server:
    """Start/stop the listeners on the current event loop; `ports` are the bound ports."""

    def __init__(self, state: ServerState, options: ServeOptions) -> None:
        self.state = state
        self.options = options
        self.runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        opts = self.options
        if opts.http is not None:
            await self._site("http", http_app(self.state), opts.http, None)
        if opts.https is not None:
            if not opts.tls_ca:
                raise ValueError("--https needs --tls-ca NAME (the CA that issues the server "
                                 "certificate)")
            name = opts.tls_name or opts.https.host
            certificate, key, chain = self.state.server_certificate(opts.tls_ca, name, now_utc())
            context = tls_context(certificate, key, chain, self.state.ca_certificates()
                                  + self.state.external_certificates())
            await self._site("https", https_app(self.state), opts.https, context)

    async def _site(self, kind: str, app: web.Application, listener: Listener,
                    context: ssl.SSLContext | None) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, listener.host, listener.port, ssl_context=context)
        await site.start()
        self.runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.ports[kind] = sockets[0].getsockname()[1] if sockets else listener.port
        log.info("serving %s on %s:%d", kind, listener.host, self.ports[kind])

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()


def parse_listener(value: str) -> Listener:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
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
