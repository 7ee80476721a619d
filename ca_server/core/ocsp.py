"""RFC 6960 OCSP responses for certificates of the issuing CA."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp

from .keys import signature_hash
from .profile import Issuer
from .revocation import Reason


class CertStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    serial: int
    status: CertStatus
    revoked_at: dt.datetime | None = None
    reason: Reason | None = None


def _public_key_bits(key: CertificatePublicKeyTypes) -> bytes:
    """The subjectPublicKey BIT STRING contents, which RFC 6960 CertID.issuerKeyHash hashes."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise TypeError(f"unsupported issuer key {type(key).__name__}")


def issuer_hashes(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of a CertID for certificates this issuer signed."""
    name = hashes.Hash(algorithm)
    name.update(issuer.subject.public_bytes())
    key = hashes.Hash(algorithm)
    key.update(_public_key_bits(issuer.public_key()))
    return name.finalize(), key.finalize()


_OCSP_STATUS = {
    CertStatus.GOOD: ocsp.OCSPCertStatus.GOOD,
    CertStatus.REVOKED: ocsp.OCSPCertStatus.REVOKED,
    CertStatus.UNKNOWN: ocsp.OCSPCertStatus.UNKNOWN,
}


def build_ocsp_response(
    issuer: Issuer,
    answer: StatusAnswer,
    this_update: dt.datetime,
    next_update: dt.datetime,
    cert_id_hash: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A successful, signed BasicOCSPResponse for one serial, DER-encoded.

    Signed by the issuing CA itself (RFC 6960 2.2, case 1), identified by key hash. SHA-1
    CertIDs are the default because that is what OpenSSL and most clients send.
    """
    algorithm = cert_id_hash or hashes.SHA1()  # noqa: S303 - CertID matching, not a signature
    name_hash, key_hash = issuer_hashes(issuer.certificate, algorithm)
    revoked = answer.status is CertStatus.REVOKED
    reason = answer.reason if revoked else None
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=name_hash,
        issuer_key_hash=key_hash,
        serial_number=answer.serial,
        algorithm=algorithm,
        cert_status=_OCSP_STATUS[answer.status],
        this_update=this_update,
        next_update=next_update,
        revocation_time=answer.revoked_at if revoked else None,
        revocation_reason=reason.flag if reason not in (None, Reason.UNSPECIFIED) else None,
    )
    response = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.certificate).sign(
        issuer.key, signature_hash(issuer.key)
    )
    return response.public_bytes(serialization.Encoding.DER)
