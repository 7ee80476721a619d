"""A thin client for signet.ca.v1.CertificateAuthority over mTLS."""

from __future__ import annotations

import datetime as dt

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signet.ca.v1 import ca_pb2, ca_pb2_grpc

from .files import Credentials

TIMEOUT = 30.0


def new_key() -> ec.EllipticCurvePrivateKey:
    """EC P-256: small, fast, and accepted by every TLS stack our users run."""
    return ec.generate_private_key(ec.SECP256R1())


def csr_for(key: ec.EllipticCurvePrivateKey) -> str:
    """A CSR that only proves possession of `key`: renewal takes names from the certificate."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class CaClient:
    """Calls the CA as the holder of `creds` (its mTLS identity), trusting `creds.roots`."""

    def __init__(self, server: str, creds: Credentials) -> None:
        if not creds.roots:
            raise ValueError("no CA certificate (ca.pem) to trust the server with")
        self.server = server
        self.creds = creds
        key_pem = creds.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (creds.certificate, *creds.chain)
        )
        roots = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in creds.roots)
        self._channel = grpc.secure_channel(
            server, grpc.ssl_channel_credentials(roots, key_pem, chain)
        )
        self.stub = ca_pb2_grpc.CertificateAuthorityStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def renew(
        self, validity: dt.timedelta | None = None, revoke_previous: bool = False
    ) -> Credentials:
        """A new certificate for a new key, with the current identity."""
        key = new_key()
        request = ca_pb2.RenewCertificateRequest(
            csr_pem=csr_for(key), revoke_previous=revoke_previous
        )
        if validity is not None:
            request.validity.FromTimedelta(validity)
        reply = self.stub.RenewCertificate(request, timeout=TIMEOUT)
        bundle = self.stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=TIMEOUT)
        return Credentials(
            key,
            x509.load_pem_x509_certificate(reply.certificate_pem.encode()),
            tuple(x509.load_pem_x509_certificates(reply.chain_pem.encode())),
            tuple(x509.load_pem_x509_certificates(bundle.root_certificates_pem.encode())),
        )

    def status(self, serial: str) -> ca_pb2.GetCertificateStatusResponse:
        request = ca_pb2.GetCertificateStatusRequest(serial_number=serial)
        return self.stub.GetCertificateStatus(request, timeout=TIMEOUT)

    def revoke(self, serial: str, reason: int = 0) -> ca_pb2.RevokeCertificateResponse:
        request = ca_pb2.RevokeCertificateRequest(serial_number=serial, reason=reason)  # type: ignore[arg-type]
        return self.stub.RevokeCertificate(request, timeout=TIMEOUT)

    def crl(self) -> ca_pb2.GetCRLResponse:
        return self.stub.GetCRL(ca_pb2.GetCRLRequest(), timeout=TIMEOUT)
