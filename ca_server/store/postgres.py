"""The shared store for several CA replicas: PostgreSQL through psycopg 3 and a connection pool.

Every replica (and every worker of each) runs the same SQL as the SQLite store (see ``sql``);
PostgreSQL's row locks and conditional UPDATEs make serials, one-time tokens, CRL numbers and
leases hold across machines. Writes go through each process's group-commit writer (one
connection, a batch of concurrent writes per transaction, see ``writer``), committed (fsynced by
PostgreSQL) before the call returns; reads use a connection pool. Migrations run once,
under an advisory lock, however many replicas start together; a schema newer than this
Signet knows is refused. A database that cannot be reached is ``Unavailable`` within seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg_pool

from ..core.errors import ConfigurationError, ErrorReason, Unavailable
from .sql import Cursor, SqlStore, Tx, backfill_revocation_events
from .writer import GroupCommitWriter

CONNECT_TIMEOUT = 3  # seconds to open a connection
POOL_TIMEOUT = 5.0  # seconds a call waits for a free connection before it is UNAVAILABLE
LOCK_TIMEOUT_MS = 5000  # the writer's longest wait for a lock another replica holds
SCHEMA_LOCK = 0x5167_6E65_7400  # pg_advisory_xact_lock key: "Signet" migrations
QUOTA_LOCK = 0x5167  # with hashtext(identity): the (int4, int4) lock space of quota checks


@functools.lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """Our statements use ? placeholders (no literal ? or % in them); psycopg wants %s."""
    return sql.replace("?", "%s")


class _PgDb:
    """A psycopg connection speaking the ? placeholders of the shared SQL."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self._conn.execute(_pg(sql), parameters)


def _unavailable(exc: Exception) -> Unavailable:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Unavailable(
        f"the database cannot be reached: {first}", reason=ErrorReason.STORE_UNAVAILABLE
    )


def _v1(db: _PgDb) -> None:
    for statement in (
        """CREATE TABLE certificates (
            serial TEXT PRIMARY KEY, identity TEXT NOT NULL, dns_names TEXT, ip_addresses TEXT,
            not_before BIGINT NOT NULL, not_after BIGINT NOT NULL, status TEXT NOT NULL,
            revoked_at BIGINT, reason INTEGER, fingerprint_sha256 TEXT NOT NULL UNIQUE,
            der BYTEA NOT NULL, requested_by TEXT, issued_at BIGINT, authorized_by TEXT,
            ocsp_der BYTEA, ocsp_this_update BIGINT, ocsp_next_update BIGINT,
            invalidity_date BIGINT)""",
        "CREATE INDEX certificates_issued ON certificates (issued_at, serial)",
        "CREATE INDEX certificates_status ON certificates (status, not_after)",
        "CREATE INDEX certificates_identity ON certificates (identity)",
        "CREATE INDEX certificates_ocsp_next ON certificates (ocsp_next_update)",
        """CREATE TABLE audit (
            id BIGSERIAL PRIMARY KEY, at BIGINT, action TEXT, actor TEXT, serial TEXT,
            detail TEXT)""",
        """CREATE FUNCTION signet_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'audit is append-only'; END $$""",
        """CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
            FOR EACH ROW EXECUTE FUNCTION signet_audit_append_only()""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
        "INSERT INTO meta (key, value) VALUES ('crl_number', '0'), ('revocations', '0')",
        """CREATE TABLE bootstrap_tokens (
            token_hash TEXT PRIMARY KEY, identity TEXT, dns_names TEXT, ip_addresses TEXT,
            certificate_ttl BIGINT, expires_at BIGINT, created_by TEXT, created_at BIGINT,
            used_at BIGINT)""",
        """CREATE TABLE crls (
            number BIGINT PRIMARY KEY, der BYTEA, this_update BIGINT, next_update BIGINT,
            epoch BIGINT)""",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION)""",
    ):
        db.execute(statement)


def _v2(db: _PgDb) -> None:
    db.execute(
        "CREATE TABLE enroll_failures ("
        "peer TEXT PRIMARY KEY, window_start DOUBLE PRECISION NOT NULL, count INTEGER NOT NULL)"
    )


def _v3(db: _PgDb) -> None:
    db.execute(
        "CREATE TABLE signed_documents ("
        "name TEXT PRIMARY KEY, der BYTEA, this_update BIGINT, next_update BIGINT)"
    )


