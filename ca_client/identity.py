"""In-process identity for Python services: one object keeps the certificate fresh in a
background thread and hands out credentials that follow each renewal.

    identity = Identity(AgentConfig(server="ca:50051", out=Path("/var/lib/svc/tls"), ...))
    identity.start()                                  # enrolls first if it must
    server.add_secure_port(addr, identity.server_credentials())   # follows renewals
    channel = identity.channel("peer:443")            # rebuilt under the stubs on renewal
    ctx = identity.ssl_context(server_side=True)      # follows renewals (SNI-time switch)
"""

from __future__ import annotations

import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import grpc
import structlog

from .agent import Agent, AgentConfig
from .clock import Clock
from .files import Credentials, pem_parts, read_credentials

log = structlog.get_logger("signet.identity")

OLD_CHANNEL_GRACE = 30.0  # seconds in-flight calls get on a channel replaced by a renewal


class Identity:
    def __init__(self, config: AgentConfig, clock: Clock | None = None) -> None:
        self._agent = Agent(config, clock=clock)
        self._config = config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._creds: Credentials | None = read_credentials(config.out)
        self._generation = 0
        self._contexts: dict[bool, tuple[int, ssl.SSLContext]] = {}  # server_side -> built
        self.on_renew: list[Callable[[Credentials], None]] = []
        self.on_failure: list[Callable[[Exception], None]] = []
        self.error: Exception | None = None  # why the background loop stopped, if it did
        self._agent.renewed.append(self._renewed)
        self._agent.failed.append(self._failed)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Identity:
        """Start the background loop; return once a usable certificate is on hand."""
        ready = threading.Event()
        if self._agent.usable(self._creds):
            ready.set()
        self.on_renew.append(lambda _: ready.set())
        self._ready = ready  # also set when the loop ends: start() must not wait in vain
        self._thread = threading.Thread(target=self._run, name="signet-identity", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"no certificate within {timeout}s: still trying")
        if self.error is not None and self._creds is None:
            raise RuntimeError(f"no certificate: {self.error}") from self.error
        return self

    def _run(self) -> None:
        try:
            self._agent.run(self._stop)
        except Exception as exc:
            self.error = exc
            self._failed(exc)
        finally:
            self._ready.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def __enter__(self) -> Identity:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def renewals(self) -> int:
        """How many times the certificate has been renewed since start()."""
        return self._agent.renewals

    @property
    def credentials(self) -> Credentials:
        with self._lock:
            if self._creds is None:
                raise RuntimeError("no certificate yet: call start() first")
            return self._creds

    def _failed(self, error: Exception) -> None:
        self._call(self.on_failure, error)

    @staticmethod
    def _call(callbacks: list[Callable[[Any], None]], arg: Any) -> None:
        """Every callback runs, whatever the others do (a snapshot: they come and go)."""
        for callback in list(callbacks):
            try:
                callback(arg)
            except Exception:
                log.exception("identity_callback_failed")

    def _renewed(self, creds: Credentials) -> None:
        with self._lock:
            self._creds = creds
            self._generation += 1
        self._call(self.on_renew, creds)

    # -- gRPC server --------------------------------------------------------------------------
    def server_credentials(self, require_client_auth: bool = True) -> grpc.ServerCredentials:
        """Server credentials that present the current certificate at every new handshake."""

        def config() -> grpc.ServerCertificateConfiguration:
            key, chain, roots = pem_parts(self.credentials)
            return grpc.ssl_server_certificate_configuration([(key, chain)], roots)

        seen = self._generation  # read before building: a renewal in between is not missed

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal seen
            if seen == self._generation:
                return None  # keep the current one
            seen = self._generation
            return config()

        return grpc.dynamic_ssl_server_credentials(
            config(),
            cast(Callable[[], grpc.ServerCertificateConfiguration], fetch),
            require_client_authentication=require_client_auth,
        )

    # -- gRPC client ----------------------------------------------------------------------------
    def channel(self, target: str, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        """A channel presenting the current certificate; after each renewal the calls go
        through a new channel (gRPC credentials are immutable), existing stubs included."""
        return cast(grpc.Channel, RenewingChannel(self, target, options or []))

    def _secure_channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        key, chain, roots = pem_parts(self.credentials)
        creds = grpc.ssl_channel_credentials(roots, key, chain)
        return grpc.secure_channel(target, creds, options=options)

    # -- ssl ------------------------------------------------------------------------------------
    def ssl_context(self, server_side: bool = False) -> ssl.SSLContext:
        """An SSLContext with the current certificate, trusting this CA, peers' certificates
        required. Contexts are never changed under a handshake (OpenSSL would briefly hold a
        certificate without its key): a server-side context switches each new connection to
        the current one from its SNI callback, so it follows renewals by itself; a client asks
        again per connection (or from an on_renew callback) to get the current one."""
        current = self._current_context(server_side)
        if not server_side:
            return current
        front = self._build_context(True, self.credentials)

        def switch(sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            sock.context = self._current_context(True)

        front.sni_callback = switch
        return front

    def _current_context(self, server_side: bool) -> ssl.SSLContext:
        with self._lock:
            cached = self._contexts.get(server_side)
            if cached is not None and cached[0] == self._generation:
                return cached[1]
            generation, creds = self._generation, self._creds
        if creds is None:
            raise RuntimeError("no certificate yet: call start() first")
        ctx = self._build_context(server_side, creds)
        with self._lock:
            self._contexts[server_side] = (generation, ctx)
        return ctx

    @staticmethod
    def _build_context(server_side: bool, creds: Credentials) -> ssl.SSLContext:
        # Our roots only: never the system's public CAs (create_default_context loads them).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        key, chain, roots = pem_parts(creds)
        ctx.load_verify_locations(cadata=roots.decode())
        # load_cert_chain reads files only: a private temporary directory, gone at once.
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            key_file.touch(mode=0o600)
            key_file.write_bytes(key)
            cert_file.write_bytes(chain)
            ctx.load_cert_chain(cert_file, key_file)
        return ctx


class _Renewing:
    """A multicallable that resolves the owner's current channel at each call."""

    def __init__(self, owner: RenewingChannel, kind: str, args: tuple[Any, ...], kw: Any):
        self._owner, self._kind, self._args, self._kw = owner, kind, args, kw

    def _current(self) -> Any:
        return getattr(self._owner.current, self._kind)(*self._args, **self._kw)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self._current()(*args, **kw)

    def with_call(self, *args: Any, **kw: Any) -> Any:
        return self._current().with_call(*args, **kw)

    def future(self, *args: Any, **kw: Any) -> Any:
        return self._current().future(*args, **kw)


class RenewingChannel:
    def __init__(self, identity: Identity, target: str, options: list[tuple[str, Any]]) -> None:
        self._identity, self._target, self._options = identity, target, options
        self._lock = threading.Lock()
        self.current = identity._secure_channel(target, options)
        identity.on_renew.append(self._swap)

    def _swap(self, _: Credentials) -> None:
        fresh = self._identity._secure_channel(self._target, self._options)
        with self._lock:
            old, self.current = self.current, fresh
        # Calls already running on the old channel finish; it is closed after a grace period.
        timer = threading.Timer(OLD_CHANNEL_GRACE, old.close)
        timer.daemon = True
        timer.start()

    def unary_unary(self, *args: Any, **kw: Any) -> _Renewing:
        return _Renewing(self, "unary_unary", args, kw)

    def unary_stream(self, *args: Any, **kw: Any) -> _Renewing:
        return _Renewing(self, "unary_stream", args, kw)

    def stream_unary(self, *args: Any, **kw: Any) -> _Renewing:
        return _Renewing(self, "stream_unary", args, kw)

    def stream_stream(self, *args: Any, **kw: Any) -> _Renewing:
        return _Renewing(self, "stream_stream", args, kw)

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        self.current.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        self.current.unsubscribe(callback)

    def close(self) -> None:
        if self._swap in self._identity.on_renew:
            self._identity.on_renew.remove(self._swap)
        self.current.close()

    def __enter__(self) -> RenewingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
