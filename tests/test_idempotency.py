"""Idempotent calls (request_id) and dry runs (validate_only), on each store (a real SQLite file,
a throwaway PostgreSQL database): a retry is answered with the original answer for an hour, the
record is written with what it answers and only then, concurrent twins yield one certificate, a
different request under the same id is refused, the answer is scoped by the caller, tokens are
never shown twice, and a dry run runs every check and writes nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ca_server.core.authority import CertificateAuthority, IssuanceSettings, Issued, Preview
from ca_server.core.bootstrap import token_hash
from ca_server.core.clock import FakeClock
from ca_server.core.errors import (
    AlreadyRevoked,
    InvalidRequest,
    LimitExceeded,
    PolicyViolation,
    RequestIdReused,
    Unauthenticated,
)
from ca_server.core.idempotency import RETENTION, parse_request_id
from ca_server.core.revocation import Reason
from ca_server.core.store import (
    AuditEvent,
    DuplicateRequest,
    Quota,
    RequestRecord,
    RevokeOutcome,
    Store,
    TokenRecord,
)
from ca_server.maintenance import Maintenance
from tests.pki import make_csr, spiffe
from tests.test_authority import ADMIN, POLICY, START, WEB_ID, caller_of, make_pki
from tests.test_store import (  # noqa: F401 - fixtures: a store of each kind
    NOW,
    db_path,
    issue_event,
    opener,
    raw_sql,
    record,
    store,
    url,
)

RID = "0b6f3c1e-5d2a-4c8e-9f1a-2b3c4d5e6f70"
OTHER_RID = "7d0c9e7a-1b2c-4d3e-8f90-a1b2c3d4e5f6"
TABLES = ("certificates", "audit", "request_ids", "bootstrap_tokens")


def counts(url: str) -> dict[str, int]:
    return {t: raw_sql(url, f"SELECT COUNT(*) FROM {t}")[0][0] for t in TABLES}  # noqa: S608


def request(
    scope: str = ADMIN.identity,
    request_id: str = RID,
    *,
    at: dt.datetime = NOW,
    fingerprint: str = "f" * 64,
    result: str = '{"serial":"01"}',
) -> RequestRecord:
    return RequestRecord(
        scope, request_id, "SignCertificate", fingerprint, result, at, at + RETENTION
    )


# -- the request_id itself ----------------------------------------------------------------------


def test_a_request_id_is_a_uuid_in_its_canonical_form() -> None:
    assert parse_request_id("") is None
    assert parse_request_id(RID.upper()) == RID
    assert parse_request_id("{" + RID + "}") == RID
    assert parse_request_id("urn:uuid:" + RID) == RID


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("00000000-0000-0000-0000-000000000000", "nil UUID"),
        ("not-a-uuid", "is not a UUID"),
        (RID + "0", "is not a UUID"),
        ("x" * 10_000, "is not a UUID"),
    ],
)
def test_a_request_id_that_is_no_uuid_or_the_nil_uuid_is_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_request_id(text)


# -- the store: the record goes with what it answers ----------------------------------------------


def test_the_request_record_is_stored_with_the_certificate_and_read_back(
    store: Store, url: str
) -> None:
    store.add_certificate(record("01"), issue_event("01"), request=request())
    assert store.get_request(ADMIN.identity, RID, NOW) == request()
    assert store.get_request("spiffe://signet.local/web/a", RID, NOW) is None  # scoped
    assert counts(url)["request_ids"] == 1


def test_a_second_certificate_under_a_live_request_id_raises_and_writes_nothing(
    store: Store, url: str
) -> None:
    store.add_certificate(record("01"), issue_event("01"), request=request())
    before = counts(url)
    with pytest.raises(DuplicateRequest):
        store.add_certificate(
            record("02", fingerprint_sha256="2" * 64), issue_event("02"), request=request()
        )
    assert counts(url) == before
    assert store.get_certificate("02") is None


def test_an_expired_request_record_is_not_found_and_its_id_can_be_used_again(
    store: Store,
) -> None:
    store.add_certificate(record("01"), issue_event("01"), request=request())
    expiry = NOW + RETENTION
    assert store.get_request(ADMIN.identity, RID, expiry - dt.timedelta(seconds=1)) is not None
    assert store.get_request(ADMIN.identity, RID, expiry) is None
    later = request(at=expiry, result='{"serial":"02"}')
    store.add_certificate(
        record("02", fingerprint_sha256="2" * 64), issue_event("02"), request=later
    )
    assert store.get_request(ADMIN.identity, RID, expiry) == later


def test_pruning_deletes_only_expired_request_records(store: Store, url: str) -> None:
    store.add_certificate(record("01"), issue_event("01"), request=request())
    newer = request(request_id=OTHER_RID, at=NOW + dt.timedelta(minutes=30))
    store.add_certificate(
        record("02", fingerprint_sha256="2" * 64), issue_event("02"), request=newer
    )
    assert store.prune_requests(NOW + RETENTION, 1000) == 1
    assert store.get_request(ADMIN.identity, OTHER_RID, NOW + RETENTION) == newer
    assert counts(url)["certificates"] == 2  # what they answered stays


def test_a_revocation_refused_by_the_certificates_state_keeps_no_request_record(
    store: Store,
) -> None:
    store.add_certificate(record("03"), issue_event("03"))
    event = AuditEvent(NOW, "revoke", ADMIN.identity, "03")
    assert store.revoke("03", NOW, Reason.SUPERSEDED, event) is RevokeOutcome.REVOKED
    outcome = store.revoke("03", NOW, Reason.SUPERSEDED, event, request=request())
    assert outcome is RevokeOutcome.ALREADY_REVOKED
    assert store.revoke("ff", NOW, Reason.SUPERSEDED, event, request=request()) is (
        RevokeOutcome.NOT_FOUND
    )
    assert store.get_request(ADMIN.identity, RID, NOW) is None


def test_an_enrollment_with_a_spent_token_keeps_no_request_record(store: Store) -> None:
    token = TokenRecord(
        "ab" * 32, "spiffe://signet.local/web/a", (), (), dt.timedelta(hours=1),
        NOW + dt.timedelta(hours=1), ADMIN.identity, NOW,
    )  # fmt: skip
    store.add_token(token, AuditEvent(NOW, "token-create", ADMIN.identity))
    first = request("token:" + token.token_hash)
    assert store.add_enrolled_certificate(
        record("04"), issue_event("04"), token.token_hash, NOW, request=first
    )
    again = request("token:" + token.token_hash, OTHER_RID)
    assert not store.add_enrolled_certificate(
        record("05", fingerprint_sha256="5" * 64),
        issue_event("05"),
        token.token_hash,
        NOW,
        request=again,
    )
    assert store.get_request(again.scope, OTHER_RID, NOW) is None


def test_concurrent_writes_of_one_request_id_from_two_stores_store_one(
    opener: Callable[[], Store], url: str
) -> None:
    """Two stores on one database are what two workers or replicas have: each its own writer
    (SQLite) or pool (PostgreSQL). Of 16 concurrent certificates under one id, one is stored;
    the others find the record before the quota check (which the first one's certificate now
    fills), so they can be answered with the winner's certificate rather than refused."""
    quota = Quota(NOW - dt.timedelta(hours=1), 1, NOW, 0)
    stores = [opener(), opener()]
    stored: list[str] = []
    refused: list[str] = []
    start = threading.Barrier(16)

    def one(i: int) -> None:
        serial = f"{i + 16:02x}"
        start.wait()
        try:
            stores[i % 2].add_certificate(
                record(serial, fingerprint_sha256=serial * 32),
                issue_event(serial),
                quota,
                request(result=f'{{"serial":"{serial}"}}'),
            )
            stored.append(serial)
        except DuplicateRequest:
            refused.append(serial)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert len(stored) == 1 and len(refused) == 15
        assert counts(url)["certificates"] == 1
        found = stores[0].get_request(ADMIN.identity, RID, NOW)
        assert found is not None and found.result == f'{{"serial":"{stored[0]}"}}'
    finally:
        for s in stores:
            s.close()


