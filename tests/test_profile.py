"""ca_server.core.profile: the RFC 5280 profiles of the root, the intermediate and leaves,
checked field by field with cryptography and as a chain with openssl and cryptography's
verifier."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from ca_server.core.keys import CA_KEY_TYPES, SigningKey, generate_key
from ca_server.core.names import IPAddress
from ca_server.core.profile import (
    Issuer,
    LeafRequest,
    PublicUrls,
    build_intermediate,
    build_leaf,
    build_root,
    ca_name,
    certificate_names,
    fingerprint_sha256,
    leaf_subject,
    pem,
    random_serial,
    serial_hex,
)
from tests.pki import TRUST_DOMAIN, make_key, spiffe
from tests.tools import openssl

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
WEB = spiffe("web/frontend")
URLS = PublicUrls("http://ca.example.internal:8080/")


def make_chain(kind: str) -> tuple[Issuer, Issuer]:
    """(root, intermediate) with keys of ``kind``; the root valid 10 years, intermediate 1."""
    root_key = generate_key(kind)
    root_cert = build_root(
        root_key,
        ca_name(TRUST_DOMAIN, "Signet Root CA"),
        NOW - dt.timedelta(hours=1),
        NOW + dt.timedelta(days=3650),
    )
    root = Issuer(root_cert, root_key, ())
    int_key = generate_key(kind)
    int_cert = build_intermediate(
        root,
        int_key.public_key(),
        ca_name(TRUST_DOMAIN, "Signet Intermediate CA"),
        NOW - dt.timedelta(hours=1),
        NOW + dt.timedelta(days=365),
    )
    return root, Issuer(int_cert, int_key, (int_cert,))


@pytest.fixture(scope="module")
def chain() -> tuple[Issuer, Issuer]:
    return make_chain("ec-p256")


@pytest.fixture(scope="module", params=CA_KEY_TYPES)
def any_chain(request: pytest.FixtureRequest) -> tuple[Issuer, Issuer]:
    return make_chain(request.param)


# Debian's OpenSSL 3.0 cannot decode an ML-DSA key (3.5 can): tests/test_pq.py shows it refusing.
@pytest.fixture(scope="module", params=[k for k in CA_KEY_TYPES if not k.startswith("ml-dsa")])
def openssl_chain(request: pytest.FixtureRequest) -> tuple[Issuer, Issuer]:
    return make_chain(request.param)


@pytest.fixture(scope="module")
def subject_keys() -> dict[str, SigningKey]:
    return {kind: make_key(kind) for kind in ("ec-p256", "ec-p384", "rsa-2048", "ed25519")}  # type: ignore[misc]


def leaf_request(
    public_key: CertificatePublicKeyTypes,
    *,
    identity: str = WEB,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    cn: str | None = None,
    not_before: dt.datetime = NOW - dt.timedelta(minutes=1),
    not_after: dt.datetime = NOW + dt.timedelta(hours=24),
    serial: int = 0x1234,
) -> LeafRequest:
    return LeafRequest(
        public_key=public_key,
        identity=identity,
        dns_names=tuple(dns),
        ip_addresses=tuple(ipaddress.ip_address(i) for i in ips),
        common_name=cn,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
    )


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(kind)


def ski_of(cert: x509.Certificate) -> bytes:
    return ext(cert, x509.SubjectKeyIdentifier).value.digest  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def leaf(chain: tuple[Issuer, Issuer], subject_keys: dict[str, SigningKey]) -> x509.Certificate:
    """An EC leaf with every kind of name and no URLs."""
    _, issuer = chain
    req = leaf_request(
        subject_keys["ec-p256"].public_key(),
        dns=("web.internal", "a.web.internal"),
        ips=("10.0.0.1", "2001:db8::1"),
    )
    return build_leaf(issuer, req)


# -- leaf ---------------------------------------------------------------------------------------


def test_leaf_is_v3_signed_by_the_intermediate(
    chain: tuple[Issuer, Issuer], leaf: x509.Certificate
) -> None:
    _, issuer = chain
    assert leaf.version is x509.Version.v3
    assert leaf.issuer == issuer.certificate.subject
    leaf.verify_directly_issued_by(issuer.certificate)


def test_leaf_basic_constraints_is_critical_ca_false(leaf: x509.Certificate) -> None:
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical is True
    assert bc.value == x509.BasicConstraints(ca=False, path_length=None)


@pytest.mark.parametrize(
    ("kind", "key_encipherment"),
    [("ec-p256", False), ("ec-p384", False), ("ed25519", False), ("rsa-2048", True)],
)
def test_leaf_key_usage_is_critical_digital_signature_plus_key_encipherment_only_for_rsa(
    chain: tuple[Issuer, Issuer],
    subject_keys: dict[str, SigningKey],
    kind: str,
    key_encipherment: bool,
) -> None:
    _, issuer = chain
    cert = build_leaf(issuer, leaf_request(subject_keys[kind].public_key()))
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical is True
    assert ku.value == x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def test_leaf_extended_key_usage_is_server_and_client_auth(leaf: x509.Certificate) -> None:
    eku = ext(leaf, x509.ExtendedKeyUsage)
    assert eku.critical is False
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_leaf_san_holds_exactly_the_requested_names_in_order(leaf: x509.Certificate) -> None:
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [
        x509.UniformResourceIdentifier(WEB),
        x509.DNSName("web.internal"),
        x509.DNSName("a.web.internal"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
    ]
    assert certificate_names(leaf) == (
        WEB,
        ("web.internal", "a.web.internal"),
        ("10.0.0.1", "2001:db8::1"),
    )


def test_leaf_with_only_a_spiffe_id_has_that_single_san(
    chain: tuple[Issuer, Issuer], subject_keys: dict[str, SigningKey]
) -> None:
    _, issuer = chain
    cert = build_leaf(issuer, leaf_request(subject_keys["ed25519"].public_key()))
    assert list(ext(cert, x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(WEB)
    ]


def test_leaf_san_is_critical_when_subject_is_empty(leaf: x509.Certificate) -> None:
    assert len(leaf.subject) == 0
    assert ext(leaf, x509.SubjectAlternativeName).critical is True


def test_leaf_san_is_not_critical_when_subject_carries_a_cn(
    chain: tuple[Issuer, Issuer], subject_keys: dict[str, SigningKey]
) -> None:
    _, issuer = chain
    req = leaf_request(
        subject_keys["ec-p256"].public_key(), dns=("web.internal",), cn="web.internal"
    )
    cert = build_leaf(issuer, req)
    assert cert.subject.rfc4514_string() == "CN=web.internal"
    assert ext(cert, x509.SubjectAlternativeName).critical is False


def test_leaf_subject_key_identifier_is_present_and_derived_from_its_key(
    leaf: x509.Certificate,
) -> None:
    ski = ext(leaf, x509.SubjectKeyIdentifier)
    assert ski.critical is False
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())


def test_leaf_authority_key_identifier_equals_the_issuers_ski(
    chain: tuple[Issuer, Issuer], leaf: x509.Certificate
) -> None:
    _, issuer = chain
    aki = ext(leaf, x509.AuthorityKeyIdentifier)
    assert aki.critical is False
    assert aki.value.key_identifier == ski_of(issuer.certificate)
    assert aki.value.authority_cert_issuer is None
    assert aki.value.authority_cert_serial_number is None


def test_leaf_validity_is_as_requested_when_inside_the_issuers(
    chain: tuple[Issuer, Issuer], leaf: x509.Certificate
) -> None:
    assert leaf.not_valid_before_utc == NOW - dt.timedelta(minutes=1)
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(hours=24)


def test_leaf_not_after_is_capped_at_the_issuers_not_after(
    chain: tuple[Issuer, Issuer], subject_keys: dict[str, SigningKey]
) -> None:
    _, issuer = chain
    req = leaf_request(
        subject_keys["ec-p256"].public_key(), not_after=NOW + dt.timedelta(days=5000)
    )
    cert = build_leaf(issuer, req)
    assert cert.not_valid_after_utc == issuer.certificate.not_valid_after_utc
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=365)


def test_leaf_carries_no_aia_or_crl_distribution_points_without_public_urls(
    leaf: x509.Certificate,
) -> None:
    with pytest.raises(x509.ExtensionNotFound):
        ext(leaf, x509.AuthorityInformationAccess)
    with pytest.raises(x509.ExtensionNotFound):
        ext(leaf, x509.CRLDistributionPoints)


def test_leaf_carries_ocsp_ca_issuers_and_crl_urls_when_public_urls_are_given(
    chain: tuple[Issuer, Issuer], subject_keys: dict[str, SigningKey]
) -> None:
    _, issuer = chain
    cert = build_leaf(issuer, leaf_request(subject_keys["ec-p256"].public_key()), URLS)
    # By the issuer's key id: after a rotation each leaf still names its own issuer's.
    kid = ext(issuer.certificate, x509.SubjectKeyIdentifier).value.digest.hex()
    aia = ext(cert, x509.AuthorityInformationAccess)
    assert aia.critical is False
    assert list(aia.value) == [
        x509.AccessDescription(
            x509.AuthorityInformationAccessOID.OCSP,
            x509.UniformResourceIdentifier("http://ca.example.internal:8080/ocsp"),
        ),
        x509.AccessDescription(
            x509.AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier(f"http://ca.example.internal:8080/ca/{kid}.crt"),
        ),
    ]
    cdp = ext(cert, x509.CRLDistributionPoints)
    assert cdp.critical is False
    assert list(cdp.value) == [
        x509.DistributionPoint(
            full_name=[
                x509.UniformResourceIdentifier(f"http://ca.example.internal:8080/ca/{kid}.crl")
            ],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
    ]


def test_public_urls_join_the_base_without_doubling_the_slash() -> None:
    for base in ("http://ca:8080", "http://ca:8080/", "http://ca:8080//"):
        urls = PublicUrls(base)
        assert (urls.ocsp, urls.ca_issuers, urls.crl) == (
            "http://ca:8080/ocsp",
            "http://ca:8080/ca.crt",
            "http://ca:8080/crl",
        )


def test_leaf_carries_exactly_the_profile_extensions(leaf: x509.Certificate) -> None:
    assert {e.oid for e in leaf.extensions} == {
        x509.BasicConstraints.oid,
        x509.KeyUsage.oid,
        x509.ExtendedKeyUsage.oid,
        x509.SubjectAlternativeName.oid,
        x509.SubjectKeyIdentifier.oid,
        x509.AuthorityKeyIdentifier.oid,
    }


@pytest.mark.parametrize("serial", [1, 0x1234, 2**127, 2**128 - 1])
def test_leaf_serial_is_the_requested_one(
    chain: tuple[Issuer, Issuer], subject_keys: dict[str, SigningKey], serial: int
) -> None:
    _, issuer = chain
    cert = build_leaf(issuer, leaf_request(subject_keys["ec-p256"].public_key(), serial=serial))
    assert cert.serial_number == serial


def test_random_serials_are_positive_below_2_to_128_and_distinct() -> None:
    serials = [random_serial() for _ in range(5000)]
    assert all(0 < s < 2**128 for s in serials)
    assert len(set(serials)) == len(serials)
    assert max(serials).bit_length() > 120  # uses (about) all 128 bits


SIGNATURE_DIGEST: dict[str, type[hashes.HashAlgorithm] | None] = {
    "ec-p256": hashes.SHA256,
    "ec-p384": hashes.SHA384,
    "rsa-3072": hashes.SHA256,
    "ed25519": None,  # Ed25519 signs the message itself
    "ml-dsa-65": None,  # so does ML-DSA (pure mode, RFC 9881)
}
PURE_SIGNATURE_OID = {
    "ed25519": x509.SignatureAlgorithmOID.ED25519,
    "ml-dsa-65": x509.SignatureAlgorithmOID.ML_DSA_65,
}


def test_signature_digest_matches_the_issuer_key_strength(
    any_chain: tuple[Issuer, Issuer],
) -> None:
    assert set(SIGNATURE_DIGEST) == set(CA_KEY_TYPES)
    root, issuer = any_chain
    kind = _kind(issuer.key)
    expected = SIGNATURE_DIGEST[kind]
    cert = build_leaf(issuer, leaf_request(make_key("ec-p256").public_key()))
    for c in (root.certificate, issuer.certificate, cert):
        if expected is None:
            assert c.signature_hash_algorithm is None
            assert c.signature_algorithm_oid == PURE_SIGNATURE_OID[kind]
        else:
            assert isinstance(c.signature_hash_algorithm, expected)


def _kind(key: SigningKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, mldsa.MLDSA65PrivateKey):
        return "ml-dsa-65"
    if hasattr(key, "curve"):
        return f"ec-p{key.curve.key_size}"
    return f"rsa-{key.key_size}"


# -- leaf subject -------------------------------------------------------------------------------


def ips(*values: str) -> tuple[IPAddress, ...]:
    return tuple(ipaddress.ip_address(v) for v in values)


def test_leaf_subject_keeps_a_cn_that_is_a_granted_dns_name_lowercased() -> None:
    name = leaf_subject("Web.Internal", ("web.internal",), ())
    assert name == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.internal")])


def test_leaf_subject_keeps_a_cn_that_is_a_granted_ip() -> None:
    name = leaf_subject("10.0.0.1", (), ips("10.0.0.1"))
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "10.0.0.1"


@pytest.mark.parametrize(
    "cn",
    [None, "", "other.internal", "evil.example.com", WEB, "10.0.0.2", "Signet Root CA"],
)
def test_leaf_subject_drops_a_cn_that_is_not_a_granted_name(cn: str | None) -> None:
    assert leaf_subject(cn, ("web.internal",), ips("10.0.0.1")) == x509.Name([])


# -- serial_hex ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serial", "text"),
    [
        (1, "01"),
        (0x0F, "0f"),
        (0xABC, "0abc"),
        (0xABCD, "abcd"),
        (2**128 - 1, "f" * 32),
        (2**127, "80" + "00" * 15),
    ],
)
def test_serial_hex_is_lowercase_and_of_even_length(serial: int, text: str) -> None:
    assert serial_hex(serial) == text
    assert int(text, 16) == serial


# -- root and intermediate ----------------------------------------------------------------------


CA_KEY_USAGE = x509.KeyUsage(
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


def test_root_is_self_signed_ca_with_path_length_one(any_chain: tuple[Issuer, Issuer]) -> None:
    root, _ = any_chain
    cert = root.certificate
    assert cert.issuer == cert.subject
    assert cert.subject.rfc4514_string() == "CN=Signet Root CA,O=signet.local"
    cert.verify_directly_issued_by(cert)
    bc = ext(cert, x509.BasicConstraints)
    assert (bc.critical, bc.value) == (True, x509.BasicConstraints(ca=True, path_length=1))
    ku = ext(cert, x509.KeyUsage)
    assert (ku.critical, ku.value) == (True, CA_KEY_USAGE)
    assert ski_of(cert) == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    assert 0 < cert.serial_number < 2**128


def test_intermediate_is_ca_with_path_length_zero_signed_by_root(
    any_chain: tuple[Issuer, Issuer],
) -> None:
    root, issuer = any_chain
    cert = issuer.certificate
    assert cert.issuer == root.certificate.subject
    cert.verify_directly_issued_by(root.certificate)
    bc = ext(cert, x509.BasicConstraints)
    assert (bc.critical, bc.value) == (True, x509.BasicConstraints(ca=True, path_length=0))
    ku = ext(cert, x509.KeyUsage)
    assert (ku.critical, ku.value) == (True, CA_KEY_USAGE)
    assert ku.value.key_cert_sign and ku.value.crl_sign
    assert ski_of(cert) == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski_of(root.certificate)
    assert 0 < cert.serial_number < 2**128


def test_intermediate_not_after_is_capped_at_the_roots(chain: tuple[Issuer, Issuer]) -> None:
    root, _ = chain
    key = generate_key("ec-p256")
    cert = build_intermediate(
        root,
        key.public_key(),
        ca_name(TRUST_DOMAIN, "Too Long"),
        NOW,
        NOW + dt.timedelta(days=100_000),
    )
    assert cert.not_valid_after_utc == root.certificate.not_valid_after_utc


def test_issuer_chain_pem_is_the_chain_concatenated(chain: tuple[Issuer, Issuer]) -> None:
    _, issuer = chain
    assert issuer.chain_pem == pem(issuer.certificate)
    assert issuer.chain_pem.startswith("-----BEGIN CERTIFICATE-----\n")


def test_fingerprint_sha256_is_lowercase_hex_of_the_der_digest(leaf: x509.Certificate) -> None:
    assert fingerprint_sha256(leaf) == leaf.fingerprint(hashes.SHA256()).hex()
    assert len(fingerprint_sha256(leaf)) == 64


# -- the chain, verified independently ----------------------------------------------------------


def write_chain(tmp_path: Path, root: Issuer, issuer: Issuer, leaf: x509.Certificate) -> None:
    (tmp_path / "root.pem").write_text(pem(root.certificate))
    (tmp_path / "int.pem").write_text(pem(issuer.certificate))
    (tmp_path / "leaf.pem").write_text(pem(leaf))


def test_openssl_verifies_leaf_chain_for_each_ca_key_type(
    tmp_path: Path, openssl_chain: tuple[Issuer, Issuer]
) -> None:
    root, issuer = openssl_chain
    req = leaf_request(make_key("ec-p256").public_key(), dns=("web.internal",), ips=("10.0.0.1",))
    write_chain(tmp_path, root, issuer, build_leaf(issuer, req, URLS))
    for purpose in ("sslserver", "sslclient"):
        result = openssl(
            "verify", "-x509_strict", "-purpose", purpose,
            "-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "int.pem",
            tmp_path / "leaf.pem",
        )  # fmt: skip
        assert result.stdout.strip() == f"{tmp_path / 'leaf.pem'}: OK"


def test_openssl_refuses_a_leaf_used_as_an_issuer(
    tmp_path: Path, chain: tuple[Issuer, Issuer], subject_keys: dict[str, SigningKey]
) -> None:
    root, issuer = chain
    leaf_key = subject_keys["ec-p256"]
    first = build_leaf(issuer, leaf_request(leaf_key.public_key()))
    as_issuer = Issuer(first, leaf_key, (first, issuer.certificate))
    second = build_leaf(as_issuer, leaf_request(make_key("ec-p256").public_key()))
    write_chain(tmp_path, root, issuer, second)
    (tmp_path / "untrusted.pem").write_text(pem(first) + pem(issuer.certificate))
    result = openssl(
        "verify", "-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "untrusted.pem",
        tmp_path / "leaf.pem", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "invalid CA certificate" in result.stdout + result.stderr


def test_cryptography_verifier_accepts_leaf_for_server_and_client_use(
    any_chain: tuple[Issuer, Issuer],
) -> None:
    root, issuer = any_chain
    if isinstance(issuer.key, ed25519.Ed25519PrivateKey):
        pytest.skip("cryptography's verifier applies the Web PKI profile, which forbids Ed25519")
    req = leaf_request(make_key("ec-p256").public_key(), dns=("web.internal",), ips=("10.0.0.1",))
    cert = build_leaf(issuer, req, URLS)
    builder = PolicyBuilder().store(Store([root.certificate])).time(NOW)
    server_chain = builder.build_server_verifier(x509.DNSName("web.internal")).verify(
        cert, [issuer.certificate]
    )
    assert server_chain == [cert, issuer.certificate, root.certificate]
    ip_chain = builder.build_server_verifier(
        x509.IPAddress(ipaddress.ip_address("10.0.0.1"))
    ).verify(cert, [issuer.certificate])
    assert ip_chain[0] == cert
    client = builder.build_client_verifier().verify(cert, [issuer.certificate])
    assert client.chain == [cert, issuer.certificate, root.certificate]
    assert x509.UniformResourceIdentifier(WEB) in client.subjects  # type: ignore[operator]
