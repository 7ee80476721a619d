"""What only the PostgreSQL store has: migrations that run once however many replicas start
together, refusing a newer schema, and a database that goes away and comes back. Everything
else: test_store.py, for every store."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ca_server.core.errors import ConfigurationError, Unavailable
from ca_server.store.postgres import SCHEMA_VERSION, PostgresStore
from signet.ca.v1 import ca_pb2
from tests.conftest import start_ca, stop_ca
from tests.pg import PgCluster
from tests.pki import make_csr, spiffe
from tests.test_store import issue_event, record


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: PostgresStore(pg_url), range(6)))
    try:
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT version FROM signet_schema").fetchall() == [
                (SCHEMA_VERSION,)
            ]
            meta = conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        assert meta == [("ca_generation", "0"), ("crl_number", "0"), ("revocations", "0")]
        stores[0].add_certificate(record("01"), issue_event("01"))
        assert all(s.get_certificate("01") == record("01") for s in stores)
    finally:
        for s in stores:
            s.close()


def test_a_database_with_a_newer_schema_is_refused_and_left_alone(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE signet_schema SET version = %s", [SCHEMA_VERSION + 1])
    with pytest.raises(ConfigurationError, match=r"newer than this Signet understands"):
        PostgresStore(pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM signet_schema").fetchone() == (SCHEMA_VERSION + 1,)


def test_an_unreachable_database_is_a_clear_error_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="cannot reach the database") as info:
        PostgresStore("postgresql://signet:secret@127.0.0.1:1/signet")
    assert "secret" not in str(info.value)  # no password in messages
    assert time.monotonic() - started < 30


def test_a_database_that_goes_away_is_unavailable_then_recovers(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    store = PostgresStore(pg_url)
    try:
        store.add_certificate(record("01"), issue_event("01"))
        pg_cluster.stop()
        try:
            with pytest.raises(Unavailable, match="cannot be reached"):
                store.get_certificate("01")
            with pytest.raises(Unavailable, match="cannot be reached"):
                store.add_certificate(record("02"), issue_event("02"))
        finally:
            pg_cluster.start()
        deadline = time.monotonic() + 30
        while True:  # the pool replaces its broken connections by itself
            try:
                assert store.get_certificate("01") == record("01")
                break
            except Unavailable:
                assert time.monotonic() < deadline, "the store did not recover"
                time.sleep(0.1)
        store.add_certificate(record("02"), issue_event("02"))
        assert store.get_certificate("02") == record("02")
    finally:
        store.close()


def test_a_server_whose_database_goes_away_says_not_serving_then_recovers(
    pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    ca = start_ca(tmp_path / "ca-data", store_url=pg_url)
    try:
        with ca.admin_channel() as channel:
            stub, health = ca.stub(channel), health_pb2_grpc.HealthStub(channel)
            csr = ca_pb2.SignCertificateRequest(csr_pem=make_csr(uris=[spiffe("pg/1")])[1])
            stub.SignCertificate(csr, timeout=10)
            pg_cluster.stop()
            try:
                _until(health, health_pb2.HealthCheckResponse.NOT_SERVING)
                with pytest.raises(grpc.RpcError) as info:
                    stub.SignCertificate(csr, timeout=30)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "database cannot be reached" in str(info.value.details())
            finally:
                pg_cluster.start()
            _until(health, health_pb2.HealthCheckResponse.SERVING)
            stub.SignCertificate(csr, timeout=10)  # by itself, no restart
    finally:
        stop_ca(ca)


def _until(health: health_pb2_grpc.HealthStub, status: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        seen = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        if seen == status:
            return
        assert time.monotonic() < deadline, f"health stayed {seen}, wanted {status}"
        time.sleep(0.05)


def test_batches_of_two_replicas_that_deadlock_are_run_again_one_job_each(pg_url: str) -> None:
    """Each replica's writer batches its jobs into one transaction, so two batches can take
    the same locks in opposite orders. PostgreSQL aborts one of them; its jobs run again, a
    transaction each, and every job of both batches commits once."""
    import threading

    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    a1_locked, b1_locked = threading.Event(), threading.Event()

    def job(name: str, lock: int, after: threading.Event | None, then: threading.Event | None):  # type: ignore[no-untyped-def]
        def run(db):  # type: ignore[no-untyped-def]
            if after is not None:
                assert after.wait(30)
            db.execute("SELECT pg_advisory_xact_lock(?)", [lock])
            if then is not None:
                then.set()
            db.execute("INSERT INTO meta (key, value) VALUES (?, '1')", [name])
            return name

        return run

    def batch(store: PostgresStore, first, second) -> list[str]:  # type: ignore[no-untyped-def]
        """first and second queued behind a held writer, so they commit together."""
        inside, release = threading.Event(), threading.Event()

        def hold(db):  # type: ignore[no-untyped-def]
            inside.set()
            assert release.wait(30)

        with ThreadPoolExecutor(3) as pool:
            held = pool.submit(store._write, hold)
            assert inside.wait(30)
            jobs = [pool.submit(store._write, first), pool.submit(store._write, second)]
            while store._writer._queue.qsize() < 2:
                threading.Event().wait(0.001)
            release.set()
            held.result(30)
            return [j.result(60) for j in jobs]

    try:
        with ThreadPoolExecutor(2) as pool:
            on_a = pool.submit(
                batch, a, job("a1", 1, None, a1_locked), job("a2", 2, b1_locked, None)
            )
            on_b = pool.submit(
                batch, b, job("b1", 2, a1_locked, b1_locked), job("b2", 1, None, None)
            )
            assert on_a.result(60) == ["a1", "a2"] and on_b.result(60) == ["b1", "b2"]
        with psycopg.connect(pg_url) as check:
            rows = check.execute(
                "SELECT key FROM meta WHERE key IN ('a1', 'a2', 'b1', 'b2') ORDER BY key"
            ).fetchall()
        assert [r[0] for r in rows] == ["a1", "a2", "b1", "b2"]
    finally:
        a.close()
        b.close()
