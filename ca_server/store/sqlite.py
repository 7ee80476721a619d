"""The embedded default store: SQLite through sqlite-utils, WAL mode.

Reads use one connection per thread. Writes go to one writer thread per process (group commit,
see ``writer``): concurrent writes share a transaction and its fsync. Durability:
synchronous=FULL, so a certificate is on disk before the RPC that issued it answers.
The audit table is append-only, enforced by triggers rather than by convention.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from ..core.errors import ConfigurationError, ErrorReason, Unavailable
from .sql import SqlStore, Tx, backfill_revocation_events
from .writer import GroupCommitWriter, SqliteWriteConnection, describe

# How long a writer or reader waits for another process's lock before the request is
# answered UNAVAILABLE (SQLite's own busy handler; our writer thread never contends in-process).
BUSY_TIMEOUT_MS = 3000


def _v1(db: sqlite_utils.Database) -> None:
    db.table("certificates").create(
        {
            "serial": str,
            "identity": str,
            "dns_names": str,  # JSON list
            "ip_addresses": str,  # JSON list
            "not_before": int,
            "not_after": int,
            "status": str,
            "revoked_at": int,
            "reason": int,
            "fingerprint_sha256": str,
            "der": bytes,
            "requested_by": str,
            "issued_at": int,
        },
        pk="serial",
        not_null={"identity", "not_before", "not_after", "status", "fingerprint_sha256", "der"},
    )
    db.table("certificates").create_index(["fingerprint_sha256"], unique=True)
    db.table("certificates").create_index(["issued_at", "serial"])
    db.table("certificates").create_index(["status", "not_after"])
    db.table("certificates").create_index(["identity"])
    db.table("audit").create(
        {"id": int, "at": int, "action": str, "actor": str, "serial": str, "detail": str},
        pk="id",
    )
    db.execute(
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"
    )
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("meta").insert({"key": "crl_number", "value": "0"})


def _v2(db: sqlite_utils.Database) -> None:
    # Bumped in the same transaction as every revocation, so that every process sharing the
    # database can tell with one cheap read that its cached CRL is out of date.
    revoked = db.execute("SELECT COUNT(*) FROM certificates WHERE status = 'revoked'").fetchone()
    db.table("meta").insert({"key": "revocations", "value": str(revoked[0])})


def _v3(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE certificates ADD COLUMN authorized_by TEXT")
    db.execute("UPDATE certificates SET authorized_by = requested_by")


def _v4(db: sqlite_utils.Database) -> None:
    for column, kind in [("ocsp_der", "BLOB"), ("ocsp_this_update", "INTEGER"),
                         ("ocsp_next_update", "INTEGER")]:  # fmt: skip
        db.execute(f"ALTER TABLE certificates ADD COLUMN {column} {kind}")
    db.execute("CREATE INDEX idx_certificates_ocsp ON certificates (ocsp_this_update)")


def _v5(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE certificates ADD COLUMN invalidity_date INTEGER")


def _v6(db: sqlite_utils.Database) -> None:
    # Freshness is judged by nextUpdate (it may be capped by a signer's or the CA's expiry).
    db.execute("DROP INDEX idx_certificates_ocsp")
    db.execute("CREATE INDEX idx_certificates_ocsp_next ON certificates (ocsp_next_update)")


def _v7(db: sqlite_utils.Database) -> None:
    db.table("bootstrap_tokens").create(
        {
            "token_hash": str,
            "identity": str,
            "dns_names": str,
            "ip_addresses": str,
            "certificate_ttl": int,  # seconds
            "expires_at": int,
            "created_by": str,
            "created_at": int,
            "used_at": int,
        },
        pk="token_hash",
    )


def _v8(db: sqlite_utils.Database) -> None:
    # The CRL every process serves, built once by the lease holder; and the leases themselves.
    db.table("crls").create(
        {"number": int, "der": bytes, "this_update": int, "next_update": int, "epoch": int},
        pk="number",
    )
    db.table("leases").create(
        {"name": str, "holder": str, "expires_at": float}, pk="name", not_null={"holder"}
    )


def _v9(db: sqlite_utils.Database) -> None:
    # Refused enrollments, counted per peer and window for every process (not one audit row
    # per attempt, not a counter per process).
    db.table("enroll_failures").create(
        {"peer": str, "window_start": float, "count": int}, pk="peer"
    )


def _v10(db: sqlite_utils.Database) -> None:
    # What the root signs ahead of time (its CRL, its OCSP answer about the intermediate).
    db.table("signed_documents").create(
        {"name": str, "der": bytes, "this_update": int, "next_update": int}, pk="name"
    )


def _v11(db: sqlite_utils.Database) -> None:
    # Who and from where, and the hash chain (see core.audit_chain): rows are sealed after
    # they are written, so an update may set seq and the hashes once, and change nothing else.
    for column in ("peer", "outcome", "prev_hash", "hash"):
        db.execute(f"ALTER TABLE audit ADD COLUMN {column} TEXT")
    db.execute("ALTER TABLE audit ADD COLUMN seq INTEGER")
    db.execute("CREATE UNIQUE INDEX audit_seq ON audit (seq)")
    db.execute("CREATE INDEX audit_unsealed ON audit (id) WHERE hash IS NULL")
    db.execute("DROP TRIGGER audit_no_update")
    unchanged = " AND ".join(
        f"NEW.{c} IS OLD.{c}"
        for c in ("id", "at", "action", "actor", "serial", "detail", "peer", "outcome")
    )
    db.execute(
        "CREATE TRIGGER audit_seal_only BEFORE UPDATE ON audit "
        f"WHEN OLD.hash IS NOT NULL OR NOT ({unchanged}) "
        "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"
    )


def _v12(db: sqlite_utils.Database) -> None:
    # ListCertificates orders by (issued_at, rowid): an index on issued_at holds exactly that.
    db.execute("CREATE INDEX certificates_issued_order ON certificates (issued_at)")


def _v13(db: sqlite_utils.Database) -> None:
    # Per-identity quotas count recent and live certificates; retention finds expired ones.
    db.execute("CREATE INDEX certificates_identity_issued ON certificates (identity, issued_at)")
    db.execute("CREATE INDEX certificates_identity_expiry ON certificates (identity, not_after)")
    db.execute("CREATE INDEX certificates_expiry ON certificates (not_after)")


def _v14(db: sqlite_utils.Database) -> None:
    # WatchRevocations: each change of revocation state, numbered by the revocation epoch.
    db.execute(
        "CREATE TABLE revocation_events (sequence INTEGER PRIMARY KEY, serial TEXT NOT NULL, "
        "kind TEXT NOT NULL, at INTEGER NOT NULL, reason INTEGER, revoked_at INTEGER, "
        "not_after INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX revocation_events_expiry ON revocation_events (not_after)")
    backfill_revocation_events(db)


def _v15(db: sqlite_utils.Database) -> None:
    # The answers of idempotent calls (request_id), kept an hour, written with what they answer.
    db.execute(
        "CREATE TABLE request_ids (scope TEXT NOT NULL, request_id TEXT NOT NULL, "
        "method TEXT NOT NULL, fingerprint TEXT NOT NULL, result TEXT NOT NULL, "
        "created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, "
        "PRIMARY KEY (scope, request_id))"
    )
    db.execute("CREATE INDEX request_ids_expiry ON request_ids (expires_at)")


def _v16(db: sqlite_utils.Database) -> None:
    # A renewal window an operator pulled forward (renew-now); NULL: the default one.
    db.execute("ALTER TABLE certificates ADD COLUMN renewal_start INTEGER")
    db.execute("ALTER TABLE certificates ADD COLUMN renewal_end INTEGER")
    db.execute("ALTER TABLE certificates ADD COLUMN renewal_explanation_url TEXT")


def _v17(db: sqlite_utils.Database) -> None:
    # Rotation of the CA itself: its roots, intermediates and cross-certificates with their
    # state; which intermediate issued each certificate and signed each CRL (NULL: the one
    # from before rotations, filled in when the server first records it); a generation counter
    # every process polls to notice a rotation.
    db.execute(
        "CREATE TABLE ca_certificates (serial TEXT PRIMARY KEY, kind TEXT NOT NULL, "
        "state TEXT NOT NULL, key_id TEXT NOT NULL, issuer_key_id TEXT NOT NULL, "
        "der BLOB NOT NULL, not_after INTEGER NOT NULL, created_at INTEGER NOT NULL, "
        "overlap_until INTEGER)"
    )
    db.execute("ALTER TABLE certificates ADD COLUMN issuer TEXT")
    db.execute("CREATE INDEX certificates_issuer_expiry ON certificates (issuer, not_after)")
    db.execute("ALTER TABLE crls ADD COLUMN issuer TEXT")
    db.execute("INSERT INTO meta (key, value) VALUES ('ca_generation', '0')")


# Append only: the index is the schema version a migration produces (PRAGMA user_version).
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1,
    _v2,
    _v3,
    _v4,
    _v5,
    _v6,
    _v7,
    _v8,
    _v9,
    _v10,
    _v11,
    _v12,
    _v13,
    _v14,
    _v15,
    _v16,
    _v17,
]
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteStore(SqlStore):
    def __init__(self, path: str | Path, *, on_batch: Callable[[int], None] | None = None) -> None:
        self.path = Path(path)
        self._local = threading.local()
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:  # not a database, damaged, or cannot be opened
            self.close_reader()
            raise ConfigurationError(f"{self.path}: cannot use the database: {exc}") from None
        self._writer = GroupCommitWriter(
            self._connect_writer,
            on_batch=on_batch,
            lock_path=self.path.with_name(self.path.name + "-writer.lock"),
        )

    # -- connection handling -------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _connect(self) -> sqlite_utils.Database:
        return sqlite_utils.Database(self._open())

    def _connect_writer(self) -> SqliteWriteConnection:
        try:
            return SqliteWriteConnection(self._open())
        except sqlite3.Error as exc:
            raise Unavailable(describe(exc), reason=ErrorReason.STORE_UNAVAILABLE) from None

    @property
    def _db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def _write(self, fn: Tx) -> Any:
        """Run fn in the writer's next group transaction; its result once committed."""
        return self._writer.submit(fn)

    def _is_duplicate_serial(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "serial" in str(exc)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            self.close_reader()  # e.g. opened while the file was read-only: reopen next time
            raise Unavailable(describe(exc), reason=ErrorReason.STORE_UNAVAILABLE) from None

    def _enable_wal(self) -> None:
        """WAL is a property of the file, set once. Switching to it needs a moment with no other
        writer and, unlike ordinary statements, fails at once instead of honouring busy_timeout,
        so several processes opening a fresh database together take turns here."""
        deadline = time.monotonic() + 30
        delay = 0.01
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            else:
                if mode == "wal":
                    return
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._enable_wal()

        def run(db: sqlite_utils.Database) -> None:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this Signet "
                    f"understands ({SCHEMA_VERSION}); upgrade Signet"
                )
            for number in range(version, SCHEMA_VERSION):
                MIGRATIONS[number](db)
                db.execute(f"PRAGMA user_version = {number + 1}")

        db = self._db
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # current: no write lock needed (workers under load open stores often)
        db.execute("BEGIN IMMEDIATE")
        try:
            run(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close_reader(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None

    def close(self) -> None:
        self._writer.close()
        self.close_reader()
