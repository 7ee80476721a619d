"""A real relying party: nginx (Debian's package) verifying client certificates we issue and
asking our OCSP responder about them (ssl_ocsp), accepts a good certificate and refuses it as
soon as RevokeCertificate has returned; and, trusting only the root, checks the whole chain
with what Signet publishes: the CRLs of /crl.pem (ssl_crl) and OCSP for the intermediate too,
answered by the root ahead of time (ssl_ocsp on)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, Credentials, start_ca, stop_ca

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf(
    tmp_path: Path, port: int, cert: Path, key: Path, server_extra: str, master: bool
) -> Path:
    """An nginx.conf whose every path is under tmp_path (it runs as root, on 127.0.0.1)."""
    conf = tmp_path / "nginx.conf"
    process = (
        "master_process on;\nuser root;\nworker_processes 1;" if master else "master_process off;"
    )
    conf.write_text(f"""
daemon off;
{process}
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {server_extra}
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    return conf


def _start(conf: Path, port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    assert NGINX is not None
    check = subprocess.run([NGINX, "-t", "-c", str(conf)], capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr.decode()
    proc = subprocess.Popen([NGINX, "-c", str(conf)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:  # ready when it accepts connections (nginx has no readiness signal)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None, (tmp_path / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)


def _need_nginx() -> None:
    if NGINX is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed: .ci/run installs it (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx)")


@pytest.fixture
def nginx(ca: CaServer, tmp_path: Path) -> Iterator[int]:
    _need_nginx()
    server = ca.issue("nginx", dns=("localhost",), ips=("127.0.0.1",))
    cert, key = server.write(tmp_path / "server")
    trust = tmp_path / "client-ca.pem"
    trust.write_bytes(ca.root_pem + (ca.data_dir / "intermediate.pem").read_bytes())
    port = _free_port()
    verify = f"""ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_client_certificate {trust};
        ssl_ocsp leaf;
        ssl_ocsp_responder http://{ca.running.http_address}/ocsp;"""
    proc = _start(_conf(tmp_path, port, cert, key, verify, master=False), port, tmp_path)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(ca: CaServer, port: int, client: Credentials, tmp_path: Path) -> int:
    """HTTPS GET with a client certificate; the HTTP status nginx answers."""
    cert, key = client.write(tmp_path / "client")
    ctx = ssl.create_default_context(cafile=str(ca.data_dir / "root.pem"))
    ctx.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(4096):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_nginx_accepts_our_client_certificate_and_refuses_it_once_revoked(
    ca: CaServer, admin, nginx: int, tmp_path: Path
) -> None:
    client = ca.issue("web/nginx-client")
    assert _get(ca, nginx, client, tmp_path) == 200
    admin.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(serial_number=client.serial, reason=ca_pb2.KEY_COMPROMISE),
        timeout=30,
    )
    # nginx asks the responder on each handshake (no ssl_ocsp_cache): refused at once.
    assert _get(ca, nginx, client, tmp_path) == 400
    other = ca.issue("web/nginx-other")
    assert _get(ca, nginx, other, tmp_path) == 200


def test_agent_keeps_nginx_serving_through_renewals_with_zero_failures(
    tmp_path: Path,
) -> None:
    """ca-client agent renews nginx's certificate (3 s lifetimes) and reloads it with
    --on-renew "nginx -s reload"; a client connecting continuously over mutual TLS never
    fails and sees the new certificates."""
    _need_nginx()
    from tests.conftest import start_ca, stop_ca
    from tests.test_agent import AgentProcess

    own = start_ca(tmp_path / "ca-data")
    out = tmp_path / "tls"
    request = ca_pb2.CreateBootstrapTokenRequest(
        identity="spiffe://signet.local/nginx", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    request.certificate_ttl.FromSeconds(3)
    with own.admin_channel() as ch:
        minted = own.stub(ch).CreateBootstrapToken(request, timeout=30)
    port = _free_port()
    trust = tmp_path / "client-ca.pem"
    trust.write_bytes(own.root_pem + (own.data_dir / "intermediate.pem").read_bytes())
    mtls = f"ssl_verify_client on;\n        ssl_client_certificate {trust};"
    conf = _conf(tmp_path, port, out / "bundle.pem", out / "key.pem", mtls, master=True)
    client_cert, client_key = own.issue("web/nginx-caller").write(tmp_path / "caller")
    agent = AgentProcess(
        "--server", own.address, "--bootstrap-server", own.running.bootstrap_address,
        "--token", minted.token, "--root-fingerprint", minted.root_fingerprint_sha256,
        "--out", str(out), "--format", "pem,bundle",
        "--on-renew", f"{NGINX} -c {conf} -s reload",
    )  # fmt: skip
    nginx = None
    try:
        agent.wait_for("enrolled")
        nginx = _start(conf, port, tmp_path)
        ctx = ssl.create_default_context(cafile=str(own.data_dir / "root.pem"))
        ctx.load_cert_chain(client_cert, client_key)  # nginx verifies us too: mutual TLS
        failures, serials, calls = [], set(), 0
        renewed = 0
        give_up = time.monotonic() + 90
        while renewed < 3:
            assert time.monotonic() < give_up and calls < 200_000, (failures, serials)
            calls += 1
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls,
                ):
                    der = tls.getpeercert(binary_form=True)
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    reply = tls.recv(4096)
                assert reply.startswith(b"HTTP/1.1 200"), reply
                serials.add(der)
            except (OSError, AssertionError) as exc:
                failures.append(repr(exc))
            while not agent.events.empty():
                item = agent.events.get_nowait()
                if item is not None and item.get("event") == "renewed":
                    renewed += 1
        assert failures == []
        assert len(serials) >= 2  # nginx really picked up renewed certificates
    finally:
        agent.stop()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=30)
        stop_ca(own)


# -- the whole chain, trusting only the root ----------------------------------------------------


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    """A CA whose intermediate carries the address its HTTP listener really has (chosen before
    init, as an operator's --public-url is), so nginx can ask about the intermediate too."""
    port = _free_port()
    server = start_ca(
        tmp_path_factory.mktemp("published") / "ca-data",
        public_url=f"http://127.0.0.1:{port}",
        server={"http_listen": f"127.0.0.1:{port}"},
    )
    yield server
    stop_ca(server)


def _revoke(ca: CaServer, serial: str) -> None:
    with ca.admin_channel() as ch:
        ca.stub(ch).RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial_number=serial, reason=ca_pb2.KEY_COMPROMISE),
            timeout=30,
        )


