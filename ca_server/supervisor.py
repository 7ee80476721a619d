"""``ca-server serve --workers N``: N server processes sharing the API, bootstrap and HTTP ports.

The supervisor (this process) reserves each port first — refusing one another program already
listens on, and resolving port 0 once, so every worker binds the same port — then forks the
workers, which bind with SO_REUSEPORT and let the kernel spread connections among them. It
creates no gRPC object (grpcio does not survive fork with live objects) and opens no store:
each worker loads the CA itself. It writes serve.json once every worker is ready, restarts a
worker that dies, and on SIGTERM stops them all within the grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from .config import CaConfig
from .core.errors import ConfigurationError, SignetError
from .core.lease import holder_id
from .datadir import DataDir, load_ca
from .files import atomic_write
from .logs import configure_logging, flush_logs
from .metrics import MULTIPROC_ENV

log = structlog.get_logger("signet.supervisor")

READY_TIMEOUT = 120.0
MAX_RESTARTS = 5  # within RESTART_WINDOW seconds, then the supervisor gives up
RESTART_WINDOW = 60.0
_PR_SET_PDEATHSIG = 1


def split_host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigurationError(f"{listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means all


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reserve_port(listen: str, what: str) -> tuple[socket.socket, str]:
    """A bound (not listening) SO_REUSEPORT socket holding the port for the workers, and the
    resolved host:port. A port something else listens on is refused, as a lone server would."""
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if port:
            with socket.socket(family, socket.SOCK_STREAM) as probe:  # without SO_REUSEPORT
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        held = socket.socket(family, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((host, port))
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {listen} ({what}): {exc.strerror}") from None
    return held, join_host_port(host, held.getsockname()[1])


def _die_with_parent() -> None:
    """A worker must not outlive its supervisor (it would hold the ports and the data dir)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclasses.dataclass
class _Worker:
    index: int
    pid: int
    ready: dict[str, object] | None = None


