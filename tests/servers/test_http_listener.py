"""The plain-HTTP listener's HTTP, spoken with raw sockets: pipelining, HEAD, 405 and 404,
HTTP/1.0 keep-alive, chunked bodies, `Expect: 100-continue`, bad and oversized heads. OCSP
answers are read back by `openssl ocsp -respin`."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import load_pem_x509_certificate
from cryptography.x509 import ocsp as x509_ocsp

from controller.servers.distribution import Reply, Route
from tests.servers.conftest import Env, Running, ca_files, device_cert, run
from tests.servers.test_limits import connect, until_closed

Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


def ocsp_request(env: Env, device: str) -> bytes:
    issuer_path, _ = ca_files(env)
    cert_path, _ = device_cert(env, device)
    issuer = load_pem_x509_certificate(issuer_path.read_bytes())
    cert = load_pem_x509_certificate(cert_path.read_bytes())
    request = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    return request.public_bytes(serialization.Encoding.DER)


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/ocsp-request",
             f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_replies(sock: socket.socket, count: int, heads_only: frozenset[int] = frozenset()
                 ) -> list[Answer]:
    """`count` responses read off `sock` in order; those at `heads_only` carry no body."""
    buffer, replies = b"", []
    while len(replies) < count:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(replies)} of {count} replies: {buffer!r}"
            buffer += chunk
            continue
        status_line, *lines = buffer[:end].decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in
                   (line.partition(":") for line in lines)}
        size = 0 if len(replies) in heads_only else int(headers["content-length"])
        while len(buffer) < end + 4 + size:
            chunk = sock.recv(65536)
            assert chunk, "closed in a body"
            buffer += chunk
        replies.append((int(status_line.split()[1]), headers, buffer[end + 4:end + 4 + size]))
        buffer = buffer[end + 4 + size:]
    assert buffer == b"", buffer
    return replies


def ocsp_status(env: Env, der: bytes, name: str) -> str:
    """`openssl ocsp`'s reading of a response: its status and the certificate's."""
    path = env.pem(f"{name}.resp", der)
    text = run("openssl", "ocsp", "-respin", path, "-resp_text", "-noverify")
    assert text.returncode == 0, text.stderr
    response = re.search(r"OCSP Response Status: (\w+)", text.stdout)
    cert = re.search(r"Cert Status: (\w+)", text.stdout)
    assert response is not None and cert is not None, text.stdout
    return f"{response.group(1)} {cert.group(1)}"


def test_pipelined_requests_are_answered_in_order(server: Running, env: Env) -> None:
    """Three requests in one packet, a HEAD among them: three answers, in order, the HEAD's
    without its body (else the next answer would not parse)."""
    pem = run("curl", "-sSf", f"{server.http}/ca/issuing.pem").stdout.encode()
    sock = connect(server.ports["http"])
    sock.sendall(post("/ocsp", ocsp_request(env, "dev-1"))
                 + b"HEAD /ca/issuing.pem HTTP/1.1\r\nHost: test\r\n\r\n"
                 + post("/ocsp/", ocsp_request(env, "dev-2"))
                 + b"GET /ca/issuing.pem?any=query HTTP/1.1\r\nHost: test\r\n\r\n")
    first, headed, second, fetched = read_replies(sock, 4, heads_only=frozenset({1}))
    sock.close()
    assert (first[0], first[1]["content-type"]) == (200, "application/ocsp-response")
    assert ocsp_status(env, first[2], "pipelined-1") == "successful good"
    assert headed[0] == 200 and int(headed[1]["content-length"]) == len(pem)
    assert ocsp_status(env, second[2], "pipelined-2") == "successful good"
    assert fetched[0] == 200 and fetched[2] == pem
    assert "date" in fetched[1] and "connection" not in fetched[1]


def test_wrong_method_and_unknown_path(server: Running) -> None:
    sock = connect(server.ports["http"])
    sock.sendall(b"GET /ocsp HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"DELETE /ca/issuing.pem HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /nothing/here HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /crl/.crl HTTP/1.1\r\nHost: t\r\n\r\n")
    replies = read_replies(sock, 4)
    sock.close()
    assert [(status, headers.get("allow")) for status, headers, _ in replies] == \
        [(405, "POST"), (405, "GET, HEAD"), (404, None), (404, None)]


def test_http10_keep_alive_only_when_asked(server: Running) -> None:
    sock = connect(server.ports["http"])
    for _ in range(2):  # the connection stays open for the second request
        sock.sendall(b"GET /ca/root.pem HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        [(status, headers, body)] = read_replies(sock, 1)
        assert status == 200 and headers["connection"] == "keep-alive"
        assert body.startswith(b"-----BEGIN CERTIFICATE-----")
    sock.sendall(b"GET /ca/root.pem HTTP/1.0\r\n\r\n")
    reply = until_closed(sock)  # answered, then closed by the server
    assert reply.startswith(b"HTTP/1.1 200 ") and b"Connection: close\r\n" in reply


def test_chunked_body_and_expect_continue(server: Running, env: Env) -> None:
    der = ocsp_request(env, "dev-3")
    sock = connect(server.ports["http"])
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (der[:10], der[10:]))
    sock.sendall(b"POST /ocsp HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + chunked + b"0\r\n\r\n")
    [(status, _, body)] = read_replies(sock, 1)
    assert status == 200 and ocsp_status(env, body, "chunked") == "successful good"

    head = post("/ocsp", der, "Expect: 100-continue")
    sock.sendall(head[:-len(der)])  # the head only: the client waits for 100 Continue
    assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(der)
    [(status, _, body)] = read_replies(sock, 1)
    sock.close()
    assert status == 200 and ocsp_status(env, body, "continued") == "successful good"


def test_bad_and_oversized_heads_are_refused_and_closed(server: Running) -> None:
    sock = connect(server.ports["http"])
    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    assert until_closed(sock).startswith(b"HTTP/1.1 400 ")
    sock = connect(server.ports["http"])
    sock.sendall(b"GET /ca/root.pem HTTP/1.1\r\nHost: t\r\n"
                 + b"X-Filler: " + b"a" * 40_000 + b"\r\n\r\n")
    assert until_closed(sock).startswith(b"HTTP/1.1 431 ")
    sock = connect(server.ports["http"])
    sock.sendall(b"GET /ca/root.pem HTTP/1.1\r\nX-Endless: ")
    for _ in range(9):  # a header that never ends, 36 kB in several packets
        sock.sendall(b"a" * 4_000)
    assert until_closed(sock).startswith(b"HTTP/1.1 431 ")
    assert run("curl", "-sSf", "-o", "/dev/null", f"{server.http}/ca/root.pem").returncode == 0


def test_metrics_counts_the_listeners_answers(server: Running, tmp_path: Path) -> None:
    before = run("curl", "-sSf", f"{server.http}/metrics").stdout
    run("curl", "-s", "-o", "/dev/null", f"{server.http}/no/such/path")
    sock = connect(server.ports["http"])  # refused while reading: counted at its endpoint
    sock.sendall(b"POST /ocsp HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\n\r\n")
    assert until_closed(sock).startswith(b"HTTP/1.1 413 ")
    after = run("curl", "-sSf", f"{server.http}/metrics").stdout

    def refusals(text: str, endpoint: str, reason: str) -> float:
        found = re.search(rf'fleetpki_server_refusals_total\{{endpoint="{endpoint}",'
                          rf'reason="{reason}"\}} ([0-9.e+]+)', text)
        return float(found.group(1)) if found else 0.0

    for endpoint, reason in (("unmatched", "not-found"), ("ocsp", "too-large")):
        assert refusals(after, endpoint, reason) == refusals(before, endpoint, reason) + 1
    assert 'fleetpki_server_requests_total{endpoint="metrics"}' in after


def test_routes_take_names_from_paths() -> None:
    def answer(*_: object) -> Reply:
        return Reply(200, b"")

    ca = Route("ca", "GET", "/ca/", answer, suffix=".pem")
    ocsp_get = Route("ocsp", "GET", "/ocsp/", answer, raw=True)
    assert ca.argument("/ca/issuing%20two.pem") == "issuing two"  # percent-decoded
    assert [ca.argument(p) for p in ("/ca/.pem", "/ca/a/b.pem", "/ca/x.crl", "/cax.pem")] == \
        [None] * 4
    assert ocsp_get.argument("/ocsp/MEow/Q%2B==") == "MEow/Q%2B=="  # base64, as sent
    assert ocsp_get.argument("/ocsp/") is None
