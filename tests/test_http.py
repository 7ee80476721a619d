"""The relying-party HTTP listener: RFC 6960 OCSP (POST and GET) and the CRL, checked with
the openssl command and plain HTTP, against a real server on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import random
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from ca_server.api.http import MAX_PER_PEER
from ca_server.core.profile import LeafRequest, build_leaf
from ca_server.server import raise_open_file_limit
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, Credentials, start_ca, stop_ca
from tests.pki import make_key, spiffe
from tests.tools import openssl


def _url(ca: CaServer, path: str) -> str:
    return f"http://{ca.running.http_address}{path}"


def _fetch(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _ocsp_request(
    cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _files(ca: CaServer, creds: Credentials, tmp_path: Path) -> tuple[Path, Path]:
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(creds.cert_pem)
    return leaf, ca.data_dir / "intermediate.pem"


def _openssl_ocsp(ca: CaServer, leaf: Path, issuer: Path, *extra: str) -> str:
    result = openssl(
        "ocsp", "-issuer", issuer, "-cert", leaf, "-url", _url(ca, "/ocsp"),
        "-CAfile", ca.data_dir / "root.pem", *extra,
    )  # fmt: skip
    return result.stdout + result.stderr


def test_issued_certificates_point_relying_parties_at_this_listener(ca: CaServer) -> None:
    cert = x509.load_pem_x509_certificate(ca.issue("web/aia").cert_pem)
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    urls = {d.access_method: d.access_location.value for d in aia}
    assert urls[AuthorityInformationAccessOID.OCSP] == _url(ca, "/ocsp")
    kid = ca.authority.hierarchy.issuing.key_id  # each names its own issuer's, by key id
    assert urls[AuthorityInformationAccessOID.CA_ISSUERS] == _url(ca, f"/ca/{kid}.crt")
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in cdp[0].full_name or []] == [_url(ca, f"/ca/{kid}.crl")]
    # Both are served, as are the active intermediate's at /ca.crt and /crl.
    assert _fetch(_url(ca, f"/ca/{kid}.crt"))[2] == _fetch(_url(ca, "/ca.crt"))[2]
    assert x509.load_der_x509_crl(_fetch(_url(ca, f"/ca/{kid}.crl"))[2]).issuer == cert.issuer


def test_openssl_ocsp_reads_good_then_revoked_then_unknown(
    ca: CaServer, admin, tmp_path: Path
) -> None:
    creds = ca.issue("web/ocsp-http")
    leaf, issuer = _files(ca, creds, tmp_path)
    out = _openssl_ocsp(ca, leaf, issuer)
    assert "Response verify OK" in out and f"{leaf}: good" in out
    assert "WARNING: no nonce" not in out  # openssl sends a nonce; we echo it

    admin.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(serial_number=creds.serial, reason=ca_pb2.KEY_COMPROMISE),
        timeout=30,
    )
    out = _openssl_ocsp(ca, leaf, issuer)
    assert f"{leaf}: revoked" in out and "Reason: keyCompromise" in out
    assert "Revocation Time:" in out

    # A certificate under our issuer that was never issued (never stored).
    key = make_key()
    now = dt.datetime.now(dt.UTC)
    stranger = build_leaf(
        ca.authority.issuer,
        LeafRequest(key.public_key(), spiffe("web/x"), (), (), None, now, now, 0x5EED5EED),
    )
    stranger_pem = tmp_path / "stranger.pem"
    stranger_pem.write_bytes(stranger.public_bytes(serialization.Encoding.PEM))
    out = _openssl_ocsp(ca, stranger_pem, issuer)
    assert f"{stranger_pem}: unknown" in out


def test_plain_get_is_the_pre_signed_response_with_caching_headers(ca: CaServer, admin) -> None:
    creds = ca.issue("web/ocsp-get")
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    der = _ocsp_request(cert, ca.authority.issuer.certificate)
    encoded = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    status, headers, body = _fetch(_url(ca, f"/ocsp/{encoded}"))
    assert status == 200 and headers["Content-Type"] == "application/ocsp-response"
    # Signed on this first ask and stored in the background: let the store have it first.
    ca.authority.wait_for_writebacks()
    grpc_der = admin.GetCertificateStatus(
        ca_pb2.GetCertificateStatusRequest(serial_number=creds.serial), timeout=30
    ).ocsp_response
    assert body == grpc_der  # the same bytes over gRPC and HTTP
    response = ocsp.load_der_ocsp_response(body)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert "max-age=" in headers["Cache-Control"] and "ETag" in headers
    assert "Last-Modified" in headers and "Expires" in headers


def test_post_echoes_the_nonce(ca: CaServer) -> None:
    cert = x509.load_pem_x509_certificate(ca.issue("web/nonce").cert_pem)
    nonce = bytes(range(16))
    status, headers, body = _fetch(
        _url(ca, "/ocsp"),
        _ocsp_request(cert, ca.authority.issuer.certificate, nonce),
        {"Content-Type": "application/ocsp-request"},
    )
    assert status == 200
    response = ocsp.load_der_ocsp_response(body)
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert "Cache-Control" not in headers


@pytest.mark.parametrize("body", [b"", b"garbage", b"\x30\x80" + b"\x00" * 50])
def test_garbage_gets_malformed_request(ca: CaServer, body: bytes) -> None:
    status, _, reply = _fetch(_url(ca, "/ocsp"), body)
    assert status == 200
    assert ocsp.load_der_ocsp_response(reply).response_status is (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )


def test_requests_about_another_ca_are_unauthorized(ca: CaServer) -> None:
    cert = x509.load_pem_x509_certificate(ca.issue("web/other-ca").cert_pem)
    # Ask with the certificate itself as "issuer": hashes that are not our intermediate's.
    der = _ocsp_request(cert, cert)
    _, _, reply = _fetch(_url(ca, "/ocsp"), der)
    assert ocsp.load_der_ocsp_response(reply).response_status is (
        ocsp.OCSPResponseStatus.UNAUTHORIZED
    )


def test_an_oversized_body_is_refused(ca: CaServer) -> None:
    status, _, _ = _fetch(_url(ca, "/ocsp"), b"\x00" * (64 * 1024))
    assert status == 413


def test_random_input_never_breaks_the_listener(ca: CaServer) -> None:
    rng = random.Random(1234)  # seeded: a failure is reproducible
    for _ in range(200):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        status, _, _ = _fetch(_url(ca, "/ocsp"), blob)
        assert status == 200
        path = urllib.parse.quote(base64.b64encode(blob).decode(), safe="")
        status, _, _ = _fetch(_url(ca, f"/ocsp/{path}"))
        assert status == 200
        status, _, _ = _fetch(_url(ca, "/ocsp/" + urllib.parse.quote(blob.hex())))
        assert status == 200
    assert _fetch(_url(ca, "/crl"))[0] == 200


def test_crl_is_served_with_validators_and_follows_revocations(
    ca: CaServer, admin, tmp_path: Path
) -> None:
    creds = ca.issue("web/crl-http")
    status, headers, _ = _fetch(_url(ca, "/crl"))
    assert status == 200 and headers["Content-Type"] == "application/pkix-crl"
    assert "max-age=" in headers["Cache-Control"] and headers["Last-Modified"]
    status, _, _ = _fetch(_url(ca, "/crl"), headers={"If-None-Match": headers["ETag"]})
    assert status == 304

    admin.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(serial_number=creds.serial, reason=ca_pb2.SUPERSEDED),
        timeout=30,
    )
    status, after_headers, after = _fetch(
        _url(ca, "/crl"), headers={"If-None-Match": headers["ETag"]}
    )
    assert status == 200 and after_headers["ETag"] != headers["ETag"]
    crl = x509.load_der_x509_crl(after)
    entry = crl.get_revoked_certificate_by_serial_number(int(creds.serial, 16))
    assert entry is not None
    crl_file, leaf = tmp_path / "ca.crl", tmp_path / "leaf.pem"
    crl_file.write_bytes(after)
    leaf.write_bytes(creds.cert_pem)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.root_pem + (ca.data_dir / "intermediate.pem").read_bytes())
    result = openssl(
        "verify", "-crl_check", "-CAfile", bundle, "-CRLfile", crl_file, leaf, check=False
    )
    assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr


def test_ca_issuers_url_serves_the_intermediate(ca: CaServer) -> None:
    status, headers, body = _fetch(_url(ca, "/ca.crt"))
    assert status == 200 and headers["Content-Type"] == "application/pkix-cert"
    assert x509.load_der_x509_certificate(body) == ca.authority.issuer.certificate


def test_unknown_paths_are_404(ca: CaServer) -> None:
    assert _fetch(_url(ca, "/nope"))[0] == 404


def test_if_modified_since_never_hides_a_crl_rebuilt_within_the_same_second(
    ca: CaServer, admin
) -> None:
    _, before, _ = _fetch(_url(ca, "/crl"))
    creds = ca.issue("web/ims")
    admin.RevokeCertificate(ca_pb2.RevokeCertificateRequest(serial_number=creds.serial), timeout=30)
    status, _, body = _fetch(
        _url(ca, "/crl"), headers={"If-Modified-Since": before["Last-Modified"]}
    )
    assert status == 200
    crl = x509.load_der_x509_crl(body)
    assert crl.get_revoked_certificate_by_serial_number(int(creds.serial, 16)) is not None


def _raw(ca: CaServer, data: bytes, half_close: bool = True) -> bytes:
    """Send bytes on a plain socket and read until the server closes. Half-closing tells the
    server no more is coming (an incomplete request then ends instead of waiting)."""
    host, port = ca.running.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def test_an_absolute_form_request_target_is_understood(ca: CaServer) -> None:
    cert = x509.load_pem_x509_certificate(ca.issue("web/absolute").cert_pem)
    der = _ocsp_request(cert, ca.authority.issuer.certificate)
    path = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    host = ca.running.http_address
    request = f"GET http://{host}/ocsp/{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    reply = _raw(ca, request.encode(), half_close=False)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert ocsp.load_der_ocsp_response(body).certificate_status is ocsp.OCSPCertStatus.GOOD


def test_raw_garbage_on_the_socket_never_breaks_the_listener(ca: CaServer) -> None:
    rng = random.Random(99)
    samples = [
        b"\x00" * 64,
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /ocsp HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
        b"POST /ocsp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    samples += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 400))) for _ in range(100)]
    for blob in samples:
        reply = _raw(ca, blob)
        assert reply == b"" or reply.startswith(b"HTTP/1.")
    assert _fetch(_url(ca, "/crl"))[0] == 200


def test_a_slow_or_idle_client_does_not_hold_a_connection(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca-data", server={"http_request_timeout": "1s"})
    try:
        host, port = ca.running.http_address.rsplit(":", 1)
        for opening in (b"GET /crl HTTP/1.1\r\nHost: x\r\n", b""):  # slow headers; idle
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(opening)
                assert s.recv(65536) == b""  # closed by the server, well before our timeout
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /crl HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 431")
    finally:
        stop_ca(ca)


def test_thousands_of_idle_connections_starve_neither_the_api_nor_other_relying_parties(
    tmp_path: Path,
) -> None:
    raise_open_file_limit()  # this process holds both ends of every connection
    ca = start_ca(tmp_path / "ca-data")
    host, port = ca.running.http_address.rsplit(":", 1)
    idle: list[socket.socket] = []
    try:
        for _ in range(3000):  # bounded: each connect is answered or closed at once
            s = socket.create_connection((host, int(port)), timeout=10)
            idle.append(s)
        with ca.admin_channel() as ch:  # the mTLS API still takes a new connection
            ca.stub(ch).GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=10)
        # Another address still gets answers: one address cannot take the listener's share.
        with socket.create_connection(
            (host, int(port)), timeout=10, source_address=("127.0.0.2", 0)
        ) as other:
            other.sendall(b"GET /ca.crt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert other.recv(65536).startswith(b"HTTP/1.1 200")
        # ...and of ours only the per-address share was kept open.
        open_ones = sum(1 for s in idle if _still_open(s))
        assert 0 < open_ones <= MAX_PER_PEER
    finally:
        for s in idle:
            s.close()
        stop_ca(ca)


def _still_open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) != b""  # b"": closed by the server
    except BlockingIOError:
        return True  # nothing to read: still open
    except OSError:
        return False  # reset


def test_a_client_that_pipelines_without_reading_is_paused_then_dropped(ca: CaServer) -> None:
    host, port = ca.running.http_address.rsplit(":", 1)
    flood = socket.socket()
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing anyway
    flood.settimeout(5)
    flood.connect((host, int(port)))
    try:
        request = b"GET /crl HTTP/1.1\r\nHost: x\r\n\r\n"
        sent = 0
        with contextlib.suppress(OSError):  # the server may stop reading, or drop us
            for _ in range(20):  # 100k requests, never reading an answer
                flood.sendall(request * 5000)
                sent += 5000
        assert _fetch(_url(ca, "/ca.crt"))[0] == 200  # another client is served meanwhile
        answered, dropped = b"", False
        try:
            while chunk := flood.recv(1 << 20):
                answered += chunk
            dropped = True  # closed by the server
        except ConnectionResetError:
            dropped = True  # closed with our unread requests still in its buffer
        except TimeoutError:
            pass
        assert dropped, "a client that does not read its answers must be dropped"
        assert answered.count(b"HTTP/1.1 ") < sent  # well before answering everything
    finally:
        flood.close()
