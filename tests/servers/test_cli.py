"""`fleetpki serve` as scripts use it: a subprocess on loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.conftest import Env, ca_files, fleetpki_command, run

FLEETPKI = fleetpki_command()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(env: Env, tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    http, https = free_port(), free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [*FLEETPKI, "serve", str(env.repo), "--state-dir", str(env.state.path), "--http",
             f"127.0.0.1:{http}", "--https", f"127.0.0.1:{https}", "--tls-ca", "issuing"],
            stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        for _ in range(200):
            if run("curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{http}/ca/root.pem"
                   ).returncode == 0 or process.poll() is not None:
                break
            time.sleep(0.05)
        assert process.poll() is None, log.read_text()
        yield http, https, log
    finally:
        process.terminate()
        process.wait(10)


def test_serve_command(served: tuple[int, int, Path], env: Env) -> None:
    http, https, log = served
    _, bundle = ca_files(env)
    assert run("curl", "-sSf", "-o", "/dev/null", f"http://127.0.0.1:{http}/crl/issuing.crl"
               ).returncode == 0
    cacerts = run("curl", "-sSf", "--cacert", bundle,
                  f"https://127.0.0.1:{https}/.well-known/est/cacerts")
    assert cacerts.returncode == 0, cacerts.stderr
    with env.state.inventory() as inventory:
        assert inventory.active_device("_serve", "127.0.0.1") is not None


def test_serve_needs_a_listener(env: Env) -> None:
    result = run(*FLEETPKI, "serve", env.repo, "--state-dir", env.state.path)
    assert result.returncode == 1 and "--http" in result.stderr
    result = run(*FLEETPKI, "serve", env.repo, "--state-dir", env.state.path, "--https",
                 "127.0.0.1:1")
    assert result.returncode == 1 and "--tls-ca" in result.stderr
