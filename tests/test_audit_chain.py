"""The audit trail's hash chain: rows are sealed in order after they are written, the store
lets a row be sealed once and never changed, and verification names the first row that was
edited, deleted or reordered (from the store, and with `ca-server audit verify`)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ca_server.core.audit_chain import seal, seal_pending, verify, verify_store
from ca_server.core.store import AuditEvent, AuditQuery, AuditRecord, Store
from ca_server.datadir import init_ca
from ca_server.store import open_store
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer
from tests.pki import TRUST_DOMAIN
from tests.test_cli import _run
from tests.test_store import raw_sql

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def _rows(n: int) -> list[AuditRecord]:
    return [
        AuditRecord(i, NOW, "issue", "spiffe://signet.local/admin", f"{i:02x}", "", "ipv4:1", "ok")
        for i in range(1, n + 1)
    ]


def _sealed(n: int) -> list[AuditRecord]:
    rows = _rows(n)
    return [
        dataclasses.replace(r, seq=s.seq, prev_hash=s.prev_hash, hash=s.hash)
        for r, s in zip(rows, seal(rows, 0, "0" * 64), strict=True)
    ]


def test_a_sealed_chain_verifies_and_reports_its_head() -> None:
    rows = _sealed(5)
    verdict = verify(rows)
    assert verdict.ok and verdict.sealed == 5
    assert (verdict.head_seq, verdict.head_hash) == (5, rows[-1].hash)


def test_an_edited_row_is_named() -> None:
    rows = _sealed(5)
    rows[2] = dataclasses.replace(rows[2], actor="spiffe://signet.local/someone-else")
    verdict = verify(rows)
    assert not verdict.ok and verdict.first_bad == rows[2] and verdict.sealed == 2
    assert "hash" in verdict.problem


def test_a_deleted_row_is_named_by_the_one_after_it() -> None:
    rows = _sealed(5)
    del rows[1]
    verdict = verify(rows)
    assert not verdict.ok and verdict.first_bad is not None and verdict.first_bad.id == 3


def test_two_rows_swapped_are_caught() -> None:
    rows = _sealed(5)
    a, b = rows[1], rows[2]
    rows[1] = dataclasses.replace(b, seq=a.seq, prev_hash=a.prev_hash, hash=a.hash)
    rows[2] = dataclasses.replace(a, seq=b.seq, prev_hash=b.prev_hash, hash=b.hash)
    verdict = verify(rows)
    assert not verdict.ok and verdict.first_bad is not None and verdict.first_bad.id == 3


def test_every_field_and_the_position_are_covered() -> None:
    row = _sealed(1)[0]
    for change in (
        {"at": NOW + dt.timedelta(seconds=1)},
        {"action": "revoke"},
        {"serial": "ff"},
        {"detail": "x"},
        {"peer": "ipv4:2"},
        {"outcome": "refused"},
        {"id": 9},
    ):
        assert not verify([dataclasses.replace(row, **change)]).ok, change  # type: ignore[arg-type]


# -- in the store (SQLite and PostgreSQL) ---------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ca.db'}"
    return str(request.getfixturevalue("pg_cluster").new_database())


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    yield s
    s.close()


def _append(store: Store, n: int) -> None:
    for i in range(n):
        store.append_audit(AuditEvent(NOW, "init", "signet:test", None, f"event {i}", "p", "ok"))


def test_rows_are_sealed_in_order_and_verify(store: Store) -> None:
    _append(store, 7)
    assert seal_pending(store, batch=3) == 3
    assert seal_pending(store, batch=100) == 4
    assert seal_pending(store) == 0
    verdict = verify_store(store, page=2)  # several pages
    assert verdict.ok and verdict.sealed == 7
    assert [r.seq for r in store.sealed_audit(0, 100)] == list(range(1, 8))


def test_a_second_sealer_with_a_stale_head_seals_nothing(store: Store) -> None:
    _append(store, 2)
    rows = store.unsealed_audit(10)
    seals = seal(rows, 0, "0" * 64)
    assert store.seal_audit(seals[:1], 0) == 1
    assert store.seal_audit(seals[1:], 0) == 0  # the head moved: void
    assert store.seal_audit(seals[:1], 1) == 0  # already sealed: never twice
    assert verify_store(store).ok


def test_the_store_refuses_to_change_a_sealed_row(store: Store, url: str) -> None:
    _append(store, 2)
    seal_pending(store)
    for statement in (
        "UPDATE audit SET detail = 'forged' WHERE seq = 1",
        "UPDATE audit SET hash = NULL WHERE seq = 1",
        "DELETE FROM audit WHERE seq = 2",
    ):
        with pytest.raises(Exception, match="append-only"):
            raw_sql(url, statement)
    _append(store, 1)
    with pytest.raises(Exception, match="append-only"):  # unsealed: only the seal may be set
        raw_sql(url, "UPDATE audit SET detail = 'forged' WHERE hash IS NULL")


def _forge(db: Path, statement: str, *params: object) -> None:
    """What someone with write access to the file can do: drop the guard, then edit."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_seal_only")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        conn.execute(statement, params)
        conn.commit()


