"""The server under test: a real `ca-server serve` in its own process on 127.0.0.1, and the
bench's own admin connection to it (for setup, never inside a timed window)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_load import REPO, SetupError, presented_chain
from bench_proc import process_tree

SERVER_START_TIMEOUT = 90.0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    data: Path
    listen: str
    bootstrap: str
    http: str
    command: list[str]
    note: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM our server; it stops its own workers. Any descendant still alive after it
        exits is reported and then killed by pid (they are ours: children of our server)."""
        family = _descendants(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                print("note: ca-server ignored SIGTERM for 30 s; killing it")
                self.proc.kill()
                self.proc.wait(10)
        for pid in family:
            if Path(f"/proc/{pid}").exists():
                print(f"note: server worker {pid} outlived its parent; killing it")
                os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    return [p for p in process_tree(pid) if p != pid]


def _launch(
    data: Path, logs: Path, workers: int | None, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], list[str]]:
    cmd = [sys.executable, "-m", "ca_server.cli", "serve", "--data-dir", str(data)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {
        **os.environ,
        "SIGNET_LISTEN": "127.0.0.1:0",
        "SIGNET_HTTP_LISTEN": "127.0.0.1:0",
        "SIGNET_BOOTSTRAP_LISTEN": "127.0.0.1:0",
        "SIGNET_METRICS_LISTEN": "127.0.0.1:0",
        "SIGNET_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    # Files, not pipes: a pipe nobody reads would block the server once it filled up.
    out, err = (logs / "server.out").open("wb"), (logs / "server.err").open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
    out.close()
    err.close()
    return proc, cmd


def _wait_ready(proc: subprocess.Popen[bytes], logs: Path) -> bool:
    """True once the server printed 'Try it:'; False if it exited first."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if any(
            line.startswith("Try it:") for line in (logs / "server.out").read_text().splitlines()
        ):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    proc.kill()
    proc.wait(10)
    raise SetupError(f"ca-server was not ready within {SERVER_START_TIMEOUT:.0f} s")


def start_server(
    data: Path, logs: Path, workers: int, extra_env: dict[str, str] | None = None
) -> Server:
    """ca-server serve --workers N; if this server does not know the flag yet, without it.
    `extra_env` adds to the environment it gets (e.g. SIGNET_STORE)."""
    note = ""
    proc, cmd = _launch(data, logs, workers, extra_env)
    if not _wait_ready(proc, logs):
        err = (logs / "server.err").read_text()
        if "unrecognized arguments" not in err:
            raise SetupError(f"ca-server exited ({proc.returncode}):\n{err[-2000:]}")
        note = f"ca-server rejected --workers {workers}; ran one server process instead"
        print(f"note: {note}")
        proc, cmd = _launch(data, logs, None, extra_env)
        if not _wait_ready(proc, logs):
            err = (logs / "server.err").read_text()
            raise SetupError(f"ca-server exited ({proc.returncode}):\n{err[-2000:]}")
    ready = json.loads((data / "serve.json").read_text())
    return Server(
        proc,
        data,
        ready["listen"],
        ready.get("bootstrap_listen", ""),
        ready["http_listen"],
        cmd,
        note,
    )


class Admin:
    """The bench's own admin connection, for setup only (never inside a timed window)."""

    def __init__(self, server: Server) -> None:
        import grpc

        from signet.ca.v1 import ca_pb2_grpc

        data = server.data
        creds = grpc.ssl_channel_credentials(
            (data / "root.pem").read_bytes(),
            (data / "admin" / "key.pem").read_bytes(),
            presented_chain((data / "admin" / "cert.pem").read_bytes()),
        )
        self.channel = grpc.secure_channel(server.listen, creds)
        self.stub = ca_pb2_grpc.CertificateAuthorityStub(self.channel)

    def sign(self, path: str) -> Any:
        from signet.ca.v1 import ca_pb2
        from tests.pki import make_csr, spiffe

        csr = make_csr(uris=[spiffe(path)])[1]
        return self.stub.SignCertificate(ca_pb2.SignCertificateRequest(csr_pem=csr), timeout=30)

    def mint_tokens(self, count: int, inflight: int = 32) -> list[str]:
        """`count` one-time tokens, `inflight` CreateBootstrapToken calls at a time."""
        from signet.ca.v1 import ca_pb2
        from tests.pki import spiffe

        tokens: list[str] = []
        pending: list[Future[Any]] = []
        for i in range(count):
            request = ca_pb2.CreateBootstrapTokenRequest(identity=spiffe(f"bench/enroll/{i}"))
            pending.append(self.stub.CreateBootstrapToken.future(request, timeout=60))
            if len(pending) >= inflight:
                tokens.append(pending.pop(0).result().token)
        tokens += [f.result().token for f in pending]
        return tokens

    def close(self) -> None:
        self.channel.close()
