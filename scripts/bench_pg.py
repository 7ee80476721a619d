"""PostgreSQL for the replica rows (`bench.py --store`): the database server (one the bench
starts and deletes, or one it is given), a fresh database per configuration, and CA replicas
on it (`ca-server init --store URL` once, a copy of the data directory per replica, `serve`
on each). Setup only: nothing here is timed."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench_load import REPO, SetupError
from bench_server import Server, start_server

PG_TIMEOUT = 120.0  # seconds for initdb, pg_ctl start/stop, and ca-server init
CONNECT_TIMEOUT = 10  # seconds, the bench's own connections to PostgreSQL
_names = itertools.count()


def _run_as_postgres(*command: str) -> None:
    """PostgreSQL refuses to run as root: as root, run it as the postgres user."""
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    try:
        subprocess.run([*run_as, *command], check=True, capture_output=True, timeout=PG_TIMEOUT)
    except subprocess.CalledProcessError as exc:
        out = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip()
        raise SetupError(
            f"{Path(command[0]).name} failed ({exc.returncode}): {out[-1500:]}"
        ) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin, else wherever initdb is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def redacted(url: str) -> str:
    """The URL without a password, for what the bench prints and writes."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc and ":" in netloc.rsplit("@", 1)[0]:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        "password=***" if q.startswith("password=") else q for q in parts.query.split("&") if q
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def has_password(url: str) -> bool:
    from ca_server.config import url_has_password  # the rule init uses for config.toml

    return url_has_password(url)


@dataclass
class Postgres:
    """A PostgreSQL server the bench may CREATE DATABASE on. `postmaster` is the pid whose
    process tree is PostgreSQL's (its CPU is reported), or None when the server is not the
    bench's own (then its CPU is not measured)."""

    url: str  # a database to connect to for CREATE/DROP DATABASE
    postmaster: int | None
    description: str
    version: str = ""

    def _connect(self):  # type: ignore[no-untyped-def]
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise SetupError(f"cannot reach PostgreSQL at {redacted(self.url)}: {exc}") from None

    def server_version(self) -> str:
        with self._connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A fresh, empty database signet_bench_<pid>_<n>_<label>, dropped afterwards; yields
        its URL (the base URL with the database name replaced)."""
        name = f"signet_bench_{os.getpid()}_{next(_names)}_{label}"
        with self._connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urllib.parse.urlsplit(self.url)._replace(path="/" + name).geturl()
        finally:
            self._drop(name)

    def _drop(self, name: str) -> None:
        import psycopg

        try:
            with self._connect() as conn:
                try:  # FORCE (PostgreSQL 13+): a connection left behind does not block it
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except psycopg.errors.SyntaxError:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        except (psycopg.Error, SetupError) as exc:
            print(f"note: could not drop database {name}: {exc}", flush=True)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Postgres]:
    """initdb in a temporary directory, 127.0.0.1 and a free port only, trust authentication,
    fsync on (as SQLite's synchronous=FULL), max_connections 300; stopped and deleted after."""
    binaries = pg_bin()
    if binaries is None:
        raise SetupError("--store auto needs PostgreSQL installed (initdb not found)")
    base = Path(tempfile.mkdtemp(prefix="signet-bench-pg-"))
    try:
        base.chmod(0o755)  # the postgres user must reach its data directory
        data = base / "data"
        data.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(data, user.pw_uid, user.pw_gid)
        _run_as_postgres(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        port = _free_port()
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {data} -c fsync=on -c max_connections=300"
        )
        ctl = str(binaries / "pg_ctl")
        # -l: the server's output goes to a file, not to our pipe (which would never close)
        _run_as_postgres(
            ctl, "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "start"
        )
        try:
            postmaster = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
            cluster = Postgres(
                f"postgresql://postgres@127.0.0.1:{port}/postgres",
                postmaster,
                f"a throwaway cluster the bench started ({binaries.parent.name}, initdb in a "
                "temporary directory, 127.0.0.1 only, fsync=on, max_connections=300, otherwise "
                "defaults)",
            )
            cluster.version = cluster.server_version()
            yield cluster
        finally:
            try:
                _run_as_postgres(ctl, "-D", str(data), "-m", "fast", "-w", "stop")
            except (SetupError, subprocess.SubprocessError):
                _run_as_postgres(ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def postgres(store: str) -> Iterator[Postgres]:
    """`--store auto`: a throwaway cluster; `--store postgresql://…`: that server."""
    if store == "auto":
        with throwaway_cluster() as cluster:
            yield cluster
        return
    if not store.startswith(("postgresql://", "postgres://")):
        raise SetupError(f"--store takes 'auto' or a postgresql:// URL, not {store!r}")
    given = Postgres(
        store, None, f"the server given with --store ({redacted(store)}); its CPU is not measured"
    )
    given.version = given.server_version()
    yield given


def init_ca(data: Path, url: str, logs: Path) -> None:
    """ca-server init --data-dir DATA --store URL (once per database)."""
    cmd = [sys.executable, "-m", "ca_server.cli", "init", "--data-dir", str(data), "--store", url]
    env = {**os.environ, "SIGNET_LOG_LEVEL": "warning"}
    began = time.monotonic()
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=PG_TIMEOUT
    )
    (logs / "init.err").write_text(done.stderr)
    if done.returncode != 0:
        raise SetupError(
            f"ca-server init --store failed ({done.returncode}):\n{done.stderr[-2000:]}"
        )
    print(f"  ca-server init --store: {time.monotonic() - began:.1f} s", flush=True)


@contextlib.contextmanager
def replicas(base: Path, url: str, count: int, workers: int) -> Iterator[list[Server]]:
    """`count` replicas on the database at `url`: init the first data directory, copy it for
    each other replica, then `serve --workers N` on each; all stopped afterwards."""
    first = base / "r0" / "ca-data"
    first.parent.mkdir(parents=True)
    init_ca(first, url, first.parent)
    dirs = [first]
    for n in range(1, count):
        other = base / f"r{n}" / "ca-data"
        shutil.copytree(first, other)  # what an operator copies to the next machine
        dirs.append(other)
    # config.toml keeps a URL without its password only; one with a password comes by env.
    env = {"SIGNET_STORE": url} if has_password(url) else {}
    servers: list[Server] = []
    try:
        for data in dirs:
            servers.append(start_server(data, data.parent, workers, env))
        yield servers
    finally:
        for server in servers:
            server.stop()
