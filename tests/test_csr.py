"""ca_server.core.csr.parse_csr: what a CSR must be (format, size, proof of possession, key)
and the names it may ask for."""

from __future__ import annotations

import base64
import ipaddress
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca_server.core.csr import MAX_CSR_BYTES, ParsedCsr, parse_csr
from ca_server.core.errors import InvalidRequest, LimitExceeded, WeakKey
from tests.pki import make_csr, make_key, spiffe
from tests.tools import openssl

WEB = spiffe("web/frontend")
OPENSSL_SANS = "DNS:Web.Internal,DNS:api.web.internal,IP:10.0.0.1,IP:::1"
ACCEPTED_KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519")


@pytest.fixture(scope="module")
def keys() -> dict[str, CertificateIssuerPrivateKeyTypes]:
    """One key of each kind for the module: RSA 4096 generation alone can take a second."""
    return {kind: make_key(kind) for kind in ACCEPTED_KEY_TYPES}


def armour(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def csr_der(csr_pem: str) -> bytes:
    return x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)


def spki_der(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_public_key(parsed: ParsedCsr, key: CertificateIssuerPrivateKeyTypes) -> bool:
    return parsed.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == spki_der(key)


# -- accepted CSRs ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ACCEPTED_KEY_TYPES)
def test_csr_with_each_accepted_key_type_parses(
    kind: str, keys: dict[str, CertificateIssuerPrivateKeyTypes]
) -> None:
    key, csr = make_csr(keys[kind], uris=[WEB], dns=["web.internal"], ips=["10.0.0.1"])
    parsed = parse_csr(csr)
    assert same_public_key(parsed, key)
    assert parsed.uris == (WEB,)
    assert parsed.dns_names == ("web.internal",)
    assert parsed.ip_addresses == (ipaddress.ip_address("10.0.0.1"),)
    assert parsed.common_name is None


@pytest.mark.parametrize("kind", ["ml-dsa-44", "ml-dsa-65", "ml-dsa-87"])
def test_ml_dsa_csr_is_refused_by_algorithm_saying_why(kind: str) -> None:
    """Refused before its key is even loaded, naming the algorithm and what to use instead."""
    cls = {"ml-dsa-44": mldsa.MLDSA44PrivateKey, "ml-dsa-65": mldsa.MLDSA65PrivateKey,
           "ml-dsa-87": mldsa.MLDSA87PrivateKey}[kind]  # fmt: skip
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(cls.generate(), None)
    )
    with pytest.raises(WeakKey) as info:
        parse_csr(csr.public_bytes(serialization.Encoding.PEM).decode())
    assert str(info.value).startswith(f"{kind.upper()} CSR refused: ML-DSA keys are not certified")
    assert "use an EC P-256 key" in str(info.value)
    assert info.value.reason == "KEY_NOT_ALLOWED" and info.value.field == "csr_pem"


def test_csr_names_are_normalised_and_deduplicated_in_order() -> None:
    _, csr = make_csr(
        uris=[WEB],
        dns=["B.Web.Internal", "a.web.internal.", "b.web.internal"],
        ips=["10.0.0.2", "2001:db8::1", "10.0.0.2"],
        cn="B.Web.Internal",
    )
    parsed = parse_csr(csr)
    assert parsed.dns_names == ("b.web.internal", "a.web.internal")
    assert parsed.ip_addresses == (
        ipaddress.ip_address("10.0.0.2"),
        ipaddress.ip_address("2001:db8::1"),
    )
    assert parsed.common_name == "B.Web.Internal"


def test_csr_without_san_parses_with_no_names() -> None:
    _, csr = make_csr(cn="just-a-cn")
    parsed = parse_csr(csr)
    assert (parsed.uris, parsed.dns_names, parsed.ip_addresses) == ((), (), ())
    assert parsed.common_name == "just-a-cn"


def test_csr_with_several_spiffe_uris_returns_them_all() -> None:
    # Whether more than one is acceptable is the authority's decision, not the parser's.
    other = spiffe("web/backend")
    parsed = parse_csr(make_csr(uris=[WEB, other])[1])
    assert parsed.uris == (WEB, other)


