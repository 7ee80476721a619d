"""Key types the CA uses and accepts, and the digests it signs with.

ML-DSA-65 (FIPS 204; in X.509, RFC 9881) is a CA key type only: the root and intermediate may
sign with it, but the keys they certify (workloads, the CA's own serving and OCSP responder
certificates) stay EC, RSA or Ed25519, because today's TLS stacks cannot use an ML-DSA leaf key
(grpcio's BoringSSL fails the handshake; OpenSSL before 3.5 cannot verify ML-DSA at all)."""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from .errors import ErrorReason, WeakKey

KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519", "ml-dsa-65"]
CA_KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa-3072", "ed25519", "ml-dsa-65")

SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | mldsa.MLDSA65PrivateKey
)
SignatureHash = hashes.SHA256 | hashes.SHA384 | None

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # bigger keys only cost the CA CPU to verify
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
ML_DSA_LEAF_REFUSED = (
    "ML-DSA keys are not certified for workloads: grpcio's TLS cannot complete a handshake "
    "with an ML-DSA leaf key and OpenSSL before 3.5 cannot verify one, so use an EC P-256 key "
    "(the CA itself may sign with ML-DSA-65: ca-server init --key-type ml-dsa-65)"
)


def generate_key(key_type: str) -> SigningKey:
    match key_type:
        case "ec-p256":
            return ec.generate_private_key(ec.SECP256R1())
        case "ec-p384":
            return ec.generate_private_key(ec.SECP384R1())
        case "rsa-2048" | "rsa-3072" | "rsa-4096":
            return rsa.generate_private_key(65537, int(key_type.split("-")[1]))
        case "ed25519":
            return ed25519.Ed25519PrivateKey.generate()
        case "ml-dsa-65":
            return mldsa.MLDSA65PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}; choose one of {', '.join(CA_KEY_TYPES)}")


def signature_hash(key: CertificateIssuerPrivateKeyTypes) -> SignatureHash:
    """The digest to sign with: matched to the key's strength; Ed25519 and ML-DSA take none
    (they sign the message itself)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def check_subject_key(key: CertificatePublicKeyTypes, field: str | None = None) -> None:
    """Refuse keys we will not certify: RSA < 2048, curves other than P-256/P-384, exotic types.
    field: the request field that carried the key, named in the error."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakKey(
                f"RSA key of {key.key_size} bits is too weak: use at least {MIN_RSA_BITS}",
                reason=ErrorReason.KEY_NOT_ALLOWED,
                field=field,
            )
        if key.key_size > MAX_RSA_BITS:
            raise WeakKey(
                f"RSA key of {key.key_size} bits is larger than {MAX_RSA_BITS}",
                reason=ErrorReason.KEY_NOT_ALLOWED,
                field=field,
            )
        if key.public_numbers().e != 65537:
            raise WeakKey(
                "RSA public exponent must be 65537",
                reason=ErrorReason.KEY_NOT_ALLOWED,
                field=field,
            )
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ALLOWED_CURVES):
            raise WeakKey(
                f"EC curve {key.curve.name} is not allowed: use P-256 or P-384",
                reason=ErrorReason.KEY_NOT_ALLOWED,
                field=field,
            )
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    if isinstance(key, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey):
        raise WeakKey(ML_DSA_LEAF_REFUSED, reason=ErrorReason.KEY_NOT_ALLOWED, field=field)
    raise WeakKey(
        f"key type {type(key).__name__} is not allowed: use EC P-256/P-384, RSA >= 2048 or Ed25519",
        reason=ErrorReason.KEY_NOT_ALLOWED,
        field=field,
    )
