"""Group commit: concurrent writes share one transaction, each caller answers only after the
commit holding its rows, one failing job does not sink its batch, and a full queue or a
database that cannot be written is UNAVAILABLE quickly and recovers by itself."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ca_server.core.errors import Unavailable
from ca_server.store import DuplicateSerial, ListQuery
from ca_server.store.sqlite import SqliteStore
from ca_server.store.writer import GroupCommitWriter, SqliteWriteConnection
from tests.test_store import issue_event, raw, record


@pytest.fixture
def batches() -> list[int]:
    return []


@pytest.fixture
def store(tmp_path: Path, batches: list[int]) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "ca.db", on_batch=batches.append)
    yield s
    s.close()


def hold_writer(store: SqliteStore) -> tuple[threading.Event, threading.Thread]:
    """Occupy the writer thread with a job that waits for the returned event; meanwhile other
    writes can only queue. Returns once the writer is inside the job."""
    inside, release = threading.Event(), threading.Event()

    def job(conn: sqlite3.Connection) -> None:
        inside.set()
        release.wait(30)

    thread = threading.Thread(target=store._write, args=(job,))
    thread.start()
    assert inside.wait(10)
    return release, thread


def test_writes_that_queue_together_commit_in_one_transaction(
    store: SqliteStore, batches: list[int]
) -> None:
    release, holder = hold_writer(store)
    n = 40
    with ThreadPoolExecutor(n) as pool:
        futures = [
            pool.submit(store.add_certificate, record(f"{i:04x}"), issue_event(f"{i:04x}"))
            for i in range(n)
        ]
        while store._writer._queue.qsize() < n:  # every write is queued behind the holder
            threading.Event().wait(0.001)
        release.set()
        for f in futures:
            f.result(timeout=30)
    holder.join(10)
    assert batches[0] == 1  # the holder alone
    assert batches[1:] == [n]  # then all forty, one fsync
    assert len(store.list_certificates(ListQuery(limit=1000))) == n


def test_an_answered_write_is_already_committed_for_every_other_connection(
    store: SqliteStore, tmp_path: Path
) -> None:
    for i in range(20):
        serial = f"{i:04x}"
        store.add_certificate(record(serial), issue_event(serial))
        with raw(tmp_path / "ca.db") as other:
            row = other.execute("SELECT 1 FROM certificates WHERE serial = ?", [serial])
            assert row.fetchone() == (1,)


def test_a_failing_write_is_rolled_back_alone_and_its_batch_commits(
    store: SqliteStore, batches: list[int]
) -> None:
    store.add_certificate(record("0bad"), issue_event("0bad"))
    release, holder = hold_writer(store)
    serials = ["0001", "0bad", "0002"]  # the middle one is a duplicate
    records = [record(s, fingerprint_sha256=f"fp-{i}") for i, s in enumerate(serials)]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(store.add_certificate, r, issue_event(r.serial)) for r in records]
        while store._writer._queue.qsize() < 3:
            threading.Event().wait(0.001)
        release.set()
        results = [f.exception(timeout=30) for f in futures]
    holder.join(10)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], DuplicateSerial)
    assert batches[-1] == 3
    stored = {r.serial for r in store.list_certificates(ListQuery(limit=10))}
    assert stored == {"0001", "0002", "0bad"}
    assert len(store.audit_events(limit=10)) == 3  # the duplicate's audit row was rolled back too


def test_a_job_that_fails_after_writing_leaves_nothing_behind(store: SqliteStore) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        store._append_audit(conn, issue_event("0001"))
        raise ValueError("changed its mind")

    release, holder = hold_writer(store)
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(store._write, half_then_fail)
        good = pool.submit(store.add_certificate, record("0002"), issue_event("0002"))
        while store._writer._queue.qsize() < 2:
            threading.Event().wait(0.001)
        release.set()
        assert isinstance(bad.exception(timeout=30), ValueError)
        assert good.result(timeout=30) is None
    holder.join(10)
    assert [e.serial for e in store.audit_events(limit=10)] == ["0002"]


def test_a_database_failure_during_a_batch_fails_every_write_in_it_and_keeps_none(
    store: SqliteStore,
) -> None:
    release, holder = hold_writer(store)

    def broken(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(store.add_certificate, record("0001"), issue_event("0001"))
        while store._writer._queue.qsize() < 1:
            threading.Event().wait(0.001)
        bad = pool.submit(store._write, broken)
        while store._writer._queue.qsize() < 2:
            threading.Event().wait(0.001)
        release.set()
        errors = [good.exception(timeout=30), bad.exception(timeout=30)]
    holder.join(10)
    assert all(isinstance(e, Unavailable) for e in errors), errors
    assert store.get_certificate("0001") is None  # nothing half-written
    store.add_certificate(record("0002"), issue_event("0002"))  # and the writer carries on
    assert store.get_certificate("0002") is not None


def test_a_full_queue_is_unavailable_at_once(tmp_path: Path) -> None:
    conn_path = tmp_path / "w.db"

    def connect() -> SqliteWriteConnection:
        return SqliteWriteConnection(
            sqlite3.connect(conn_path, isolation_level=None, check_same_thread=False)
        )

    writer = GroupCommitWriter(connect, max_queue=2)
    inside, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        inside.set()
        release.wait(30)

    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(writer.submit, hold)
            assert inside.wait(10)
            queued = [pool.submit(writer.submit, lambda c: 1) for _ in range(2)]
            while writer._queue.qsize() < 2:
                threading.Event().wait(0.001)
            with pytest.raises(Unavailable, match="write queue is full"):
                writer.submit(lambda c: 1)
            release.set()
            assert first.result(30) is None and [q.result(30) for q in queued] == [1, 1]
    finally:
        release.set()
        writer.close()


def test_a_database_locked_by_another_process_is_unavailable_then_recovers(
    store: SqliteStore, tmp_path: Path
) -> None:
    with raw(tmp_path / "ca.db") as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(Unavailable, match="locked"):
            store.add_certificate(record("0001"), issue_event("0001"))
        other.execute("ROLLBACK")
    store.add_certificate(record("0001"), issue_event("0001"))
    assert store.get_certificate("0001") is not None


def test_a_connection_that_cannot_write_is_replaced_once_the_fault_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    with raw(path) as setup:
        setup.execute("CREATE TABLE t (x)")
    read_only = [True]  # the file was read-only when the writer connected

    def connect() -> SqliteWriteConnection:
        mode = "ro" if read_only[0] else "rw"
        uri = f"file:{path}?mode={mode}"
        return SqliteWriteConnection(
            sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        )

    writer = GroupCommitWriter(connect)
    try:
        with pytest.raises(Unavailable, match="read-only"):
            writer.submit(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        read_only[0] = False  # the operator fixed it: no restart needed
        writer.submit(lambda c: c.execute("INSERT INTO t VALUES (2)"))
    finally:
        writer.close()
    with raw(path) as check:
        assert check.execute("SELECT x FROM t").fetchall() == [(2,)]


def test_the_writer_outlives_a_job_that_raises_anything(store: SqliteStore) -> None:
    def fatal(conn: sqlite3.Connection) -> None:
        store._append_audit(conn, issue_event("0001"))
        raise SystemExit("not an Exception")

    with pytest.raises(Unavailable) as err:
        store._write(fatal)
    # What failed is in the CA's log, not quoted to the caller.
    assert str(err.value) == "the database write failed; the CA's log has the details"
    store.add_certificate(record("0002"), issue_event("0002"))  # the thread still writes
    assert [e.serial for e in store.audit_events(limit=10)] == ["0002"]  # nothing half-done
