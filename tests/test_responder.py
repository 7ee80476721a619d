"""The OCSP responder (RFC 6960) behind the authority: pre-signed answers, raw requests,
nonces, SHA-256 CertIDs, unknown serials, delegated signing and the periodic refresh."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca_server.core.authority import CertificateAuthority, IssuanceSettings
from ca_server.core.clock import FakeClock
from ca_server.core.profile import LeafRequest, build_leaf, serial_hex
from ca_server.core.revocation import Reason
from ca_server.core.store import OcspUpdate
from ca_server.store.sqlite import SqliteStore
from tests.pki import make_key
from tests.test_authority import (
    ADMIN,
    POLICY,
    START,
    WEB_ID,
    Pki,
    issue,
    load_ocsp,
    make_pki,
)

VALIDITY = IssuanceSettings().ocsp_validity


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(tmp_path / "ca.db")
    yield s
    s.close()


def make(
    pki: Pki, store: SqliteStore, clock: FakeClock, **settings: object
) -> CertificateAuthority:
    return CertificateAuthority(
        store=store,
        clock=clock,
        issuer=pki.issuer,
        root=pki.root,
        policy=POLICY,
        settings=dataclasses.replace(IssuanceSettings(), **settings),  # type: ignore[arg-type]
    )


@pytest.fixture
def authority(pki: Pki, store: SqliteStore, clock: FakeClock) -> CertificateAuthority:
    return make(pki, store, clock)


def request_for(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        cert,
        issuer,
        algorithm or hashes.SHA1(),  # noqa: S303
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_a_plain_request_is_signed_when_first_asked_and_kept(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock
) -> None:
    issued = issue(authority)
    # Nothing is signed at issuance: most mTLS peers never ask.
    assert authority.store.get_certificate(issued.serial).ocsp is None  # type: ignore[union-attr]
    clock.advance(dt.timedelta(minutes=10))
    der = authority.ocsp_response(request_for(issued.certificate, pki.issuer.certificate))
    authority.wait_for_writebacks()
    assert der == authority.store.get_certificate(issued.serial).ocsp.der  # type: ignore[union-attr]
    clock.advance(dt.timedelta(minutes=1))
    assert der == authority.status(issued.serial).ocsp_response  # gRPC gives the same bytes
    response = load_ocsp(der, pki)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.this_update_utc == START + dt.timedelta(minutes=10)


def test_grpc_and_http_hand_out_the_same_bytes_before_the_write_back_lands(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock
) -> None:
    issued = issue(authority)
    held = threading.Event()
    authority._status._writeback.submit(held.wait, 30)  # the write-back queue stalls
    try:
        der = authority.ocsp_response(request_for(issued.certificate, pki.issuer.certificate))
        clock.advance(dt.timedelta(minutes=1))  # a second signature would differ
        assert authority.status(issued.serial).ocsp_response == der
    finally:
        held.set()


def test_revocation_re_signs_at_once(authority: CertificateAuthority, pki: Pki) -> None:
    issued = issue(authority)
    authority.revoke(ADMIN, issued.serial, Reason.KEY_COMPROMISE)
    response = load_ocsp(
        authority.ocsp_response(request_for(issued.certificate, pki.issuer.certificate)), pki
    )
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is x509.ReasonFlags.key_compromise


def test_a_nonce_is_echoed_in_a_freshly_signed_response(
    authority: CertificateAuthority, pki: Pki
) -> None:
    issued = issue(authority)
    nonce = b"\x01" * 16
    der = authority.ocsp_response(
        request_for(issued.certificate, pki.issuer.certificate, nonce=nonce)
    )
    response = load_ocsp(der, pki)
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD


@pytest.mark.parametrize("algorithm", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_other_cert_id_hashes_are_answered_with_the_same_hash(
    authority: CertificateAuthority, pki: Pki, algorithm: hashes.HashAlgorithm
) -> None:
    issued = issue(authority)
    request = request_for(issued.certificate, pki.issuer.certificate, algorithm)
    response = load_ocsp(authority.ocsp_response(request), pki)
    parsed = ocsp.load_der_ocsp_request(request)
    assert response.hash_algorithm.name == algorithm.name
    assert (response.issuer_name_hash, response.issuer_key_hash) == (
        parsed.issuer_name_hash,
        parsed.issuer_key_hash,
    )


def test_a_serial_never_issued_is_unknown_and_signed_once(
    authority: CertificateAuthority, pki: Pki
) -> None:
    key = make_key()
    never_stored = build_leaf(
        pki.issuer,
        LeafRequest(key.public_key(), WEB_ID, (), (), None, START, START + VALIDITY, 0xC0FFEE),
    )
    der = request_for(never_stored, pki.issuer.certificate)
    first = authority.ocsp_response(der)
    assert load_ocsp(first, pki).certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    assert authority.ocsp_response(der) == first  # cached, not signed again
    assert authority.status("c0ffee").answer.status.value == "unknown"


def test_garbage_is_malformed_request(authority: CertificateAuthority) -> None:
    for garbage in (b"", b"hello", b"\x30\x03\x02\x01\x01", b"\x30" * 5000):
        response = ocsp.load_der_ocsp_response(authority.ocsp_response(garbage))
        assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_a_request_about_another_issuer_is_unauthorized(
    authority: CertificateAuthority, pki: Pki
) -> None:
    other = make_pki("Other")
    issued = issue(authority)
    der = request_for(issued.certificate, other.issuer.certificate)
    response = ocsp.load_der_ocsp_response(authority.ocsp_response(der))
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_delegated_signer_is_an_ocsp_signing_certificate_with_nocheck(
    authority: CertificateAuthority, pki: Pki
) -> None:
    issued = issue(authority)
    response = load_ocsp(authority.status(issued.serial).ocsp_response, pki)
    (signer,) = response.certificates
    assert signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])
    )
    signer.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert signer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (
        response.responder_key_hash
        == signer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    record = authority.store.get_certificate(serial_hex(signer.serial_number))
    assert record is not None  # recorded like every certificate the CA hands out


def test_delegated_signer_is_replaced_at_two_thirds_of_its_life(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock
) -> None:
    first = authority.responder.signer().certificate
    clock.advance(IssuanceSettings().ocsp_signer_validity * 0.6)
    assert authority.responder.signer().certificate == first
    clock.advance(IssuanceSettings().ocsp_signer_validity * 0.1)
    assert authority.responder.signer().certificate != first


def test_ca_signing_mode_signs_with_the_intermediate(
    pki: Pki, store: SqliteStore, clock: FakeClock
) -> None:
    authority = make(pki, store, clock, ocsp_delegated=False)
    issued = issue(authority)
    response = load_ocsp(authority.status(issued.serial).ocsp_response, pki)
    assert response.certificates == []


def test_refresh_re_signs_responses_past_half_their_validity(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock
) -> None:
    issued = [issue(authority) for _ in range(3)]
    never_asked = issue(authority)
    for cert in issued:
        authority.status(cert.serial)
    authority.wait_for_writebacks()
    assert authority.refresh_ocsp() == 0
    clock.advance(VALIDITY / 2 + dt.timedelta(seconds=1))
    assert authority.refresh_ocsp(limit=2) == 2
    assert authority.refresh_ocsp() == 1
    assert authority.refresh_ocsp() == 0
    for cert in issued:
        stored = authority.store.get_certificate(cert.serial).ocsp  # type: ignore[union-attr]
        assert stored is not None and stored.this_update == clock.now().replace(microsecond=0)
    # A certificate nobody asked about costs no signature, now or at any refresh.
    assert authority.store.get_certificate(never_asked.serial).ocsp is None  # type: ignore[union-attr]


def test_a_stale_response_is_re_signed_on_demand_and_kept(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock
) -> None:
    issued = issue(authority)
    clock.advance(VALIDITY / 2 + dt.timedelta(seconds=1))
    first = authority.status(issued.serial).ocsp_response
    assert load_ocsp(first, pki).this_update_utc == clock.now().replace(microsecond=0)
    authority.wait_for_writebacks()  # kept off the request's thread, best effort
    assert authority.status(issued.serial).ocsp_response == first


def test_a_refresh_never_overwrites_a_newer_revocation(
    authority: CertificateAuthority, pki: Pki
) -> None:
    issued = issue(authority)
    authority.status(issued.serial)
    authority.wait_for_writebacks()
    good = authority.store.get_certificate(issued.serial).ocsp  # type: ignore[union-attr]
    authority.revoke(ADMIN, issued.serial, Reason.SUPERSEDED)
    assert good is not None
    assert authority.store.update_ocsp([OcspUpdate(issued.serial, good, "good", None, None)]) == 0
    response = load_ocsp(authority.status(issued.serial).ocsp_response, pki)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED


def test_a_repeated_request_is_answered_from_memory_until_anything_is_revoked(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock, tmp_path: Path
) -> None:
    issued = issue(authority)
    der = request_for(issued.certificate, pki.issuer.certificate)
    first = authority.ocsp_response(der)
    assert authority.ocsp_response(der) == first
    other_store = SqliteStore(tmp_path / "ca.db")  # another worker process, same database
    try:
        make(pki, other_store, clock).revoke(ADMIN, issued.serial, Reason.KEY_COMPROMISE)
    finally:
        other_store.close()
    response = load_ocsp(authority.ocsp_response(der), pki)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED


@pytest.mark.parametrize("size", [0, 129])
def test_a_nonce_of_the_wrong_length_is_a_malformed_request(
    authority: CertificateAuthority, pki: Pki, size: int
) -> None:
    issued = issue(authority)
    der = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, pki.issuer.certificate, hashes.SHA1())  # noqa: S303
        .add_extension(x509.OCSPNonce(b"\x01" * size), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    response = ocsp.load_der_ocsp_response(authority.ocsp_response(der))
    assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_freshness_follows_next_update_when_the_configured_validity_grows(
    pki: Pki, store: SqliteStore, clock: FakeClock
) -> None:
    short = make(pki, store, clock)  # 4h responses
    issued = issue(short)
    longer = make(pki, store, clock, ocsp_validity=dt.timedelta(hours=24))
    result = longer.status(issued.serial)
    assert result.next_update == clock.now() + dt.timedelta(hours=24)
    longer.wait_for_writebacks()  # the re-signed response is kept
    assert longer.refresh_ocsp() == 0


def test_a_revoked_delegated_responder_certificate_is_replaced(
    authority: CertificateAuthority, pki: Pki
) -> None:
    first = authority.responder.signer().certificate
    authority.revoke(ADMIN, f"{first.serial_number:x}", Reason.KEY_COMPROMISE)
    issued = issue(authority)
    response = load_ocsp(authority.status(issued.serial).ocsp_response, pki)
    assert response.certificates[0].serial_number != first.serial_number


def test_a_refresh_racing_hold_release_hold_keeps_the_latest_revocation_time(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    issued = issue(authority)
    authority.revoke(ADMIN, issued.serial, Reason.CERTIFICATE_HOLD)
    first_hold = authority.store.get_status(issued.serial)
    assert first_hold is not None and first_hold.ocsp is not None
    authority.revoke(ADMIN, issued.serial, Reason.REMOVE_FROM_CRL)
    clock.advance(dt.timedelta(hours=1))
    authority.revoke(ADMIN, issued.serial, Reason.CERTIFICATE_HOLD)
    stale = OcspUpdate(
        issued.serial, first_hold.ocsp, "revoked", Reason.CERTIFICATE_HOLD, first_hold.revoked_at
    )
    assert authority.store.update_ocsp([stale]) == 0


@pytest.mark.parametrize("kind", ["good", "revoked", "unknown"])
def test_a_request_with_a_nonce_is_never_answered_from_a_cache(
    authority: CertificateAuthority, pki: Pki, kind: str
) -> None:
    if kind == "unknown":
        cert = build_leaf(
            pki.issuer,
            LeafRequest(make_key().public_key(), WEB_ID, (), (), None, START, START + VALIDITY, 7),
        )
    else:
        issued = issue(authority)
        if kind == "revoked":
            authority.revoke(ADMIN, issued.serial, Reason.KEY_COMPROMISE)
        cert = issued.certificate
    # Fill every cache first: the stored response, the answer caches, the unknown-serial one.
    plain = request_for(cert, pki.issuer.certificate)
    assert authority.ocsp_response(plain) == authority.ocsp_response(plain)
    seen = []
    for nonce in (b"\x01" * 16, b"\x02" * 16, b"\x01" * 16):
        response = load_ocsp(
            authority.ocsp_response(request_for(cert, pki.issuer.certificate, nonce=nonce)), pki
        )
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        assert response.certificate_status.name == kind.upper()
        seen.append(response.signature)
    assert len(set(seen)) == 3  # each signed afresh (ECDSA signatures are randomised)
