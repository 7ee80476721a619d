"""A post-quantum chain (ca-server init --key-type ml-dsa-65): an ML-DSA-65 root and intermediate
(RFC 9881) signing EC P-256 leaves, CRLs and OCSP responder certificates, served over real mTLS
on 127.0.0.1; and the hybrid X25519MLKEM768 key exchange on every TLS listener, seen on the wire
by a relay between the client and the server."""

from __future__ import annotations

import contextlib
import socket
import ssl
import stat
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from ca_client.client import CaClient
from ca_client.files import read_credentials
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, start_ca, stop_ca
from tests.errdetails import assert_refused
from tests.pki import make_csr, make_key, spiffe
from tests.tools import openssl

ML_DSA_65 = SignatureAlgorithmOID.ML_DSA_65
X25519MLKEM768 = 0x11EC
X25519 = 0x001D


@pytest.fixture(scope="module")
def pq_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    server = start_ca(tmp_path_factory.mktemp("pq") / "ca-data", key_type="ml-dsa-65")
    yield server
    stop_ca(server)


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _leaf_alone(ca: CaServer) -> tuple[bytes, bytes]:
    """The admin's leaf without its chain, and its key: an ML-DSA-signed leaf and intermediate
    are more than grpcio's server side takes in a client Certificate message (see the test
    below); the API trusts its own intermediate, so the leaf alone identifies the caller."""
    _, key = ca.admin_credentials()
    return _certs(ca.admin_dir / "cert.pem")[0].public_bytes(serialization.Encoding.PEM), key


def _admin(ca: CaServer) -> grpc.Channel:
    leaf, key = _leaf_alone(ca)
    return ca.channel(leaf, key)


def _issue(ca: CaServer, path: str) -> ca_pb2.IssuedCertificate:
    _, csr = make_csr(uris=[spiffe(path)])
    with _admin(ca) as channel:
        return ca.stub(channel).SignCertificate(
            ca_pb2.SignCertificateRequest(csr_pem=csr), timeout=30
        )


# -- what init makes ----------------------------------------------------------------------------


