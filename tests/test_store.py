"""One store test suite for every implementation, each on a real database (a SQLite file, a
throwaway PostgreSQL cluster): round trips, atomic revocation with its audit event, keyset
paging, CRL numbers, the append-only audit trail, leases, the shared CRL, tokens and
concurrency. What only one of them has (SQLite's file, PostgreSQL's migrations under an
advisory lock) is tested in test_store_sqlite.py and test_store_postgres.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ca_server.core.renewal_window import RenewalWindow
from ca_server.core.revocation import Reason, RevokedEntry
from ca_server.core.store import (
    AuditEvent,
    CertificateRecord,
    DuplicateSerial,
    ListQuery,
    RevokeOutcome,
    SignedDocument,
    Store,
    TokenRecord,
)
from ca_server.store import open_store

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
ADMIN = "spiffe://signet.local/admin"


def record(
    serial: str,
    *,
    issued_at: dt.datetime = NOW,
    not_after: dt.datetime | None = None,
    identity: str = "spiffe://signet.local/web/a",
    **changes: object,
) -> CertificateRecord:
    base = CertificateRecord(
        serial=serial,
        identity=identity,
        dns_names=("a.web.internal",),
        ip_addresses=("10.0.0.1",),
        not_before=issued_at - dt.timedelta(minutes=1),
        not_after=not_after or issued_at + dt.timedelta(hours=24),
        fingerprint_sha256=hashlib.sha256(serial.encode()).hexdigest(),
        der=b"\x30\x03DER-" + serial.encode(),
        requested_by=ADMIN,
        issued_at=issued_at,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def issue_event(serial: str) -> AuditEvent:
    return AuditEvent(NOW, "issue", ADMIN, serial, "")


def raw(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ca.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, db_path: Path) -> str:
    """A new, empty database of each kind, as a store URL."""
    if request.param == "sqlite":
        return f"sqlite:///{db_path}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def opener(url: str) -> Callable[[], Store]:
    """Opens another store on the same database (another process, or a restart)."""
    return lambda: open_store(url)


@pytest.fixture
def store(opener: Callable[[], Store]) -> Iterator[Store]:
    s = opener()
    yield s
    s.close()


def raw_sql(url: str, statement: str) -> list[Any]:
    """Run a statement on the database directly, as another program would."""
    if url.startswith("sqlite:///"):
        with raw(Path(url.removeprefix("sqlite:///"))) as conn:
            return conn.execute(statement).fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        cursor = pg.execute(statement)
        return cursor.fetchall() if cursor.description else []


def all_pages(store: Store, limit: int, **filters: object) -> list[list[str]]:
    pages: list[list[str]] = []
    after = None
    while True:
        page = store.list_certificates(ListQuery(limit=limit, after=after, **filters))  # type: ignore[arg-type]
        if not page:
            return pages
        pages.append([r.serial for r in page])
        assert len(pages) <= 100, "paging does not terminate"
        last = page[-1]
        after = (int(last.issued_at.timestamp()), last.serial)


# -- certificates -------------------------------------------------------------------------------


def test_every_record_field_survives_a_round_trip(store: Store) -> None:
    good = record(
        "0a1b",
        dns_names=("a.web.internal", "b.web.internal"),
        ip_addresses=("10.0.0.1", "2001:db8::1"),
        der=bytes(range(256)),
    )
    revoked = record(
        "0c",
        dns_names=(),
        ip_addresses=(),
        status="revoked",
        revoked_at=NOW + dt.timedelta(minutes=5),
        reason=Reason.KEY_COMPROMISE,
        requested_by="spiffe://signet.local/web/b",
    )
    store.add_certificate(good, issue_event(good.serial))
    store.add_certificate(revoked, issue_event(revoked.serial))

    assert store.get_certificate("0a1b") == good
    assert store.get_certificate("0c") == revoked
    got = store.get_certificate("0c")
    assert got is not None
    assert got.reason is Reason.KEY_COMPROMISE
    assert got.not_after.tzinfo is not None and got.not_after.utcoffset() == dt.timedelta(0)


def test_get_certificate_of_an_unknown_serial_is_none(store: Store) -> None:
    assert store.get_certificate("ff") is None


def test_adding_an_existing_serial_raises_duplicate_serial_and_writes_nothing(
    store: Store,
) -> None:
    store.add_certificate(record("01"), issue_event("01"))
    duplicate = record(
        "01", identity="spiffe://signet.local/web/other", fingerprint_sha256="ab" * 32
    )
    with pytest.raises(DuplicateSerial):
        store.add_certificate(duplicate, issue_event("01"))
    assert store.get_certificate("01") == record("01")
    assert len(store.audit_events()) == 1  # the failed insert's audit event was rolled back


def test_adding_a_certificate_appends_its_audit_event(store: Store) -> None:
    event = AuditEvent(NOW, "issue", ADMIN, "02", "detail text")
    store.add_certificate(record("02"), event)
    assert store.audit_events() == [event]


# -- revocation ---------------------------------------------------------------------------------


def test_revoke_outcomes_revoked_then_already_revoked_then_not_found(store: Store) -> None:
    store.add_certificate(record("03"), issue_event("03"))
    at = NOW + dt.timedelta(hours=1)

    def event(serial: str) -> AuditEvent:
        return AuditEvent(at, "revoke", ADMIN, serial, "KEY_COMPROMISE")

    assert store.revoke("03", at, Reason.KEY_COMPROMISE, event("03")) is RevokeOutcome.REVOKED
    later = at + dt.timedelta(hours=1)
    outcome = store.revoke("03", later, Reason.SUPERSEDED, event("03"))
    assert outcome is RevokeOutcome.ALREADY_REVOKED
    assert store.revoke("ffff", at, Reason.SUPERSEDED, event("ffff")) is RevokeOutcome.NOT_FOUND

    got = store.get_certificate("03")
    assert got is not None
    assert (got.status, got.revoked_at, got.reason) == ("revoked", at, Reason.KEY_COMPROMISE)


def test_each_successful_revoke_appends_exactly_one_audit_event(store: Store) -> None:
    for serial in ("04", "05"):
        store.add_certificate(record(serial), issue_event(serial))
    at = NOW + dt.timedelta(hours=1)
    revoke_04 = AuditEvent(at, "revoke", ADMIN, "04", "SUPERSEDED")
    before = len(store.audit_events())

    store.revoke("04", at, Reason.SUPERSEDED, revoke_04)
    assert len(store.audit_events()) == before + 1
    assert store.audit_events(1) == [revoke_04]

    store.revoke("04", at, Reason.SUPERSEDED, replace(revoke_04, detail="again"))
    store.revoke("99", at, Reason.SUPERSEDED, replace(revoke_04, serial="99"))
    assert len(store.audit_events()) == before + 1  # failed revocations leave no trace

    store.revoke("05", at, Reason.SUPERSEDED, replace(revoke_04, serial="05"))
    assert len(store.audit_events()) == before + 2


# -- listing ------------------------------------------------------------------------------------


@pytest.fixture
def listed(store: Store) -> list[CertificateRecord]:
    """25 records: several share an issued_at second, inserted out of order; some revoked,
    some expiring soon."""
    records = []
    for i in range(25):
        issued = NOW + dt.timedelta(seconds=(i * 7) % 5)  # 5 distinct seconds, 5 records each
        serial = f"{(i * 37) % 101:04x}"
        not_after = issued + dt.timedelta(hours=1 if i % 3 == 0 else 48)
        records.append(record(serial, issued_at=issued, not_after=not_after))
    for r in records:
        store.add_certificate(r, issue_event(r.serial))
    at = NOW + dt.timedelta(minutes=10)
    revoked_serials = [r.serial for r in records[::4]]
    for serial in revoked_serials:
        store.revoke(serial, at, Reason.SUPERSEDED, AuditEvent(at, "revoke", ADMIN, serial))
    return [store.get_certificate(r.serial) for r in records]  # type: ignore[misc]


def ordered(records: list[CertificateRecord]) -> list[str]:
    """Newest last: by issued_at, ties in the order they were stored (records come in that
    order, and sorted() is stable), never by serial."""
    return [r.serial for r in sorted(records, key=lambda r: r.issued_at)]


@pytest.mark.parametrize("limit", [1, 4, 7, 25, 100])
def test_keyset_pages_return_every_record_once_newest_last_ties_as_stored(
    store: Store, listed: list[CertificateRecord], limit: int
) -> None:
    pages = all_pages(store, limit)
    assert all(len(p) <= limit for p in pages)
    assert all(len(p) == limit for p in pages[:-1])
    flat = [s for p in pages for s in p]
    assert flat == ordered(listed)
    assert len(set(flat)) == len(listed) == 25


def test_list_filters_by_status_across_pages(store: Store, listed: list[CertificateRecord]) -> None:
    revoked = [r for r in listed if r.status == "revoked"]
    good = [r for r in listed if r.status == "good"]
    assert revoked and good
    assert [s for p in all_pages(store, 2, status="revoked") for s in p] == ordered(revoked)
    assert [s for p in all_pages(store, 3, status="good") for s in p] == ordered(good)


def test_list_filters_by_expiring_before_across_pages(
    store: Store, listed: list[CertificateRecord]
) -> None:
    cutoff = NOW + dt.timedelta(hours=2)
    soon = [r for r in listed if r.not_after < cutoff]
    assert 0 < len(soon) < len(listed)
    assert [s for p in all_pages(store, 2, expiring_before=cutoff) for s in p] == ordered(soon)
    both = [r for r in soon if r.status == "revoked"]
    assert both
    pages = all_pages(store, 1, expiring_before=cutoff, status="revoked")
    assert [s for p in pages for s in p] == ordered(both)


# -- what a CRL lists ---------------------------------------------------------------------------


def test_revoked_unexpired_lists_only_revoked_certificates_still_valid(
    store: Store,
) -> None:
    now = NOW + dt.timedelta(hours=2)
    store.add_certificate(record("10"), issue_event("10"))  # good
    store.add_certificate(record("11"), issue_event("11"))  # revoked, valid until NOW+24h
    expired = record("12", not_after=NOW + dt.timedelta(hours=1))
    store.add_certificate(expired, issue_event("12"))  # revoked, expired before `now`
    at = NOW + dt.timedelta(minutes=30)
    for serial, reason in (("11", Reason.KEY_COMPROMISE), ("12", Reason.SUPERSEDED)):
        store.revoke(serial, at, reason, AuditEvent(at, "revoke", ADMIN, serial))

    assert store.revoked_unexpired(now) == [RevokedEntry(0x11, at, Reason.KEY_COMPROMISE)]
    before_expiry = NOW + dt.timedelta(minutes=45)
    assert [e.serial for e in store.revoked_unexpired(before_expiry)] == [0x11, 0x12]


# -- CRL numbers --------------------------------------------------------------------------------


def test_crl_numbers_increase_strictly_and_persist_across_reopening(
    opener: Callable[[], Store],
) -> None:
    first = opener()
    numbers = [first.next_crl_number() for _ in range(3)]
    first.close()
    second = opener()
    numbers += [second.next_crl_number() for _ in range(2)]
    second.close()
    assert numbers == [1, 2, 3, 4, 5]


# -- audit trail --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit SET actor = 'someone-else'",
        "DELETE FROM audit",
        "DELETE FROM audit WHERE action = 'init'",
    ],
)
def test_audit_table_refuses_raw_updates_and_deletes(
    store: Store, url: str, statement: str
) -> None:
    store.append_audit(AuditEvent(NOW, "init", "signet:init", None, "trust_domain=signet.local"))
    store.add_certificate(record("20"), issue_event("20"))
    before = store.audit_events()
    with pytest.raises(Exception, match="append-only"):
        raw_sql(url, statement)
    assert store.audit_events() == before


def test_append_audit_records_events_newest_first(store: Store) -> None:
    events = [AuditEvent(NOW + dt.timedelta(seconds=i), f"act{i}", ADMIN) for i in range(3)]
    for e in events:
        store.append_audit(e)
    assert store.audit_events() == events[::-1]
    assert store.audit_events(limit=2) == events[:0:-1]


# -- the database file --------------------------------------------------------------------------


def test_reopening_a_current_database_keeps_its_data(opener: Callable[[], Store]) -> None:
    first = opener()
    first.add_certificate(record("30"), issue_event("30"))
    first.close()
    second = opener()
    assert second.get_certificate("30") == record("30")
    second.close()


# -- concurrency --------------------------------------------------------------------------------


def test_concurrent_writers_from_many_threads_all_land(store: Store) -> None:
    threads, per_thread = 8, 25
    start = threading.Barrier(threads)

    def writer(t: int) -> None:
        start.wait(timeout=30)
        for i in range(per_thread):
            serial = f"{t:02x}{i:02x}"
            store.add_certificate(record(serial), issue_event(serial))

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(writer, t) for t in range(threads)]:
            future.result(timeout=60)

    everything = store.list_certificates(ListQuery(limit=10_000))
    expected = {f"{t:02x}{i:02x}" for t in range(threads) for i in range(per_thread)}
    assert {r.serial for r in everything} == expected
    assert len(everything) == threads * per_thread
    assert len(store.audit_events(limit=10_000)) == threads * per_thread


def test_a_second_store_on_the_same_database_sees_the_first_ones_writes(
    opener: Callable[[], Store],
) -> None:
    writer, reader = opener(), opener()
    try:
        assert reader.get_certificate("40") is None
        writer.add_certificate(record("40"), issue_event("40"))
        assert reader.get_certificate("40") == record("40")

        at = NOW + dt.timedelta(hours=1)
        outcome = reader.revoke("40", at, Reason.SUPERSEDED, AuditEvent(at, "revoke", ADMIN, "40"))
        assert outcome is RevokeOutcome.REVOKED
        seen = writer.get_certificate("40")
        assert seen is not None and seen.status == "revoked"
        assert writer.revoke("40", at, Reason.SUPERSEDED, issue_event("40")) is (
            RevokeOutcome.ALREADY_REVOKED
        )
        assert [writer.next_crl_number(), reader.next_crl_number()] == [1, 2]
    finally:
        writer.close()
        reader.close()


def test_revocation_events_are_gap_free_in_commit_order_across_stores(
    opener: Callable[[], Store],
) -> None:
    """Two stores (two processes, or replicas) revoking at once: one sequence, 1..n, each
    number the epoch after its change, every change once; releases are events too."""
    first, second = opener(), opener()
    try:
        serials = [f"e{n:03x}" for n in range(40)]
        for serial in serials:
            first.add_certificate(record(serial), issue_event(serial))
        at = NOW + dt.timedelta(hours=1)
        start = threading.Barrier(2)

        def revoke(store: Store, mine: list[str]) -> None:
            start.wait(timeout=30)
            for serial in mine:
                reason = Reason.CERTIFICATE_HOLD if serial == "e000" else Reason.SUPERSEDED
                assert store.revoke(serial, at, reason, AuditEvent(at, "revoke", ADMIN, serial))

        with ThreadPoolExecutor(2) as pool:
            done = [
                pool.submit(revoke, first, serials[::2]),
                pool.submit(revoke, second, serials[1::2]),
            ]
            for future in done:
                future.result(timeout=60)
        first.release_hold("e000", AuditEvent(at, "release-hold", ADMIN, "e000"))
        events = second.revocation_events(0, 1000)
        assert [e.sequence for e in events] == list(range(1, 42))
        assert second.revocation_epoch() == 41
        assert sorted(e.serial for e in events[:-1]) == serials
        assert (events[-1].serial, events[-1].kind) == ("e000", "released")
        held = next(e for e in events if e.serial == "e000" and e.kind == "revoked")
        assert (held.reason, held.revoked_at, held.at) == (Reason.CERTIFICATE_HOLD, at, at)
        assert [e.sequence for e in first.revocation_events(39, 1000)] == [40, 41]
        assert len(first.revocation_events(0, 5)) == 5
    finally:
        first.close()
        second.close()


def test_pruning_expired_certificates_drops_their_revocation_events(store: Store) -> None:
    at = NOW + dt.timedelta(minutes=1)
    store.add_certificate(record("f1", not_after=NOW + dt.timedelta(hours=1)), issue_event("f1"))
    store.add_certificate(record("f2", not_after=NOW + dt.timedelta(days=9)), issue_event("f2"))
    for serial in ("f1", "f2"):
        store.revoke(serial, at, Reason.SUPERSEDED, AuditEvent(at, "revoke", ADMIN, serial))
    assert store.prune_expired(NOW + dt.timedelta(days=1), 100) == 1
    assert [(e.sequence, e.serial) for e in store.revocation_events(0, 10)] == [(2, "f2")]


# -- leases and the shared CRL ------------------------------------------------------------------


def test_a_lease_has_one_holder_until_it_expires_or_is_released(store: Store) -> None:
    later = NOW + dt.timedelta(seconds=10)
    assert store.acquire_lease("maintenance", "a", later, NOW)
    assert not store.acquire_lease("maintenance", "b", later, NOW)
    assert store.acquire_lease("maintenance", "a", later + dt.timedelta(seconds=5), NOW)  # renewed
    assert not store.acquire_lease("maintenance", "b", later, later)  # the renewal counts
    after = later + dt.timedelta(seconds=6)
    assert store.acquire_lease("maintenance", "b", after + dt.timedelta(seconds=10), after)
    assert not store.acquire_lease("maintenance", "a", after + dt.timedelta(seconds=10), after)
    store.release_lease("maintenance", "a")  # not a's to release: nothing happens
    assert not store.acquire_lease("maintenance", "a", after + dt.timedelta(seconds=10), after)
    store.release_lease("maintenance", "b")
    assert store.acquire_lease("maintenance", "a", after + dt.timedelta(seconds=10), after)
    assert store.acquire_lease("other", "b", later, NOW)  # leases are independent


def test_the_latest_crl_is_shared_and_old_ones_are_dropped(store: Store, url: str) -> None:
    from ca_server.core.store import StoredCrl

    assert store.latest_crl() is None
    for n in (1, 2, 3):
        store.save_crl(StoredCrl(b"crl-%d" % n, n, NOW, NOW + dt.timedelta(hours=1), n * 10))
    latest = store.latest_crl()
    assert latest == StoredCrl(b"crl-3", 3, NOW, NOW + dt.timedelta(hours=1), 30)
    assert store.latest_crl(newer_than=3) is None
    assert store.latest_crl(newer_than=2) == latest
    assert [r[0] for r in raw_sql(url, "SELECT number FROM crls ORDER BY number")] == [2, 3]


def _token(hash_: str = "t1") -> TokenRecord:
    return TokenRecord(
        hash_, "spiffe://signet.local/web/a", ("a.web.internal",), (), dt.timedelta(hours=1),
        NOW + dt.timedelta(minutes=15), ADMIN, NOW,
    )  # fmt: skip


def test_a_token_is_spent_only_by_the_transaction_that_stores_its_certificate(
    store: Store,
) -> None:
    store.add_token(_token(), AuditEvent(NOW, "token-create", ADMIN))
    assert store.usable_token("t1", NOW) == _token()
    store.add_certificate(record("0a"), issue_event("0a"))
    with pytest.raises(DuplicateSerial):  # the certificate cannot be stored...
        store.add_enrolled_certificate(
            record("0a", fingerprint_sha256="other"), issue_event("0a"), "t1", NOW
        )
    assert store.usable_token("t1", NOW) is not None  # ...so the token is not spent
    assert store.add_enrolled_certificate(record("0b"), issue_event("0b"), "t1", NOW)
    assert store.usable_token("t1", NOW) is None
    assert not store.add_enrolled_certificate(record("0c"), issue_event("0c"), "t1", NOW)
    assert store.get_certificate("0c") is None  # a spent token buys nothing
    late = NOW + dt.timedelta(minutes=16)
    store.add_token(_token("t2"), AuditEvent(NOW, "token-create", ADMIN))
    assert store.usable_token("t2", late) is None
    assert not store.add_enrolled_certificate(record("0d"), issue_event("0d"), "t2", late)


def test_refused_enrollments_are_counted_per_peer_window_by_every_process(
    opener: Callable[[], Store],
) -> None:
    first, second = opener(), opener()
    window = dt.timedelta(minutes=1)
    try:
        counts = [
            (first if i % 2 else second).count_enroll_failure("ipv4:10.0.0.1", NOW, window)[0]
            for i in range(5)
        ]
        assert counts == [1, 2, 3, 4, 5]  # one count, whichever process refused
        assert first.count_enroll_failure("ipv4:10.0.0.2", NOW, window) == (1, NOW)  # per peer
        later = NOW + window + dt.timedelta(seconds=1)
        assert second.count_enroll_failure("ipv4:10.0.0.1", later, window) == (1, later)
        first.prune_enroll_failures(later)  # 10.0.0.2's window is over; 10.0.0.1's began now
        assert first.count_enroll_failure("ipv4:10.0.0.2", later, window) == (1, later)
        assert first.count_enroll_failure("ipv4:10.0.0.1", later, window) == (2, later)
    finally:
        first.close()
        second.close()


def test_signed_documents_are_kept_by_name_and_replaced_in_place(store: Store) -> None:
    when = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    first = SignedDocument("root-crl", b"\x30\x00", when, when + dt.timedelta(days=365))
    other = SignedDocument("intermediate-ocsp", b"\x30\x01", when, when + dt.timedelta(days=30))
    store.save_signed_documents([first, other])
    assert store.signed_documents() == [other, first]  # by name
    newer = SignedDocument("root-crl", b"\x30\x02", when + dt.timedelta(days=1), when)
    store.save_signed_documents([newer])
    assert store.signed_documents() == [other, newer]


def test_a_renewal_override_is_stored_for_good_certificates_with_its_audit_event(
    store: Store, opener: Callable[[], Store]
) -> None:
    for serial in ("a1", "a2", "a3"):
        store.add_certificate(record(serial), issue_event(serial))
    store.revoke("a3", NOW, Reason.KEY_COMPROMISE, AuditEvent(NOW, "revoke", ADMIN, "a3"))
    window = RenewalWindow(NOW - dt.timedelta(minutes=1), NOW)
    audit = AuditEvent(NOW, "renew-now", ADMIN, None, "identity=x: 3 certificates")
    # Many serials in one call go in chunks, in one transaction.
    serials = ["a1", "a3", *(f"{i:04x}" for i in range(1200))]
    assert store.override_renewal(serials, window, "https://example/why", audit) == 1
    got = store.get_certificate("a1")
    assert got is not None
    assert got.renewal_override == window
    assert got.renewal_explanation_url == "https://example/why"
    untouched = store.get_certificate("a2")
    assert untouched is not None and untouched.renewal_override is None
    revoked = store.get_certificate("a3")
    assert revoked is not None and revoked.renewal_override is None
    assert store.audit_events(1)[0].action == "renew-now"
    other = opener()  # another process sharing the database sees it at once
    try:
        seen = other.get_certificate("a1")
        assert seen is not None and seen.renewal_override == window
    finally:
        other.close()


# -- the CA's own certificates (rotation) ------------------------------------------------------


def _ca(serial: str, kind: str, state: str, kid: str, issuer: str, **changes: object) -> Any:
    from ca_server.core.store import CaCertificateRecord

    base = CaCertificateRecord(
        serial, kind, state, kid, issuer, b"\x30\x03" + serial.encode(),  # type: ignore[arg-type]
        NOW + dt.timedelta(days=365), NOW,
    )  # fmt: skip
    return replace(base, **changes)


def test_ca_certificates_are_kept_updated_and_each_change_moves_the_generation(
    store: Store, opener: Callable[[], Store]
) -> None:
    root = _ca("01", "root", "active", "r1", "r1")
    inter = _ca("02", "intermediate", "active", "i1", "r1")
    start = store.ca_generation()
    store.seed_ca_certificates([root, inter], "i1")
    seeded = store.ca_generation()
    assert seeded > start and list(store.ca_certificates()) == [root, inter]
    # Seeding again (another worker starting) keeps what is recorded, as recorded.
    store.save_ca_certificates([replace(inter, state="retiring")])
    store.seed_ca_certificates([root, inter], "i1")
    assert [r.state for r in store.ca_certificates()] == ["active", "retiring"]
    until = NOW + dt.timedelta(days=30)
    store.save_ca_certificates(
        [replace(root, state="retiring", overlap_until=until)],
        AuditEvent(NOW, "rotate-root", ADMIN, None, "new root"),
    )
    other = opener()  # another process, or a replica, sees the same
    try:
        assert other.ca_generation() > seeded
        assert other.ca_certificates()[0].overlap_until == until
        assert other.audit_events(1)[0].action == "rotate-root"
    finally:
        other.close()


def test_seeding_gives_issuerless_certificates_and_crls_their_intermediate(store: Store) -> None:
    from ca_server.core.store import StoredCrl

    store.add_certificate(record("aa"), issue_event("aa"))
    store.save_crl(StoredCrl(b"crl", 1, NOW, NOW + dt.timedelta(hours=1), 0))
    store.save_signed_documents([SignedDocument("root-crl", b"x", NOW, NOW)])
    store.seed_ca_certificates(
        [_ca("01", "root", "active", "r1", "r1")], "i1", [("root-crl", "root-crl:r1")]
    )
    assert store.get_status("aa").issuer == "i1"  # type: ignore[union-attr]
    assert store.latest_crl(issuer="i1") is not None
    assert [d.name for d in store.signed_documents()] == ["root-crl:r1"]


def test_each_issuer_has_its_own_crls_and_revocations(store: Store, url: str) -> None:
    from ca_server.core.store import StoredCrl

    hour = dt.timedelta(hours=1)
    store.add_certificate(record("a1", issuer="i1"), issue_event("a1"))
    store.add_certificate(record("b1", issuer="i2"), issue_event("b1"))
    for serial in ("a1", "b1"):
        store.revoke(serial, NOW, Reason.KEY_COMPROMISE, issue_event(serial))
    assert [e.serial for e in store.revoked_unexpired(NOW, "i1")] == [0xA1]
    assert [e.serial for e in store.revoked_unexpired(NOW, "i2")] == [0xB1]
    assert len(store.revoked_unexpired(NOW)) == 2
    for number, issuer in ((1, "i1"), (2, "i2"), (3, "i1"), (4, "i1")):
        store.save_crl(StoredCrl(b"crl-%d" % number, number, NOW, NOW + hour, 0, issuer))
    assert store.latest_crl(issuer="i1").number == 4  # type: ignore[union-attr]
    assert store.latest_crl(issuer="i2").number == 2  # type: ignore[union-attr]
    assert store.latest_crl(newer_than=2, issuer="i2") is None
    assert store.latest_crl().number == 4  # type: ignore[union-attr]
    # Pruning keeps each issuer's latest two.
    kept = raw_sql(url, "SELECT number, issuer FROM crls ORDER BY number")
    assert [tuple(r) for r in kept] == [(2, "i2"), (3, "i1"), (4, "i1")]
    assert store.unexpired_issued_by("i1", NOW) == 1
    assert store.unexpired_issued_by("i1", NOW + dt.timedelta(days=2)) == 0
    assert store.get_certificate("b1").issuer == "i2"  # type: ignore[union-attr]
