"""`ca-server migrate --from sqlite:/// --to postgresql://`: a CA's whole history moves without
losing a row, an interrupted run is resumed by running it again, a rerun changes nothing, a
non-empty target is refused, and the CA then serves from the new database as before."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from ca_server.config import load_config
from ca_server.core.authority import RenewalSelector
from ca_server.core.clock import FakeClock
from ca_server.core.policy import Caller
from ca_server.core.revocation import Reason
from ca_server.core.store import ListQuery
from ca_server.datadir import load_ca
from ca_server.migrate import migrate
from ca_server.store.postgres import PostgresStore
from ca_server.store.sqlite import SqliteStore
from tests.pki import make_csr, spiffe
from tests.test_cli import _ca_server

ADMIN = Caller(spiffe("admin"), "", is_admin=True)


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """A CA with certificates (some revoked, one on hold), tokens, audit events, CRLs and
    the records of idempotent calls."""
    data = tmp_path / "ca-data"
    init = subprocess.run(
        [*_ca_server(), "init", "--data-dir", str(data)], capture_output=True, text=True, timeout=60
    )
    assert init.returncode == 0, init.stderr
    ca = load_ca(load_config(data, env={}), None, FakeClock())
    try:
        serials = [
            ca.authority.sign(
                ADMIN, make_csr(uris=[spiffe(f"m/{i}")])[1], None, str(uuid.uuid4())
            ).serial
            for i in range(30)
        ]
        for i, serial in enumerate(serials[:6]):
            reason = Reason.CERTIFICATE_HOLD if i == 0 else Reason.KEY_COMPROMISE
            ca.authority.revoke(ADMIN, serial, reason, request_id=str(uuid.uuid4()))
        ca.authority.create_token(ADMIN, spiffe("m/token"), ["m.internal"], [], None, None)
        ca.authority.renew_now(  # a renewal window pulled forward travels too
            ADMIN, RenewalSelector(serial=serials[10], explanation_url="https://example/why")
        )
        for _ in range(3):
            ca.authority.crls.build()
            ca.authority.revoke(ADMIN, serials.pop(), Reason.SUPERSEDED)
    finally:
        ca.store.close()
    return data / "ca.db"


def _everything(store: SqliteStore | PostgresStore) -> tuple[object, ...]:
    return (
        store.list_certificates(ListQuery(limit=10_000)),
        store.audit_events(limit=10_000),
        store._read("SELECT * FROM bootstrap_tokens ORDER BY token_hash"),
        store._read("SELECT * FROM request_ids ORDER BY scope, request_id"),
        store.latest_crl(),
        store.revocation_epoch(),
    )


def test_the_whole_history_moves_and_the_ca_carries_on(history: Path, pg_url: str) -> None:
    run = subprocess.run(
        [*_ca_server(), "migrate", "--from", f"sqlite:///{history}", "--to", pg_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "migrating:" in run.stderr and " rows " in run.stderr  # progress, rows of total
    source, target = SqliteStore(history), PostgresStore(pg_url)
    try:
        assert _everything(target) == _everything(source)
        numbers = [source.next_crl_number(), target.next_crl_number()]
        assert numbers[0] == numbers[1]  # the CRL number carries on, never backwards
        next_audit = max(e for (e,) in target._read("SELECT id FROM audit")) + 1
        target.append_audit(source.audit_events(1)[0])  # new rows follow the copied ids
        assert target._read("SELECT MAX(id) FROM audit") == [(next_audit,)]
    finally:
        source.close()
        target.close()

    again = subprocess.run(
        [*_ca_server(), "migrate", "--from", f"sqlite:///{history}", "--to", pg_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "already migrated" in again.stdout, again.stderr


def test_an_interrupted_migration_resumes_without_duplicating(history: Path, pg_url: str) -> None:
    class Interrupted(Exception):
        pass

    def crash(table: str, done: int, total: int) -> None:
        if table == "audit":
            raise Interrupted

    source, target = SqliteStore(history), PostgresStore(pg_url)
    try:
        with pytest.raises(Interrupted):
            migrate(source, target, str(history.resolve()), crash, batch=7)
        partial = len(target.list_certificates(ListQuery(limit=10_000)))
        assert partial > 0  # certificates copied, the audit trail not yet
        summary = migrate(source, target, str(history.resolve()), batch=7)
        assert not summary.already_done
        assert _everything(target) == _everything(source)
    finally:
        source.close()
        target.close()


def test_a_target_that_holds_anything_else_is_refused(
    history: Path, pg_url: str, tmp_path: Path
) -> None:
    other = subprocess.run(
        [*_ca_server(), "init", "--data-dir", str(tmp_path / "other"), "--store", pg_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 0, other.stderr
    refused = subprocess.run(
        [*_ca_server(), "migrate", "--from", f"sqlite:///{history}", "--to", pg_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1 and "not empty" in refused.stderr
    assert "Traceback" not in refused.stderr
