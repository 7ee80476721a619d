"""First contact: find the CA's root in the bootstrap listener's handshake, check it against
the fingerprint the operator pinned, and only then trust it to enroll with a token."""

from __future__ import annotations

import hashlib
import socket
import ssl
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from signet.ca.v1 import ca_pb2, ca_pb2_grpc

from .client import CA_CHANNEL_OPTIONS, ONCE, TIMEOUT, Pending, Retry, advice_from, check_issued
from .files import Credentials
from .listeners import (
    API,
    BOOTSTRAP,
    PROBE_TIMEOUT,
    WrongListener,
    plain_http,
    speaks_http,
    split_address,
)


class PinMismatch(Exception):
    """The server did not present a root with the pinned fingerprint: trust nothing."""


def normalize_fingerprint(text: str) -> str:
    cleaned = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError("--root-fingerprint must be a SHA-256 in hex (64 digits, colons allowed)")
    return cleaned


def fetch_pinned_root(server: str, fingerprint: str) -> x509.Certificate:
    """The certificate in the server's handshake whose SHA-256 is `fingerprint`."""
    host, port = split_address(server)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Nothing is trusted yet: the chain is read, not verified, and then pinned below.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
        try:
            tls = ctx.wrap_socket(raw, server_hostname=host)
        except ssl.SSLError:
            if speaks_http(server):
                raise plain_http(server, BOOTSTRAP) from None
            raise
        with tls:
            # Public as SSLSocket.get_unverified_chain() from Python 3.13; _sslobj's before.
            source: Any = tls if hasattr(tls, "get_unverified_chain") else tls._sslobj  # type: ignore[attr-defined]
            unverified = source.get_unverified_chain() or []
            chain = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in unverified]  # type: ignore[attr-defined]
            for der in chain:
                if hashlib.sha256(der).hexdigest() == fingerprint:
                    return x509.load_der_x509_certificate(der)
            if _wants_client_certificate(tls):
                raise WrongListener(
                    f"{server} wants a client certificate: that is {API}; enroll, with a "
                    f"token, needs {BOOTSTRAP}"
                )
    raise PinMismatch(
        f"{server} presented no certificate with SHA-256 {fingerprint}: refusing to trust it"
    )


def _wants_client_certificate(tls: ssl.SSLSocket) -> bool:
    """After a handshake without a client certificate, the mTLS listener hangs up at once
    (TLS 1.3 sends its verdict after the handshake); other servers wait for us to speak."""
    tls.settimeout(PROBE_TIMEOUT)
    try:
        return tls.recv(1) == b""
    except TimeoutError:
        return False
    except (ssl.SSLError, ConnectionError):
        return True


def enroll(
    server: str,
    token: str,
    root: x509.Certificate,
    *,
    pending: Pending | None = None,
    retry: Retry = ONCE,
    timeout: float = TIMEOUT,
) -> Credentials:
    """A new key made here (or `pending`'s, for a retry of an earlier attempt), and a
    certificate for it in exchange for the token. A retry carries the same request_id, so an
    answer lost after the token was spent is given again rather than refused."""
    pending = pending or Pending.new()
    root_pem = root.public_bytes(serialization.Encoding.PEM)
    credentials = grpc.ssl_channel_credentials(root_pem)
    request = ca_pb2.EnrollRequest(
        token=token, csr_pem=pending.csr_pem, request_id=pending.request_id
    )
    with grpc.secure_channel(server, credentials, options=CA_CHANNEL_OPTIONS) as channel:
        stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
        reply = retry.call(stub.Enroll, request, timeout)
    key = pending.key
    creds = Credentials(
        key,
        x509.load_pem_x509_certificate(reply.certificate_pem.encode()),
        tuple(x509.load_pem_x509_certificates(reply.chain_pem.encode())),
        (root,),
        advice_from(reply),
    )
    check_issued(creds, key)
    return creds