# -- the authority: retries answered as the first call was ---------------------------------------


@pytest.fixture(scope="module")
def pki():  # type: ignore[no-untyped-def]
    return make_pki()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def authority_for(pki, store: Store, clock: FakeClock, **settings: object) -> CertificateAuthority:  # type: ignore[no-untyped-def]
    return CertificateAuthority(
        store=store,
        clock=clock,
        issuer=pki.issuer,
        root=pki.root,
        policy=POLICY,
        settings=dataclasses.replace(IssuanceSettings(), **settings),  # type: ignore[arg-type]
    )


@pytest.fixture
def authority(pki, store: Store, clock: FakeClock) -> CertificateAuthority:  # type: ignore[no-untyped-def]
    return authority_for(pki, store, clock)


def csr(identity: str = WEB_ID, dns: tuple[str, ...] = ()) -> str:
    return make_csr(uris=[identity], dns=dns)[1]


def signed(authority: CertificateAuthority, csr_pem: str, request_id: str | None = RID) -> Issued:
    issued = authority.sign(ADMIN, csr_pem, None, request_id)
    assert isinstance(issued, Issued)
    return issued


def test_a_retry_of_sign_returns_the_same_certificate_and_issues_nothing(
    authority: CertificateAuthority, url: str
) -> None:
    request_pem = csr()
    first = signed(authority, request_pem)
    before = counts(url)
    again = signed(authority, request_pem)
    assert (again.serial, again.certificate_pem, again.chain_pem) == (
        first.serial,
        first.certificate_pem,
        first.chain_pem,
    )
    assert (again.identity, again.fingerprint_sha256) == (WEB_ID, first.fingerprint_sha256)
    assert counts(url) == before  # no certificate, audit event or record more
    assert before["certificates"] == 1 and before["request_ids"] == 1


