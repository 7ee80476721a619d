"""Keys and CSRs built in code for tests (EC P-256 unless a test says otherwise)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

TRUST_DOMAIN = "signet.local"


def spiffe(path: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{path.lstrip('/')}"


def make_key(kind: str = "ec-p256") -> CertificateIssuerPrivateKeyTypes:
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ec-p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ec-k256":
        return ec.generate_private_key(ec.SECP256K1())
    if kind.startswith("rsa-"):
        return rsa.generate_private_key(65537, int(kind.split("-")[1]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ml-dsa-65":
        return mldsa.MLDSA65PrivateKey.generate()
    raise ValueError(kind)


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(
    key: CertificateIssuerPrivateKeyTypes | None = None,
    *,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    cn: str | None = None,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> tuple[CertificateIssuerPrivateKeyTypes, str]:
    """A signed CSR; returns (key, csr_pem)."""
    key = key or make_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for ext, critical in extra_extensions:
        builder = builder.add_extension(ext, critical=critical)
    pure = isinstance(key, ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey)
    algorithm = None if pure else hashes.SHA256()
    csr = builder.sign(key, algorithm)
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()
