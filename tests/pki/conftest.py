"""Shared fixtures: cached keys and CA chains, an `openssl` CLI runner, a file writer."""

import shutil
import subprocess
from pathlib import Path

import pytest

from controller.pki import PrivateKey, generate_private_key

from .support import Chain, ChainFor, KeyFor, Openssl, Writer, make_chain


@pytest.fixture(scope="session")
def chain_for() -> ChainFor:
    """Build (once per algorithm per session) a root -> intermediate -> leaf chain."""
    cache: dict[str, Chain] = {}

    def get(algorithm: str) -> Chain:
        if algorithm not in cache:
            cache[algorithm] = make_chain(algorithm)
        return cache[algorithm]

    return get


@pytest.fixture(scope="session")
def key_for() -> KeyFor:
    """Generate (once per algorithm per session) a private key."""
    cache: dict[str, PrivateKey] = {}

    def get(algorithm: str) -> PrivateKey:
        if algorithm not in cache:
            cache[algorithm] = generate_private_key(algorithm)
        return cache[algorithm]

    return get


@pytest.fixture
def openssl(tmp_path: Path) -> Openssl:
    """Run the system `openssl` CLI in tmp_path; output is stdout + stderr combined."""
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("openssl CLI not installed")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
            check=False,
        )

    return run


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    """Write bytes to tmp_path/name and return the name (openssl runs in tmp_path)."""

    def put(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        return name

    return put
