"""A real, throwaway PostgreSQL for the tests (no mock): `initdb` in a temporary directory,
served on loopback (and a Unix socket in that directory) by `pg_ctl`, as the `postgres` user
when the tests run as root (initdb refuses root). Each test gets a fresh database, copied from
a template that `fleetpki migrate` made once.

The server binaries come from PATH, else `pg_config --bindir`, else Debian's
/usr/lib/postgresql/<version>/bin. Without them the PostgreSQL tests skip, unless
FLEETPKI_REQUIRE_POSTGRES=1 (CI) makes that a failure.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

from controller.stores.inventory import migrate

REQUIRE_ENV = "FLEETPKI_REQUIRE_POSTGRES"
TEMPLATE = "fleetpki_template"
USER = "fleetpki"


def server_bindir() -> Path | None:
    """Where initdb and pg_ctl are, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                check=False).stdout.strip()
        if bindir and (Path(bindir) / "initdb").is_file():
            return Path(bindir)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))  # Debian's layout
    return Path(debian[-1]).parent if debian else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """A running PostgreSQL cluster; `database()` makes a new database and returns its URL."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # not under pytest's base temp: the postgres user must be able to reach it
        self.root = Path(tempfile.mkdtemp(prefix="fleetpki-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.as_user = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
        self.names = itertools.count(1)

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True,
                       capture_output=True, text=True, cwd=self.root)

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "--no-locale",
                  "-E", "UTF8")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-o", options, "start")
        self._create(TEMPLATE, "template0")
        migrate(self.url(TEMPLATE))

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _create(self, name: str, template: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def database(self, schema: bool = True) -> str:
        """A new database, with the inventory's schema (`schema`) or empty."""
        name = f"t{next(self.names)}"
        self._create(name, TEMPLATE if schema else "template0")
        return self.url(name)