def _v4(db: _PgDb) -> None:
    # As SQLite's v11: peer and outcome, and the hash chain, sealed once after the write.
    db.execute(
        "ALTER TABLE audit ADD COLUMN peer TEXT, ADD COLUMN outcome TEXT, ADD COLUMN seq BIGINT, "
        "ADD COLUMN prev_hash TEXT, ADD COLUMN hash TEXT"
    )
    db.execute("CREATE UNIQUE INDEX audit_seq ON audit (seq)")
    db.execute("CREATE INDEX audit_unsealed ON audit (id) WHERE hash IS NULL")
    db.execute("DROP TRIGGER audit_append_only ON audit")
    unchanged = " AND ".join(
        f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}"
        for c in ("id", "at", "action", "actor", "serial", "detail", "peer", "outcome")
    )
    db.execute(
        "CREATE FUNCTION signet_audit_seal_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF TG_OP = 'DELETE' OR OLD.hash IS NOT NULL OR NOT ({unchanged}) THEN "
        "RAISE EXCEPTION 'audit is append-only'; END IF; RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
        "FOR EACH ROW EXECUTE FUNCTION signet_audit_seal_only()"
    )


def _v5(db: _PgDb) -> None:
    # The order rows were written in (ListCertificates' tiebreak within a second).
    db.execute("ALTER TABLE certificates ADD COLUMN seq BIGSERIAL")
    db.execute("CREATE INDEX certificates_issued_seq ON certificates (issued_at, seq)")


def _v6(db: _PgDb) -> None:
    db.execute("CREATE INDEX certificates_identity_issued ON certificates (identity, issued_at)")
    db.execute("CREATE INDEX certificates_identity_expiry ON certificates (identity, not_after)")
    db.execute("CREATE INDEX certificates_expiry ON certificates (not_after)")


def _v7(db: _PgDb) -> None:
    # As SQLite's v14: WatchRevocations' events, numbered by the revocation epoch.
    db.execute(
        "CREATE TABLE revocation_events (sequence BIGINT PRIMARY KEY, serial TEXT NOT NULL, "
        "kind TEXT NOT NULL, at BIGINT NOT NULL, reason INTEGER, revoked_at BIGINT, "
        "not_after BIGINT NOT NULL)"
    )
    db.execute("CREATE INDEX revocation_events_expiry ON revocation_events (not_after)")
    backfill_revocation_events(db)


def _v8(db: _PgDb) -> None:
    # As SQLite's v15: the answers of idempotent calls (request_id), kept an hour.
    db.execute(
        "CREATE TABLE request_ids (scope TEXT NOT NULL, request_id TEXT NOT NULL, "
        "method TEXT NOT NULL, fingerprint TEXT NOT NULL, result TEXT NOT NULL, "
        "created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, "
        "PRIMARY KEY (scope, request_id))"
    )
    db.execute("CREATE INDEX request_ids_expiry ON request_ids (expires_at)")


def _v9(db: _PgDb) -> None:
    # As SQLite's v16: a renewal window an operator pulled forward (renew-now).
    db.execute(
        "ALTER TABLE certificates ADD COLUMN renewal_start BIGINT, "
        "ADD COLUMN renewal_end BIGINT, ADD COLUMN renewal_explanation_url TEXT"
    )


def _v10(db: _PgDb) -> None:
    # As SQLite's v17: the CA's own certificates, each certificate's and CRL's issuer, and the
    # generation counter every process polls to notice a rotation.
    db.execute(
        "CREATE TABLE ca_certificates (serial TEXT PRIMARY KEY, kind TEXT NOT NULL, "
        "state TEXT NOT NULL, key_id TEXT NOT NULL, issuer_key_id TEXT NOT NULL, "
        "der BYTEA NOT NULL, not_after BIGINT NOT NULL, created_at BIGINT NOT NULL, "
        "overlap_until BIGINT)"
    )
    db.execute("ALTER TABLE certificates ADD COLUMN issuer TEXT")
    db.execute("CREATE INDEX certificates_issuer_expiry ON certificates (issuer, not_after)")
    db.execute("ALTER TABLE crls ADD COLUMN issuer TEXT")
    db.execute("INSERT INTO meta (key, value) VALUES ('ca_generation', '0')")