def test_without_a_request_id_each_call_issues(authority: CertificateAuthority) -> None:
    request_pem = csr()
    assert (
        signed(authority, request_pem, None).serial != signed(authority, request_pem, None).serial
    )


def test_the_same_request_id_with_another_request_is_refused_clearly(
    authority: CertificateAuthority, url: str
) -> None:
    request_pem = csr()
    signed(authority, request_pem)
    before = counts(url)
    with pytest.raises(RequestIdReused, match=f"request_id {RID} was already used for a diff"):
        signed(authority, csr())
    with pytest.raises(RequestIdReused, match="different request"):  # another lifetime
        authority.sign(ADMIN, request_pem, dt.timedelta(hours=2), RID)
    with pytest.raises(RequestIdReused, match="used for a SignCertificate call"):
        authority.revoke(ADMIN, "01", Reason.SUPERSEDED, request_id=RID)
    assert counts(url) == before


def test_request_ids_are_scoped_by_the_caller(authority: CertificateAuthority) -> None:
    """Another caller's identical id is its own call: it neither sees nor blocks the first."""
    request_pem = csr()
    first = signed(authority, request_pem)
    other_admin = dataclasses.replace(ADMIN, identity=spiffe("admin/ops"))
    theirs = authority.sign(other_admin, request_pem, None, RID)
    assert isinstance(theirs, Issued) and theirs.serial != first.serial


def test_an_answer_is_kept_for_an_hour_then_the_id_is_new_again(
    authority: CertificateAuthority, clock: FakeClock, store: Store
) -> None:
    request_pem = csr()
    first = signed(authority, request_pem)
    clock.advance(RETENTION - dt.timedelta(seconds=1))
    assert signed(authority, request_pem).serial == first.serial
    clock.advance(dt.timedelta(seconds=1))
    assert signed(authority, request_pem).serial != first.serial


def test_concurrent_twins_on_two_authorities_get_one_certificate(
    pki, opener: Callable[[], Store], clock: FakeClock, url: str
) -> None:  # type: ignore[no-untyped-def]
    """Two authorities over two stores on one database: two workers or replicas. Every twin is
    answered with the one certificate stored."""
    stores = [opener(), opener()]
    authorities = [authority_for(pki, s, clock) for s in stores]
    request_pem = csr()
    serials: list[str] = []
    start = threading.Barrier(12)

    def one(i: int) -> None:
        start.wait()
        serials.append(signed(authorities[i % 2], request_pem).serial)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert len(serials) == 12 and len(set(serials)) == 1
        assert counts(url)["certificates"] == 1
        assert raw_sql(url, "SELECT serial FROM certificates") == [(serials[0],)]
    finally:
        for s in stores:
            s.close()