def test_audit_verify_names_the_first_forged_event(tmp_path: Path) -> None:
    data = tmp_path / "ca-data"
    init_ca(data, trust_domain=TRUST_DOMAIN, key_type="ec-p256")
    store = open_store(f"sqlite:///{data / 'ca.db'}")
    try:
        _append(store, 5)
        seal_pending(store)
        ids = [r.id for r in store.sealed_audit(0, 100)]
    finally:
        store.close()
    ok = _run("audit", "verify", "--data-dir", data, cwd=tmp_path)
    assert ok.returncode == 0 and "audit chain OK" in ok.stdout, ok
    _forge(data / "ca.db", "UPDATE audit SET actor = 'spiffe://x/y' WHERE id = ?", ids[3])
    bad = _run("audit", "verify", "--data-dir", data, cwd=tmp_path)
    assert bad.returncode == 1, bad
    assert f"BROKEN at event {ids[3]}" in bad.stderr and "hash does not match" in bad.stderr


# -- ListAuditEvents ----------------------------------------------------------------------------


def test_list_audit_events_shows_who_from_where_and_pages(own_ca: CaServer, own_admin) -> None:
    issued = own_ca.issue("web/audited")
    seal_pending(own_ca.store)
    page = own_admin.ListAuditEvents(
        ca_pb2.ListAuditEventsRequest(serial_number=issued.serial.upper()), timeout=30
    )
    [event] = page.events
    assert (event.action, event.actor, event.outcome) == (
        "issue",
        "spiffe://signet.local/admin",
        "ok",
    )
    assert event.peer.startswith("ipv4:127.0.0.1:") and event.serial_number == issued.serial
    assert event.chain_position > 0 and len(event.hash) == 64
    first = own_admin.ListAuditEvents(ca_pb2.ListAuditEventsRequest(page_size=2), timeout=30)
    assert len(first.events) == 2 and first.next_page_token
    second = own_admin.ListAuditEvents(
        ca_pb2.ListAuditEventsRequest(page_size=2, page_token=first.next_page_token), timeout=30
    )
    assert second.events[0].sequence > first.events[-1].sequence
    issues = own_admin.ListAuditEvents(ca_pb2.ListAuditEventsRequest(action="issue"), timeout=30)
    assert {e.action for e in issues.events} == {"issue"}


@pytest.mark.parametrize(
    "token", ["garbage!", "YXVkaXQ6LTE", "W1tbW1tbW1tbXV1dXV1dXV1d", "A" * 500]
)
def test_a_page_token_not_from_the_server_is_invalid_argument(admin, token: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        admin.ListAuditEvents(ca_pb2.ListAuditEventsRequest(page_token=token), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_workload_may_not_read_the_audit_trail(ca: CaServer, tmp_path: Path) -> None:
    workload = ca.issue("web/curious")
    cert, key = workload.write(tmp_path / "w")
    with (
        ca.channel(cert.read_bytes(), key.read_bytes()) as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        ca.stub(ch).ListAuditEvents(ca_pb2.ListAuditEventsRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_running_server_seals_new_events_within_a_few_polls(ca: CaServer, admin) -> None:
    issued = ca.issue("web/sealed-by-the-server")
    request = ca_pb2.ListAuditEventsRequest(serial_number=issued.serial)
    deadline = time.monotonic() + 10  # the maintenance thread seals every 250 ms poll
    while not admin.ListAuditEvents(request, timeout=30).events[0].hash:
        assert time.monotonic() < deadline, "the server did not seal the event"
        time.sleep(0.05)
    assert verify_store(ca.store).ok


def test_a_configuration_change_at_start_up_is_audited_with_what_changed(tmp_path: Path) -> None:
    from tests.conftest import start_ca, stop_ca

    def configs(ca: CaServer) -> list[dict[str, object]]:
        events = ca.store.audit_records(AuditQuery(action="config", limit=100))
        return [json.loads(e.detail) for e in events]

    data = tmp_path / "ca-data"
    first = start_ca(data)
    try:
        [initial] = configs(first)
        assert "issuance.max_validity" in initial["changed"]  # type: ignore[operator]
        assert "policy.workloads" in initial["changed"]  # type: ignore[operator]
    finally:
        stop_ca(first)
    again = start_ca(data)  # same settings: nothing new
    try:
        assert len(configs(again)) == 1
    finally:
        stop_ca(again)
    config = data / "config.toml"
    config.write_text(config.read_text().replace('max_validity = "30d"', 'max_validity = "7d"'))
    changed = start_ca(data)
    try:
        latest = configs(changed)[-1]
        assert latest["changed"] == ["issuance.max_validity"]
        assert latest["settings"]["issuance.max_validity"] == "7d"  # type: ignore[index]
    finally:
        stop_ca(changed)