# Append only: the index is the schema version a migration produces (signet_schema.version).
MIGRATIONS: list[Callable[[_PgDb], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10]
SCHEMA_VERSION = len(MIGRATIONS)


class _PgWriteConnection:
    """The writer's own connection (see writer.GroupCommitWriter): this process's writes go
    to PostgreSQL a batch per transaction, so a storm of issuances costs one commit (and one
    WAL flush) per batch instead of one per certificate."""

    database_error: tuple[type[BaseException], ...] = (psycopg.Error,)
    fatal_error: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
    # A deadlock with another replica's batch (each holds a lock the other waits for):
    # PostgreSQL aborts one; its jobs are run again one per transaction.
    retry_alone: tuple[type[BaseException], ...] = (
        psycopg.errors.DeadlockDetected,  # (an OperationalError in psycopg, not a rollback's)
        psycopg.errors.TransactionRollback,
    )

    def __init__(self, url: str) -> None:
        try:
            self._conn = psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                # A batch waiting long on another replica's lock holds every caller in it.
                options=f"-c lock_timeout={LOCK_TIMEOUT_MS}",
            )
        except psycopg.Error as exc:
            raise _unavailable(exc) from None
        self.handle: Any = _PgDb(self._conn)

    def execute(self, sql: str) -> None:
        self._conn.execute(sql)

    def describe(self, exc: BaseException) -> str:
        return str(_unavailable(exc))  # type: ignore[arg-type]

    def close(self) -> None:
        self._conn.close()


class PostgresStore(SqlStore):
    insertion_order = "seq"  # a BIGSERIAL (v5): PostgreSQL rows have no rowid

    def _lock_identity(self, db: Any, identity: str) -> None:
        # Replicas' transactions for one identity take turns (until commit), so its quota
        # holds exactly; other identities do not wait.
        db.execute(
            "SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), hashtext(?))", [QUOTA_LOCK, identity]
        )

    def __init__(self, url: str, *, max_connections: int = 20) -> None:
        self.url = url
        try:  # one plain attempt first: a refused or mistyped database fails at once, clearly
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ConfigurationError(
                f"cannot reach the database {_redacted(url)}: {reason}"
            ) from None
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            timeout=POOL_TIMEOUT,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            open=False,
            name="signet",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT + 2)
        except psycopg_pool.PoolTimeout:
            self._pool.close()
            raise ConfigurationError(
                f"cannot reach the database {_redacted(url)} (within {CONNECT_TIMEOUT + 2} s)"
            ) from None
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise
        self._writer = GroupCommitWriter(lambda: _PgWriteConnection(url))

    def _write(self, fn: Tx) -> Any:
        """Run fn in this process's writer's next group transaction; its result once
        committed (see writer)."""
        return self._writer.submit(fn)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(_pg(sql), params).fetchall()
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from None

    def _is_duplicate_serial(self, exc: Exception) -> bool:
        return (
            isinstance(exc, psycopg.errors.UniqueViolation)
            and exc.diag.constraint_name == "certificates_pkey"
        )

    def after_bulk_insert(self, db: Any, table: str, column: str, top: int) -> None:
        highest = f"(SELECT COALESCE(MAX({column}), 0) FROM {table})"  # noqa: S608 - constants
        db.execute(
            f"SELECT setval(pg_get_serial_sequence(?, ?), GREATEST(1, ?, {highest}))",
            [table, column, top],
        )

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            db = _PgDb(conn)
            # Replicas starting together take turns; the first migrates, the rest find it done.
            db.execute("SELECT pg_advisory_xact_lock(?)", [SCHEMA_LOCK])
            db.execute("CREATE TABLE IF NOT EXISTS signet_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM signet_schema").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the database {_redacted(self.url)} has schema version {version}, newer "
                    f"than this Signet understands ({SCHEMA_VERSION}); upgrade Signet"
                )
            for number in range(version, SCHEMA_VERSION):
                MIGRATIONS[number](db)
            if row is None:
                db.execute("INSERT INTO signet_schema (version) VALUES (?)", [SCHEMA_VERSION])
            else:
                db.execute("UPDATE signet_schema SET version = ?", [SCHEMA_VERSION])

    def close(self) -> None:
        self._writer.close()
        self._pool.close()


def _redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparsable URL)"
    host, db = info.get("host", ""), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', '')}/{db}"
