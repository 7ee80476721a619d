"""Reading a PKCS#10 CSR: format, size, proof of possession, key strength and the names it
asks for. Only the SAN extension is read; every other requested extension is ignored, so a
CSR can never ask its way to CA:TRUE or other key usages."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from .errors import InvalidRequest, LimitExceeded
from .keys import check_subject_key
from .names import IPAddress, normalize_dns_name, parse_spiffe_id

MAX_CSR_BYTES = 64 * 1024


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
        raise LimitExceeded(f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES}")
    if not data.strip():
        raise InvalidRequest("csr_pem is empty: send a PEM 'CERTIFICATE REQUEST'")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise InvalidRequest("csr_pem is not a PEM 'CERTIFICATE REQUEST' block")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise InvalidRequest(f"csr_pem could not be parsed as a PKCS#10 CSR: {exc}") from exc
    try:
        public_key = csr.public_key()
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidRequest(f"CSR public key is not usable: {exc}") from exc
    check_subject_key(public_key)
    if not csr.is_signature_valid:
        raise InvalidRequest(
            "CSR signature does not verify: it must be signed by the key it carries "
            "(proof of possession)"
        )
    return ParsedCsr(public_key, _common_name(csr), *_sans(csr))


def _common_name(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise InvalidRequest(f"CSR subject is malformed: {exc}") from exc
    return str(cns[0].value) if cns else None


def _sans(
    csr: x509.CertificateSigningRequest,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[IPAddress, ...]]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), (), ()
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidRequest(f"CSR extensions are malformed: {exc}") from exc
    uris: list[str] = []
    dns: list[str] = []
    ips: list[IPAddress] = []
    for gn in san:
        if isinstance(gn, x509.UniformResourceIdentifier):
            try:
                uris.append(str(parse_spiffe_id(gn.value)))
            except ValueError as exc:
                raise InvalidRequest(f"URI SAN: {exc}") from exc
        elif isinstance(gn, x509.DNSName):
            try:
                dns.append(normalize_dns_name(gn.value))
            except ValueError as exc:
                raise InvalidRequest(f"DNS SAN: {exc}") from exc
        elif isinstance(gn, x509.IPAddress):
            if isinstance(gn.value, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise InvalidRequest("IP SAN must be an address, not a network")
            ips.append(gn.value)
        else:
            raise InvalidRequest(
                f"unsupported SAN type {type(gn).__name__}: only DNS, IP and URI (SPIFFE ID) SANs"
            )
    return tuple(uris), tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips))
