"""CertificateAuthority with a real SqliteStore, a FakeClock and a PKI built in code: issuance
rules, renewal, revocation, status/OCSP, the CRL cache, caller authentication and listing."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ca_server.core.authority import CertificateAuthority, IssuanceSettings, Issued
from ca_server.core.bootstrap import token_hash
from ca_server.core.clock import FakeClock
from ca_server.core.durations import format_duration
from ca_server.core.errors import (
    AlreadyRevoked,
    Conflict,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PolicyViolation,
    Unauthenticated,
)
from ca_server.core.keys import generate_key
from ca_server.core.ocsp import CertStatus
from ca_server.core.policy import Caller, Policy, WorkloadRule
from ca_server.core.profile import (
    Issuer,
    LeafRequest,
    build_intermediate,
    build_leaf,
    build_root,
    ca_name,
    pem,
    random_serial,
    serial_hex,
)
from ca_server.core.revocation import Reason
from ca_server.core.store import AuditEvent, CertificateRecord
from ca_server.store.sqlite import SqliteStore
from tests.pki import TRUST_DOMAIN, make_csr, make_key, spiffe

START = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
ADMIN_ID = spiffe("admin")
WEB_ID = spiffe("web/frontend")
OTHER_WEB_ID = spiffe("web/backend")
ADMIN = Caller(ADMIN_ID, "00", is_admin=True)
SETTINGS = IssuanceSettings()

POLICY = Policy(
    trust_domain=TRUST_DOMAIN,
    admins=(ADMIN_ID,),
    workloads=(
        WorkloadRule(
            spiffe("web/*"),
            dns_names=("*.web.internal",),
            ip_ranges=(ipaddress.ip_network("10.0.0.0/8"),),
        ),
    ),
)


@dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    issuer: Issuer


def make_pki(name: str = "Signet") -> Pki:
    """A root and an online intermediate, valid around START."""
    root_key = generate_key("ec-p256")
    root = build_root(
        root_key,
        ca_name(TRUST_DOMAIN, f"{name} Root CA"),
        START - dt.timedelta(days=1),
        START + dt.timedelta(days=3650),
    )
    int_key = generate_key("ec-p256")
    intermediate = build_intermediate(
        Issuer(root, root_key, ()),
        int_key.public_key(),
        ca_name(TRUST_DOMAIN, f"{name} Intermediate CA"),
        START - dt.timedelta(days=1),
        START + dt.timedelta(days=1825),
    )
    return Pki(root, Issuer(intermediate, int_key, (intermediate,)))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "ca.db")
    yield s
    s.close()


def make_authority(
    pki: Pki, store: SqliteStore, clock: FakeClock, policy: Policy = POLICY
) -> CertificateAuthority:
    return CertificateAuthority(
        store=store, clock=clock, issuer=pki.issuer, root=pki.root, policy=policy
    )


@pytest.fixture
def authority(pki: Pki, store: SqliteStore, clock: FakeClock) -> CertificateAuthority:
    return make_authority(pki, store, clock)


def issue(
    authority: CertificateAuthority,
    identity: str = WEB_ID,
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    validity: dt.timedelta | None = None,
) -> Issued:
    _, csr = make_csr(uris=[identity], dns=dns, ips=ips)
    return authority.sign(ADMIN, csr, validity)


def peer(issued: Issued | x509.Certificate) -> bytes:
    cert = issued.certificate if isinstance(issued, Issued) else issued
    return pem(cert).encode()


def caller_of(authority: CertificateAuthority, issued: Issued) -> Caller:
    return authority.authenticate(peer(issued))


def san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def hex_serials(crl: x509.CertificateRevocationList) -> set[str]:
    return {serial_hex(r.serial_number) for r in crl}


def load_crl(der: bytes, pki: Pki) -> x509.CertificateRevocationList:
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(pki.issuer.certificate.public_key())  # type: ignore[arg-type]
    return crl


def load_ocsp(der: bytes, pki: Pki) -> ocsp.OCSPResponse:
    """Parse a response and check its signature: by the delegated responder certificate it
    carries (issued by our intermediate, EKU OCSPSigning), else by the intermediate itself."""
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    signer = pki.issuer.certificate
    if response.certificates:
        (signer,) = response.certificates
        signer.verify_directly_issued_by(pki.issuer.certificate)
        eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
    key = signer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    key.verify(  # raises InvalidSignature if the response is not the issuer's
        response.signature,
        response.tbs_response_bytes,
        ec.ECDSA(response.signature_hash_algorithm),
    )
    return response


# -- signing ------------------------------------------------------------------------------------


def test_admin_sign_stores_the_certificate_with_matching_der_and_fingerprint(
    authority: CertificateAuthority, store: SqliteStore
) -> None:
    issued = issue(authority, dns=("a.web.internal",), ips=("10.1.2.3",))
    stored = store.get_certificate(issued.serial)
    assert stored is not None
    der = issued.certificate.public_bytes(serialization.Encoding.DER)
    assert stored.der == der
    assert stored.fingerprint_sha256 == issued.fingerprint_sha256 == hashlib.sha256(der).hexdigest()
    assert issued.serial == serial_hex(issued.certificate.serial_number)
    assert (stored.identity, stored.dns_names, stored.ip_addresses) == (
        WEB_ID,
        ("a.web.internal",),
        ("10.1.2.3",),
    )
    assert (stored.status, stored.requested_by) == ("good", ADMIN_ID)
    assert issued.chain_pem == pem(authority.issuer.certificate)


def test_sign_records_an_issue_audit_event_naming_the_caller(
    authority: CertificateAuthority, store: SqliteStore
) -> None:
    issued = issue(authority)
    event = store.audit_events(1)[0]
    assert (event.action, event.actor, event.serial) == ("issue", ADMIN_ID, issued.serial)
    assert event.at == START


def test_issued_certificate_verifies_under_the_intermediate_and_carries_the_names(
    authority: CertificateAuthority, pki: Pki
) -> None:
    issued = issue(authority, dns=("a.web.internal",), ips=("10.1.2.3",))
    issued.certificate.verify_directly_issued_by(pki.issuer.certificate)
    names = san(issued.certificate)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [WEB_ID]
    assert names.get_values_for_type(x509.DNSName) == ["a.web.internal"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]


def test_default_validity_is_24h_backdated_by_one_minute(
    authority: CertificateAuthority, store: SqliteStore, clock: FakeClock
) -> None:
    clock.advance(dt.timedelta(hours=3, seconds=17))
    now = clock.now()
    issued = issue(authority)
    assert issued.not_before == now - dt.timedelta(minutes=1)
    assert issued.not_after == now + dt.timedelta(hours=24)
    stored = store.get_certificate(issued.serial)
    assert stored is not None
    assert (stored.not_before, stored.not_after, stored.issued_at) == (
        issued.not_before,
        issued.not_after,
        now,
    )


def test_requested_validity_within_bounds_is_honoured(authority: CertificateAuthority) -> None:
    issued = issue(authority, validity=dt.timedelta(days=7))
    assert issued.not_after == START + dt.timedelta(days=7)


def test_validity_above_the_maximum_is_refused_naming_the_cap(
    authority: CertificateAuthority, store: SqliteStore
) -> None:
    too_long = SETTINGS.max_validity + dt.timedelta(seconds=1)
    with pytest.raises(InvalidRequest, match="cap") as excinfo:
        issue(authority, validity=too_long)
    cap = SETTINGS.max_validity
    assert format_duration(cap) in str(excinfo.value) or str(cap) in str(excinfo.value)
    assert issue(authority, validity=SETTINGS.max_validity).not_after == (
        START + SETTINGS.max_validity
    )


@pytest.mark.parametrize("validity", [dt.timedelta(minutes=4, seconds=59), dt.timedelta(0)])
def test_validity_below_the_minimum_is_refused(
    authority: CertificateAuthority, store: SqliteStore, validity: dt.timedelta
) -> None:
    with pytest.raises(InvalidRequest, match="minimum"):
        issue(authority, validity=validity)
    assert store.audit_events() == []


@pytest.mark.parametrize(
    "uris",
    [(), (WEB_ID, OTHER_WEB_ID)],
    ids=["no-uri-san", "two-uri-sans"],
)
def test_csr_must_carry_exactly_one_uri_san(
    authority: CertificateAuthority, uris: tuple[str, ...]
) -> None:
    _, csr = make_csr(uris=uris, dns=("a.web.internal",))
    with pytest.raises(InvalidRequest, match="exactly one URI SAN"):
        authority.sign(ADMIN, csr, None)


def test_identity_in_another_trust_domain_is_a_policy_violation(
    authority: CertificateAuthority, store: SqliteStore
) -> None:
    with pytest.raises(PolicyViolation, match="outside the trust domain"):
        issue(authority, "spiffe://elsewhere.example/web/frontend")
    assert store.audit_events() == []


def test_workload_may_sign_its_own_identity_with_allowed_names(
    authority: CertificateAuthority,
) -> None:
    workload = caller_of(authority, issue(authority))
    assert not workload.is_admin
    _, csr = make_csr(uris=[WEB_ID], dns=["api.web.internal"], ips=["10.9.8.7"])
    issued = authority.sign(workload, csr, None)
    names = san(issued.certificate)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [WEB_ID]
    assert names.get_values_for_type(x509.DNSName) == ["api.web.internal"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.9.8.7")]


def test_workload_may_not_sign_another_identity(authority: CertificateAuthority) -> None:
    workload = caller_of(authority, issue(authority))
    _, csr = make_csr(uris=[OTHER_WEB_ID])
    with pytest.raises(PolicyViolation, match="only for its own identity"):
        authority.sign(workload, csr, None)


@pytest.mark.parametrize(
    ("dns", "ips", "denied"),
    [
        (("evil.example.com",), (), "evil.example.com"),
        (("web.internal",), (), "web.internal"),  # '*.web.internal' needs one more label
        (("a.b.web.internal",), (), "a.b.web.internal"),
        ((), ("192.168.1.1",), "192.168.1.1"),
        ((), ("11.0.0.1",), "11.0.0.1"),
    ],
)
def test_workload_may_not_sign_names_its_policy_does_not_allow(
    authority: CertificateAuthority, dns: tuple[str, ...], ips: tuple[str, ...], denied: str
) -> None:
    workload = caller_of(authority, issue(authority))
    _, csr = make_csr(uris=[WEB_ID], dns=dns, ips=ips)
    with pytest.raises(PolicyViolation, match=denied.replace(".", r"\.")):
        authority.sign(workload, csr, None)


def test_csr_asking_for_ca_true_yields_a_ca_false_leaf(authority: CertificateAuthority) -> None:
    _, csr = make_csr(
        uris=[WEB_ID],
        extra_extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)],
    )
    assert (
        x509.load_pem_x509_csr(csr.encode())
        .extensions.get_extension_for_class(x509.BasicConstraints)
        .value.ca
    )
    issued = authority.sign(ADMIN, csr, None)
    constraints = issued.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    usage = issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not usage.key_cert_sign and not usage.crl_sign


# -- renewal ------------------------------------------------------------------------------------


def test_renew_copies_names_from_the_current_certificate_and_ignores_the_csrs(
    authority: CertificateAuthority, store: SqliteStore
) -> None:
    current = issue(authority, dns=("frontend.web.internal",), ips=("10.1.2.3",))
    _, csr = make_csr(
        uris=[ADMIN_ID],
        dns=["evil.example.com"],
        ips=["192.168.0.1"],
        cn="evil.example.com",
    )
    renewed = authority.renew(caller_of(authority, current), csr, None)

    names = san(renewed.certificate)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [WEB_ID]
    assert names.get_values_for_type(x509.DNSName) == ["frontend.web.internal"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert "evil" not in renewed.certificate.subject.rfc4514_string()
    stored = store.get_certificate(renewed.serial)
    assert stored is not None
    assert (stored.identity, stored.dns_names, stored.ip_addresses) == (
        WEB_ID,
        ("frontend.web.internal",),
        ("10.1.2.3",),
    )
    event = store.audit_events(1)[0]
    assert (event.action, event.actor, event.serial) == ("renew", WEB_ID, renewed.serial)
    assert current.serial in event.detail


def test_renew_certifies_the_key_in_the_new_csr(authority: CertificateAuthority) -> None:
    current = issue(authority)
    new_key = make_key()
    _, csr = make_csr(new_key, uris=[WEB_ID])
    renewed = authority.renew(caller_of(authority, current), csr, None)

    def spki(cert: x509.Certificate) -> bytes:
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    new_spki = new_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki(renewed.certificate) == new_spki != spki(current.certificate)
    assert renewed.serial != current.serial


def test_repeated_renewals_keep_the_original_lifetime(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    lifetime = dt.timedelta(hours=2)
    current = issue(authority, validity=lifetime)
    for _ in range(3):
        clock.advance(dt.timedelta(minutes=80))
        _, csr = make_csr(uris=[WEB_ID])
        current = authority.renew(caller_of(authority, current), csr, None)
        assert current.not_after == clock.now() + lifetime
        assert current.not_after - current.not_before == lifetime + SETTINGS.backdate


def test_renew_honours_an_explicit_validity_within_bounds(
    authority: CertificateAuthority,
) -> None:
    current = issue(authority, validity=dt.timedelta(hours=2))
    _, csr = make_csr(uris=[WEB_ID])
    renewed = authority.renew(caller_of(authority, current), csr, dt.timedelta(hours=6))
    assert renewed.not_after == START + dt.timedelta(hours=6)
    with pytest.raises(InvalidRequest, match="cap"):
        authority.renew(caller_of(authority, current), csr, dt.timedelta(days=31))


# -- revocation ---------------------------------------------------------------------------------


def test_revoking_an_unknown_serial_is_not_found(authority: CertificateAuthority) -> None:
    with pytest.raises(NotFound):
        authority.revoke(ADMIN, "0123456789abcdef", Reason.KEY_COMPROMISE)


def test_revoking_twice_is_already_revoked(
    authority: CertificateAuthority, store: SqliteStore
) -> None:
    issued = issue(authority)
    authority.revoke(ADMIN, issued.serial, Reason.KEY_COMPROMISE)
    events = len(store.audit_events())
    with pytest.raises(AlreadyRevoked):
        authority.revoke(ADMIN, issued.serial, Reason.SUPERSEDED)
    stored = store.get_certificate(issued.serial)
    assert stored is not None and stored.reason is Reason.KEY_COMPROMISE
    assert len(store.audit_events()) == events


def test_workload_may_not_revoke_another_identitys_certificate(
    authority: CertificateAuthority, store: SqliteStore
) -> None:
    mine = issue(authority, WEB_ID)
    theirs = issue(authority, OTHER_WEB_ID)
    with pytest.raises(PolicyViolation, match="only its own"):
        authority.revoke(caller_of(authority, mine), theirs.serial, Reason.KEY_COMPROMISE)
    stored = store.get_certificate(theirs.serial)
    assert stored is not None and stored.status == "good"


def test_holder_may_revoke_its_own_certificate(
    authority: CertificateAuthority, store: SqliteStore, clock: FakeClock
) -> None:
    mine = issue(authority, WEB_ID)
    clock.advance(dt.timedelta(minutes=10))
    serial, revoked_at = authority.revoke(
        caller_of(authority, mine), mine.serial, Reason.KEY_COMPROMISE
    )
    assert (serial, revoked_at) == (mine.serial, START + dt.timedelta(minutes=10))
    stored = store.get_certificate(mine.serial)
    assert stored is not None
    assert (stored.status, stored.revoked_at, stored.reason) == (
        "revoked",
        revoked_at,
        Reason.KEY_COMPROMISE,
    )
    event = store.audit_events(1)[0]
    assert (event.action, event.actor, event.serial) == ("revoke", WEB_ID, mine.serial)


@pytest.mark.parametrize(
    "spelling",
    [
        lambda s: s.upper(),
        lambda s: ":".join(s[i : i + 2] for i in range(0, len(s), 2)).upper(),
        lambda s: "0x" + s,
        lambda s: f"  {s}  ",
    ],
    ids=["upper", "colons", "0x-prefix", "whitespace"],
)
def test_revoke_accepts_other_spellings_of_the_serial(
    authority: CertificateAuthority, spelling: object
) -> None:
    issued = issue(authority)
    text = spelling(issued.serial)  # type: ignore[operator]
    assert text != issued.serial
    serial, _ = authority.revoke(ADMIN, text, Reason.SUPERSEDED)
    assert serial == issued.serial
    assert authority.status(text).answer.status is CertStatus.REVOKED


@pytest.mark.parametrize(
    "text",
    [
        "xyz",
        "12g4",
        "",
        "::",
        "0x",
        "ab" * 21,
        "-1",
        "-ab",
        "1_0",
    ],
)
def test_revoking_a_malformed_serial_is_an_invalid_request(
    authority: CertificateAuthority, text: str
) -> None:
    with pytest.raises(InvalidRequest, match="serial_number"):
        authority.revoke(ADMIN, text, Reason.SUPERSEDED)


@pytest.mark.parametrize(
    "text",
    [
        "xyz",
        "",
        "ab" * 21,
        "-1",
    ],
)
def test_status_of_a_malformed_serial_is_an_invalid_request(
    authority: CertificateAuthority, text: str
) -> None:
    with pytest.raises(InvalidRequest, match="serial_number"):
        authority.status(text)


# -- status and OCSP ----------------------------------------------------------------------------


def test_status_of_a_good_certificate_is_good_in_answer_and_ocsp(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock
) -> None:
    issued = issue(authority)
    clock.advance(dt.timedelta(minutes=3))
    result = authority.status(issued.serial)
    assert result.answer.status is CertStatus.GOOD
    assert result.answer.serial == issued.certificate.serial_number
    # Signed when first asked for (not at issuance), then kept: asked again later, the same
    # response comes back, costing no new signature.
    assert result.this_update == clock.now()
    assert result.next_update == result.this_update + SETTINGS.ocsp_validity
    authority.wait_for_writebacks()
    clock.advance(dt.timedelta(minutes=5))
    again = authority.status(issued.serial)
    assert again.ocsp_response == result.ocsp_response

    response = load_ocsp(result.ocsp_response, pki)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == issued.certificate.serial_number
    assert response.this_update_utc == result.this_update
    assert response.next_update_utc == result.next_update


def test_status_of_a_revoked_certificate_carries_time_and_reason(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock
) -> None:
    issued = issue(authority)
    clock.advance(dt.timedelta(minutes=7))
    _, revoked_at = authority.revoke(ADMIN, issued.serial, Reason.KEY_COMPROMISE)
    clock.advance(dt.timedelta(minutes=1))
    result = authority.status(issued.serial)
    assert result.answer.status is CertStatus.REVOKED
    assert result.answer.revoked_at == revoked_at == START + dt.timedelta(minutes=7)
    assert result.answer.reason is Reason.KEY_COMPROMISE

    response = load_ocsp(result.ocsp_response, pki)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.serial_number == issued.certificate.serial_number
    assert response.revocation_time_utc == revoked_at
    assert response.revocation_reason is x509.ReasonFlags.key_compromise


def test_status_of_a_never_issued_serial_is_unknown(
    authority: CertificateAuthority, pki: Pki
) -> None:
    result = authority.status("0BADC0FFEE")
    assert result.answer.status is CertStatus.UNKNOWN
    response = load_ocsp(result.ocsp_response, pki)
    assert response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    assert response.serial_number == 0x0BADC0FFEE


def test_ocsp_response_identifies_the_issuer_by_its_key_and_name_hash(
    authority: CertificateAuthority, pki: Pki
) -> None:
    issued = issue(authority)
    response = load_ocsp(authority.status(issued.serial).ocsp_response, pki)
    # what an OCSP request built by a client for this certificate would ask about
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, pki.issuer.certificate, hashes.SHA1())  # noqa: S303
        .build()
    )
    assert response.issuer_key_hash == request.issuer_key_hash
    assert response.issuer_name_hash == request.issuer_name_hash


# -- CRL ----------------------------------------------------------------------------------------


def test_crl_lists_revoked_serials_with_their_reasons(
    authority: CertificateAuthority, pki: Pki
) -> None:
    compromised, superseded, unspecified, good = (issue(authority) for _ in range(4))
    authority.revoke(ADMIN, compromised.serial, Reason.KEY_COMPROMISE)
    authority.revoke(ADMIN, superseded.serial, Reason.SUPERSEDED)
    authority.revoke(ADMIN, unspecified.serial, Reason.UNSPECIFIED)
    crl = load_crl(authority.crl().der, pki)
    assert crl.issuer == pki.issuer.certificate.subject
    assert hex_serials(crl) == {compromised.serial, superseded.serial, unspecified.serial}

    def reason(issued: Issued) -> x509.ReasonFlags | None:
        entry = crl.get_revoked_certificate_by_serial_number(issued.certificate.serial_number)
        assert entry is not None
        try:
            return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            return None

    assert reason(compromised) is x509.ReasonFlags.key_compromise
    assert reason(superseded) is x509.ReasonFlags.superseded
    assert reason(unspecified) is None  # RFC 5280 5.3.1: absent rather than unspecified
    assert crl.get_revoked_certificate_by_serial_number(good.certificate.serial_number) is None


def test_crl_number_increases_after_a_revocation(authority: CertificateAuthority, pki: Pki) -> None:
    first = authority.crl()
    issued = issue(authority)
    authority.revoke(ADMIN, issued.serial, Reason.KEY_COMPROMISE)
    second = authority.crl()
    assert second.number > first.number
    crl = load_crl(second.der, pki)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == (
        second.number
    )
    assert issued.serial in hex_serials(crl)


def test_crl_is_not_rebuilt_when_nothing_changed(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    authority.revoke(ADMIN, issue(authority).serial, Reason.KEY_COMPROMISE)
    first = authority.crl()
    issue(authority)  # a new good certificate changes nothing a CRL lists
    clock.advance(SETTINGS.crl_validity / 2 - dt.timedelta(seconds=1))
    second = authority.crl()
    assert (second.der, second.number, second.this_update) == (
        first.der,
        first.number,
        first.this_update,
    )


def test_crl_is_rebuilt_once_half_its_validity_has_passed(
    authority: CertificateAuthority, clock: FakeClock, pki: Pki
) -> None:
    first = authority.crl()
    clock.advance(SETTINGS.crl_validity / 2)
    second = authority.crl()
    assert second.number > first.number
    assert second.this_update == clock.now()
    assert second.next_update == clock.now() + SETTINGS.crl_validity
    crl = load_crl(second.der, pki)
    assert crl.last_update_utc == second.this_update
    assert crl.next_update_utc == second.next_update


def test_a_revocation_by_another_process_reaches_this_crl_at_once(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock, tmp_path: Path
) -> None:
    issued = issue(authority)
    authority.crl()  # built and cached before the revocation
    other_store = SqliteStore(tmp_path / "ca.db")  # a second worker process on the same file
    try:
        make_authority(pki, other_store, clock).revoke(ADMIN, issued.serial, Reason.SUPERSEDED)
    finally:
        other_store.close()
    assert authority.status(issued.serial).answer.status is CertStatus.REVOKED
    assert issued.serial in hex_serials(load_crl(authority.crl().der, pki))


def test_crl_drops_revoked_certificates_once_they_expire(
    authority: CertificateAuthority, clock: FakeClock, pki: Pki
) -> None:
    short = issue(authority, validity=dt.timedelta(hours=1))
    long = issue(authority, validity=dt.timedelta(days=2))
    authority.revoke(ADMIN, short.serial, Reason.KEY_COMPROMISE)
    authority.revoke(ADMIN, long.serial, Reason.KEY_COMPROMISE)
    assert hex_serials(load_crl(authority.crl().der, pki)) == {short.serial, long.serial}
    clock.advance(SETTINGS.crl_validity / 2 + dt.timedelta(minutes=1))
    assert hex_serials(load_crl(authority.crl().der, pki)) == {long.serial}


# -- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(("identity", "is_admin"), [(ADMIN_ID, True), (WEB_ID, False)])
def test_authenticate_turns_a_good_certificate_into_a_caller(
    authority: CertificateAuthority, identity: str, is_admin: bool
) -> None:
    issued = issue(authority, identity)
    caller = authority.authenticate(peer(issued))
    assert caller == Caller(identity, issued.serial, is_admin)


def test_a_revoked_certificate_is_refused_at_once_despite_the_auth_cache(
    authority: CertificateAuthority,
) -> None:
    issued = issue(authority)
    assert authority.authenticate(peer(issued)).serial == issued.serial  # now cached
    authority.revoke(ADMIN, issued.serial, Reason.KEY_COMPROMISE)
    with pytest.raises(Unauthenticated, match="revoked"):
        authority.authenticate(peer(issued))


def test_a_revocation_by_another_process_is_seen_after_the_auth_cache_ttl(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock, tmp_path: Path
) -> None:
    issued = issue(authority)
    authority.authenticate(peer(issued))  # cached as good
    other_store = SqliteStore(tmp_path / "ca.db")  # a second worker process on the same file
    try:
        make_authority(pki, other_store, clock).revoke(ADMIN, issued.serial, Reason.SUPERSEDED)
    finally:
        other_store.close()
    clock.advance(SETTINGS.auth_cache_ttl + dt.timedelta(seconds=1))
    with pytest.raises(Unauthenticated, match="revoked"):
        authority.authenticate(peer(issued))


def test_an_expired_certificate_is_refused(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    issued = issue(authority, validity=dt.timedelta(minutes=5))
    authority.authenticate(peer(issued))
    clock.advance(dt.timedelta(minutes=5, seconds=1))
    with pytest.raises(Unauthenticated, match="expired"):
        authority.authenticate(peer(issued))


def forged_copy(issued: Issued, issuer: Issuer) -> x509.Certificate:
    """A certificate with the same serial, identity and validity as `issued`, signed by
    `issuer`."""
    identity = san(issued.certificate).get_values_for_type(x509.UniformResourceIdentifier)[0]
    return build_leaf(
        issuer,
        LeafRequest(
            public_key=make_key().public_key(),
            identity=identity,
            dns_names=(),
            ip_addresses=(),
            common_name=None,
            not_before=issued.not_before,
            not_after=issued.not_after,
            serial=issued.certificate.serial_number,
        ),
    )


def test_a_certificate_from_another_ca_is_refused(authority: CertificateAuthority) -> None:
    issued = issue(authority, ADMIN_ID)
    foreign = forged_copy(issued, make_pki("Other").issuer)
    with pytest.raises(Unauthenticated, match="not issued by this CA"):
        authority.authenticate(peer(foreign))


def test_a_certificate_from_another_ca_with_the_same_name_and_a_known_serial_is_refused(
    authority: CertificateAuthority,
) -> None:
    workload = issue(authority, WEB_ID)
    twin = make_pki("Signet").issuer  # same subject names as the real CA, different keys
    assert twin.certificate.subject == authority.issuer.certificate.subject
    forged = build_leaf(
        twin,
        LeafRequest(
            public_key=make_key().public_key(),
            identity=ADMIN_ID,  # claims the admin identity ...
            dns_names=(),
            ip_addresses=(),
            common_name=None,
            not_before=workload.not_before,
            not_after=workload.not_after,
            serial=workload.certificate.serial_number,  # ... with a workload's serial
        ),
    )
    with pytest.raises(Unauthenticated):
        authority.authenticate(peer(forged))


def test_a_certificate_without_a_spiffe_uri_is_refused(
    authority: CertificateAuthority, pki: Pki, store: SqliteStore
) -> None:
    key = make_key()
    serial = random_serial()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(pki.issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(START - dt.timedelta(minutes=1))
        .not_valid_after(START + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.web.internal")]), critical=True)
        .sign(pki.issuer.key, hashes.SHA256())
    )
    # Recorded as ours, so only the missing SPIFFE ID can be the reason it is refused.
    der = cert.public_bytes(serialization.Encoding.DER)
    store.add_certificate(
        CertificateRecord(
            serial=serial_hex(serial),
            identity="",
            dns_names=("a.web.internal",),
            ip_addresses=(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            der=der,
            requested_by=ADMIN_ID,
            issued_at=START,
        ),
        AuditEvent(START, "issue", ADMIN_ID, serial_hex(serial)),
    )
    with pytest.raises(Unauthenticated, match="SPIFFE ID"):
        authority.authenticate(peer(cert))


def test_a_certificate_with_a_serial_unknown_to_the_store_is_refused(
    authority: CertificateAuthority, pki: Pki
) -> None:
    cert = build_leaf(
        pki.issuer,
        LeafRequest(
            public_key=make_key().public_key(),
            identity=ADMIN_ID,
            dns_names=(),
            ip_addresses=(),
            common_name=None,
            not_before=START - dt.timedelta(minutes=1),
            not_after=START + dt.timedelta(hours=1),
            serial=random_serial(),
        ),
    )
    with pytest.raises(Unauthenticated, match="unknown to this CA"):
        authority.authenticate(peer(cert))


def test_an_unparseable_peer_certificate_is_refused(authority: CertificateAuthority) -> None:
    with pytest.raises(Unauthenticated, match="could not be parsed"):
        authority.authenticate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# -- listing ------------------------------------------------------------------------------------


def test_listing_needs_the_admin_role(authority: CertificateAuthority) -> None:
    workload = caller_of(authority, issue(authority))
    with pytest.raises(PolicyViolation, match="admin"):
        authority.list_certificates(workload, None, None, 10, "")


def list_all(authority: CertificateAuthority, page_size: int, **filters: object) -> list[str]:
    seen: list[str] = []
    token = ""
    for _ in range(100):
        page = authority.list_certificates(
            ADMIN,
            filters.get("status"),  # type: ignore[arg-type]
            filters.get("expiring_before"),  # type: ignore[arg-type]
            page_size,
            token,
        )
        assert len(page.records) <= page_size
        # The CA's own delegated OCSP responder certificate is listed too; tests count theirs.
        seen += [r.serial for r in page.records if r.requested_by != "signet:ca"]
        token = page.next_page_token
        if not token:
            return seen
        assert len(page.records) == page_size
    raise AssertionError("paging does not terminate")


@pytest.mark.parametrize("page_size", [1, 3, 4, 12, 50])
def test_pages_cover_every_certificate_exactly_once(
    authority: CertificateAuthority, clock: FakeClock, page_size: int
) -> None:
    issued = []
    for i in range(12):
        issued.append(issue(authority))
        if i % 4 == 3:  # several certificates share each issued_at second
            clock.advance(dt.timedelta(seconds=1))
    seen = list_all(authority, page_size)
    assert sorted(seen) == sorted(i.serial for i in issued)
    assert len(seen) == len(set(seen)) == 12


def test_listing_filters_by_status_and_expiry(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    short = [issue(authority, validity=dt.timedelta(hours=1)) for _ in range(3)]
    long = [issue(authority, validity=dt.timedelta(days=3)) for _ in range(3)]
    authority.revoke(ADMIN, short[0].serial, Reason.SUPERSEDED)
    authority.revoke(ADMIN, long[0].serial, Reason.SUPERSEDED)
    assert sorted(list_all(authority, 2, status="revoked")) == sorted(
        [short[0].serial, long[0].serial]
    )
    soon = START + dt.timedelta(hours=2)
    assert sorted(list_all(authority, 2, expiring_before=soon)) == sorted(s.serial for s in short)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def token(value: object) -> str:
    """A page token of the previous format (JSON), still accepted when well-formed."""
    return b64(json.dumps(value).encode())


@pytest.mark.parametrize(
    "page_token",
    [
        "not a token!",
        "%%%%",
        base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
        token("just a string"),
        token([1, 2]),
        token(["1", "ab"]),
        token([1, "ab", 3]),
        token({"issued_at": 1}),
        pytest.param(token([2**70, "ab"]), id="issued_at-overflows-int64"),
        pytest.param(b64(b"[" * 100_000), id="deeply-nested-json"),
        pytest.param(b64(b"\x01" + bytes(8) + b"ab" * 500), id="too-long"),
        pytest.param(b64(b"\x02" + bytes(8) + b"ab"), id="unknown-version"),
        pytest.param(b64(b"\x01" + bytes(7)), id="truncated"),
        pytest.param(b64(b"\x01" + bytes(8) + b"AB"), id="uppercase-serial"),
        pytest.param(b64(b"\x01" + bytes(8) + b"a" * 41), id="serial-over-20-octets"),
        pytest.param(b64(b"\x01" + b"\x40" + bytes(7) + b"ab"), id="issued_at-over-2**62"),
        pytest.param(b64(b"\x01" + bytes(8) + b"ab") + "=", id="padded"),
        pytest.param(b64(b"\x01" + bytes(8) + b"ab")[:-1] + "J", id="non-canonical-low-bits"),
        pytest.param(token([1, "ab"]).replace("", " ")[1:-1], id="spaces"),
    ],
)
def test_a_page_token_this_server_never_returned_is_an_invalid_request(
    authority: CertificateAuthority, page_token: str
) -> None:
    issue(authority)
    with pytest.raises(InvalidRequest, match="page_token"):
        authority.list_certificates(ADMIN, None, None, 10, page_token)


def test_page_tokens_are_opaque_fixed_binary_not_json(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    for _ in range(3):
        issue(authority)
        clock.advance(dt.timedelta(seconds=1))
    page = authority.list_certificates(ADMIN, None, None, 1, "")
    raw = base64.urlsafe_b64decode(page.next_page_token + "==")
    assert raw[:1] == b"\x01" and raw[9:].decode() == page.records[-1].serial
    assert int.from_bytes(raw[1:9], "big") == int(page.records[-1].issued_at.timestamp())


def test_a_page_token_of_the_previous_json_format_still_pages(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    for _ in range(3):
        issue(authority)
        clock.advance(dt.timedelta(seconds=1))
    first = authority.list_certificates(ADMIN, None, None, 1, "")
    last = first.records[-1]
    legacy = token([int(last.issued_at.timestamp()), last.serial])
    assert (
        authority.list_certificates(ADMIN, None, None, 10, legacy).records
        == authority.list_certificates(ADMIN, None, None, 10, first.next_page_token).records
    )


def test_a_negative_page_size_is_an_invalid_request(authority: CertificateAuthority) -> None:
    with pytest.raises(InvalidRequest, match="page_size"):
        authority.list_certificates(ADMIN, None, None, -1, "")


def test_page_size_zero_means_the_default_page(authority: CertificateAuthority) -> None:
    issued = [issue(authority) for _ in range(3)]
    page = authority.list_certificates(ADMIN, None, None, 0, "")
    ours = [r.serial for r in page.records if r.requested_by != "signet:ca"]
    assert sorted(ours) == sorted(i.serial for i in issued)
    assert page.next_page_token == ""


# -- certificateHold and removeFromCRL (RFC 5280 5.3.1) -------------------------------------------


def test_a_held_certificate_can_be_released_by_an_admin_and_leaves_the_crl(
    authority: CertificateAuthority, pki: Pki
) -> None:
    issued = issue(authority)
    authority.revoke(ADMIN, issued.serial, Reason.CERTIFICATE_HOLD)
    assert issued.serial in hex_serials(load_crl(authority.crl().der, pki))
    authority.revoke(ADMIN, issued.serial, Reason.REMOVE_FROM_CRL)
    assert authority.status(issued.serial).answer.status is CertStatus.GOOD
    assert issued.serial not in hex_serials(load_crl(authority.crl().der, pki))
    assert authority.authenticate(peer(issued)).serial == issued.serial
    actions = [e.action for e in authority.store.audit_events(10) if e.serial == issued.serial]
    assert actions[:2] == ["release-hold", "revoke"]


def test_a_hold_can_be_made_final_with_another_reason(authority: CertificateAuthority) -> None:
    issued = issue(authority)
    authority.revoke(ADMIN, issued.serial, Reason.CERTIFICATE_HOLD)
    authority.revoke(ADMIN, issued.serial, Reason.KEY_COMPROMISE)
    answer = authority.status(issued.serial).answer
    assert answer.status is CertStatus.REVOKED and answer.reason is Reason.KEY_COMPROMISE
    with pytest.raises(Conflict, match="not on certificateHold"):
        authority.revoke(ADMIN, issued.serial, Reason.REMOVE_FROM_CRL)


def test_holding_twice_is_already_revoked(authority: CertificateAuthority) -> None:
    issued = issue(authority)
    authority.revoke(ADMIN, issued.serial, Reason.CERTIFICATE_HOLD)
    with pytest.raises(AlreadyRevoked):
        authority.revoke(ADMIN, issued.serial, Reason.CERTIFICATE_HOLD)


def test_remove_from_crl_on_a_good_certificate_is_a_conflict(
    authority: CertificateAuthority,
) -> None:
    issued = issue(authority)
    with pytest.raises(Conflict, match="not on certificateHold"):
        authority.revoke(ADMIN, issued.serial, Reason.REMOVE_FROM_CRL)


def test_a_workload_may_not_release_a_hold_on_its_own_certificate(
    authority: CertificateAuthority,
) -> None:
    issued = issue(authority)
    holder = caller_of(authority, issued)
    authority.revoke(ADMIN, issued.serial, Reason.CERTIFICATE_HOLD)
    with pytest.raises(PolicyViolation, match="admin"):
        authority.revoke(holder, issued.serial, Reason.REMOVE_FROM_CRL)


# -- renewal re-checks policy -------------------------------------------------------------------


def test_renewal_needs_a_new_key(authority: CertificateAuthority) -> None:
    key, csr = make_csr(uris=[WEB_ID])
    issued = authority.sign(ADMIN, csr, None)
    _, same_key_csr = make_csr(key)
    with pytest.raises(InvalidRequest, match="new key"):
        authority.renew(caller_of(authority, issued), same_key_csr, None)


def test_renewal_of_self_granted_names_follows_narrowed_workload_policy(
    pki: Pki, store: SqliteStore, clock: FakeClock, authority: CertificateAuthority
) -> None:
    workload = caller_of(authority, issue(authority))
    _, csr = make_csr(uris=[WEB_ID], dns=["a.web.internal"])
    own = authority.sign(workload, csr, None)  # granted by the workload's own policy entry
    narrowed = make_authority(pki, store, clock, dataclasses.replace(POLICY, workloads=()))
    with pytest.raises(PolicyViolation, match=r"a\.web\.internal"):
        narrowed.renew(narrowed.authenticate(peer(own)), make_csr()[1], None)
    # Under the unchanged policy the same renewal goes through.
    renewed = authority.renew(caller_of(authority, own), make_csr()[1], None)
    assert san(renewed.certificate).get_values_for_type(x509.DNSName) == ["a.web.internal"]


def test_renewal_of_admin_granted_names_survives_workload_policy_but_not_admin_removal(
    pki: Pki, store: SqliteStore, clock: FakeClock, authority: CertificateAuthority
) -> None:
    granted = issue(authority, dns=("payments.bank.internal",))  # outside any workload rule
    no_workloads = make_authority(pki, store, clock, dataclasses.replace(POLICY, workloads=()))
    renewed = no_workloads.renew(no_workloads.authenticate(peer(granted)), make_csr()[1], None)
    assert san(renewed.certificate).get_values_for_type(x509.DNSName) == ["payments.bank.internal"]
    no_admins = make_authority(pki, store, clock, dataclasses.replace(POLICY, admins=()))
    with pytest.raises(PolicyViolation):
        no_admins.renew(no_admins.authenticate(peer(renewed)), make_csr()[1], None)


# -- the auth cache and concurrent revocation ----------------------------------------------------


class _RevokeDuringRead(SqliteStore):
    """A real store that lets a revocation land between authenticate()'s read and its
    caching of the answer: the interleaving a second RPC thread can produce."""

    hook: Callable[[], None] | None = None

    def get_certificate(self, serial: str) -> CertificateRecord | None:
        record = super().get_certificate(serial)
        hook, self.hook = self.hook, None
        if hook:
            hook()
        return record


def test_a_revocation_racing_the_auth_store_read_is_not_cached_as_good(
    pki: Pki, clock: FakeClock, tmp_path: Path
) -> None:
    store = _RevokeDuringRead(tmp_path / "race.db")
    try:
        authority = make_authority(pki, store, clock)
        issued = issue(authority)
        store.hook = lambda: authority.revoke(ADMIN, issued.serial, Reason.KEY_COMPROMISE)
        authority.authenticate(peer(issued))  # read "good" just before the revocation landed
        with pytest.raises(Unauthenticated, match="revoked"):
            authority.authenticate(peer(issued))
    finally:
        store.close()


def test_an_expired_bootstrap_token_is_refused(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    token, expires_at = authority.create_token(ADMIN, WEB_ID, [], [], None, None)
    assert expires_at == clock.now().replace(microsecond=0) + dt.timedelta(minutes=15)
    clock.advance(dt.timedelta(minutes=15, seconds=1))
    with pytest.raises(Unauthenticated, match="expired"):
        authority.enroll(token, make_csr()[1], "10.0.0.1")


def test_a_token_cannot_grant_names_its_minter_may_not(authority: CertificateAuthority) -> None:
    workload = Caller(WEB_ID, "01", is_admin=False)
    with pytest.raises(PolicyViolation):
        authority.create_token(workload, WEB_ID, [], [], None, None)


def test_enroll_rechecks_what_the_tokens_minter_may_grant(
    pki: Pki, store: SqliteStore, clock: FakeClock, authority: CertificateAuthority
) -> None:
    token, _ = authority.create_token(ADMIN, WEB_ID, ["pay.bank.internal"], [], None, None)
    demoted = make_authority(pki, store, clock, dataclasses.replace(POLICY, admins=()))
    with pytest.raises(PolicyViolation):
        demoted.enroll(token, make_csr()[1], "10.0.0.2")


# -- token parameters and name caps ------------------------------------------------------------


@pytest.mark.parametrize("ttl", [dt.timedelta(0), dt.timedelta(seconds=-5), dt.timedelta(days=2)])
def test_a_token_ttl_of_zero_negative_or_over_a_day_is_refused_not_defaulted(
    authority: CertificateAuthority, ttl: dt.timedelta
) -> None:
    with pytest.raises(InvalidRequest, match=r"token_ttl -?\d+[sd] is out of range.*unset"):
        authority.create_token(ADMIN, WEB_ID, [], [], ttl, None)


def test_an_unset_token_ttl_is_the_default_and_a_short_one_is_kept(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    _, default = authority.create_token(ADMIN, WEB_ID, [], [], None, None)
    _, short = authority.create_token(ADMIN, WEB_ID, [], [], dt.timedelta(seconds=1), None)
    assert default - clock.now() == dt.timedelta(minutes=15)
    assert short - clock.now() == dt.timedelta(seconds=1)


def hosts(n: int) -> list[str]:
    return [f"h{i}.web.internal" for i in range(n)]


def test_a_token_holds_at_most_max_names_names(authority: CertificateAuthority) -> None:
    authority.create_token(ADMIN, WEB_ID, hosts(99), ["10.0.0.1"], None, None)  # 100: the cap
    with pytest.raises(LimitExceeded, match=r"token asks for 101 .* at most 100 .*max_names"):
        authority.create_token(ADMIN, WEB_ID, hosts(100), ["10.0.0.1"], None, None)
    # Duplicates are one name each, as on the certificate.
    authority.create_token(ADMIN, WEB_ID, hosts(100) + hosts(100), [], None, None)


def test_a_csr_holds_at_most_max_names_names(authority: CertificateAuthority) -> None:
    issue(authority, dns=tuple(hosts(100)))
    with pytest.raises(LimitExceeded, match=r"CSR asks for 101 .* at most 100"):
        issue(authority, dns=tuple(hosts(100)), ips=("10.0.0.1",))


def test_max_names_is_configurable_and_holds_at_enroll_and_renewal(
    pki: Pki, store: SqliteStore, clock: FakeClock, authority: CertificateAuthority
) -> None:
    token, _ = authority.create_token(ADMIN, WEB_ID, hosts(3), [], None, None)
    issued = issue(authority, dns=tuple(hosts(3)))
    narrow = make_authority(pki, store, clock)
    narrow.settings = dataclasses.replace(narrow.settings, max_names=2)
    with pytest.raises(LimitExceeded, match="at most 2"):
        issue(narrow, dns=tuple(hosts(3)))
    with pytest.raises(LimitExceeded, match=r"token asks for 3 .* at most 2"):
        narrow.enroll(token, make_csr()[1], "10.0.0.3")
    assert store.usable_token(token_hash(token), clock.now()) is not None  # not spent
    with pytest.raises(LimitExceeded, match=r"renewed asks for 3 .* at most 2"):
        narrow.renew(narrow.authenticate(peer(issued)), make_csr(uris=[WEB_ID])[1], None)
    issue(narrow, dns=tuple(hosts(2)))


def test_a_token_for_a_zoned_ipv6_address_is_refused(authority: CertificateAuthority) -> None:
    # The certificate could only carry fe80::1: the token must not promise fe80::1%eth0.
    with pytest.raises(InvalidRequest, match=r"fe80::1%eth0 has a zone"):
        authority.create_token(ADMIN, WEB_ID, [], ["fe80::1%eth0"], None, None)