def test_a_retry_of_renew_returns_the_same_certificate(
    authority: CertificateAuthority, url: str
) -> None:
    caller = caller_of(authority, signed(authority, csr(), None))
    new_key_csr = make_csr()[1]
    first = authority.renew(caller, new_key_csr, None, request_id=RID)
    again = authority.renew(caller, new_key_csr, None, request_id=RID)
    assert isinstance(first, Issued) and isinstance(again, Issued)
    assert (again.serial, again.certificate_pem) == (first.serial, first.certificate_pem)
    assert counts(url)["certificates"] == 2
    with pytest.raises(RequestIdReused):  # revoke_previous is part of the request
        authority.renew(caller, new_key_csr, None, revoke_previous=True, request_id=RID)


def test_a_renewal_retry_with_revoke_previous_finishes_the_revocation(
    authority: CertificateAuthority, store: Store
) -> None:
    """If the first call stored its certificate and stopped before revoking the previous one
    (a crash), the retry is answered with that certificate and does the revocation."""
    old = signed(authority, csr(), None)
    caller = caller_of(authority, old)
    new_key_csr = make_csr()[1]
    first = authority._issuance.renew(caller, new_key_csr, None, RID, revoke_previous=True)
    assert store.get_status(old.serial).status == "good"  # type: ignore[union-attr]
    again = authority.renew(caller, new_key_csr, None, revoke_previous=True, request_id=RID)
    assert isinstance(first, Issued) and isinstance(again, Issued) and again.serial == first.serial
    assert store.get_status(old.serial).status == "revoked"  # type: ignore[union-attr]


def test_a_retry_of_revoke_returns_the_first_answer_not_already_revoked(
    authority: CertificateAuthority, clock: FakeClock, url: str
) -> None:
    serial = signed(authority, csr(), None).serial
    first = authority.revoke(ADMIN, serial, Reason.KEY_COMPROMISE, request_id=RID)
    clock.advance(dt.timedelta(minutes=5))
    before = counts(url)
    assert authority.revoke(ADMIN, serial.upper(), Reason.KEY_COMPROMISE, request_id=RID) == first
    assert counts(url) == before
    with pytest.raises(AlreadyRevoked):  # without the id it is a new call
        authority.revoke(ADMIN, serial, Reason.KEY_COMPROMISE)
    with pytest.raises(RequestIdReused):
        authority.revoke(ADMIN, serial, Reason.SUPERSEDED, request_id=RID)


def test_a_refused_call_is_not_remembered(authority: CertificateAuthority, url: str) -> None:
    with pytest.raises(PolicyViolation):
        signed(authority, csr("spiffe://elsewhere.example/x"))
    assert counts(url)["request_ids"] == 0
    signed(authority, csr())  # the id is still new


def test_a_retry_of_create_token_makes_no_second_token_and_says_why(
    authority: CertificateAuthority, url: str
) -> None:
    token, expires_at = authority.create_token(ADMIN, WEB_ID, [], [], None, None, RID)
    before = counts(url)
    with pytest.raises(RequestIdReused) as info:
        authority.create_token(ADMIN, WEB_ID, [], [], None, None, RID)
    message = str(info.value)
    assert token_hash(token)[:12] in message and expires_at.isoformat() in message
    assert "shown only once" in message and "new request_id" in message
    assert token not in message
    assert counts(url) == before and before["bootstrap_tokens"] == 1
    with pytest.raises(RequestIdReused, match="different request"):
        authority.create_token(ADMIN, spiffe("web/other"), [], [], None, None, RID)
    # The token is stored only as its hash: nowhere in the request record either.
    assert token not in str(raw_sql(url, "SELECT * FROM request_ids"))