def test_requested_ca_true_and_key_cert_sign_extensions_are_ignored() -> None:
    key_usage = x509.KeyUsage(
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
    _, csr = make_csr(
        uris=[WEB],
        extra_extensions=[
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (key_usage, True),
        ],
    )
    parsed = parse_csr(csr)
    assert parsed.uris == (WEB,)
    assert set(ParsedCsr.__slots__) == {  # nothing but the key and names is carried forward
        "public_key",
        "common_name",
        "uris",
        "dns_names",
        "ip_addresses",
    }


def test_csr_with_trailing_whitespace_up_to_the_size_limit_parses() -> None:
    _, csr = make_csr(uris=[WEB])
    padded = csr + " " * (MAX_CSR_BYTES - len(csr))
    assert len(padded.encode()) == MAX_CSR_BYTES
    assert parse_csr(padded).uris == (WEB,)


@pytest.mark.parametrize(
    ("newkey", "extra"),
    [
        ("ec", ["-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("ec", ["-pkeyopt", "ec_paramgen_curve:P-384"]),
        ("rsa:2048", []),
        ("ed25519", []),
    ],
)
def test_openssl_generated_csr_parses(tmp_path: Path, newkey: str, extra: list[str]) -> None:
    key_file, csr_file = tmp_path / "key.pem", tmp_path / "csr.pem"
    openssl(
        "req", "-new", "-newkey", newkey, *extra, "-nodes",
        "-keyout", key_file, "-out", csr_file,
        "-subj", "/CN=web.internal",
        "-addext", f"subjectAltName=URI:{WEB},{OPENSSL_SANS}",
    )  # fmt: skip
    parsed = parse_csr(csr_file.read_text())
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert same_public_key(parsed, key)  # type: ignore[arg-type]
    assert parsed.common_name == "web.internal"
    assert parsed.uris == (WEB,)
    assert parsed.dns_names == ("web.internal", "api.web.internal")
    assert parsed.ip_addresses == (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1"))


# -- format and size ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\n"])
def test_empty_csr_is_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest, match="csr_pem is empty"):
        parse_csr(text)


def test_text_that_is_not_pem_is_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="is not a PEM 'CERTIFICATE REQUEST' block"):
        parse_csr("hello, I would like a certificate please")


def test_der_csr_is_invalid_request_asking_for_pem() -> None:
    der = csr_der(make_csr(uris=[WEB])[1])
    with pytest.raises(InvalidRequest, match="is not a PEM 'CERTIFICATE REQUEST' block"):
        parse_csr(der.decode("latin-1"))


def test_pem_certificate_instead_of_request_is_invalid_request() -> None:
    _, csr = make_csr(uris=[WEB])
    with pytest.raises(InvalidRequest, match="is not a PEM 'CERTIFICATE REQUEST' block"):
        parse_csr(csr.replace("CERTIFICATE REQUEST", "CERTIFICATE"))


@pytest.mark.parametrize(
    "body",
    [
        "not base64 at all !!!",
        base64.b64encode(b"\x30\x03\x02\x01\x01").decode(),  # DER, but not a CSR
        base64.b64encode(b"garbage bytes that are not DER").decode(),
    ],
)
def test_garbage_inside_pem_armour_is_invalid_request(body: str) -> None:
    text = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(InvalidRequest, match="could not be parsed as a PKCS#10 CSR"):
        parse_csr(text)


def test_truncated_pem_is_invalid_request() -> None:
    _, csr = make_csr(uris=[WEB])
    with pytest.raises(InvalidRequest, match="could not be parsed as a PKCS#10 CSR"):
        parse_csr(csr[: len(csr) // 2])


def test_pem_with_truncated_body_is_invalid_request() -> None:
    der = csr_der(make_csr(uris=[WEB])[1])
    with pytest.raises(InvalidRequest, match="could not be parsed as a PKCS#10 CSR"):
        parse_csr(armour(der[: len(der) - 10]))


def test_csr_one_byte_over_64_kib_is_limit_exceeded() -> None:
    _, csr = make_csr(uris=[WEB])
    padded = csr + " " * (MAX_CSR_BYTES + 1 - len(csr))
    assert MAX_CSR_BYTES == 64 * 1024
    with pytest.raises(
        LimitExceeded, match=f"CSR is {MAX_CSR_BYTES + 1} bytes; the limit is 65536"
    ):
        parse_csr(padded)


def test_csr_size_limit_counts_utf8_bytes_not_characters() -> None:
    text = "\u00e9" * (MAX_CSR_BYTES // 2 + 1)  # fewer characters than the limit, more bytes
    assert len(text) < MAX_CSR_BYTES
    with pytest.raises(LimitExceeded, match="the limit is 65536"):
        parse_csr(text)


def test_huge_garbage_is_limit_exceeded_before_any_parsing() -> None:
    with pytest.raises(LimitExceeded):
        parse_csr("x" * (1024 * 1024))


# -- proof of possession ------------------------------------------------------------------------


def test_csr_signed_by_another_key_than_it_carries_is_invalid_request() -> None:
    signer, carried = make_key("ec-p256"), make_key("ec-p256")
    der = csr_der(make_csr(signer, uris=[WEB])[1])
    assert der.count(spki_der(signer)) == 1
    swapped = der.replace(spki_der(signer), spki_der(carried))
    assert len(swapped) == len(der)
    csr = x509.load_der_x509_csr(swapped)
    assert csr.public_key() == carried.public_key()  # it parses: only the signature is wrong
    with pytest.raises(InvalidRequest, match="CSR signature does not verify") as info:
        parse_csr(armour(swapped))
    assert info.type is InvalidRequest
    assert "proof of possession" in str(info.value)


@pytest.mark.parametrize("kind", ["ec-p256", "rsa-2048", "ed25519"])
def test_csr_with_a_flipped_signature_byte_is_invalid_request(
    kind: str, keys: dict[str, CertificateIssuerPrivateKeyTypes]
) -> None:
    der = bytearray(csr_der(make_csr(keys[kind], uris=[WEB])[1]))
    der[-1] ^= 0x01  # the last byte of the signature BIT STRING
    with pytest.raises(InvalidRequest, match="CSR signature does not verify"):
        parse_csr(armour(bytes(der)))


def test_csr_with_a_changed_name_after_signing_is_invalid_request() -> None:
    der = csr_der(make_csr(uris=[spiffe("web/aaaa")])[1])
    tampered = der.replace(b"web/aaaa", b"web/bbbb")
    assert tampered != der
    with pytest.raises(InvalidRequest, match="CSR signature does not verify"):
        parse_csr(armour(tampered))


# -- key strength -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_factory", "message"),
    [
        (
            lambda: rsa.generate_private_key(65537, 1024),  # noqa: S505 - the weak key under test
            "RSA key of 1024 bits is too weak: use at least 2048",
        ),
        (
            lambda: ec.generate_private_key(ec.SECP521R1()),
            "EC curve secp521r1 is not allowed: use P-256 or P-384",
        ),
        (
            lambda: ec.generate_private_key(ec.SECP256K1()),
            "EC curve secp256k1 is not allowed: use P-256 or P-384",
        ),
        (
            lambda: rsa.generate_private_key(3, 2048),
            "RSA public exponent must be 65537",
        ),
        (
            ed448.Ed448PrivateKey.generate,
            "Ed448 (1.3.101.113) is not allowed",
        ),
    ],
    ids=["rsa-1024", "p-521", "secp256k1", "rsa-e3", "ed448"],
)
def test_csr_with_weak_or_unaccepted_key_is_weak_key(key_factory, message: str) -> None:  # type: ignore[no-untyped-def]
    key = key_factory()
    algorithm = (
        None
        if isinstance(key, ed448.Ed448PrivateKey | ed25519.Ed25519PrivateKey)
        else hashes.SHA256()
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(WEB)]), False)
        .sign(key, algorithm)
    )
    with pytest.raises(WeakKey) as info:
        parse_csr(csr.public_bytes(serialization.Encoding.PEM).decode())
    assert message in str(info.value)
    assert isinstance(info.value, InvalidRequest)  # WeakKey is an InvalidRequest


def test_csr_with_dsa_key_is_weak_key() -> None:
    key = dsa.generate_private_key(2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(WeakKey, match=r"DSA \(1.2.840.10040.4.1\) is not allowed"):
        parse_csr(csr.public_bytes(serialization.Encoding.PEM).decode())


# -- names the CSR asks for ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("https://web.internal/", "'https://web.internal/' is not a SPIFFE ID"),
        ("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", "is not a SPIFFE ID"),
        ("spiffe://signet.local/web/../admin", "invalid path segment '..'"),
        ("spiffe://Signet.Local/web", "invalid trust domain 'Signet.Local'"),
    ],
)
def test_csr_with_non_spiffe_uri_san_is_invalid_request(uri: str, named: str) -> None:
    _, csr = make_csr(uris=[uri])
    with pytest.raises(InvalidRequest, match=r"^URI SAN: ") as info:
        parse_csr(csr)
    assert info.type is InvalidRequest
    assert named in str(info.value)


