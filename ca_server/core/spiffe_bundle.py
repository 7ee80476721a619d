"""The trust bundle in the SPIFFE bundle format (SPIFFE Trust Domain and Bundle, section 4): a
JWK Set whose keys are the X.509 roots (``use: x509-svid``, the certificate in ``x5c``), with
``spiffe_sequence`` and ``spiffe_refresh_hint``. SPIRE, Envoy's SDS and go-spiffe read it."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

REFRESH_HINT = 300  # seconds: how soon a consumer should look again (a rollover can happen)
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _int(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64(value.to_bytes(length, "big"))


def _jwk(cert: x509.Certificate) -> dict[str, Any]:
    """RFC 7517/7518 public key parameters of the certificate's key, and the certificate."""
    key = cert.public_key()
    jwk: dict[str, Any]
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        point = key.public_numbers()
        jwk = {"kty": "EC", "crv": _CURVES[key.curve.name], "x": _int(point.x, size),
               "y": _int(point.y, size)}  # fmt: skip
    elif isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        jwk = {"kty": "RSA", "n": _int(rsa_numbers.n), "e": _int(rsa_numbers.e)}
    elif isinstance(key, ed25519.Ed25519PublicKey):
        jwk = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
        }
    elif isinstance(key, mldsa.MLDSA65PublicKey):
        # No RFC yet: the "AKP" key type of draft-ietf-cose-dilithium, which JOSE libraries
        # are adopting; the certificate in x5c is what a SPIFFE consumer uses anyway.
        jwk = {
            "kty": "AKP",
            "alg": "ML-DSA-65",
            "pub": _b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
        }
    else:
        raise TypeError(f"no JWK form for {type(key).__name__}")
    jwk["use"] = "x509-svid"
    jwk["x5c"] = [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()]  # not url-safe
    return jwk


def spiffe_bundle(roots: Sequence[x509.Certificate], generation: int = 0) -> str:
    """The bundle as JSON. Its sequence grows with the newest root (a new root is a new
    bundle) and with the store's CA generation (which also moves when a root is withdrawn)."""
    sequence = max(int(r.not_valid_before_utc.timestamp()) for r in roots) + generation
    return json.dumps(
        {
            "keys": [_jwk(r) for r in roots],
            "spiffe_sequence": sequence,
            "spiffe_refresh_hint": REFRESH_HINT,
        },
        indent=2,
    )
