"""RFC 6960 OCSP responses for certificates of the issuing CA."""

from __future__ import annotations

import datetime as dt
import enum
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp

from .keys import SigningKey, signature_hash
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
    if isinstance(key, ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise TypeError(f"unsupported issuer key {type(key).__name__}")


def issuer_hashes(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of a CertID for certificates this issuer signed
    (computed once per issuer and algorithm: every signed response and status answer asks)."""
    return _issuer_hashes(issuer, algorithm.name)


@functools.lru_cache(maxsize=64)
def _issuer_hashes(issuer: x509.Certificate, algorithm_name: str) -> tuple[bytes, bytes]:
    algorithm = _HASHES[algorithm_name]()
    name = hashes.Hash(algorithm)
    name.update(issuer.subject.public_bytes())
    key = hashes.Hash(algorithm)
    key.update(_public_key_bits(issuer.public_key()))
    return name.finalize(), key.finalize()


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    h.name: h for h in (hashes.SHA1, hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)
}

_OCSP_STATUS = {
    CertStatus.GOOD: ocsp.OCSPCertStatus.GOOD,
    CertStatus.REVOKED: ocsp.OCSPCertStatus.REVOKED,
    CertStatus.UNKNOWN: ocsp.OCSPCertStatus.UNKNOWN,
}


@dataclass(frozen=True, slots=True)
class OcspSigner:
    """Who signs responses: a delegated responder certificate (EKU OCSPSigning, issued by the
    CA) or the issuing CA itself (RFC 6960 4.2.2.2)."""

    certificate: x509.Certificate
    key: SigningKey
    delegated: bool


@dataclass(frozen=True, slots=True)
class SignedStatus:
    """A signed OCSP response and its validity window, as the store keeps it."""

    der: bytes
    this_update: dt.datetime
    next_update: dt.datetime


def build_ocsp_response(
    issuer: Issuer,
    answer: StatusAnswer,
    this_update: dt.datetime,
    next_update: dt.datetime,
    cert_id_hash: hashes.HashAlgorithm | None = None,
    *,
    signer: OcspSigner | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """A successful, signed BasicOCSPResponse for one serial, DER-encoded.

    Signed by `signer` (default: the issuing CA itself), identified by key hash; a delegated
    signer's certificate travels in the response so clients can verify it. SHA-1 CertIDs are
    the default because that is what OpenSSL, nginx and most clients send.
    """
    signer = signer or OcspSigner(issuer.certificate, issuer.key, delegated=False)
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
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer.certificate)
    if signer.delegated:
        builder = builder.certificates([signer.certificate])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    response = builder.sign(signer.key, signature_hash(signer.key))
    return response.public_bytes(serialization.Encoding.DER)


class MalformedOcspRequest(ValueError):
    """The bytes are not an OCSP request we can answer (RFC 6960 malformedRequest)."""


SUPPORTED_CERT_ID_HASHES = (hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512)


# RFC 8954 2.1 as updated by RFC 9654: a nonce is 1 to 128 octets, else malformedRequest.
NONCE_MAX = 128


@dataclass(frozen=True, slots=True)
class OcspQuery:
    serial: int
    algorithm: hashes.HashAlgorithm
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    nonce: bytes | None
    plain: bool = False  # no request extensions at all: the answer depends on the serial only


def parse_ocsp_request(der: bytes) -> OcspQuery:
    """Read a DER OCSPRequest with one CertID; raise MalformedOcspRequest otherwise."""
    try:
        request = ocsp.load_der_ocsp_request(der)
        algorithm = request.hash_algorithm
        try:
            nonce: bytes | None = request.extensions.get_extension_for_class(
                x509.OCSPNonce
            ).value.nonce
        except x509.ExtensionNotFound:
            nonce = None
        query = OcspQuery(
            request.serial_number,
            algorithm,
            request.issuer_name_hash,
            request.issuer_key_hash,
            nonce,
            plain=len(request.extensions) == 0,
        )
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        raise MalformedOcspRequest(str(exc)) from None
    if not isinstance(algorithm, SUPPORTED_CERT_ID_HASHES):
        raise MalformedOcspRequest(f"CertID hash {algorithm.name} is not supported")
    if query.serial < 0:
        raise MalformedOcspRequest("negative serial number")
    if nonce is not None and not 1 <= len(nonce) <= NONCE_MAX:
        raise MalformedOcspRequest(f"a nonce must be 1 to {NONCE_MAX} octets")
    return query


def unsuccessful_response(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsigned error response: malformedRequest, unauthorized, internalError, tryLater."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )
