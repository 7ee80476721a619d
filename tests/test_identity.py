"""ca_client.Identity in-process: a Python gRPC server and its client, both holding
short-lived identities that renew in the background, keep talking through several renewals
of each without a single failed call."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ca_client.agent import AgentConfig
from ca_client.identity import Identity
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer

DEADLINE = 90.0


def _identity(ca: CaServer, out: Path, path: str, **names: list[str]) -> Identity:
    request = ca_pb2.CreateBootstrapTokenRequest(identity=f"spiffe://signet.local/{path}", **names)
    request.certificate_ttl.FromSeconds(3)
    with ca.admin_channel() as ch:
        minted = ca.stub(ch).CreateBootstrapToken(request, timeout=30)
    return Identity(
        AgentConfig(
            server=ca.address,
            bootstrap_server=ca.running.bootstrap_address,
            token=minted.token,
            root_fingerprint=minted.root_fingerprint_sha256,
            out=out,
        )
    )


def test_server_and_client_keep_talking_through_renewals(own_ca: CaServer, tmp_path: Path) -> None:
    server_id = _identity(
        own_ca, tmp_path / "server", "web/api", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    ).start()
    client_id = _identity(own_ca, tmp_path / "client", "web/caller").start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_id.server_credentials())
    server.start()
    failures: list[str] = []
    calls = 0
    try:
        channel = client_id.channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)  # made once: must follow renewals
        deadline = time.monotonic() + DEADLINE
        while server_id.renewals < 3 or client_id.renewals < 3:
            assert time.monotonic() < deadline, f"renewals: {failures}"
            assert calls < 100_000
            calls += 1
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            except grpc.RpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
        channel.close()
    finally:
        server.stop(0)
        client_id.stop()
        server_id.stop()
    assert failures == []
    assert calls > 10
    assert client_id.error is None and server_id.error is None


def test_ssl_contexts_follow_renewals(own_ca: CaServer, tmp_path: Path) -> None:
    server_id = _identity(
        own_ca,
        tmp_path / "server",
        "web/https",
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    ).start()
    client_id = _identity(own_ca, tmp_path / "client", "web/https-client").start()
    server_ctx = server_id.ssl_context(server_side=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with (
                contextlib.suppress(OSError),
                server_ctx.wrap_socket(conn, server_side=True) as tls,
            ):
                tls.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def presented() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_id.ssl_context().wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.recv(5) == b"hello"  # mutual TLS worked
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

    try:
        first = presented()
        deadline = time.monotonic() + DEADLINE
        while server_id.renewals < 1 or client_id.renewals < 1:
            assert time.monotonic() < deadline
            presented()  # keeps working while renewals happen
        assert presented() != first  # the same server-side SSLContext, a new certificate
    finally:
        stop.set()
        listener.close()
        server_id.stop()
        client_id.stop()


def test_client_contexts_trust_only_this_ca_and_callbacks_are_isolated(
    own_ca: CaServer, tmp_path: Path
) -> None:
    identity = _identity(own_ca, tmp_path / "c", "web/iso").start()
    try:
        cas = identity.ssl_context().get_ca_certs()
        assert len(cas) == 1  # our root, not the system's public CAs
        reached = threading.Event()

        def broken(_: object) -> None:
            raise RuntimeError("a buggy listener")

        identity.on_renew.insert(0, broken)
        identity.on_renew.append(lambda _: reached.set())
        assert reached.wait(DEADLINE), "a renewal never reached the callback after a broken one"
    finally:
        identity.stop()