def test_a_retry_of_enroll_returns_the_certificate_although_the_token_is_spent(
    authority: CertificateAuthority, url: str
) -> None:
    token, _ = authority.create_token(ADMIN, WEB_ID, [], [], None, None)
    enroll_csr = make_csr()[1]
    first = authority.enroll(token, enroll_csr, "10.0.0.1", RID)
    again = authority.enroll(token, enroll_csr, "10.0.0.1", RID)
    assert (again.serial, again.certificate_pem) == (first.serial, first.certificate_pem)
    assert counts(url)["certificates"] == 1
    with pytest.raises(Unauthenticated):  # without the id: the token is spent
        authority.enroll(token, enroll_csr, "10.0.0.1")
    with pytest.raises(RequestIdReused):
        authority.enroll(token, make_csr()[1], "10.0.0.1", RID)


def test_an_enroll_answer_is_scoped_by_the_token(authority: CertificateAuthority) -> None:
    token, _ = authority.create_token(ADMIN, WEB_ID, [], [], None, None)
    enroll_csr = make_csr()[1]
    authority.enroll(token, enroll_csr, "10.0.0.1", RID)
    with pytest.raises(Unauthenticated):  # another (bad) token cannot read it
        authority.enroll("sgt_guess", enroll_csr, "10.0.0.1", RID)


def test_the_lease_holder_prunes_expired_request_records(
    authority: CertificateAuthority, clock: FakeClock, url: str
) -> None:
    signed(authority, csr())
    Maintenance(authority)._prune_requests()
    assert counts(url)["request_ids"] == 1
    clock.advance(RETENTION)
    Maintenance(authority)._prune_requests()
    assert counts(url)["request_ids"] == 0


# -- validate_only: every check, nothing written ------------------------------------------------


def test_validate_only_says_what_would_be_issued_and_writes_nothing(
    authority: CertificateAuthority, url: str
) -> None:
    before = counts(url)
    preview = authority.sign(
        ADMIN, csr(dns=("a.web.internal",)), dt.timedelta(hours=2), RID, validate_only=True
    )
    assert preview == Preview(
        WEB_ID,
        ("a.web.internal",),
        (),
        START - dt.timedelta(minutes=1),
        START + dt.timedelta(hours=2),
    )
    assert counts(url) == before
    # The id was not used up: a real call with it issues.
    assert signed(authority, csr()).serial


def test_validate_only_refuses_what_a_real_call_refuses(
    pki, store: Store, clock: FakeClock, url: str
) -> None:  # type: ignore[no-untyped-def]
    authority = authority_for(pki, store, clock, identity_rate_limit=1)
    refusals: list[tuple[type[Exception], Callable[[], Any]]] = [
        (
            PolicyViolation,
            lambda: authority.sign(ADMIN, csr("spiffe://elsewhere/x"), None, validate_only=True),
        ),
        (InvalidRequest, lambda: authority.sign(ADMIN, "not a CSR", None, validate_only=True)),
        (
            InvalidRequest,
            lambda: authority.sign(ADMIN, csr(), dt.timedelta(days=400), validate_only=True),
        ),
    ]
    for error, real in refusals:
        with pytest.raises(error):
            real()
    signed(authority, csr(), None)  # the identity's one certificate of the window
    before = counts(url)
    with pytest.raises(LimitExceeded, match="identity_rate_limit"):
        authority.sign(ADMIN, csr(), None, validate_only=True)
    with pytest.raises(LimitExceeded):
        authority.sign(ADMIN, csr(), None)
    assert counts(url) == before


def test_validate_only_renewal_checks_and_revokes_nothing(
    authority: CertificateAuthority, store: Store, url: str
) -> None:
    key, request_pem = make_csr(uris=[WEB_ID], dns=("a.web.internal",))
    old = signed(authority, request_pem, None)
    caller = caller_of(authority, old)
    before = counts(url)
    preview = authority.renew(caller, make_csr()[1], None, revoke_previous=True, validate_only=True)
    assert isinstance(preview, Preview)
    assert (preview.identity, preview.dns_names) == (WEB_ID, ("a.web.internal",))
    assert preview.not_after == old.not_after
    assert store.get_status(old.serial).status == "good"  # type: ignore[union-attr]
    with pytest.raises(InvalidRequest, match="new key"):  # the current key
        authority.renew(caller, make_csr(key)[1], None, validate_only=True)
    assert counts(url) == before
