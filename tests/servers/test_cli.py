"""`fleetpki serve` as scripts use it: a subprocess on loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servers.conftest import FLEETPKI, Env, ca_files, free_port, run


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
    # without --tls-ca: the CA that issues every declared fleet
    assert "for 127.0.0.1 issued by issuing" in log.read_text()


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 1 with one clear `error:` line, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: {message}" in result.stderr and "Traceback" not in result.stderr, \
        result.stderr


def test_serve_needs_a_listener(env: Env) -> None:
    result = run(*FLEETPKI, "serve", env.repo, "--state-dir", env.state.path)
    refused(result, "give --http HOST:PORT")


@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1", "http"])
def test_serve_port_out_of_range(env: Env, port: str) -> None:
    result = run(*FLEETPKI, "serve", env.repo, "--state-dir", env.state.path, "--http",
                 f"127.0.0.1:{port}")
    refused(result, f"expected HOST:PORT with a port from 1 to 65535, got '127.0.0.1:{port}'")


def test_https_without_tls_ca_and_no_single_issuer(env: Env, tmp_path: Path) -> None:
    for source in env.repo.iterdir():
        (tmp_path / source.name).write_text(source.read_text())
    (tmp_path / "by-root.yaml").write_text(
        "apiVersion: fleetpki.io/v1alpha1\nkind: DeviceFleet\nmetadata: {name: by-root}\n"
        "spec: {issuerRef: {name: root}, profileRef: {name: gateway}, devices: []}\n")
    result = run(*FLEETPKI, "serve", tmp_path, "--state-dir", env.state.path, "--https",
                 f"127.0.0.1:{free_port()}")
    refused(result, "--https needs --tls-ca NAME: the declared fleets are issued by issuing, "
                    "root")


def test_serve_refuses_an_empty_state_directory(env: Env, tmp_path: Path) -> None:
    empty = tmp_path / "state"
    empty.mkdir()
    result = run(*FLEETPKI, "serve", env.repo, "--state-dir", empty, "--http",
                 f"127.0.0.1:{free_port()}")
    refused(result, f"no inventory in {empty}: run `fleetpki apply` first")
    assert list(empty.iterdir()) == []  # no inventory.db created


@pytest.mark.parametrize("damage", ["garbage", "directory"])
def test_serve_with_an_unreadable_inventory(env: Env, tmp_path: Path, damage: str) -> None:
    inventory = tmp_path / "inventory.db"
    if damage == "garbage":
        inventory.write_bytes(b"not a database" * 100)
    else:
        inventory.mkdir()
    result = run(*FLEETPKI, "serve", env.repo, "--state-dir", tmp_path, "--http",
                 f"127.0.0.1:{free_port()}")
    refused(result, f"the inventory {inventory} is damaged" if damage == "garbage" else
            f"cannot open the inventory {inventory}: ")


def unprivileged() -> list[str]:
    """A prefix that runs a command without root's power to read any file: as root, a user
    namespace whose user 1000 stands for us (`unshare`), so file modes apply again."""
    if os.geteuid() != 0:
        return []
    prefix = ["unshare", "-U", "--map-user=1000", "--map-group=1000"]
    if shutil.which("unshare") is None or run(*prefix, "true").returncode != 0:
        pytest.skip("root reads any directory, and unshare -U is not available here")
    return prefix


def test_serve_with_an_unreadable_state_directory(env: Env, tmp_path: Path) -> None:
    prefix = unprivileged()
    state = tmp_path / "state"
    shutil.copytree(env.state.path, state)
    state.chmod(0)
    try:
        result = run(*prefix, *FLEETPKI, "serve", env.repo, "--state-dir", state, "--http",
                     f"127.0.0.1:{free_port()}")
    finally:
        state.chmod(0o700)
    refused(result, f"cannot access {state / 'inventory.db'}: Permission denied")
