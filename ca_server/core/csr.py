"""Reading a PKCS#10 CSR: format, size, proof of possession, key strength and the names it
asks for. Only the SAN extension is read; every other requested extension is ignored, so a
CSR can never ask its way to CA:TRUE or other key usages."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID, PublicKeyAlgorithmOID

from .errors import ErrorReason, InvalidRequest, LimitExceeded, WeakKey
from .keys import ML_DSA_LEAF_REFUSED, check_subject_key
from .names import IPAddress, normalize_dns_name, parse_spiffe_id

MAX_CSR_BYTES = 64 * 1024
FIELD = "csr_pem"  # every RPC that takes a CSR calls it this

_KNOWN = {  # names for the refusals people are likely to meet
    "1.2.840.113549.1.1.10": "RSASSA-PSS ",
    "1.2.840.10040.4.1": "DSA ",
    "1.3.101.113": "Ed448 ",
    "1.3.101.110": "X25519 ",
    "1.3.101.111": "X448 ",
}
_ML_DSA = {
    PublicKeyAlgorithmOID.ML_DSA_44: "ML-DSA-44",
    PublicKeyAlgorithmOID.ML_DSA_65: "ML-DSA-65",
    PublicKeyAlgorithmOID.ML_DSA_87: "ML-DSA-87",
}
_ALLOWED_KEY_ALGORITHMS = {
    PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5,
    PublicKeyAlgorithmOID.EC_PUBLIC_KEY,
    PublicKeyAlgorithmOID.ED25519,
}


@dataclass(frozen=True, slots=True)
class ParsedCsr:
    public_key: CertificatePublicKeyTypes
    common_name: str | None
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]


def parse_csr(csr_pem: str) -> ParsedCsr:
    """Parse and check a CSR; raise InvalidRequest / WeakKey / LimitExceeded naming the problem."""
    data = csr_pem.encode("utf-8", "replace")
    if len(data) > MAX_CSR_BYTES:
        raise LimitExceeded(
            f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES}",
            reason=ErrorReason.CSR_TOO_LARGE,
            field=FIELD,
            metadata={"limit": str(MAX_CSR_BYTES)},
        )
    if not data.strip():
        raise InvalidRequest(
            "csr_pem is empty: send a PEM 'CERTIFICATE REQUEST'",
            reason=ErrorReason.CSR_MISSING,
            field=FIELD,
        )
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise InvalidRequest(
            "csr_pem is not a PEM 'CERTIFICATE REQUEST' block",
            reason=ErrorReason.CSR_NOT_PEM,
            field=FIELD,
        )
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise InvalidRequest(
            f"csr_pem could not be parsed as a PKCS#10 CSR: {exc}",
            reason=ErrorReason.CSR_MALFORMED,
            field=FIELD,
        ) from exc
    # By algorithm first: an RSA-PSS key would otherwise load as plain RSA and be certified
    # for uses (key encipherment) its algorithm forbids (RFC 4055).
    algorithm = cast(Any, csr).public_key_algorithm_oid  # present at run time, not in the stubs
    if algorithm in _ML_DSA:
        raise WeakKey(
            f"{_ML_DSA[algorithm]} CSR refused: {ML_DSA_LEAF_REFUSED}",
            reason=ErrorReason.KEY_NOT_ALLOWED,
            field=FIELD,
        )
    if algorithm not in _ALLOWED_KEY_ALGORITHMS:
        raise WeakKey(
            f"public key algorithm {_KNOWN.get(algorithm.dotted_string, '')}"
            f"({algorithm.dotted_string}) is not allowed: "
            "use EC P-256/P-384, RSA (rsaEncryption) >= 2048 or Ed25519",
            reason=ErrorReason.KEY_NOT_ALLOWED,
            field=FIELD,
        )
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise WeakKey(
            f"CSR public key is not usable: {exc}", reason=ErrorReason.KEY_NOT_ALLOWED, field=FIELD
        ) from exc
    check_subject_key(public_key, FIELD)
    if not csr.is_signature_valid:
        raise InvalidRequest(
            "CSR signature does not verify: it must be signed by the key it carries "
            "(proof of possession)",
            reason=ErrorReason.CSR_SIGNATURE_INVALID,
            field=FIELD,
        )
    return ParsedCsr(public_key, _common_name(csr), *_sans(csr))


def _common_name(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise InvalidRequest(
            f"CSR subject is malformed: {exc}", reason=ErrorReason.CSR_MALFORMED, field=FIELD
        ) from exc
    return str(cns[0].value) if cns else None


def _sans(
    csr: x509.CertificateSigningRequest,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[IPAddress, ...]]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), (), ()
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidRequest(
            f"CSR extensions are malformed: {exc}", reason=ErrorReason.CSR_MALFORMED, field=FIELD
        ) from exc
    uris: list[str] = []
    dns: list[str] = []
    ips: list[IPAddress] = []
    for gn in san:
        if isinstance(gn, x509.UniformResourceIdentifier):
            try:
                uris.append(str(parse_spiffe_id(gn.value)))
            except ValueError as exc:
                raise _bad_name(f"URI SAN: {exc}", gn.value) from exc
        elif isinstance(gn, x509.DNSName):
            try:
                dns.append(normalize_dns_name(gn.value))
            except ValueError as exc:
                raise _bad_name(f"DNS SAN: {exc}", gn.value) from exc
        elif isinstance(gn, x509.IPAddress):
            if isinstance(gn.value, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise _bad_name("IP SAN must be an address, not a network", str(gn.value))
            ips.append(gn.value)
        else:
            raise InvalidRequest(
                f"unsupported SAN type {type(gn).__name__}: only DNS, IP and URI (SPIFFE ID) SANs",
                reason=ErrorReason.NAME_INVALID,
                field=FIELD,
            )
    return tuple(uris), tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips))


def _bad_name(message: str, name: str) -> InvalidRequest:
    # The name is the requester's own text, cut short: metadata is no place for a megabyte.
    return InvalidRequest(
        message, reason=ErrorReason.NAME_INVALID, field=FIELD, metadata={"name": name[:256]}
    )
