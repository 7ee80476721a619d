"""Wiring: a gRPC server over mTLS with the CA service, health and reflection; serve.json;
graceful shutdown."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from signet.ca.v1 import ca_pb2, ca_pb2_grpc

from .api.http import HttpListener
from .api.interceptor import TRANSPORT_LIMIT, RpcInterceptor
from .api.metrics_http import MetricsListener
from .api.reflection import enable_reflection
from .api.servicer import CertificateAuthorityServicer
from .api.watch import WatchGovernor
from .ceremony import Local, rotate_intermediate_now
from .config import audited_settings
from .core.config_audit import record_config_change
from .core.errors import ConfigurationError
from .core.profile import PublicUrls
from .core.revocation_feed import RevocationFeed
from .datadir import DataDir, LoadedCa, publish_ca_files
from .files import atomic_write
from .maintenance import Maintenance
from .metrics import CaState as MetricsState
from .metrics import instruments
from .serving import ServingCertificate
from .shared_credential import SharedCredential, SharedSignerSlot
from .store.writer import commit_observers

log = structlog.get_logger("signet.server")

SERVICE_NAME: str = ca_pb2.DESCRIPTOR.services_by_name["CertificateAuthority"].full_name


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    serving: ServingCertificate
    address: str  # host:port actually bound
    serve_json: Path | None  # None for a worker: its supervisor owns the file
    maintenance: Maintenance
    http: HttpListener | None = None
    bootstrap: grpc.Server | None = None
    bootstrap_address: str = ""
    metrics: MetricsListener | None = None
    shutting_down: threading.Event = dataclasses.field(default_factory=threading.Event)
    revocation_feed: RevocationFeed | None = None  # its watch streams end at stop
    watch: WatchGovernor | None = None

    @property
    def http_address(self) -> str:
        return self.http.address if self.http else ""

    @property
    def metrics_address(self) -> str:
        return self.metrics.address if self.metrics else ""

    def stop(self, grace_seconds: float) -> None:
        """Stop taking new RPCs, let in-flight ones finish within the grace period."""
        self.shutting_down.set()  # /healthz says so at once
        self.health.enter_graceful_shutdown()
        if self.revocation_feed is not None:
            self.revocation_feed.close()  # open watch streams end now, not after the grace
        if self.bootstrap:
            self.bootstrap.stop(grace_seconds).wait()
        self.server.stop(grace_seconds).wait()
        if self.http:
            self.http.stop()
        self.maintenance.stop()
        if self.metrics:
            self.metrics.stop()
        if self.serve_json is not None:
            self.serve_json.unlink(missing_ok=True)


def raise_open_file_limit() -> int:
    """Raise the soft limit of open files to the hard one (often 1024 against 1M or more):
    every connection is a descriptor, and running out stops the API accepting anyone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def _bound_address(listen: str, port: int) -> str:
    host = listen.rsplit(":", 1)[0]
    return f"{host}:{port}"


def _start_http(ca: LoadedCa, reuse_port: bool) -> HttpListener | None:
    """Bind the relying-party listener first: with port 0, its address is what certificates
    carry in AIA and CRL Distribution Points unless --public-url says otherwise."""
    listen = ca.config.server.http_listen
    if not listen:
        return None
    settings = ca.config.server
    http = HttpListener(
        ca.authority,
        listen,
        settings.http_request_timeout.total_seconds(),
        settings.http_max_body,
        reuse_port=reuse_port,
        # A local SQLite read never waits on a network; a database server's may.
        inline_reads=ca.config.store_url.startswith("sqlite:"),
    )
    try:
        address = http.start()
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {listen} (HTTP): {exc.strerror}") from None
    if ca.authority.settings.public_urls is None:
        ca.authority.settings = dataclasses.replace(
            ca.authority.settings, public_urls=PublicUrls(f"http://{address}")
        )
    return http


def _start_metrics(
    ca: LoadedCa,
    state: MetricsState,
    healthy: Callable[[], tuple[bool, str]],
    reuse_port: bool,
) -> MetricsListener | None:
    listen = ca.config.server.metrics_listen
    if not listen:
        return None
    listener = MetricsListener(listen, state, healthy, reuse_port=reuse_port)
    try:
        listener.start()
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {listen} (metrics): {exc.strerror}") from None
    return listener


def _grpc_options(reuse_port: bool) -> list[tuple[str, int]]:
    # Alone, one process owns each port: a second server must fail to bind, not share it
    # silently. Workers share them on purpose (the supervisor reserved them first).
    return [
        ("grpc.max_receive_message_length", TRANSPORT_LIMIT),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


def _start_bootstrap(
    ca: LoadedCa,
    servicer: CertificateAuthorityServicer,
    serving: ServingCertificate,
    reuse_port: bool,
) -> tuple[grpc.Server | None, str]:
    """The server-TLS listener that serves Enroll and nothing else."""
    listen = ca.config.server.bootstrap_listen
    if not listen:
        return None, ""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="bootstrap"),
        interceptors=[RpcInterceptor()],
        options=_grpc_options(reuse_port),
    )
    enroll = grpc.unary_unary_rpc_method_handler(
        servicer.Enroll,
        request_deserializer=ca_pb2.EnrollRequest.FromString,
        response_serializer=ca_pb2.IssuedCertificate.SerializeToString,
    )
    generic: Any = grpc.method_handlers_generic_handler(SERVICE_NAME, {"Enroll": enroll})
    server.add_generic_rpc_handlers((generic,))
    try:
        port = server.add_secure_port(listen, serving.bootstrap_credentials())
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigurationError(f"cannot listen on {listen} (bootstrap; address in use?)")
    server.start()
    return server, _bound_address(listen, port)


