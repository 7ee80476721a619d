"""The trust bundle in the SPIFFE bundle format: a JWK Set of the roots (use x509-svid, the
certificate in x5c, the key's own parameters matching it), spiffe_sequence and
spiffe_refresh_hint; the same document over HTTP and in GetTrustBundle."""

from __future__ import annotations

import base64
import datetime as dt
import json
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca_server.core.keys import generate_key
from ca_server.core.profile import build_root, ca_name
from ca_server.core.spiffe_bundle import spiffe_bundle
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _b64int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def _key_of(jwk: dict[str, str]) -> object:
    """The public key a consumer would rebuild from the JWK's parameters (RFC 7518)."""
    if jwk["kty"] == "EC":
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[jwk["crv"]]
        return ec.EllipticCurvePublicNumbers(
            _b64int(jwk["x"]), _b64int(jwk["y"]), curve
        ).public_key()
    if jwk["kty"] == "RSA":
        return rsa.RSAPublicNumbers(_b64int(jwk["e"]), _b64int(jwk["n"])).public_key()
    if jwk["kty"] == "AKP":  # draft-ietf-cose-dilithium
        assert jwk["alg"] == "ML-DSA-65"
        raw = base64.urlsafe_b64decode(jwk["pub"] + "=" * (-len(jwk["pub"]) % 4))
        return mldsa.MLDSA65PublicKey.from_public_bytes(raw)
    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-3072", "ed25519", "ml-dsa-65"])
def test_each_root_is_a_jwk_whose_parameters_and_x5c_match_it(key_type: str) -> None:
    key = generate_key(key_type)
    root = build_root(key, ca_name("signet.local", "Root"), NOW, NOW + dt.timedelta(days=3650))
    bundle = json.loads(spiffe_bundle([root]))
    assert bundle["spiffe_refresh_hint"] > 0
    assert bundle["spiffe_sequence"] == int(NOW.timestamp())
    [jwk] = bundle["keys"]
    assert jwk["use"] == "x509-svid"
    assert x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0])) == root
    rebuilt = _key_of(jwk)
    raw = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert rebuilt.public_bytes(*raw) == root.public_key().public_bytes(*raw)  # type: ignore[attr-defined]


def test_http_and_grpc_serve_the_same_bundle(ca: CaServer, admin) -> None:
    with urllib.request.urlopen(
        f"http://{ca.running.http_address}/spiffe-bundle", timeout=30
    ) as reply:
        assert reply.headers["Content-Type"] == "application/json"
        over_http = reply.read().decode()
    over_grpc = admin.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=30).spiffe_bundle_json
    assert over_http == over_grpc
    [jwk] = json.loads(over_http)["keys"]
    root = x509.load_pem_x509_certificate(ca.root_pem)
    assert x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0])) == root


def test_ec_coordinates_keep_their_full_length_even_with_leading_zero_bytes() -> None:
    # RFC 7518 6.2.1.2: x and y are the full size of a coordinate; a key whose x starts with a
    # zero byte (1 in 256) shows whether the encoder keeps it.
    for _ in range(20_000):
        key = ec.generate_private_key(ec.SECP256R1())
        if key.public_key().public_numbers().x.bit_length() <= 248:
            break
    else:
        pytest.fail("no P-256 key with a leading zero byte in x")
    root = build_root(key, ca_name("signet.local", "Root"), NOW, NOW + dt.timedelta(days=1))
    [jwk] = json.loads(spiffe_bundle([root]))["keys"]
    for name in ("x", "y"):
        assert len(base64.urlsafe_b64decode(jwk[name] + "=" * (-len(jwk[name]) % 4))) == 32
