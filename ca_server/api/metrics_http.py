"""The metrics listener (``--metrics-listen``): Prometheus ``GET /metrics`` and ``GET /healthz``,
on a port of their own, never the mTLS one. Workers share it with SO_REUSEPORT, and whichever
answers a scrape reports every worker's counters (see ``metrics``)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

from ..metrics import CaState, exposition

log = structlog.get_logger("signet.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class MetricsListener:
    def __init__(
        self,
        listen: str,
        state: CaState,
        healthy: Callable[[], tuple[bool, str]],
        *,
        reuse_port: bool = False,
    ) -> None:
        """healthy() -> (serving, why not): what GET /healthz reports."""
        host, _, port = listen.rpartition(":")
        self._address = (host.strip("[]") or "127.0.0.1", int(port))
        self._state = state
        self._healthy = healthy
        self._reuse_port = reuse_port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> str:
        state, healthy = self._state, self._healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    try:
                        self._reply(200, exposition(state), CONTENT_TYPE)
                    except Exception:
                        log.exception("metrics_failed")
                        self._reply(500, b"metrics failed; the CA's log has the details\n")
                elif path == "/healthz":
                    ok, why = healthy()
                    self._reply(200 if ok else 503, (b"ok" if ok else why.encode()) + b"\n")
                else:
                    self._reply(404, b"not found: /metrics, /healthz\n")

            def _reply(self, code: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds are not news

        server_class = type("Bound", (_Server,), {"reuse_port": self._reuse_port})
        self._server = server_class(self._address, Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
