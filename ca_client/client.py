"""A thin client for signet.ca.v1.CertificateAuthority over mTLS."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca_server.core.policy import CA_SERVER_NAME
from signet.ca.v1 import ca_pb2, ca_pb2_grpc

from .files import Credentials, OutputSet, pem_parts, render, write_atomically
from .serial import serial_hex

TIMEOUT = 30.0
# Only the CA's serving certificate carries this name (the CA refuses it to everyone else),
# so a workload certificate from the same CA cannot pose as the CA.
CA_CHANNEL_OPTIONS = [("grpc.ssl_target_name_override", CA_SERVER_NAME)]


class NotSaved(Exception):
    """Issued, but not written: the message says what became of the certificate."""


class BadIssuance(Exception):
    """What came back is not a certificate for our key under the roots we trust."""


def check_issued(creds: Credentials, key: ec.EllipticCurvePrivateKey) -> None:
    """Before writing anything: the certificate is for our key and chains to our roots."""
    if creds.certificate.public_key() != key.public_key():
        raise BadIssuance("the certificate returned is not for the key we generated")
    chain = [creds.certificate, *creds.chain]
    try:
        for child, parent in itertools.pairwise(chain):
            child.verify_directly_issued_by(parent)
        if not any(_issued_by(chain[-1], root) for root in creds.roots):
            raise BadIssuance("the certificate does not chain to the trusted root")
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise BadIssuance(f"the certificate chain does not verify: {exc}") from None


_ML_DSA_SIGNATURES = {
    x509.SignatureAlgorithmOID.ML_DSA_44,
    x509.SignatureAlgorithmOID.ML_DSA_65,
    x509.SignatureAlgorithmOID.ML_DSA_87,
}


def _ml_dsa_signed(cert: x509.Certificate) -> bool:
    return cert.signature_algorithm_oid in _ML_DSA_SIGNATURES


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


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
        key_pem, chain, roots = pem_parts(creds)
        if _ml_dsa_signed(creds.certificate):
            # An ML-DSA-signed leaf and intermediate are ~10 KB, more than grpcio's server side
            # takes in a client Certificate message (~8 KB: the handshake fails). The CA trusts
            # its own intermediate, so the leaf alone identifies us there.
            chain = creds.certificate.public_bytes(serialization.Encoding.PEM)
        self._channel = grpc.secure_channel(
            server, grpc.ssl_channel_credentials(roots, key_pem, chain), options=CA_CHANNEL_OPTIONS
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
        creds = Credentials(
            key,
            x509.load_pem_x509_certificate(reply.certificate_pem.encode()),
            tuple(x509.load_pem_x509_certificates(reply.chain_pem.encode())),
            self.creds.roots,  # the roots we already trust; a renewal does not change them
        )
        check_issued(creds, key)
        return creds

    def status(self, serial: str) -> ca_pb2.GetCertificateStatusResponse:
        request = ca_pb2.GetCertificateStatusRequest(serial_number=serial)
        return self.stub.GetCertificateStatus(request, timeout=TIMEOUT)

    def revoke(self, serial: str, reason: int = 0) -> ca_pb2.RevokeCertificateResponse:
        request = ca_pb2.RevokeCertificateRequest(serial_number=serial, reason=reason)  # type: ignore[arg-type]
        return self.stub.RevokeCertificate(request, timeout=TIMEOUT)

    def crl(self) -> ca_pb2.GetCRLResponse:
        return self.stub.GetCRL(ca_pb2.GetCRLRequest(), timeout=TIMEOUT)


def save_or_revoke(
    api_server: str,
    out_dir: Path,
    creds: Credentials,
    outputs: OutputSet,
    p12_password: bytes | None,
) -> list[str]:
    """Write `creds` as `outputs` and return the file names; if that fails, revoke them rather
    than leave a valid certificate whose key was never saved (a holder may revoke its own)."""
    try:
        files = render(creds, outputs.formats, p12_password)
        write_atomically(out_dir, files, outputs)
        return sorted(files)
    except (OSError, ValueError) as exc:
        raise NotSaved(_revoke_unsaved(api_server, out_dir, creds, exc)) from exc


def _revoke_unsaved(api_server: str, out_dir: Path, creds: Credentials, error: Exception) -> str:
    serial = serial_hex(creds.certificate.serial_number)
    try:
        with CaClient(api_server, creds) as client:
            client.revoke(serial, ca_pb2.CESSATION_OF_OPERATION)
    except (grpc.RpcError, ValueError) as exc:
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        return (
            f"could not write {out_dir} ({error}) after certificate {serial} was issued, and "
            f"revoking it at {api_server} failed too ({detail}); its key is lost: have an "
            f"admin run `ca-client revoke {serial} --reason CESSATION_OF_OPERATION`"
        )
    return (
        f"could not write {out_dir} ({error}); certificate {serial} had been issued, so it "
        "was revoked (cessationOfOperation) rather than left valid with its key lost"
    )
