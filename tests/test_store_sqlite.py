"""What only the SQLite store has: its file (WAL, the schema version in user_version, a fresh
file opened by several processes at once). Everything else: test_store.py, for every store."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest

from ca_server.core.revocation import Reason
from ca_server.core.store import AuditEvent
from ca_server.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.test_store import db_path, issue_event, raw, record  # noqa: F401 - fixture


@pytest.fixture
def store(db_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(db_path)
    yield s
    s.close()


def test_database_uses_wal_journal_mode(store: SqliteStore, db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_user_version_is_the_schema_version(store: SqliteStore, db_path: Path) -> None:
    assert SCHEMA_VERSION >= 1
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_opening_a_database_from_a_newer_schema_fails_clearly(
    store: SqliteStore, db_path: Path
) -> None:
    store.close()
    with raw(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match=r"newer than this Signet understands.*upgrade Signet"):
        SqliteStore(db_path)
    with raw(db_path) as conn:  # and it was left as it was
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_opening_a_fresh_database_waits_for_a_concurrent_writer_instead_of_failing(
    db_path: Path,
) -> None:
    db_path.parent.mkdir(parents=True)
    with raw(db_path) as other:  # another opener, midway through creating the file
        other.execute("BEGIN IMMEDIATE")
        other.execute("CREATE TABLE other_tool (x)")
        with ThreadPoolExecutor(1) as pool:
            opening = pool.submit(SqliteStore, db_path)
            # A store that honours busy_timeout is still waiting for the lock here; the bug
            # shows as an immediate "database is locked".
            wait([opening], timeout=1)
            other.execute("COMMIT")
            store = opening.result(timeout=60)
    try:
        store.add_certificate(record("50"), issue_event("50"))
        assert store.get_certificate("50") == record("50")
    finally:
        store.close()


def test_an_audit_trail_from_before_the_hash_chain_is_kept_and_sealed(db_path: Path) -> None:
    import sqlite_utils

    from ca_server.core.audit_chain import seal_pending, verify_store
    from ca_server.store.sqlite import MIGRATIONS

    db_path.parent.mkdir(parents=True)
    old = sqlite_utils.Database(db_path)
    for step in MIGRATIONS[:10]:  # schema v10: audit rows without peer, outcome or hashes
        step(old)
    old.execute("PRAGMA user_version = 10")
    old.execute("INSERT INTO audit (at, action, actor, detail) VALUES (1, 'init', 'signet', '')")
    old.conn.commit()
    old.close()
    store = SqliteStore(db_path)
    try:
        assert seal_pending(store) == 1
        [row] = store.sealed_audit(0, 10)
        assert (row.action, row.peer, row.outcome, row.seq) == ("init", "", "ok", 1)
        assert verify_store(store).ok
    finally:
        store.close()


def test_certificates_revoked_before_events_were_kept_get_events_up_to_the_epoch(
    db_path: Path,
) -> None:
    import sqlite_utils

    from ca_server.store.sqlite import MIGRATIONS

    db_path.parent.mkdir(parents=True)
    old = sqlite_utils.Database(db_path)
    for step in MIGRATIONS[:13]:  # schema v13: no revocation_events
        step(old)
    old.execute("PRAGMA user_version = 13")
    for serial, revoked_at in (("b2", 200), ("a1", 100)):
        old.execute(
            "INSERT INTO certificates (serial, identity, not_before, not_after, status, "
            "revoked_at, reason, fingerprint_sha256, der) "
            "VALUES (?, 'spiffe://signet.local/x', 0, 9999999999, 'revoked', ?, 1, ?, x'00')",
            [serial, revoked_at, serial],
        )
    old.execute("UPDATE meta SET value = '3' WHERE key = 'revocations'")  # and one release
    old.conn.commit()
    old.close()
    store = SqliteStore(db_path)
    try:
        events = store.revocation_events(0, 10)
        assert [(e.sequence, e.serial, e.kind) for e in events] == [
            (2, "a1", "revoked"),
            (3, "b2", "revoked"),
        ]
        store.add_certificate(record("c3"), issue_event("c3"))
        at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
        store.revoke("c3", at, Reason.SUPERSEDED, AuditEvent(at, "revoke", "admin", "c3"))
        assert [e.sequence for e in store.revocation_events(3, 10)] == [4]
    finally:
        store.close()