def start_server(
    ca: LoadedCa, *, reuse_port: bool = False, write_serve_json: bool = True
) -> RunningServer:
    """Serve the API, the bootstrap listener and HTTP. A worker of several (reuse_port) leaves
    serve.json to its supervisor, which knows every worker."""
    settings = ca.config.server
    data = DataDir(ca.config.data_dir)
    ca.authority.issuers.share_signer(SharedSignerSlot(data.ocsp_responder_credential))
    # root.pem, intermediate.pem and admin/ca.pem follow a rotation made anywhere.
    ca.authority.on_hierarchy_change(lambda hierarchy: publish_ca_files(data, hierarchy))
    http = _start_http(ca, reuse_port)
    health_servicer = health.HealthServicer()

    # gRPC health says what /healthz says (see healthy() below), checked at every maintenance
    # poll and whenever the store's health changes: load balancers send callers elsewhere.
    said: list[bool | None] = [None]
    checks: list[Callable[[], tuple[bool, str]]] = []

    def refresh_health(*_: object) -> None:
        if not checks:
            return
        ok, why = checks[0]()
        if ok == said[0]:
            return
        said[0] = ok
        if not ok:
            log.warning("not_serving", reason=why)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, status)

    meters = instruments()
    ca.authority.issuers.observe(meters.ocsp_answer)
    if meters.commit not in commit_observers:
        commit_observers.append(meters.commit)

    def rotate_intermediate() -> object:
        if ca.keys is None:
            return None
        local = Local(data, ca.config, ca.store, ca.keys, ca.authority.clock)
        return rotate_intermediate_now(local, actor="signet:ca")

    maintenance = Maintenance(
        ca.authority,
        on_store_health=refresh_health,
        on_job_done=meters.job_done,
        on_poll=refresh_health,
        rotate_intermediate=rotate_intermediate,
    )
    maintenance.start()
    if maintenance.leader:  # one process of several; the others find nothing new to record
        changed = record_config_change(
            ca.authority.store, ca.authority.clock, audited_settings(ca.config)
        )
        if changed:
            log.info("configuration_recorded", changed=changed)
    serving = ServingCertificate(
        ca.authority,
        settings.server_names,
        settings.serving_validity,
        SharedCredential(data.serving_credential),
    )
    server = grpc.server(
        # Each open watch stream holds a thread: those have threads of their own.
        futures.ThreadPoolExecutor(
            max_workers=settings.max_workers + settings.max_watchers, thread_name_prefix="rpc"
        ),
        interceptors=[RpcInterceptor(unary_limit=settings.max_workers)],
        options=_grpc_options(reuse_port),
    )
    watch = WatchGovernor(settings.max_watchers, settings.watch_stall_timeout.total_seconds())
    servicer = CertificateAuthorityServicer(ca.authority, watch)
    ca_pb2_grpc.add_CertificateAuthorityServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, [SERVICE_NAME, health.SERVICE_NAME])
    try:
        port = server.add_secure_port(settings.listen, serving.credentials())
    except RuntimeError:
        port = 0
    if port == 0:
        if http:
            http.stop()
        maintenance.stop()
        raise ConfigurationError(f"cannot listen on {settings.listen} (address in use?)")
    server.start()
    try:
        bootstrap, bootstrap_address = _start_bootstrap(ca, servicer, serving, reuse_port)
    except ConfigurationError:
        server.stop(0)
        if http:
            http.stop()
        maintenance.stop()
        raise
    address = _bound_address(settings.listen, port)
    shutting_down = threading.Event()

    def healthy() -> tuple[bool, str]:
        """What /healthz says: the truth, not merely that the process is up."""
        now = ca.authority.clock.now()
        if shutting_down.is_set():
            return False, "shutting down"
        if not maintenance.store_ok:
            return False, "the database cannot be used"
        if ca.authority.issuer.certificate.not_valid_after_utc <= now:
            return False, "the issuing CA certificate has expired"
        if serving.current.certificate.not_valid_after_utc <= now:
            return False, "the serving certificate has expired"
        return True, ""

    checks.append(healthy)
    refresh_health()

    metrics_http = _start_metrics(ca, MetricsState(ca.authority, serving), healthy, reuse_port)
    serve_json = DataDir(ca.config.data_dir).serve_json if write_serve_json else None
    ready: dict[str, object] = {"listen": address, "pid": os.getpid()}
    if bootstrap_address:
        ready["bootstrap_listen"] = bootstrap_address
    if http:
        ready["http_listen"] = http.address
    if metrics_http:
        ready["metrics_listen"] = metrics_http.address
    if serve_json is not None:
        atomic_write(serve_json, json.dumps(ready).encode() + b"\n")
    log.info("server_ready", **ready, trust_domain=ca.config.trust_domain)
    return RunningServer(
        server,
        health_servicer,
        serving,
        address,
        serve_json,
        maintenance,
        http,
        bootstrap,
        bootstrap_address,
        metrics_http,
        shutting_down,
        ca.authority.revocation_feed,
        watch,
    )
