"""ca_server.core.crl and ca_server.core.ocsp, called directly: the DER they return is read back
with cryptography and checked by openssl (crl, verify -crl_check, ocsp)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.x509 import ocsp

from ca_server.core.crl import build_crl
from ca_server.core.keys import CA_KEY_TYPES, generate_key
from ca_server.core.ocsp import CertStatus, StatusAnswer, build_ocsp_response, issuer_hashes
from ca_server.core.profile import (
    Issuer,
    LeafRequest,
    build_intermediate,
    build_leaf,
    build_root,
    ca_name,
    pem,
)
from ca_server.core.revocation import Reason, RevokedEntry
from tests.pki import TRUST_DOMAIN, make_key, spiffe
from tests.tools import openssl

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
THIS_UPDATE = NOW - dt.timedelta(minutes=1)
NEXT_UPDATE = NOW + dt.timedelta(hours=4)
REVOKED_AT = NOW - dt.timedelta(hours=2)
SHA1 = hashes.SHA1()  # noqa: S303 - OCSP CertID hashing, as clients send it; not a signature


@dataclass(frozen=True)
class Pki:
    """A root, an intermediate and two leaves of the intermediate, with their PEM files."""

    kind: str
    root: Issuer
    issuer: Issuer
    leaves: tuple[x509.Certificate, x509.Certificate]
    directory: Path

    def file(self, name: str) -> Path:
        return self.directory / name


def make_pki(kind: str, directory: Path) -> Pki:
    root_key = generate_key(kind)
    root_cert = build_root(
        root_key,
        ca_name(TRUST_DOMAIN, "Root"),
        NOW - dt.timedelta(days=1),
        NOW + dt.timedelta(days=3650),
    )
    root = Issuer(root_cert, root_key, ())
    int_key = generate_key(kind)
    int_cert = build_intermediate(
        root, int_key.public_key(), ca_name(TRUST_DOMAIN, "Intermediate"),
        NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=365),
    )  # fmt: skip
    issuer = Issuer(int_cert, int_key, (int_cert,))
    leaves = tuple(
        build_leaf(
            issuer,
            LeafRequest(
                public_key=make_key("ec-p256").public_key(),
                identity=spiffe(f"web/{n}"),
                dns_names=(),
                ip_addresses=(),
                common_name=None,
                not_before=NOW - dt.timedelta(hours=3),
                not_after=NOW + dt.timedelta(hours=24),
                serial=serial,
            ),
        )
        for n, serial in enumerate((0x1001, 0x1002))
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "root.pem").write_text(pem(root_cert))
    (directory / "int.pem").write_text(pem(int_cert))
    (directory / "chain.pem").write_text(pem(int_cert) + pem(root_cert))
    for n, leaf in enumerate(leaves):
        (directory / f"leaf{n}.pem").write_text(pem(leaf))
    return Pki(kind, root, issuer, leaves, directory)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=CA_KEY_TYPES)
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(request.param, tmp_path_factory.mktemp(request.param))


# Debian's OpenSSL 3.0 cannot decode an ML-DSA key (3.5 can): the openssl checks run for the
# other CA key types; tests/test_pq.py shows openssl refusing an ML-DSA chain.
OPENSSL_KEY_TYPES = tuple(k for k in CA_KEY_TYPES if not k.startswith("ml-dsa"))


@pytest.fixture(scope="module", params=OPENSSL_KEY_TYPES)
def openssl_pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def ec_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki("ec-p256", tmp_path_factory.mktemp("ec"))


def ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def verify_signature(cert: x509.Certificate, signature: bytes, data: bytes, algorithm) -> None:  # type: ignore[no-untyped-def]
    """Raise InvalidSignature unless ``cert``'s key signed ``data``."""
    key = cert.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey):
        key.verify(signature, data)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    else:
        raise AssertionError(f"unexpected key {key!r}")


# -- CRL ----------------------------------------------------------------------------------------

# One entry per reason, serial 0x2000 + reason code, plus a big serial.
ENTRIES = [
    RevokedEntry(0x2000 + r.value, REVOKED_AT + dt.timedelta(seconds=r.value), r) for r in Reason
] + [RevokedEntry(0x1001, REVOKED_AT, Reason.KEY_COMPROMISE)]
CRL_NUMBER = 42


def crl_of(pki: Pki, entries: list[RevokedEntry] = ENTRIES, number: int = CRL_NUMBER) -> bytes:
    return build_crl(pki.issuer, entries, number, THIS_UPDATE, NEXT_UPDATE)


