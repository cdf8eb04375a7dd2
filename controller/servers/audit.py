"""Audit records of EST enrollments, accepted (with the certificate issued) or refused (with
why), naming the client: its address, the device id it claimed (HTTP Basic user, never the
secret) and its TLS client certificate. Appended before the response is sent, group-committed
(`GroupCommit`); forwarded to the SIEM receivers in the background."""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import web
from cryptography import x509

from controller.audit.log import AuditError
from controller.audit.records import Event
from controller.audit.trail import Trail
from controller.clock import now_utc
from controller.pki import certificates as certs
from controller.servers import est
from controller.stores.inventory import CertRecord

log = logging.getLogger(__name__)
ENROLLMENTS = ("simpleenroll", "simplereenroll", "serverkeygen")
_HOST = socket.gethostname()
_forwarding: set[asyncio.Task[None]] = set()


def is_enrollment(request: web.Request) -> bool:
    return request.path.rstrip("/").rsplit("/", 1)[-1] in ENROLLMENTS


def client(request: web.Request, peer: bytes | None) -> dict[str, str]:
    """Who asked: address, claimed device id, TLS client certificate (subject, serial,
    fingerprint)."""
    actor = {"address": request.remote or "", "host": _HOST}
    credentials = est.parse_basic(request.headers.get("Authorization"))
    if credentials is not None:
        actor["device"] = credentials[0]
    if peer:
        certificate = x509.load_der_x509_certificate(peer)
        actor["clientCertificate"] = (f"{certificate.subject.rfc4514_string()} serial "
                                      f"{certificate.serial_number:x}")
        actor["clientFingerprint"] = certs.certificate_fingerprint(certificate)
    return actor


def enrollment(request: web.Request, peer: bytes | None, issued: CertRecord | None,
               refusal: est.ESTError | None) -> Event:
    endpoint = request.path.rstrip("/").rsplit("/", 1)[-1]
    actor = client(request, peer)
    if issued is not None:
        return Event("est.enrolled", "success", f"DeviceFleet/{issued.owner}", actor,
                     {"endpoint": endpoint, "device": issued.device, "serial": issued.serial,
                      "fingerprint": issued.fingerprint})
    assert refusal is not None
    label = request.match_info.get("label")
    return Event("est.refused", "refused", f"DeviceFleet/{label}" if label else "EST", actor,
                 {"endpoint": endpoint, "status": refusal.status,
                  "reason": refusal.detail or str(refusal)})


class GroupCommit:
    """Appends EST records as they come, several at a time: records that arrive while an append
    (one seal, one fsync) is running go together in the next one. Each `record` returns once
    its own record is on disk, so a response never goes out before its audit record; under load
    the cost of an append is shared by every enrollment that waited for it."""

    def __init__(self, trail: Trail) -> None:
        self.trail = trail
        self._waiting: list[tuple[Event, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, event: Event) -> None:
        """Append `event` (in a thread), then forward in the background: a slow receiver never
        delays the response. A failed append is logged, and the enrollment still answered."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((event, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        try:
            await done
        except AuditError as exc:
            log.error("audit: %s (EST %s not recorded)", exc, event.action)

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await asyncio.to_thread(self.trail.append, [event for event, _ in batch],
                                        now_utc())
            except AuditError as exc:
                for _, done in batch:
                    if not done.done():  # its request may have been cancelled meanwhile
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
            if self.trail.destinations:
                task = asyncio.create_task(asyncio.to_thread(self.trail.forward))
                _forwarding.add(task)
                task.add_done_callback(_forwarding.discard)
        self._writer = None
