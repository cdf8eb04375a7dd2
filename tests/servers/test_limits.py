"""Slow and excess clients, with raw sockets: half-sent requests are cut off after the
(configurable, here short) timeouts, connections beyond the limit are refused, and a normal
request still works afterwards. Bounds are generous: the assertions are on the closing, not on
its timing."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from controller.servers.limits import Limits
from tests.servers.conftest import Env, Running, run

WAIT = 20.0  # far beyond the 1 s timeouts: a hung server fails the test, a slow host does not
HEAD = b"GET /ca/root.pem HTTP/1.1\r\nHost: test\r\n"


@pytest.fixture(scope="module")
def strict(env: Env) -> Iterator[Running]:
    running = Running(env, Limits(header_timeout=1.0, body_timeout=1.0, max_connections=64))
    yield running
    running.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def until_closed(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """Everything the server sends until it closes the connection (within WAIT, else fail)."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {WAIT} s")
    finally:
        sock.close()
    return received


def tls(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(connect(port))


def works(server: Running) -> None:
    result = run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                 f"{server.http}/ca/root.pem")
    assert result.stdout == "200", result.stderr


def test_half_sent_head_is_closed(strict: Running) -> None:
    plain = connect(strict.ports["http"])
    plain.sendall(HEAD)  # no blank line: the head never ends
    secure = tls(strict.ports["https"])
    secure.sendall(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\n")
    assert until_closed(plain) == b""
    assert until_closed(secure) == b""
    works(strict)


def test_idle_connection_and_unfinished_handshake_are_closed(strict: Running) -> None:
    idle = connect(strict.ports["http"])
    no_handshake = connect(strict.ports["https"])  # TCP only, no ClientHello
    assert until_closed(idle) == b""
    assert until_closed(no_handshake) == b""


def test_half_sent_body_gets_408(strict: Running) -> None:
    sock = connect(strict.ports["http"])
    sock.sendall(b"POST /ocsp HTTP/1.1\r\nHost: test\r\nContent-Type: application/ocsp-request"
                 b"\r\nContent-Length: 100\r\n\r\n0123456789")
    assert until_closed(sock).startswith(b"HTTP/1.1 408 ")
    works(strict)


def test_keep_alive_connection_is_closed_when_idle(strict: Running) -> None:
    sock = connect(strict.ports["http"])
    sock.sendall(HEAD + b"\r\n")
    reply = until_closed(sock)  # answered, then closed after the idle timeout
    assert reply.startswith(b"HTTP/1.1 200 ") and b"BEGIN CERTIFICATE" in reply


def test_connections_beyond_the_limit_are_refused(env: Env) -> None:
    limited = Running(env, Limits(header_timeout=30.0, body_timeout=30.0, max_connections=2))
    try:
        port = limited.ports["http"]
        held = []
        for _ in range(2):  # two established keep-alive connections
            sock = connect(port)
            sock.sendall(HEAD + b"\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
            held.append(sock)
        assert until_closed(connect(port)).startswith(b"HTTP/1.1 503 ")
        for sock in held:
            sock.close()
        for _ in range(100):  # the server notices the two closes
            result = run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                         f"{limited.http}/ca/root.pem")
            if result.stdout == "200":
                break
            time.sleep(0.1)
        assert result.stdout == "200", result.stderr
    finally:
        limited.stop()


def test_oversized_body_gets_413(strict: Running) -> None:
    size = 70 * 1024  # over the 64 KiB a request body may have
    sock = connect(strict.ports["http"])
    sock.sendall(b"POST /ocsp HTTP/1.1\r\nHost: test\r\nContent-Type: application/ocsp-request"
                 + f"\r\nContent-Length: {size}\r\n\r\n".encode() + bytes(size))
    assert until_closed(sock).startswith(b"HTTP/1.1 413 ")
    works(strict)