def test_crl_is_signed_by_the_issuing_ca_only(pki: Pki) -> None:
    crl = x509.load_der_x509_crl(crl_of(pki))
    assert crl.is_signature_valid(pki.issuer.certificate.public_key())
    assert not crl.is_signature_valid(pki.root.certificate.public_key())
    assert crl.issuer == pki.issuer.certificate.subject


def test_crl_carries_number_aki_and_update_times(ec_pki: Pki) -> None:
    crl = x509.load_der_x509_crl(crl_of(ec_pki, number=7))
    number = crl.extensions.get_extension_for_class(x509.CRLNumber)
    assert (number.critical, number.value.crl_number) == (False, 7)
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert aki.critical is False
    assert aki.value.key_identifier == ski(ec_pki.issuer.certificate)
    assert len(crl.extensions) == 2
    assert crl.last_update_utc == THIS_UPDATE
    assert crl.next_update_utc == NEXT_UPDATE


def test_crl_lists_every_entry_with_its_date_and_reason(ec_pki: Pki) -> None:
    crl = x509.load_der_x509_crl(crl_of(ec_pki))
    assert len(crl) == len(ENTRIES)
    assert sorted(r.serial_number for r in crl) == sorted(e.serial for e in ENTRIES)
    for entry in ENTRIES:
        revoked = crl.get_revoked_certificate_by_serial_number(entry.serial)
        assert revoked is not None
        assert revoked.revocation_date_utc == entry.revoked_at
        if entry.reason is Reason.UNSPECIFIED:
            continue
        ext = revoked.extensions.get_extension_for_class(x509.CRLReason)
        assert ext.critical is False
        assert ext.value.reason is entry.reason.flag
        assert len(revoked.extensions) == 1


def test_crl_entry_with_reason_unspecified_has_no_reason_code_extension(ec_pki: Pki) -> None:
    crl = x509.load_der_x509_crl(crl_of(ec_pki))
    revoked = crl.get_revoked_certificate_by_serial_number(0x2000 + Reason.UNSPECIFIED.value)
    assert revoked is not None
    assert len(revoked.extensions) == 0


def test_empty_crl_is_valid_and_lists_nothing(pki: Pki) -> None:
    crl = x509.load_der_x509_crl(crl_of(pki, entries=[], number=1))
    assert len(crl) == 0
    assert crl.is_signature_valid(pki.issuer.certificate.public_key())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1


def test_crl_accepts_entries_from_any_iterable(ec_pki: Pki) -> None:
    der = build_crl(ec_pki.issuer, iter(ENTRIES[:3]), 5, THIS_UPDATE, NEXT_UPDATE)
    assert len(x509.load_der_x509_crl(der)) == 3


def openssl_crl_entries(text: str) -> dict[str, str]:
    """Serial (openssl's uppercase hex) -> the text of that entry in `openssl crl -text`."""
    _, _, revoked = text.partition("Revoked Certificates:")
    chunks = re.split(r"^\s*Serial Number: ", revoked, flags=re.MULTILINE)[1:]
    return {c.split("\n", 1)[0].strip(): c for c in chunks}


OPENSSL_REASONS = {
    Reason.KEY_COMPROMISE: "Key Compromise",
    Reason.CA_COMPROMISE: "CA Compromise",
    Reason.AFFILIATION_CHANGED: "Affiliation Changed",
    Reason.SUPERSEDED: "Superseded",
    Reason.CESSATION_OF_OPERATION: "Cessation Of Operation",
    Reason.CERTIFICATE_HOLD: "Certificate Hold",
    Reason.REMOVE_FROM_CRL: "Remove From CRL",
    Reason.PRIVILEGE_WITHDRAWN: "Privilege Withdrawn",
    Reason.AA_COMPROMISE: "AA Compromise",
}


def test_openssl_verifies_the_crl_and_reads_v2_number_and_entries(openssl_pki: Pki) -> None:
    der = openssl_pki.file("crl.der")
    der.write_bytes(crl_of(openssl_pki))
    result = openssl(
        "crl",
        "-inform",
        "DER",
        "-in",
        der,
        "-CAfile",
        openssl_pki.file("chain.pem"),
        "-noout",
        "-text",
    )
    assert result.stderr.strip() == "verify OK"
    text = result.stdout
    assert "Version 2 (0x1)" in text
    assert re.search(r"X509v3 CRL Number:\s*\n\s*42\n", text)
    assert re.search(
        r"X509v3 Authority Key Identifier:\s*\n\s*"
        + ski(openssl_pki.issuer.certificate).hex(":").upper(),
        text,
    )
    entries = openssl_crl_entries(text)
    assert set(entries) == {f"{e.serial:X}" for e in ENTRIES}
    for reason, label in OPENSSL_REASONS.items():
        entry = entries[f"{0x2000 + reason.value:X}"]
        assert "X509v3 CRL Reason Code:" in entry
        assert label in entry
    assert "Reason Code" not in entries[f"{0x2000 + Reason.UNSPECIFIED.value:X}"]


