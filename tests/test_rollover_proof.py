"""The proof (#11): a CA and its clients go through an intermediate rotation and then a root
rollover while they keep making mTLS calls to each other — a gRPC server and client holding
in-process `Identity` credentials, and nginx (reloaded by the sidecar agent) verifying client
certificates against the agent's ca.pem — with zero failed handshakes; at the end the old root
is withdrawn and nothing live chains to it. Lifetimes are seconds long so that every
certificate renews a few times; every wait has a deadline and awaits a condition."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import subprocess
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ca_client.agent import Agent, AgentConfig
from ca_client.files import read_credentials
from ca_client.identity import Identity
from ca_server.cli import main as ca_server_main
from ca_server.core.hierarchy import authority_key_id
from ca_server.core.store import ListQuery
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, start_ca, stop_ca
from tests.test_nginx import _conf, _free_port, _need_nginx, _start

DEADLINE = 120.0
LIFETIME = dt.timedelta(seconds=12)
REFRESH = dt.timedelta(seconds=1)


def _config(ca: CaServer, out: Path, path: str, **names: list[str]) -> AgentConfig:
    request = ca_pb2.CreateBootstrapTokenRequest(identity=f"spiffe://signet.local/{path}", **names)
    request.certificate_ttl.FromTimedelta(LIFETIME)
    with ca.admin_channel() as ch:
        minted = ca.stub(ch).CreateBootstrapToken(request, timeout=30)
    return AgentConfig(
        server=ca.address,
        bootstrap_server=ca.running.bootstrap_address,
        token=minted.token,
        root_fingerprint=minted.root_fingerprint_sha256,
        out=out,
        validity=LIFETIME,
        bundle_refresh=REFRESH,
        signal_number=signal.SIGHUP,
        pid_file=out.parent / "nginx.pid",
    )


def _until(what: str, condition: object, stop: threading.Event | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not {what} within {DEADLINE} s"
        (stop or threading.Event()).wait(0.2)


def _issuers(out: Path) -> tuple[str, int]:
    """(key id of the issuer of the certificate in `out`, how many roots its ca.pem holds)."""
    creds = read_credentials(out)
    assert creds is not None
    return authority_key_id(creds.certificate), len(creds.roots)


def test_rotations_under_live_mtls_traffic_fail_no_handshake(tmp_path: Path) -> None:
    _need_nginx()
    ca = start_ca(
        tmp_path / "ca-data",
        issuance={"ocsp_validity": "3s", "ocsp_signer_validity": "9s"},
        server={"serving_validity": "12s"},
    )
    stop = threading.Event()
    failures: list[str] = []
    calls = [0, 0]
    threads: list[threading.Thread] = []
    nginx: subprocess.Popen[bytes] | None = None
    server_id = Identity(
        _config(ca, tmp_path / "a" / "tls", "web/api", dns_names=["localhost"],
                ip_addresses=["127.0.0.1"])
    )  # fmt: skip
    client_id = Identity(_config(ca, tmp_path / "b" / "tls", "web/caller"))
    agent_out = tmp_path / "nginx" / "tls"
    agent = Agent(
        _config(ca, agent_out, "web/nginx", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    )
    renewed = threading.Event()
    agent.renewed.append(lambda _: renewed.set())
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    try:
        server_id.start()
        client_id.start()
        threads.append(threading.Thread(target=agent.run, args=(stop,), daemon=True))
        threads[-1].start()
        assert renewed.wait(DEADLINE), "the agent got no certificate"
        port = _free_port()
        verify = f"""ssl_verify_client on;
        ssl_verify_depth 3;
        ssl_client_certificate {agent_out}/ca.pem;"""
        conf = _conf(
            agent_out.parent, port, agent_out / "cert.pem", agent_out / "key.pem", verify, True
        )
        nginx = _start(conf, port, agent_out.parent)

        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), grpc_server)
        grpc_port = grpc_server.add_secure_port("127.0.0.1:0", server_id.server_credentials())
        grpc_server.start()
        stub = health_pb2_grpc.HealthStub(client_id.channel(f"127.0.0.1:{grpc_port}"))

        def https() -> int:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_id.ssl_context().wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := tls.recv(4096):
                    reply += chunk
            return int(reply.split(b" ", 2)[1])

        def traffic() -> None:
            while not stop.is_set():
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    calls[0] += 1
                except grpc.RpcError as exc:
                    failures.append(f"gRPC {exc.code().name}: {exc.details()}")
                try:
                    status = https()
                    calls[1] += 1
                    if status != 200:
                        failures.append(f"nginx answered {status}")
                except (OSError, ssl.SSLError) as exc:
                    failures.append(f"nginx: {exc}")

        threads.append(threading.Thread(target=traffic, daemon=True))
        threads[-1].start()
        outs = [tmp_path / "a" / "tls", tmp_path / "b" / "tls", agent_out]

        def everyone_under(kid: str, roots: int) -> bool:
            return all(_issuers(out) == (kid, roots) for out in outs)

        # 1. The intermediate rotates; every client moves to it at its next renewal.
        seen = threading.Event()
        ca.authority.on_hierarchy_change(lambda _: seen.set())
        assert ca_server_main(["intermediate", "rotate", "--data-dir", str(ca.data_dir)]) == 0
        assert seen.wait(DEADLINE)
        second = ca.authority.hierarchy.issuing.key_id
        _until("every client under the new intermediate", lambda: everyone_under(second, 1))

        # 2. The root rolls over: both roots published, the cross-certificate in every chain.
        old_root = ca.authority.root
        seen.clear()
        run = ["root", "rotate", "--data-dir", str(ca.data_dir), "--overlap", "1s"]
        assert ca_server_main(run) == 0
        assert seen.wait(DEADLINE)
        third = ca.authority.hierarchy.issuing.key_id
        _until("every client under the new root, trusting both", lambda: everyone_under(third, 2))

        # 3. Once nothing live chains to the old root, it is withdrawn; clients follow.
        def withdrawn() -> bool:
            ca.running.maintenance.rollover()  # the lease holder's job, asked for now
            return len(ca.authority.hierarchy.roots) == 1

        _until("the old root withdrawn", withdrawn, stop)
        _until("every client trusting the new root alone", lambda: everyone_under(third, 1))
        done = list(calls)
        _until("calls after the rollover", lambda: min(calls[0] - done[0], calls[1] - done[1]) > 5)
        now = dt.datetime.now(dt.UTC)
        live = [
            r
            for r in ca.store.list_certificates(ListQuery(status="good", limit=1000))
            if r.not_after >= now
        ]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        grpc_server.stop(0)
        client_id.stop()
        server_id.stop()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=30)
        stop_ca(ca)

    assert failures == [], failures[:5]
    assert min(calls) > 20
    assert client_id.renewals >= 2 and server_id.renewals >= 2 and agent.renewals >= 2
    # Nothing live chains to the old root: each unexpired, unrevoked certificate's issuer was
    # signed by the new root.
    hierarchy = ca.authority.hierarchy
    assert [r.certificate for r in hierarchy.roots] != [old_root]
    assert live
    under = {e.key_id: e.record.issuer_key_id for e in hierarchy.entries}
    new_root = hierarchy.active_root.key_id
    assert {under[r.issuer] for r in live} == {new_root}
    assert x509.load_pem_x509_certificates((ca.data_dir / "root.pem").read_bytes()) == [
        hierarchy.active_root.certificate
    ]
