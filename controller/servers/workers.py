"""`fleetpki serve --workers N`: N processes answering on the same ports.

The parent prepares once: it unlocks the keystore, issues the HTTPS certificate and builds the
TLS context (the key stays in memory), then forks the workers and serves nothing itself. Each
worker opens its own `ServerState` (inventory connection, CA keys, declaration, OCSP answers)
and listens on its own sockets bound to the shared ports with SO_REUSEPORT: the kernel
spreads new connections over the workers' sockets (Linux hashes each connection to one of
them). OCSP, CRLs, CA certificates and /metrics are read-only and scale so.

EST (HTTPS) is served by every worker too, each on its own socket bound to the shared HTTPS
port. Enrollments write through each worker's own connection (SQLite serializes the writers);
another worker's commit costs the others one query and their cached OCSP answers, not a reload
of the declaration (`ServerState.refresh`). Each worker throttles failed enrollments on its own
(`controller/servers/throttle.py`): a client whose connections the kernel spreads over N
workers gets up to N times the failures before every worker has locked it out.

Metrics: prometheus_client's multi-process mode. The parent makes a private directory
(mode 0700) and names it in PROMETHEUS_MULTIPROC_DIR for the workers; each worker writes its
counters to its own files there, and `/metrics`, answered by whichever worker gets the scrape,
sums every file, so the counters are those of the whole server. The parent removes the
directory when it stops.

A worker that dies is replaced after a second (its counts stay in its files; connections
waiting in its socket's queue are reset, new ones go to the others); SIGTERM or SIGINT to the
parent stops every worker and then the parent; a worker whose parent is gone (SIGKILL) stops
within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from types import FrameType

from controller.servers.app import Listener, ServeOptions, Server, server_tls
from controller.servers.state import ServerState

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BACKLOG = 1024
RESTART_DELAY = 1.0  # seconds before a dead worker is replaced
PARENT_CHECK = 1.0  # seconds between a worker's checks that its parent is alive


def shared_socket(listener: Listener) -> socket.socket:
    """A listening TCP socket on the listener's address that others may share (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Workers:
    """The parent: forks `count` workers, replaces those that die, stops them on a signal."""

    def __init__(self, make_state: Callable[[], ServerState], options: ServeOptions,
                 count: int, ready: Callable[[dict[str, int]], None] = lambda ports: None
                 ) -> None:
        self.make_state = make_state
        self.options = options
        self.count = count
        self.ready = ready
        self.listeners = {kind: listener for kind, listener in
                          (("http", options.http), ("https", options.https)) if listener}
        self.ports: dict[str, int] = {}
        self.context: ssl.SSLContext | None = None
        self.pids: dict[int, int] = {}  # pid -> worker number
        self.stopping = False

    def run(self) -> None:
        """Prepare, fork, supervise; returns when stopped by SIGTERM or SIGINT."""
        state = self.make_state()  # a wrong passphrase or a bad --tls-ca stops here
        try:
            if self.options.https is not None:
                self.context = server_tls(state, self.options)
        finally:
            state.close()
        directory = tempfile.mkdtemp(prefix="fleetpki-metrics-")  # 0700, ours alone
        os.environ[MULTIPROC_ENV] = directory
        previous = {number: signal.signal(number, self._stop)
                    for number in (signal.SIGTERM, signal.SIGINT)}
        try:
            for number in range(self.count):
                self._spawn(number)
            self.ready(self.ports)
            self._supervise()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self._signal_workers()
            self._reap()
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(directory, ignore_errors=True)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self._signal_workers()

    def _signal_workers(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _reap(self) -> None:
        while self.pids:
            pid, _ = os.wait()
            self.pids.pop(pid, None)

    def _supervise(self) -> None:
        while self.pids:
            pid, status = os.wait()
            number = self.pids.pop(pid, None)
            if number is None or self.stopping:
                continue
            log.warning("worker %d (pid %d) %s; another starts in %.0f s", number, pid,
                        describe_exit(status), RESTART_DELAY)
            time.sleep(RESTART_DELAY)
            if not self.stopping:
                self._spawn(number)

    def _spawn(self, number: int) -> None:
        sockets = {}
        try:
            for kind, listener in self.listeners.items():
                sockets[kind] = shared_socket(Listener(listener.host,
                                                       self.ports.get(kind, listener.port)))
                self.ports[kind] = sockets[kind].getsockname()[1]
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                _worker(self.make_state, self.options, sockets, self.context, parent)
            self.pids[pid] = number
            log.info("worker %d: pid %d", number, pid)
        finally:
            for sock in sockets.values():
                sock.close()  # the worker has its copy


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _worker(make_state: Callable[[], ServerState], options: ServeOptions,
            sockets: dict[str, socket.socket], context: ssl.SSLContext | None,
            parent: int) -> None:
    """The forked child: serve until SIGTERM or SIGINT, then exit (never returns)."""
    code = 1
    try:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_DFL)
        state = make_state()
        try:
            asyncio.run(_serve(state, options, sockets, context, parent))
            code = 0
        finally:
            state.close()
    except BaseException:
        log.exception("worker %d stopped", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)


async def _serve(state: ServerState, options: ServeOptions, sockets: dict[str, socket.socket],
                 context: ssl.SSLContext | None, parent: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    server = Server(state, options, multiprocess=True)
    await server.start(sockets, context)
    orphaned = asyncio.create_task(_parent_gone(parent))
    orphaned.add_done_callback(lambda _: stop.set())
    try:
        await stop.wait()
    finally:
        orphaned.cancel()
        await server.stop()


async def _parent_gone(parent: int) -> None:
    """Returns when the parent (its pid, taken before the fork) is gone, killed without
    stopping its workers, also if that happened while this worker was starting."""
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK)
    log.warning("worker %d: the parent %d is gone, stopping", os.getpid(), parent)