def test_init_makes_an_ml_dsa_65_root_and_intermediate_whose_leaves_are_ec_p256(
    pq_ca: CaServer,
) -> None:
    d = pq_ca.data_dir
    [root] = _certs(d / "root.pem")
    [intermediate] = _certs(d / "intermediate.pem")
    for ca_cert in (root, intermediate):
        assert isinstance(ca_cert.public_key(), mldsa.MLDSA65PublicKey)
        assert ca_cert.signature_algorithm_oid == ML_DSA_65
    intermediate.verify_directly_issued_by(root)
    # The CA's own leaves: the admin, the serving certificate (the chain it presents).
    admin_leaf, admin_issuer = _certs(d / "admin" / "cert.pem")
    serving = x509.load_pem_x509_certificates((d / "secrets" / "serving.pem").read_bytes())
    for leaf in (admin_leaf, serving[0]):
        key = leaf.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        assert leaf.signature_algorithm_oid == ML_DSA_65
        leaf.verify_directly_issued_by(intermediate)
    assert admin_issuer == intermediate and serving[1:] == [intermediate]
    for key_file in (d / "secrets").glob("*.pem"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, key_file


# -- the API over mTLS --------------------------------------------------------------------------


def test_sign_status_and_crl_over_mtls_verify_against_the_ml_dsa_chain(pq_ca: CaServer) -> None:
    [intermediate] = _certs(pq_ca.data_dir / "intermediate.pem")
    issued = _issue(pq_ca, "web/pq")
    leaf = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert leaf.signature_algorithm_oid == ML_DSA_65
    leaf.verify_directly_issued_by(intermediate)
    assert x509.load_pem_x509_certificates(issued.chain_pem.encode()) == [intermediate]

    with _admin(pq_ca) as channel:
        stub = pq_ca.stub(channel)
        stub.RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(
                serial_number=issued.serial_number, reason=ca_pb2.KEY_COMPROMISE
            ),
            timeout=30,
        )
        status = stub.GetCertificateStatus(
            ca_pb2.GetCertificateStatusRequest(serial_number=issued.serial_number), timeout=30
        )
        crl_reply = stub.GetCRL(ca_pb2.GetCRLRequest(), timeout=30)

    # OCSP: signed by the delegated responder (EC P-256), whose certificate the ML-DSA
    # intermediate signed; its CertID names the ML-DSA issuer as a relying party computes it.
    assert status.status == ca_pb2.REVOKED
    response = ocsp.load_der_ocsp_response(status.ocsp_response)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.serial_number == leaf.serial_number
    [responder] = response.certificates
    responder.verify_directly_issued_by(intermediate)
    assert responder.signature_algorithm_oid == ML_DSA_65
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    responder_key = responder.public_key()
    assert isinstance(responder_key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    responder_key.verify(
        response.signature,
        response.tbs_response_bytes,
        ec.ECDSA(response.signature_hash_algorithm),
    )
    expected = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, intermediate, response.hash_algorithm)
        .build()
    )
    assert response.issuer_key_hash == expected.issuer_key_hash
    assert response.issuer_name_hash == expected.issuer_name_hash

    # The CRL: signed by the ML-DSA intermediate itself, listing the revoked serial.
    crl = x509.load_der_x509_crl(crl_reply.crl)
    assert crl.signature_algorithm_oid == ML_DSA_65
    assert crl.is_signature_valid(intermediate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None


def test_http_ocsp_answers_a_request_for_a_certificate_of_the_ml_dsa_intermediate(
    pq_ca: CaServer,
) -> None:
    """The CertID a relying party sends (cryptography computes it from the ML-DSA issuer's
    key) is one the responder recognises: 'good', not 'unknown' or unauthorized."""
    [intermediate] = _certs(pq_ca.data_dir / "intermediate.pem")
    leaf = x509.load_pem_x509_certificate(_issue(pq_ca, "web/pq-http").certificate_pem.encode())
    sha1 = hashes.SHA1()  # noqa: S303 - the CertID hash OpenSSL and nginx send
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, intermediate, sha1).build()
    http = urllib.request.Request(
        f"http://{pq_ca.running.http_address}/ocsp",
        data=request.public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.urlopen(http, timeout=30) as reply:  # noqa: S310 - our own listener
        response = ocsp.load_der_ocsp_response(reply.read())
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == leaf.serial_number


def test_an_ml_dsa_csr_is_refused_with_invalid_argument_saying_why(pq_ca: CaServer) -> None:
    _, csr = make_csr(make_key("ml-dsa-65"), uris=[spiffe("web/pq-leaf")])
    with _admin(pq_ca) as channel, pytest.raises(grpc.RpcError) as info:
        pq_ca.stub(channel).SignCertificate(ca_pb2.SignCertificateRequest(csr_pem=csr), timeout=30)
    got = assert_refused(info.value, grpc.StatusCode.INVALID_ARGUMENT, "KEY_NOT_ALLOWED", "csr_pem")
    assert got.message.startswith("ML-DSA-65 CSR refused: ML-DSA keys are not certified")
    assert "grpcio's TLS cannot complete a handshake with an ML-DSA leaf key" in got.message
    assert "use an EC P-256 key" in got.message


def test_ca_client_calls_an_ml_dsa_ca_with_the_files_init_wrote(pq_ca: CaServer) -> None:
    """admin/cert.pem holds leaf and intermediate; CaClient presents the leaf alone to it."""
    creds = read_credentials(pq_ca.admin_dir)
    assert creds is not None and len(creds.chain) == 1
    issued = _issue(pq_ca, "web/pq-client")
    with CaClient(pq_ca.address, creds) as client:
        assert client.status(issued.serial_number).status == ca_pb2.GOOD
        assert x509.load_der_x509_crl(client.crl().crl).signature_algorithm_oid == ML_DSA_65


def test_grpcio_server_drops_a_client_presenting_the_ml_dsa_leaf_with_its_chain(
    pq_ca: CaServer,
) -> None:
    """Why clients present the leaf alone to an ML-DSA CA: grpcio's server side fails a client
    Certificate message over ~8 KB (an EC chain that big fails the same way), and an ML-DSA
    leaf with its intermediate is ~10 KB. Should grpcio fix it, this test says so."""
    cert, key = pq_ca.admin_credentials()
    assert len(b"".join(c.public_bytes(serialization.Encoding.DER) for c in _certs(
        pq_ca.admin_dir / "cert.pem"))) > 9000  # fmt: skip
    with pq_ca.channel(cert, key) as channel, pytest.raises(grpc.RpcError) as info:
        pq_ca.stub(channel).GetCRL(ca_pb2.GetCRLRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- relying parties on this machine ------------------------------------------------------------


def test_debian_openssl_cannot_verify_the_ml_dsa_chain(pq_ca: CaServer, tmp_path: Path) -> None:
    """What the README says of OpenSSL 3.0: it cannot decode an ML-DSA key (3.5 can)."""
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(_issue(pq_ca, "web/pq-openssl").certificate_pem)
    result = openssl(
        "verify", "-CAfile", pq_ca.data_dir / "root.pem",
        "-untrusted", pq_ca.data_dir / "intermediate.pem", leaf, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "verification failed" in result.stdout + result.stderr


# -- the key exchange, seen on the wire ---------------------------------------------------------


class Relay:
    """A TCP relay in front of a listener that keeps what the server sends first, so a test can
    read the group the ServerHello chose. One connection at a time is enough for the tests."""

    def __init__(self, upstream: str) -> None:
        self._upstream = _host_port(upstream)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.from_server: list[bytes] = []  # per accepted connection
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self.from_server.append(b"")
            index = len(self.from_server) - 1
            threading.Thread(target=self._pump, args=(server, client, index), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, keep: int | None) -> None:
        """Copy src to dst until either closes; keep the first 64 KiB in from_server[keep]."""
        try:
            while data := src.recv(65536):
                if keep is not None and len(self.from_server[keep]) < 65536:
                    self.from_server[keep] += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


# RFC 8446 4.1.3: a HelloRetryRequest is a ServerHello with this random.
_HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def server_hello_group(wire: bytes) -> int:
    """The key_share group of the (non-retry) ServerHello in the first bytes a TLS 1.3 server
    sent: TLS record header (5), handshake header (4), version (2), random (32), session id,
    cipher suite (2), compression (1), then the extensions. Observation only."""
    offset = 0
    while offset + 5 <= len(wire):
        content_type, length = wire[offset], int.from_bytes(wire[offset + 3 : offset + 5])
        record = wire[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if content_type != 0x16 or not record or record[0] != 0x02:  # handshake: ServerHello
            continue
        body = record[4:]
        random = body[2:34]
        at = 34 + 1 + body[34]  # past the session id
        at += 2 + 1  # cipher suite, compression
        end = at + 2 + int.from_bytes(body[at : at + 2])
        at += 2
        while at < end:
            kind, size = int.from_bytes(body[at : at + 2]), int.from_bytes(body[at + 2 : at + 4])
            if kind == 0x0033 and random != _HRR_RANDOM:  # key_share
                return int.from_bytes(body[at + 4 : at + 6])
            at += 4 + size
    raise AssertionError(f"no ServerHello key_share in {wire[:64].hex()}")


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def _is_ml_dsa(ca: CaServer) -> bool:
    return isinstance(
        x509.load_pem_x509_certificate(ca.root_pem).public_key(), mldsa.MLDSA65PublicKey
    )


def _listeners(ca: CaServer) -> dict[str, str]:
    return {"api": ca.address, "bootstrap": ca.running.bootstrap_address}


@pytest.fixture(params=["ec-p256 CA", "ml-dsa-65 CA"])
def any_ca(request: pytest.FixtureRequest, ca: CaServer, pq_ca: CaServer) -> CaServer:
    return ca if request.param == "ec-p256 CA" else pq_ca


@pytest.mark.parametrize("listener", ["api", "bootstrap"])
def test_every_tls_listener_negotiates_x25519mlkem768_with_grpcio(
    any_ca: CaServer, listener: str
) -> None:
    relay = Relay(_listeners(any_ca)[listener])
    try:
        leaf, key = _leaf_alone(any_ca)
        creds = grpc.ssl_channel_credentials(
            any_ca.root_pem, *((key, leaf) if listener == "api" else (None, None))
        )
        with grpc.secure_channel(relay.address, creds) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)  # a complete handshake
        assert server_hello_group(relay.from_server[0]) == X25519MLKEM768
    finally:
        relay.close()


@pytest.mark.parametrize("listener", ["api", "bootstrap"])
def test_a_client_that_does_not_offer_it_gets_x25519_and_python_ssl_cannot_verify_ml_dsa(
    any_ca: CaServer, listener: str
) -> None:
    """Python's ssl (OpenSSL 3.0) offers no post-quantum group, and cannot verify an ML-DSA
    chain: it refuses the ML-DSA CA's certificate; the EC CA's it accepts."""
    relay = Relay(_listeners(any_ca)[listener])
    context = ssl.create_default_context(cadata=any_ca.root_pem.decode())
    context.check_hostname = False  # the relay's address; the chain is what is judged here
    try:
        with socket.create_connection(_host_port(relay.address)) as raw:
            if _is_ml_dsa(any_ca):
                with pytest.raises(ssl.SSLCertVerificationError):
                    context.wrap_socket(raw)
            else:
                context.wrap_socket(raw).close()
        assert server_hello_group(relay.from_server[0]) == X25519
    finally:
        relay.close()


def test_the_relay_reads_the_group_a_client_forced(ca: CaServer) -> None:
    """The parser is not fixed on one answer: a client offering only P-256 gets P-256 (23)."""
    relay = Relay(ca.running.bootstrap_address)
    context = ssl.create_default_context(cadata=ca.root_pem.decode())
    context.check_hostname = False
    context.set_ecdh_curve("prime256v1")
    try:
        with socket.create_connection(_host_port(relay.address)) as raw:
            context.wrap_socket(raw).close()
        assert server_hello_group(relay.from_server[0]) == 23
    finally:
        relay.close()