def test_openssl_crl_refuses_a_crl_checked_against_the_wrong_ca(
    ec_pki: Pki, tmp_path: Path
) -> None:
    other = make_pki("ec-p256", tmp_path / "other")
    der = tmp_path / "crl.der"
    der.write_bytes(crl_of(ec_pki))
    result = openssl(
        "crl", "-inform", "DER", "-in", der, "-CAfile", other.file("chain.pem"), "-noout",
        check=False,
    )  # fmt: skip
    # like `openssl req -verify`, `openssl crl` exits 0 either way: read what it says
    assert result.stderr.strip() == "verify failure"


def test_openssl_verify_with_the_crl_rejects_the_revoked_leaf_only(openssl_pki: Pki) -> None:
    crl_pem = openssl_pki.file("crl.pem")
    crl_pem.write_bytes(
        x509.load_der_x509_crl(
            crl_of(openssl_pki, entries=[RevokedEntry(0x1001, REVOKED_AT, Reason.KEY_COMPROMISE)])
        ).public_bytes(serialization.Encoding.PEM)
    )
    common = ("verify", "-crl_check", "-CAfile", openssl_pki.file("root.pem"),
              "-untrusted", openssl_pki.file("int.pem"), "-CRLfile", crl_pem)  # fmt: skip
    revoked = openssl(*common, openssl_pki.file("leaf0.pem"), check=False)
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    good = openssl(*common, openssl_pki.file("leaf1.pem"))
    assert good.stdout.strip() == f"{openssl_pki.file('leaf1.pem')}: OK"


# -- OCSP ---------------------------------------------------------------------------------------


def ocsp_of(
    pki: Pki, answer: StatusAnswer, cert_id_hash: hashes.HashAlgorithm | None = None
) -> bytes:
    return build_ocsp_response(pki.issuer, answer, THIS_UPDATE, NEXT_UPDATE, cert_id_hash)


