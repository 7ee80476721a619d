"""Certificate profiles (RFC 5280): the root, the online intermediate, and leaves.

Pure functions of their inputs: keys, names, times and serials come in, certificates go out.
Serials have one text form, in the API and the store: ``serial_hex`` makes it, ``parse_serial``
reads what callers send.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from .errors import ErrorReason, InvalidRequest
from .keys import SigningKey, signature_hash
from .names import IPAddress

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class Issuer:
    """The CA that signs: its certificate and key, and its chain up to (excluding) the root."""

    certificate: x509.Certificate
    key: SigningKey
    chain: tuple[x509.Certificate, ...]  # issuer first, root excluded

    @property
    def chain_pem(self) -> str:
        return "".join(pem(c) for c in self.chain)


@dataclass(frozen=True, slots=True)
class PublicUrls:
    """Where relying parties fetch OCSP, the issuer certificate and the CRL."""

    base: str

    @property
    def ocsp(self) -> str:
        return f"{self.base.rstrip('/')}/ocsp"

    @property
    def ca_issuers(self) -> str:
        return f"{self.base.rstrip('/')}/ca.crt"

    @property
    def crl(self) -> str:
        return f"{self.base.rstrip('/')}/crl"

    @property
    def root_cert(self) -> str:
        return f"{self.base.rstrip('/')}/root.crt"

    @property
    def root_crl(self) -> str:
        return f"{self.base.rstrip('/')}/root.crl"

    # Per CA, by key id: what certificates carry, so that each still names its own issuer's
    # certificate and CRL after a rotation (/ca.crt, /crl, /root.* follow the active ones).
    def ca_cert(self, key_id: str) -> str:
        return f"{self.base.rstrip('/')}/ca/{key_id}.crt"

    def ca_crl(self, key_id: str) -> str:
        return f"{self.base.rstrip('/')}/ca/{key_id}.crl"


@dataclass(frozen=True, slots=True)
class LeafRequest:
    public_key: CertificatePublicKeyTypes
    identity: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]
    common_name: str | None
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def random_serial() -> int:
    """A positive 128-bit serial from the OS CSPRNG (RFC 5280: positive, at most 20 octets)."""
    while True:
        serial = secrets.randbits(128)
        if serial > 0:
            return serial


def serial_hex(serial: int) -> str:
    """Canonical form of a serial in the API and store: lowercase hex, even length."""
    text = f"{serial:x}"
    return text if len(text) % 2 == 0 else "0" + text


def _bad_serial(message: str) -> InvalidRequest:
    return InvalidRequest(message, reason=ErrorReason.SERIAL_INVALID, field="serial_number")


def parse_serial(text: str) -> str:
    """Accept hex in any case, with optional colons or 0x; return the canonical form."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not cleaned:
        raise _bad_serial("serial_number is required (hex, as in the certificate)")
    if len(cleaned) > 40:
        raise _bad_serial("serial_number is longer than 20 octets (RFC 5280 allows at most 20)")
    if not _HEX.fullmatch(cleaned):  # int(x, 16) alone would also take "-1" and "1_0"
        raise _bad_serial(f"serial_number {text!r} is not hexadecimal")

    return serial_hex(int(cleaned, 16))


