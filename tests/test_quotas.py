"""Quotas and retention: per identity, at most so many certificates issued in a window and so
many live at once, exactly (in the storing transaction, also across processes), refused with
RESOURCE_EXHAUSTED and a RetryInfo saying when; certificates expired longer than the retention
period leave the store, their audit events stay."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ca_server.core.authority import CertificateAuthority
from ca_server.core.clock import FakeClock
from ca_server.core.errors import LimitExceeded
from ca_server.core.revocation import Reason
from ca_server.core.store import Quota, QuotaExceeded, Store
from ca_server.maintenance import Maintenance
from ca_server.store.sqlite import SqliteStore
from tests.conftest import start_ca, stop_ca
from tests.errdetails import assert_refused
from tests.pki import make_csr, spiffe
from tests.test_authority import ADMIN, START, WEB_ID, issue, make_pki
from tests.test_responder import make
from tests.test_store import (  # noqa: F401 - fixtures: a store of each kind
    db_path,
    issue_event,
    opener,
    record,
    store,
    url,
)

HOUR = dt.timedelta(hours=1)
STORE_NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki():  # type: ignore[no-untyped-def]
    return make_pki()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "ca.db")
    yield s
    s.close()


def _ca(pki, sqlite: SqliteStore, clock: FakeClock, **settings: object) -> CertificateAuthority:  # type: ignore[no-untyped-def]
    return make(pki, sqlite, clock, **settings)


def test_an_identity_gets_at_most_the_rate_limit_per_window(pki, sqlite, clock) -> None:  # type: ignore[no-untyped-def]
    ca = _ca(pki, sqlite, clock, identity_rate_limit=3, identity_rate_window=HOUR)
    for _ in range(3):
        issue(ca)
        clock.advance(dt.timedelta(minutes=10))
    with pytest.raises(LimitExceeded, match=r"3 certificates were issued for .* within 1h") as info:
        issue(ca)
    # The oldest of the window (issued at START) leaves it at START + 1h: 30 minutes from now.
    assert info.value.retry_after == pytest.approx(30 * 60)
    issue(ca, spiffe("web/other"))  # other identities are not held back
    clock.advance(dt.timedelta(minutes=30))
    issue(ca)


def test_an_identity_holds_at_most_the_live_limit(pki, sqlite, clock) -> None:  # type: ignore[no-untyped-def]
    ca = _ca(pki, sqlite, clock, identity_live_limit=2, identity_rate_limit=0)
    first, _ = issue(ca), issue(ca)
    with pytest.raises(LimitExceeded, match="holds 2 unrevoked, unexpired certificates") as info:
        issue(ca)
    assert info.value.reason == "IDENTITY_LIVE_LIMIT" and info.value.retry_after
    ca.revoke(ADMIN, first.serial, Reason.SUPERSEDED)
    issue(ca)  # a revoked one no longer counts


def test_the_cas_own_certificates_are_not_limited(pki, sqlite, clock) -> None:  # type: ignore[no-untyped-def]
    from ca_server.core.keys import generate_key

    ca = _ca(pki, sqlite, clock, identity_rate_limit=1, identity_live_limit=1)
    for _ in range(3):
        ca.issue_for(
            public_key=generate_key("ec-p256").public_key(),
            identity=spiffe("signet/server"),
            lifetime=HOUR,
            actor="signet:ca",
            action="issue-server",
        )


def test_a_quota_refusal_at_enroll_leaves_the_token_usable(pki, sqlite, clock) -> None:  # type: ignore[no-untyped-def]
    ca = _ca(pki, sqlite, clock, identity_live_limit=1, identity_rate_limit=0)
    issue(ca)
    token, _ = ca.create_token(ADMIN, WEB_ID, [], [], None, None)
    with pytest.raises(LimitExceeded, match="identity_live_limit"):
        ca.enroll(token, make_csr(uris=[WEB_ID])[1], "ipv4:127.0.0.1:1")
    assert sqlite.usable_token(
        __import__("ca_server.core.bootstrap", fromlist=["x"]).token_hash(token), clock.now()
    )


def test_concurrent_issuance_stops_exactly_at_the_limit(store: Store) -> None:
    now = STORE_NOW  # when test_store's records are issued
    quota = Quota(now - HOUR, 5, now, 0)
    stored, refused = [], []

    def one(i: int) -> None:
        serial = f"{0xA000 + i:x}"
        try:
            store.add_certificate(record(serial), issue_event(serial), quota)
            stored.append(serial)
        except QuotaExceeded:
            refused.append(serial)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(stored) == 5 and len(refused) == 15


def test_expired_certificates_leave_the_store_after_the_retention_period(
    pki, sqlite, clock
) -> None:  # type: ignore[no-untyped-def]
    ca = _ca(pki, sqlite, clock, retain_expired=dt.timedelta(days=1))
    old = issue(ca, validity=HOUR)
    recent = issue(ca, validity=dt.timedelta(days=2))
    clock.advance(dt.timedelta(days=1, hours=2))  # old: expired 25 h ago; recent: still valid
    maintenance = Maintenance(ca)
    maintenance._prune_expired()
    assert sqlite.get_certificate(old.serial) is None
    assert sqlite.get_certificate(recent.serial) is not None
    assert any(e.serial == old.serial for e in sqlite.audit_events(100))  # the trail stays
    assert ca.status(old.serial).answer.status.value == "unknown"


def test_retention_off_keeps_everything(pki, sqlite, clock) -> None:  # type: ignore[no-untyped-def]
    ca = _ca(pki, sqlite, clock, retain_expired=None)
    old = issue(ca, validity=HOUR)
    clock.advance(dt.timedelta(days=400))
    Maintenance(ca)._prune_expired()
    assert sqlite.get_certificate(old.serial) is not None


# -- over gRPC: RESOURCE_EXHAUSTED with a RetryInfo ---------------------------------------------


def test_over_the_rate_limit_is_resource_exhausted_with_retry_info(tmp_path: Path) -> None:
    data = tmp_path / "ca-data"
    ca = start_ca(data)
    try:
        config = data / "config.toml"
        stop_ca(ca)
        text = config.read_text().replace("identity_rate_limit = 1000", "identity_rate_limit = 2")
        config.write_text(text)
        ca = start_ca(data)
        ca.issue("web/limited")
        ca.issue("web/limited")
        with pytest.raises(grpc.RpcError) as info:
            ca.issue("web/limited")
        assert "identity_rate_limit" in (info.value.details() or "")
        got = assert_refused(
            info.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "IDENTITY_RATE_LIMITED"
        )
        assert got.metadata["identity"] == "spiffe://signet.local/web/limited"
        assert got.retry_seconds is not None and 3000 < got.retry_seconds <= 3600

    finally:
        stop_ca(ca)


def test_the_limits_and_retention_come_from_config_toml(tmp_path: Path) -> None:
    from ca_server.config import load_config
    from ca_server.core.errors import ConfigurationError

    (tmp_path / "config.toml").write_text(
        '[issuance]\nidentity_rate_limit = 0\nidentity_live_limit = 7\nretain_expired = "off"\n'
        'identity_rate_window = "10m"\n'
    )
    issuance = load_config(tmp_path, env={}).issuance
    assert (issuance.identity_rate_limit, issuance.identity_live_limit) == (0, 7)
    assert issuance.retain_expired is None and issuance.identity_rate_window == 10 * 60 * (
        dt.timedelta(seconds=1)
    )
    (tmp_path / "config.toml").write_text("[issuance]\nidentity_live_limit = -1\n")
    with pytest.raises(ConfigurationError, match="identity_live_limit: -1 is not a whole number"):
        load_config(tmp_path, env={})
