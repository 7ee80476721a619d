"""A throwaway PostgreSQL cluster for the tests: initdb under a temporary directory, listening
on 127.0.0.1 only, run as the postgres user (PostgreSQL refuses root), stopped at the end.
Each test gets a database of its own.

Without PostgreSQL installed the tests that need it are skipped, unless SIGNET_REQUIRE_POSTGRES
is set (CI sets it), where its absence is a failure rather than a silent skip."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_names = itertools.count()


@dataclass
class PgCluster:
    port: int
    bin: Path
    data: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        name = f"signet_test_{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def ctl(self, *args: str) -> None:
        _as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), *args)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} "
            "-c fsync=on -c max_connections=300"
        )
        # -l: the server's output goes to a file, not to our pipe (which would never close)
        self.ctl("-o", options, "-l", str(self.data / "log"), "-w", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "-w", "stop")


def _as_postgres(*command: str) -> None:
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*run_as, *command], check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    pg_bin = _pg_bin()
    if pg_bin is None:
        if os.environ.get("SIGNET_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here (SIGNET_REQUIRE_POSTGRES) but not installed")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="signet-pg-"))
    base.chmod(0o755)  # the postgres user must reach its data directory
    data = base / "data"
    data.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
    cluster = PgCluster(_free_port(), pg_bin, data)
    _as_postgres(str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.ctl("-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    return pg_cluster.new_database()