def _ski(public_key: CertificatePublicKeyTypes) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _key_id(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def ca_name(trust_domain: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def build_root(
    key: SigningKey, subject: x509.Name, not_before: dt.datetime, not_after: dt.datetime
) -> x509.Certificate:
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(_ski(public_key), critical=False)
        .sign(key, signature_hash(key))
    )


def build_intermediate(
    root: Issuer,
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    not_before: dt.datetime,
    not_after: dt.datetime,
    urls: PublicUrls | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.certificate.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, root.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(_aki(root.certificate), critical=False)
    )
    if urls is not None:
        # So that relying parties checking the whole chain (nginx ssl_ocsp on, ssl_crl) can
        # ask about the intermediate: the root's OCSP answer and CRL, signed ahead of time.
        root_kid = _key_id(root.certificate)
        for extension in publication(urls.ocsp, urls.ca_cert(root_kid), urls.ca_crl(root_kid)):
            builder = builder.add_extension(extension, critical=False)
    return builder.sign(root.key, signature_hash(root.key))


def build_ocsp_responder(
    issuer: Issuer,
    public_key: CertificatePublicKeyTypes,
    not_before: dt.datetime,
    not_after: dt.datetime,
    serial: int,
) -> x509.Certificate:
    """A delegated OCSP signing certificate (RFC 6960 4.2.2.2): EKU id-kp-OCSPSigning only,
    id-pkix-ocsp-nocheck since it is too short-lived to be worth checking itself."""
    trust_domain = issuer.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    org = str(trust_domain[0].value) if trust_domain else "Signet"
    return (
        x509.CertificateBuilder()
        .subject_name(ca_name(org, "Signet OCSP Responder"))
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, issuer.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public_key, encipherment=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(_aki(issuer.certificate), critical=False)
        .sign(issuer.key, signature_hash(issuer.key))
    )


def _leaf_key_usage(
    public_key: CertificatePublicKeyTypes, encipherment: bool = True
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        # RSA key exchange (TLS 1.2 RSA kx) encrypts to the key; other key types never do.
        key_encipherment=encipherment and isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def leaf_subject(
    common_name: str | None, dns_names: Sequence[str], ips: Sequence[IPAddress]
) -> x509.Name:
    """Keep the requested CN only when it repeats a granted name: the SANs are what count,
    and a CN that is not among them would assert a name policy never checked."""
    granted = {*dns_names, *(str(ip) for ip in ips)}
    # X.520 caps a CN at 64 characters; a longer DNS name is carried by the SAN alone.
    if common_name and common_name.lower() in granted and len(common_name) <= 64:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name.lower())])
    return x509.Name([])


def capped_not_after(issuer: Issuer, not_after: dt.datetime) -> dt.datetime:
    """A leaf never outlives its issuer."""
    return min(not_after, issuer.certificate.not_valid_after_utc)


def build_leaf(
    issuer: Issuer, req: LeafRequest, urls: PublicUrls | None = None
) -> x509.Certificate:
    subject = leaf_subject(req.common_name, req.dns_names, req.ip_addresses)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(req.identity)]
    names += [x509.DNSName(n) for n in req.dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in req.ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(req.public_key)
        .serial_number(req.serial)
        .not_valid_before(req.not_before)
        .not_valid_after(capped_not_after(issuer, req.not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(req.public_key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        # RFC 5280 4.2.1.6: with an empty subject the SAN extension must be critical.
        .add_extension(x509.SubjectAlternativeName(names), critical=len(subject) == 0)
        .add_extension(_ski(req.public_key), critical=False)
        .add_extension(_aki(issuer.certificate), critical=False)
    )
    if urls is not None:
        kid = _key_id(issuer.certificate)
        for extension in publication(urls.ocsp, urls.ca_cert(kid), urls.ca_crl(kid)):
            builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer.key, signature_hash(issuer.key))


def publication(
    ocsp: str, ca_issuers: str, crl: str
) -> tuple[x509.AuthorityInformationAccess, x509.CRLDistributionPoints]:
    """AIA (OCSP, the issuer's certificate) and CRL Distribution Points (RFC 5280 4.2.2.1,
    4.2.1.13): where a relying party asks about a certificate."""
    return (
        x509.AuthorityInformationAccess(
            [
                x509.AccessDescription(
                    AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp)
                ),
                x509.AccessDescription(
                    AuthorityInformationAccessOID.CA_ISSUERS,
                    x509.UniformResourceIdentifier(ca_issuers),
                ),
            ]
        ),
        x509.CRLDistributionPoints(
            [
                x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(crl)],
                    relative_name=None,
                    reasons=None,
                    crl_issuer=None,
                )
            ]
        ),
    )


def certificate_names(
    cert: x509.Certificate,
) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """(SPIFFE ID, DNS names, IPs as text) a certificate carries."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None, (), ()
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith("spiffe://")
    ]
    return (
        uris[0] if uris else None,
        tuple(san.get_values_for_type(x509.DNSName)),
        tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
    )