class Supervisor:
    def __init__(self, config: CaConfig, passphrase: bytes | None, workers: int) -> None:
        self._passphrase = passphrase
        self._count = workers
        self._held: list[socket.socket] = []
        self._workers: dict[int, _Worker] = {}
        self._restarts: list[float] = []
        self._lock = threading.Lock()
        # Woken through a pipe: a signal handler must take no lock (the main thread it
        # interrupts may hold it), and a byte in a pipe is never lost.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._config = self._reserve(config)
        self._serve_json = DataDir(config.data_dir).serve_json
        # The workers' counters, in files every worker's /metrics adds up (prometheus_client's
        # multi-process mode, chosen when a worker first imports it: after this, after fork).
        metrics_dir = DataDir(config.data_dir).path / "metrics.d"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # a previous run's counts are not ours
        metrics_dir.mkdir(mode=0o700)
        os.environ[MULTIPROC_ENV] = str(metrics_dir)

    # -- ports ------------------------------------------------------------------------------
    def _reserve(self, config: CaConfig) -> CaConfig:
        resolved: dict[str, Any] = {}
        for name, what in (("listen", "API"), ("bootstrap_listen", "bootstrap"),
                           ("http_listen", "HTTP"), ("metrics_listen", "metrics")):  # fmt: skip
            listen = getattr(config.server, name)
            if listen:
                try:
                    held, resolved[name] = reserve_port(listen, what)
                except ConfigurationError:
                    self._release()
                    raise
                self._held.append(held)
        return dataclasses.replace(config, server=dataclasses.replace(config.server, **resolved))

    def _release(self) -> None:
        for held in self._held:
            held.close()
        self._held.clear()

    @property
    def address(self) -> str:
        return self._config.server.listen

    @property
    def http_address(self) -> str:
        return self._config.server.http_listen

    # -- workers ----------------------------------------------------------------------------
    def _fork(self, index: int) -> tuple[_Worker, int]:
        read_fd, write_fd = os.pipe()
        flush_logs()  # else the child inherits, and writes again, what is still buffered
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_fd)
            code = 1
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            try:
                code = _worker_main(self._config, self._passphrase, write_fd, self._held)
            finally:
                flush_logs()
                os._exit(code)
        os.close(write_fd)
        worker = _Worker(index, pid)
        with self._lock:
            self._workers[pid] = worker
        return worker, read_fd

    def _await_ready(self, worker: _Worker, read_fd: int, timeout: float) -> bool:
        """Read the worker's ready line; False if it exited or said nothing in time."""
        try:
            deadline = time.monotonic() + timeout
            data = b""
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                    return False
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    return False
                data += chunk
        finally:
            os.close(read_fd)
        worker.ready = json.loads(data)
        return True

    def _wake(self) -> None:
        if self._wake_w < 0:
            return  # closed: its number may belong to another file by now
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _sleep(self, timeout: float) -> None:
        """Until a child exits, stop is asked, or timeout; whichever is first."""
        if self._wake_r < 0:
            return
        if select.select([self._wake_r], [], [], timeout)[0]:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 4096)

    def start(self) -> None:
        """Fork every worker and wait until each serves; raise if one cannot start."""
        # Before the first fork: a worker that dies at once must still be noticed.
        signal.signal(signal.SIGCHLD, lambda *_: self._wake())
        pending = [self._fork(i) for i in range(self._count)]
        for worker, read_fd in pending:
            if not self._await_ready(worker, read_fd, READY_TIMEOUT):
                self.stop(0)
                raise ConfigurationError(
                    f"worker {worker.index} (pid {worker.pid}) did not start; see its error above"
                )
        self._write_serve_json()
        log.info("workers_ready", workers=sorted(self._workers), listen=self.address)

    def _write_serve_json(self) -> None:
        with self._lock:
            pids = sorted(w.pid for w in self._workers.values() if w.ready)
            first = next((w.ready for w in self._workers.values() if w.ready), {})
        ready = {
            k: v
            for k, v in first.items()
            if k in {"listen", "bootstrap_listen", "http_listen", "metrics_listen"}
        }
        ready.update(pid=os.getpid(), workers=pids)
        atomic_write(self._serve_json, json.dumps(ready).encode() + b"\n")

    def run(self, stop: threading.Event) -> None:
        """Supervise until `stop` is set: reap and restart workers that die."""

        def watch() -> None:
            stop.wait()
            self._wake()

        threading.Thread(target=watch, daemon=True).start()
        while not stop.is_set():
            self._reap_and_restart()  # also those that died before we got here
            self._sleep(1.0)

    def _reap_and_restart(self) -> None:
        for pid, status in self._reap():
            with self._lock:
                worker = self._workers.pop(pid, None)
            if worker is None or self._stopping:
                continue
            log.error("worker_died", pid=pid, index=worker.index, **_exit_reason(status))
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW]
            if len(self._restarts) >= MAX_RESTARTS:
                log.error("workers_crash_looping", restarts=len(self._restarts))
                os.kill(os.getpid(), signal.SIGTERM)
                return
            self._restarts.append(now)
            new, read_fd = self._fork(worker.index)

            def ready(new: _Worker = new, read_fd: int = read_fd) -> None:
                if self._await_ready(new, read_fd, READY_TIMEOUT):
                    self._write_serve_json()
                    log.info("worker_restarted", pid=new.pid, index=new.index)

            threading.Thread(target=ready, daemon=True).start()

    @staticmethod
    def _reap() -> list[tuple[int, int]]:
        done = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            done.append((pid, status))
        return done

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM every worker, wait for them (SIGKILL after grace + 10 s), remove serve.json."""
        self._stopping = True
        with self._lock:
            pids = list(self._workers)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds + 10
        alive = set(pids)
        while alive:
            for pid, _ in self._reap():
                alive.discard(pid)
            if not alive:
                break
            if time.monotonic() > deadline:
                for pid in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            self._sleep(0.05)
        self._serve_json.unlink(missing_ok=True)
        self._release()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _exit_reason(status: int) -> dict[str, object]:
    if os.WIFSIGNALED(status):
        return {"signal": signal.Signals(os.WTERMSIG(status)).name}
    return {"exit_code": os.waitstatus_to_exitcode(status)}


def _worker_main(
    config: CaConfig, passphrase: bytes | None, ready_fd: int, held: list[socket.socket]
) -> int:
    """A worker: load the CA, serve on the reserved ports, say ready, stop on SIGTERM."""
    from .server import start_server  # grpc objects are made only here, after fork

    _die_with_parent()
    for sock in held:
        sock.close()
    stop = threading.Event()
    handler: Callable[..., None] = lambda *_: stop.set()  # noqa: E731
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    configure_logging(config.server.log_level)
    if os.getppid() == 1:  # the supervisor died before we could ask to follow it
        return 1
    try:
        ca = load_ca(config, passphrase)
        running = start_server(ca, reuse_port=True, write_serve_json=False)
    except (ConfigurationError, SignetError, ValueError, OSError) as exc:
        print(f"ca-server: error: worker {os.getpid()}: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception:  # anything else: said, not lost to os._exit
        log.exception("worker_start_failed")
        return 1
    ready = {
        "listen": running.address,
        "bootstrap_listen": running.bootstrap_address,
        "http_listen": running.http_address,
        "metrics_listen": running.metrics_address,
        "pid": os.getpid(),
    }
    os.write(ready_fd, json.dumps({k: v for k, v in ready.items() if v}).encode() + b"\n")
    os.close(ready_fd)
    stop.wait()
    running.stop(config.server.shutdown_grace.total_seconds())
    ca.store.close()
    return 0


def check_loads(config: CaConfig, passphrase: bytes | None) -> None:
    """Fail once, in the supervisor, on what would make every worker fail (keys, passphrase,
    store), before forking any. Leaves no connection or thread behind."""
    ca = load_ca(config, passphrase)
    try:
        # A write that expires at once (no live holder is displaced): a database that reads
        # but cannot be written (read-only, full) fails here once, not once per worker.
        now = ca.authority.clock.now()
        ca.store.acquire_lease("maintenance", holder_id(), now, now)
    finally:
        ca.store.close()