def _chain_nginx(ca: CaServer, tmp_path: Path, checks: str) -> subprocess.Popen[bytes]:
    """nginx trusting the root alone, verifying the client's whole chain with `checks`."""
    _need_nginx()
    server = ca.issue("nginx-chain", dns=("localhost",), ips=("127.0.0.1",))
    cert, key = server.write(tmp_path / "server")
    port = _free_port()
    verify = f"""ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_client_certificate {ca.data_dir / "root.pem"};
        {checks}"""
    proc = _start(_conf(tmp_path, port, cert, key, verify, master=False), port, tmp_path)
    proc.port = port  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def test_nginx_ssl_crl_takes_the_crl_pem_signet_serves(published: CaServer, tmp_path: Path) -> None:
    good, bad = published.issue("web/crl-good"), published.issue("web/crl-bad")
    _revoke(published, bad.serial)
    # GET /crl.pem answers after the revocation's CRL is built: both CRLs of the chain, PEM.
    with urllib.request.urlopen(f"http://{published.running.http_address}/crl.pem") as reply:
        crl_pem = reply.read()
    assert crl_pem.count(b"-----BEGIN X509 CRL-----") == 2
    crl_file = tmp_path / "crl.pem"
    crl_file.write_bytes(crl_pem)
    proc = _chain_nginx(published, tmp_path, f"ssl_crl {crl_file};")
    try:
        port = proc.port  # type: ignore[attr-defined]
        assert _get(published, port, good, tmp_path) == 200
        assert _get(published, port, bad, tmp_path) == 400
    finally:
        _stop(proc)


def test_nginx_refuses_every_client_with_only_the_issuing_cas_crl(
    published: CaServer, tmp_path: Path
) -> None:
    """Why /crl.pem holds the root's CRL too (PITFALLS): the intermediate's alone is not
    enough for nginx, which then refuses good clients as well."""
    with urllib.request.urlopen(f"http://{published.running.http_address}/crl") as reply:
        der = reply.read()
    crl_file = tmp_path / "crl.pem"
    crl_file.write_bytes(x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM))
    proc = _chain_nginx(published, tmp_path, f"ssl_crl {crl_file};")
    try:
        assert _get(published, proc.port, published.issue("web/crl-alone"), tmp_path) == 400  # type: ignore[attr-defined]
    finally:
        _stop(proc)


def test_nginx_ssl_ocsp_on_checks_the_intermediate_with_the_roots_answer(
    published: CaServer, tmp_path: Path
) -> None:
    # No ssl_ocsp_responder: nginx follows each certificate's AIA, the intermediate's too.
    proc = _chain_nginx(published, tmp_path, "ssl_ocsp on;")
    try:
        port = proc.port  # type: ignore[attr-defined]
        client = published.issue("web/ocsp-chain")
        assert _get(published, port, client, tmp_path) == 200
        _revoke(published, client.serial)
        assert _get(published, port, client, tmp_path) == 400
        assert _get(published, port, published.issue("web/ocsp-chain-2"), tmp_path) == 200
    finally:
        _stop(proc)