def test_csr_with_email_san_is_invalid_request() -> None:
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(WEB), x509.RFC822Name("ops@example.com")]
    )
    _, csr = make_csr(extra_extensions=[(san, False)])
    with pytest.raises(InvalidRequest) as info:
        parse_csr(csr)
    assert info.type is InvalidRequest
    assert str(info.value) == (
        "unsupported SAN type RFC822Name: only DNS, IP and URI (SPIFFE ID) SANs"
    )


def test_csr_with_directory_name_san_is_invalid_request() -> None:
    dirname = x509.DirectoryName(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
    _, csr = make_csr(extra_extensions=[(x509.SubjectAlternativeName([dirname]), False)])
    with pytest.raises(InvalidRequest, match="unsupported SAN type DirectoryName"):
        parse_csr(csr)


@pytest.mark.parametrize("name", ["bad_name.internal", "*.internal", "web..internal"])
def test_csr_with_invalid_dns_san_is_invalid_request(name: str) -> None:
    _, csr = make_csr(uris=[WEB], dns=[name])
    with pytest.raises(InvalidRequest, match=r"^DNS SAN: invalid DNS name"):
        parse_csr(csr)


def test_csr_with_ip_network_san_is_invalid_request() -> None:
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))])
    _, csr = make_csr(extra_extensions=[(san, False)])
    with pytest.raises(InvalidRequest, match="IP SAN must be an address, not a network"):
        parse_csr(csr)