def request_for(
    pki: Pki, leaf: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> ocsp.OCSPRequest:
    return (
        ocsp.OCSPRequestBuilder().add_certificate(leaf, pki.issuer.certificate, algorithm).build()
    )


def test_ocsp_good_response_names_the_serial_and_update_times(pki: Pki) -> None:
    resp = ocsp.load_der_ocsp_response(ocsp_of(pki, StatusAnswer(0x1002, CertStatus.GOOD)))
    assert resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == 0x1002
    assert resp.this_update_utc == THIS_UPDATE
    assert resp.next_update_utc == NEXT_UPDATE
    assert resp.revocation_time_utc is None
    assert resp.revocation_reason is None


def test_ocsp_response_is_signed_by_the_issuing_ca_identified_by_key_hash(pki: Pki) -> None:
    resp = ocsp.load_der_ocsp_response(ocsp_of(pki, StatusAnswer(0x1002, CertStatus.GOOD)))
    verify_signature(
        pki.issuer.certificate,
        resp.signature,
        resp.tbs_response_bytes,
        resp.signature_hash_algorithm,
    )
    assert resp.responder_name is None
    assert resp.responder_key_hash == request_for(pki, pki.leaves[1], SHA1).issuer_key_hash
    assert resp.certificates == []


def test_ocsp_response_signature_does_not_verify_with_the_root_key(pki: Pki) -> None:
    resp = ocsp.load_der_ocsp_response(ocsp_of(pki, StatusAnswer(0x1002, CertStatus.GOOD)))
    with pytest.raises(InvalidSignature):
        verify_signature(
            pki.root.certificate, resp.signature, resp.tbs_response_bytes,
            resp.signature_hash_algorithm,
        )  # fmt: skip


@pytest.mark.parametrize("algorithm", [SHA1, hashes.SHA256()], ids=["sha1", "sha256"])
def test_ocsp_cert_id_matches_what_a_client_sends_for_that_certificate(
    pki: Pki, algorithm: hashes.HashAlgorithm
) -> None:
    req = request_for(pki, pki.leaves[1], algorithm)
    resp = ocsp.load_der_ocsp_response(
        ocsp_of(pki, StatusAnswer(0x1002, CertStatus.GOOD), algorithm)
    )
    assert resp.hash_algorithm.name == algorithm.name
    assert resp.issuer_name_hash == req.issuer_name_hash
    assert resp.issuer_key_hash == req.issuer_key_hash
    assert resp.serial_number == req.serial_number
    assert issuer_hashes(pki.issuer.certificate, algorithm) == (
        req.issuer_name_hash,
        req.issuer_key_hash,
    )


def test_ocsp_cert_id_defaults_to_sha1(ec_pki: Pki) -> None:
    resp = ocsp.load_der_ocsp_response(ocsp_of(ec_pki, StatusAnswer(1, CertStatus.GOOD)))
    assert isinstance(resp.hash_algorithm, hashes.SHA1)


def test_ocsp_revoked_response_carries_time_and_reason(ec_pki: Pki) -> None:
    answer = StatusAnswer(0x1001, CertStatus.REVOKED, REVOKED_AT, Reason.KEY_COMPROMISE)
    resp = ocsp.load_der_ocsp_response(ocsp_of(ec_pki, answer))
    assert resp.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert resp.serial_number == 0x1001
    assert resp.revocation_time_utc == REVOKED_AT
    assert resp.revocation_reason is x509.ReasonFlags.key_compromise


def test_ocsp_revoked_with_reason_unspecified_omits_the_reason(ec_pki: Pki) -> None:
    answer = StatusAnswer(0x1001, CertStatus.REVOKED, REVOKED_AT, Reason.UNSPECIFIED)
    resp = ocsp.load_der_ocsp_response(ocsp_of(ec_pki, answer))
    assert resp.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_time_utc == REVOKED_AT
    assert resp.revocation_reason is None


def test_ocsp_good_answer_ignores_revocation_fields(ec_pki: Pki) -> None:
    answer = StatusAnswer(0x1002, CertStatus.GOOD, REVOKED_AT, Reason.SUPERSEDED)
    resp = ocsp.load_der_ocsp_response(ocsp_of(ec_pki, answer))
    assert resp.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert (resp.revocation_time_utc, resp.revocation_reason) == (None, None)


def test_ocsp_unknown_response_for_a_serial_the_ca_never_issued(ec_pki: Pki) -> None:
    resp = ocsp.load_der_ocsp_response(ocsp_of(ec_pki, StatusAnswer(0xDEAD, CertStatus.UNKNOWN)))
    assert resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    assert resp.serial_number == 0xDEAD
    assert resp.revocation_time_utc is None


def openssl_ocsp(pki: Pki, der: bytes, leaf: str) -> str:
    respin = pki.file(f"{leaf}.ocsp.der")
    respin.write_bytes(der)
    result = openssl(
        "ocsp", "-respin", respin, "-issuer", pki.file("int.pem"), "-cert", pki.file(f"{leaf}.pem"),
        "-CAfile", pki.file("root.pem"), "-VAfile", pki.file("int.pem"),
    )  # fmt: skip
    assert "Response verify OK" in result.stderr
    return result.stdout


def test_openssl_ocsp_verifies_a_good_response(openssl_pki: Pki) -> None:
    out = openssl_ocsp(
        openssl_pki, ocsp_of(openssl_pki, StatusAnswer(0x1002, CertStatus.GOOD)), "leaf1"
    )
    assert out.startswith(f"{openssl_pki.file('leaf1.pem')}: good\n")
    assert "Revocation Time" not in out


def test_openssl_ocsp_verifies_a_revoked_response_with_reason(openssl_pki: Pki) -> None:
    answer = StatusAnswer(0x1001, CertStatus.REVOKED, REVOKED_AT, Reason.KEY_COMPROMISE)
    out = openssl_ocsp(openssl_pki, ocsp_of(openssl_pki, answer), "leaf0")
    assert out.startswith(f"{openssl_pki.file('leaf0.pem')}: revoked\n")
    assert "Reason: keyCompromise" in out
    assert "Revocation Time: " + REVOKED_AT.strftime("%b %e %H:%M:%S %Y GMT") in out


def test_openssl_ocsp_verifies_an_unknown_response(ec_pki: Pki) -> None:
    out = openssl_ocsp(ec_pki, ocsp_of(ec_pki, StatusAnswer(0x1002, CertStatus.UNKNOWN)), "leaf1")
    assert out.startswith(f"{ec_pki.file('leaf1.pem')}: unknown\n")


def test_openssl_ocsp_finds_no_status_when_the_serial_differs(ec_pki: Pki) -> None:
    respin = ec_pki.file("other.ocsp.der")
    respin.write_bytes(ocsp_of(ec_pki, StatusAnswer(0x9999, CertStatus.GOOD)))
    result = openssl(
        "ocsp", "-respin", respin, "-issuer", ec_pki.file("int.pem"),
        "-cert", ec_pki.file("leaf1.pem"), "-CAfile", ec_pki.file("root.pem"),
        "-VAfile", ec_pki.file("int.pem"), check=False,
    )  # fmt: skip
    assert "No Status found" in result.stdout + result.stderr
