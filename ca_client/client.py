"""A thin client for signet.ca.v1.CertificateAuthority over mTLS."""

from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca_server.core.policy import CA_SERVER_NAME
from signet.ca.v1 import ca_pb2, ca_pb2_grpc

from .files import Credentials, OutputSet, pem_parts, render, write_atomically
from .schedule import MIN_POLL, Advice
from .serial import serial_hex

TIMEOUT = 30.0
# Only the CA's serving certificate carries this name (the CA refuses it to everyone else),
# so a workload certificate from the same CA cannot pose as the CA.
CA_CHANNEL_OPTIONS = [("grpc.ssl_target_name_override", CA_SERVER_NAME)]


# What a retry can cure: the CA unreachable, or no answer in time (which may be an answer lost
# after the CA acted: the request_id makes the retry safe).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class Retry:
    """How one logical call is retried after a transient failure: the same request message
    again, so the same request_id, and the CA answers a retry of what it already did with
    its first answer (the same certificate), never by doing it twice."""

    attempts: int = 3
    delay: float = 0.5  # seconds before the second attempt, doubled for each one after
    sleep: Callable[[float], None] = time.sleep

    def call(self, method: Callable[..., Any], request: Any, timeout: float) -> Any:
        delay = self.delay
        for attempt in range(1, self.attempts + 1):
            try:
                return method(request, timeout=timeout)
            except grpc.RpcError as exc:
                if attempt >= self.attempts or exc.code() not in RETRYABLE:
                    raise
            self.sleep(delay)
            delay *= 2
        raise ValueError("Retry.attempts must be at least 1")


ONCE = Retry(attempts=1)  # for callers with a retry loop of their own (the agent)


def new_request_id() -> str:
    return str(uuid.uuid4())


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


def advice_from(
    reply: ca_pb2.IssuedCertificate | ca_pb2.GetRenewalInfoResponse,
) -> Advice | None:
    """The renewal window a reply carries; None from a CA too old to send one."""
    if not reply.HasField("renewal_window"):
        return None
    window = reply.renewal_window
    try:
        return Advice(
            window.start.ToDatetime(dt.UTC),
            window.end.ToDatetime(dt.UTC),
            max(reply.retry_after.ToTimedelta(), MIN_POLL),  # never a busy loop of polls
            reply.explanation_url,
        )
    except (ValueError, OverflowError):  # out of datetime's range: as if none were sent
        return None


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


@dataclass(frozen=True)
class Pending:
    """One logical call that asks for a certificate: a new key, its CSR and the request_id,
    kept for every retry of that call (also across the agent's backoff), so that a retry after
    a lost answer gets the certificate already issued for this key, not a second one."""

    key: ec.EllipticCurvePrivateKey
    csr_pem: str
    request_id: str

    @classmethod
    def new(cls) -> Pending:
        key = new_key()
        return cls(key, csr_for(key), new_request_id())


class CaClient:
    """Calls the CA as the holder of `creds` (its mTLS identity), trusting `creds.roots`."""

    def __init__(
        self, server: str, creds: Credentials, *, retry: Retry = ONCE, timeout: float = TIMEOUT
    ) -> None:
        if not creds.roots:
            raise ValueError("no CA certificate (ca.pem) to trust the server with")
        self.server = server
        self.creds = creds
        self.retry = retry
        self.timeout = timeout
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
        self,
        validity: dt.timedelta | None = None,
        revoke_previous: bool = False,
        pending: Pending | None = None,
    ) -> Credentials:
        """A new certificate for a new key, with the current identity. `pending`: the key and
        request_id of a call already tried (a retry), else new ones."""
        pending = pending or Pending.new()
        request = ca_pb2.RenewCertificateRequest(
            csr_pem=pending.csr_pem,
            revoke_previous=revoke_previous,
            request_id=pending.request_id,
        )
        if validity is not None:
            request.validity.FromTimedelta(validity)
        reply = self.retry.call(self.stub.RenewCertificate, request, self.timeout)
        key = pending.key
        creds = Credentials(
            key,
            x509.load_pem_x509_certificate(reply.certificate_pem.encode()),
            tuple(x509.load_pem_x509_certificates(reply.chain_pem.encode())),
            # The CA's roots now (every one published during a root rollover): the new
            # certificate may chain to a root we did not trust yet.
            self.trusted_roots(),
            advice_from(reply),
        )
        check_issued(creds, key)
        return creds

    def renewal_info(self, serial: str) -> Advice | None:
        """When the CA wants this certificate renewed (UNIMPLEMENTED from an older CA)."""
        request = ca_pb2.GetRenewalInfoRequest(serial_number=serial)
        return advice_from(self.stub.GetRenewalInfo(request, timeout=TIMEOUT))

    def trusted_roots(self) -> tuple[x509.Certificate, ...]:
        """The roots the CA publishes (GetTrustBundle), asked over this channel, which our
        current roots authenticate; ours as they are if it cannot say (an older CA)."""
        try:
            reply = self.stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=TIMEOUT)
            roots = tuple(x509.load_pem_x509_certificates(reply.root_certificates_pem.encode()))
        except (grpc.RpcError, ValueError):
            return self.creds.roots
        return roots or self.creds.roots

    def status(self, serial: str) -> ca_pb2.GetCertificateStatusResponse:
        request = ca_pb2.GetCertificateStatusRequest(serial_number=serial)
        reply: ca_pb2.GetCertificateStatusResponse = self.retry.call(
            self.stub.GetCertificateStatus, request, self.timeout
        )
        return reply

    def revoke(
        self, serial: str, reason: int = 0, request_id: str | None = None
    ) -> ca_pb2.RevokeCertificateResponse:
        request = ca_pb2.RevokeCertificateRequest(
            serial_number=serial,
            reason=reason,  # type: ignore[arg-type]
            request_id=request_id or new_request_id(),
        )
        reply: ca_pb2.RevokeCertificateResponse = self.retry.call(
            self.stub.RevokeCertificate, request, self.timeout
        )
        return reply

    def crl(self) -> ca_pb2.GetCRLResponse:
        reply: ca_pb2.GetCRLResponse = self.retry.call(
            self.stub.GetCRL, ca_pb2.GetCRLRequest(), self.timeout
        )
        return reply


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
        with CaClient(api_server, creds, retry=Retry()) as client:
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
