"""The store's logic in SQL, written once for every database it runs on: each implementation
(SQLite, PostgreSQL) gives it a way to run a write transaction and a read, and its schema.
Statements use ``?`` placeholders; an implementation whose driver wants another style
translates them.

Durability and atomicity are the implementations' (one transaction per write, committed
before the call returns); the conditional UPDATEs here make each change safe under concurrency
from any number of processes and machines: a revocation, a token spend, a CRL number are
decided by the database, not by a lock in one process."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..core.ocsp import SignedStatus
from ..core.renewal_window import RenewalWindow
from ..core.revocation import Reason, RevokedEntry
from ..core.store import (
    AuditEvent,
    AuditQuery,
    AuditRecord,
    CaCertificateRecord,
    CertificateRecord,
    DuplicateRequest,
    DuplicateSerial,
    ListQuery,
    OcspUpdate,
    Quota,
    QuotaExceeded,
    RequestRecord,
    RevocationEvent,
    RevokeOutcome,
    Seal,
    SignedDocument,
    Status,
    StatusRow,
    StoredCrl,
    TokenRecord,
)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """What a write transaction sees: sqlite3.Connection, or an adapter over psycopg's."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


Tx = Callable[[Db], Any]


def _ocsp_columns(ocsp: SignedStatus | None) -> dict[str, Any]:
    if ocsp is None:
        return {"ocsp_der": None, "ocsp_this_update": None, "ocsp_next_update": None}
    return {
        "ocsp_der": ocsp.der,
        "ocsp_this_update": _epoch(ocsp.this_update),
        "ocsp_next_update": _epoch(ocsp.next_update),
    }


def _epoch(when: dt.datetime) -> int:
    return int(when.timestamp())


def _from_epoch(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _insert(db: Db, table: str, row: dict[str, Any]) -> None:
    """A plain INSERT of constant column names (sqlite-utils' insert introspects the table on
    every call, too slow for the write path)."""
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))  # noqa: S608


_IN_CHUNK = 500  # serials per IN (...) list: well under every database's parameter limit
_AUDIT = "id, at, action, actor, serial, detail, peer, outcome, seq, prev_hash, hash"


class _Resealed(Exception):
    """A row to seal was sealed meanwhile: the whole batch is rolled back."""


class _Unchanged(Exception):
    """A conditional change found nothing to change: its transaction is rolled back (with the
    request record written first in it) and `outcome` returned."""

    def __init__(self, outcome: Any) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _claim_request(db: Db, request: RequestRecord | None) -> None:
    """Write the request record first in its transaction: a concurrent call with the same id
    waits here for that transaction (PostgreSQL's unique index) or follows it (SQLite's single
    writer), then finds the record and raises DuplicateRequest, so its quota check and
    certificate never happen. An expired record not yet pruned is replaced."""
    if request is None:
        return
    created = _epoch(request.created_at)
    cursor = db.execute(
        "INSERT INTO request_ids (scope, request_id, method, fingerprint, result, created_at, "
        "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, request_id) DO UPDATE SET "
        "method = excluded.method, fingerprint = excluded.fingerprint, "
        "result = excluded.result, created_at = excluded.created_at, "
        "expires_at = excluded.expires_at WHERE request_ids.expires_at <= ?",
        [
            request.scope,
            request.request_id,
            request.method,
            request.fingerprint,
            request.result,
            created,
            _epoch(request.expires_at),
            created,
        ],
    )
    if cursor.rowcount != 1:
        raise DuplicateRequest(request.request_id)


def _audit_record(row: Sequence[Any]) -> AuditRecord:
    id_, at, action, actor, serial, detail, peer, outcome, seq, prev_hash, digest = row
    return AuditRecord(
        int(id_),
        _from_epoch(at),
        action,
        actor,
        serial,
        detail or "",
        peer or "",
        outcome or "ok",
        seq,
        prev_hash,
        digest,
    )


def _certificate_row(record: CertificateRecord) -> dict[str, Any]:
    return {
        "serial": record.serial,
        "identity": record.identity,
        "dns_names": json.dumps(list(record.dns_names)),
        "ip_addresses": json.dumps(list(record.ip_addresses)),
        "not_before": _epoch(record.not_before),
        "not_after": _epoch(record.not_after),
        "status": record.status,
        "revoked_at": _epoch(record.revoked_at) if record.revoked_at else None,
        "reason": int(record.reason) if record.reason is not None else None,
        "fingerprint_sha256": record.fingerprint_sha256,
        "der": record.der,
        "requested_by": record.requested_by,
        "issued_at": _epoch(record.issued_at),
        "authorized_by": record.authorized_by,
        **_ocsp_columns(record.ocsp),
        "issuer": record.issuer or None,
    }


def _quota_counts(
    first_row: Callable[[str, Sequence[Any]], Any], identity: str, quota: Quota
) -> None:
    """Raise QuotaExceeded if `identity` is at a limit. Each count stops at its limit,
    over an (identity, time) index: a check costs at most the limit's rows."""
    if quota.max_issued:
        n, oldest = first_row(
            "SELECT COUNT(*), MIN(issued_at) FROM (SELECT issued_at FROM certificates "
            "WHERE identity = ? AND issued_at > ? ORDER BY issued_at LIMIT ?) w",
            [identity, _epoch(quota.since), quota.max_issued],
        )
        if n >= quota.max_issued:
            window = quota.now - quota.since
            raise QuotaExceeded("rate", n, _from_epoch(oldest) + window)
    if quota.max_live:
        n, soonest = first_row(
            "SELECT COUNT(*), MIN(not_after) FROM (SELECT not_after FROM certificates "
            "WHERE identity = ? AND not_after > ? AND status = 'good' "
            "ORDER BY not_after LIMIT ?) live",
            [identity, _epoch(quota.now), quota.max_live],
        )
        if n >= quota.max_live:
            raise QuotaExceeded("live", n, _from_epoch(soonest))


# Selected by name so that migrations adding columns never shift _record's unpacking.
_COLUMNS = (
    "serial, identity, dns_names, ip_addresses, not_before, not_after, status, revoked_at, "
    "reason, fingerprint_sha256, der, requested_by, issued_at, authorized_by, "
    "ocsp_der, ocsp_this_update, ocsp_next_update, "
    "renewal_start, renewal_end, renewal_explanation_url, issuer"
)
_COLUMN_NAMES = tuple(c.strip() for c in _COLUMNS.split(","))


class SqlStore:
    """Every Store method, over _write (one transaction, committed before it returns) and
    _read, which the implementations provide."""

    # The column that orders rows as they were written (ListCertificates' tiebreak).
    insertion_order = "rowid"

    def _write(self, fn: Tx) -> Any:
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _is_duplicate_serial(self, exc: Exception) -> bool:
        """Whether a failed write was the certificates primary key refusing a serial."""
        raise NotImplementedError

    def _read_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._read(sql, params)
        return rows[0] if rows else None

    def after_bulk_insert(self, db: Db, table: str, column: str, top: int) -> None:
        """Rows were inserted with explicit ids up to `top`: let new ones follow them (SQLite
        does by itself; a PostgreSQL sequence must be told)."""

    # -- certificates ------------------------------------------------------------------------
    def add_certificate(
        self,
        record: CertificateRecord,
        audit: AuditEvent,
        quota: Quota | None = None,
        request: RequestRecord | None = None,
    ) -> None:
        row = _certificate_row(record)

        def tx(db: Db) -> None:
            _claim_request(db, request)
            if quota is not None:
                self._check_quota(db, record.identity, quota)
            _insert(db, "certificates", row)
            self._append_audit(db, audit)

        self._write_certificate(record.serial, tx)

    def _lock_identity(self, db: Db, identity: str) -> None:
        """Make concurrent quota checks for one identity take turns until commit (SQLite's
        single writer already does; PostgreSQL overrides this)."""

    def _check_quota(self, db: Db, identity: str, quota: Quota) -> None:
        self._lock_identity(db, identity)
        _quota_counts(lambda sql, params: db.execute(sql, params).fetchone(), identity, quota)

    def check_quota(self, identity: str, quota: Quota) -> None:
        _quota_counts(self._read_one, identity, quota)

    def _write_certificate(self, serial: str, tx: Tx) -> Any:
        try:
            return self._write(tx)
        except Exception as exc:
            if self._is_duplicate_serial(exc):
                raise DuplicateSerial(serial) from exc
            raise

    def get_certificate(self, serial: str) -> CertificateRecord | None:
        row = self._read_one(
            f"SELECT {_COLUMNS} FROM certificates WHERE serial = ?",  # noqa: S608 - constant columns
            [serial],
        )
        return self._record(row) if row else None

    def override_renewal(
        self,
        serials: Sequence[str],
        window: RenewalWindow,
        explanation_url: str,
        audit: AuditEvent,
    ) -> int:
        bounds = [_epoch(window.start), _epoch(window.end), explanation_url or None]

        def tx(db: Db) -> int:
            changed = 0
            for i in range(0, len(serials), _IN_CHUNK):
                chunk = list(serials[i : i + _IN_CHUNK])
                marks = ", ".join("?" * len(chunk))
                sql = (
                    "UPDATE certificates SET renewal_start = ?, renewal_end = ?, "  # noqa: S608 - placeholders only
                    f"renewal_explanation_url = ? WHERE status = 'good' AND serial IN ({marks})"
                )
                cursor = db.execute(sql, [*bounds, *chunk])
                changed += cursor.rowcount
            self._append_audit(db, audit)
            return changed

        changed: int = self._write(tx)
        return changed

    def get_status(self, serial: str) -> StatusRow | None:
        row = self._read_one(
            "SELECT status, revoked_at, reason, ocsp_der, ocsp_this_update, ocsp_next_update, "
            "issuer FROM certificates WHERE serial = ?",
            [serial],
        )
        if row is None:
            return None
        status, revoked_at, reason, der, this_update, next_update, issuer = row
        return StatusRow(
            "revoked" if status == "revoked" else "good",
            _from_epoch(revoked_at) if revoked_at is not None else None,
            Reason(reason) if reason is not None else None,
            SignedStatus(der, _from_epoch(this_update), _from_epoch(next_update))
            if der is not None
            else None,
            serial,
            issuer or "",
        )

    def revoke(
        self,
        serial: str,
        revoked_at: dt.datetime,
        reason: Reason,
        audit: AuditEvent,
        ocsp: SignedStatus | None = None,
        invalidity_date: dt.datetime | None = None,
        request: RequestRecord | None = None,
    ) -> RevokeOutcome:
        hold = int(Reason.CERTIFICATE_HOLD)
        o = _ocsp_columns(ocsp)
        invalid = _epoch(invalidity_date) if invalidity_date else None

        def tx(db: Db) -> RevokeOutcome:
            _claim_request(db, request)
            cursor = db.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = ?, reason = ?, "
                "ocsp_der = ?, ocsp_this_update = ?, ocsp_next_update = ?, invalidity_date = ? "
                "WHERE serial = ? AND (status = 'good' OR (reason = ? AND ? != ?))",
                [
                    _epoch(revoked_at),
                    int(reason),
                    *o.values(),
                    invalid,
                    serial,
                    hold,
                    int(reason),
                    hold,
                ],
            )
            return self._revocation_outcome(
                db, cursor, serial, audit, RevokeOutcome.REVOKED, RevokeOutcome.ALREADY_REVOKED
            )

        return self._write_revocation(tx)

    def release_hold(
        self,
        serial: str,
        audit: AuditEvent,
        ocsp: SignedStatus | None = None,
        request: RequestRecord | None = None,
    ) -> RevokeOutcome:
        o = _ocsp_columns(ocsp)

        def tx(db: Db) -> RevokeOutcome:
            _claim_request(db, request)
            cursor = db.execute(
                "UPDATE certificates SET status = 'good', revoked_at = NULL, reason = NULL, "
                "invalidity_date = NULL, ocsp_der = ?, ocsp_this_update = ?, ocsp_next_update = ? "
                "WHERE serial = ? AND status = 'revoked' AND reason = ?",
                [*o.values(), serial, int(Reason.CERTIFICATE_HOLD)],
            )
            return self._revocation_outcome(
                db, cursor, serial, audit, RevokeOutcome.RELEASED, RevokeOutcome.NOT_HELD
            )

        return self._write_revocation(tx)

    def _write_revocation(self, tx: Tx) -> RevokeOutcome:
        try:
            outcome: RevokeOutcome = self._write(tx)
        except _Unchanged as exc:
            return exc.outcome  # type: ignore[no-any-return]
        return outcome

    def update_ocsp(self, updates: Sequence[OcspUpdate]) -> int:
        def tx(db: Db) -> int:
            changed = 0
            for u in updates:
                cursor = db.execute(
                    "UPDATE certificates SET ocsp_der = ?, ocsp_this_update = ?, "
                    "ocsp_next_update = ? WHERE serial = ? AND status = ? "
                    "AND COALESCE(reason, -1) = ? AND COALESCE(revoked_at, -1) = ?",
                    [
                        *_ocsp_columns(u.ocsp).values(),
                        u.serial,
                        u.status,
                        -1 if u.reason is None else int(u.reason),
                        -1 if u.revoked_at is None else _epoch(u.revoked_at),
                    ],
                )
                changed += cursor.rowcount
            return changed

        changed: int = self._write(tx)
        return changed

    def stale_ocsp(
        self, next_update_before: dt.datetime, now: dt.datetime, limit: int
    ) -> Sequence[StatusRow]:
        rows = self._read(
            "SELECT serial, status, revoked_at, reason, issuer FROM certificates "
            # Rows without a response (never asked for, the responder's own certificate)
            # are signed on demand instead. Expired certificates are left as they are.
            "WHERE ocsp_next_update < ? AND not_after >= ? ORDER BY ocsp_next_update LIMIT ?",
            [_epoch(next_update_before), _epoch(now), limit],
        )
        return [
            StatusRow(
                "revoked" if status == "revoked" else "good",
                _from_epoch(revoked_at) if revoked_at is not None else None,
                Reason(reason) if reason is not None else None,
                None,
                serial,
                issuer or "",
            )
            for serial, status, revoked_at, reason, issuer in rows
        ]

    def _revocation_outcome(
        self,
        db: Db,
        cursor: Cursor,
        serial: str,
        audit: AuditEvent,
        done: RevokeOutcome,
        refused: RevokeOutcome,
    ) -> RevokeOutcome:
        """After a conditional status UPDATE: `done` (audited, epoch bumped) if it changed the
        row, else `refused` if the certificate exists, else NOT_FOUND; those two roll the
        transaction back (_Unchanged), so a request record is kept only with a change."""
        if cursor.rowcount == 1:
            self._changed_revocations(db, audit, serial)
            return done
        exists = db.execute("SELECT 1 FROM certificates WHERE serial = ?", [serial]).fetchone()
        raise _Unchanged(refused if exists else RevokeOutcome.NOT_FOUND)

    def _changed_revocations(self, db: Db, audit: AuditEvent, serial: str) -> None:
        """The epoch moves and the change becomes the event of that number: the meta row is
        locked until commit (SQLite: the write lock; PostgreSQL: the row lock), so replicas'
        revocations take turns and the numbers are gap-free in commit order."""
        db.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
            "WHERE key = 'revocations'"
        )
        db.execute(
            "INSERT INTO revocation_events "
            "(sequence, serial, kind, at, reason, revoked_at, not_after) "
            "SELECT (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'revocations'), "
            "serial, CASE WHEN status = 'revoked' THEN 'revoked' ELSE 'released' END, ?, "
            "reason, revoked_at, not_after FROM certificates WHERE serial = ?",
            [_epoch(audit.at), serial],
        )
        self._append_audit(db, audit)

    def revocation_events(self, after: int, limit: int) -> Sequence[RevocationEvent]:
        rows = self._read(
            "SELECT sequence, serial, kind, at, reason, revoked_at, not_after "
            "FROM revocation_events WHERE sequence > ? ORDER BY sequence LIMIT ?",
            [after, limit],
        )
        return [
            RevocationEvent(
                seq,
                serial,
                "revoked" if kind == "revoked" else "released",
                _from_epoch(at),
                Reason(reason) if reason is not None else None,
                _from_epoch(revoked_at) if revoked_at is not None else None,
                _from_epoch(not_after),
            )
            for seq, serial, kind, at, reason, revoked_at, not_after in rows
        ]

    def list_certificates(self, query: ListQuery) -> Sequence[CertificateRecord]:
        # Newest last: by issued_at (whole seconds), then in the order the rows were written
        # (a serial is random): SQLite's rowid, PostgreSQL's seq column, both indexed with
        # issued_at, so a page costs the page.
        order = self.insertion_order
        where, params = [], []  # type: list[str], list[Any]
        if query.status:
            where.append("status = ?")
            params.append(query.status)
        if query.expiring_before:
            where.append("not_after < ?")
            params.append(_epoch(query.expiring_before))
        if query.after:
            issued_at, serial = query.after
            where.append(
                f"(issued_at, {order}) > "  # noqa: S608 - constant column names
                f"(?, COALESCE((SELECT {order} FROM certificates WHERE serial = ?), -1))"
            )
            params.extend([issued_at, serial])
        # Only constant fragments are joined in; every value is a bound parameter.
        sql = f"SELECT {_COLUMNS} FROM certificates"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY issued_at, {order} LIMIT ?"
        params.append(query.limit)
        return [self._record(r) for r in self._read(sql, params)]

    def revoked_unexpired(
        self, now: dt.datetime, issuer: str | None = None
    ) -> Sequence[RevokedEntry]:
        mine, params = (
            ("", [_epoch(now)]) if issuer is None else ("AND issuer = ? ", [_epoch(now), issuer])
        )
        rows = self._read(
            "SELECT serial, revoked_at, reason, invalidity_date FROM certificates "  # noqa: S608 - constant
            f"WHERE status = 'revoked' AND not_after >= ? {mine}ORDER BY serial",
            params,
        )
        return [
            RevokedEntry(int(s, 16), _from_epoch(at), Reason(r), _from_epoch(inv) if inv else None)
            for s, at, r, inv in rows
        ]

    def revocation_epoch(self) -> int:
        row = self._read_one("SELECT value FROM meta WHERE key = 'revocations'")
        return int(row[0])

    def next_crl_number(self) -> int:
        def tx(db: Db) -> int:
            row = db.execute(
                "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
                "WHERE key = 'crl_number' RETURNING value"
            ).fetchone()
            return int(row[0])

        number: int = self._write(tx)
        return number

    def save_crl(self, crl: StoredCrl) -> None:
        def tx(db: Db) -> None:
            db.execute(
                "INSERT INTO crls (number, der, this_update, next_update, epoch, issuer) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (number) DO UPDATE SET der = excluded.der, "
                "this_update = excluded.this_update, next_update = excluded.next_update, "
                "epoch = excluded.epoch, issuer = excluded.issuer",
                [crl.number, crl.der, _epoch(crl.this_update), _epoch(crl.next_update), crl.epoch,
                 crl.issuer or None],
            )  # fmt: skip
            # A 100k-entry CRL is megabytes: keep each issuer's latest two, not every one built.
            db.execute(
                "DELETE FROM crls WHERE COALESCE(issuer, '') = ? AND number < "
                "(SELECT MAX(number) FROM crls WHERE COALESCE(issuer, '') = ? AND number < ?)",
                [crl.issuer, crl.issuer, crl.number],
            )

        self._write(tx)

    def latest_crl(self, newer_than: int = 0, issuer: str | None = None) -> StoredCrl | None:
        # The number first (cheap), the bytes only when they are news.
        if issuer is None:
            head = self._read_one("SELECT MAX(number) FROM crls")
        else:
            head = self._read_one("SELECT MAX(number) FROM crls WHERE issuer = ?", [issuer])
        if head is None or head[0] is None or head[0] <= newer_than:
            return None
        row = self._read_one(
            "SELECT der, number, this_update, next_update, epoch, issuer FROM crls "
            "WHERE number = ?",
            [head[0]],
        )
        if row is None:
            return None
        der, number, this_update, next_update, epoch, signer = row
        return StoredCrl(
            der, number, _from_epoch(this_update), _from_epoch(next_update), epoch, signer or ""
        )

    # -- the CA's own certificates -----------------------------------------------------------
    def ca_certificates(self) -> Sequence[CaCertificateRecord]:
        rows = self._read(
            "SELECT serial, kind, state, key_id, issuer_key_id, der, not_after, created_at, "
            "overlap_until FROM ca_certificates ORDER BY created_at, serial"
        )
        return [
            CaCertificateRecord(
                serial, kind, state, key_id, issuer_key_id, bytes(der), _from_epoch(not_after),
                _from_epoch(created_at), _from_epoch(overlap) if overlap is not None else None,
            )
            for serial, kind, state, key_id, issuer_key_id, der, not_after, created_at, overlap
            in rows
        ]  # fmt: skip

    @staticmethod
    def _upsert_ca(db: Db, r: CaCertificateRecord, *, keep: bool = False) -> None:
        conflict = (
            "DO NOTHING"
            if keep
            else "DO UPDATE SET state = excluded.state, overlap_until = excluded.overlap_until"
        )
        db.execute(
            "INSERT INTO ca_certificates (serial, kind, state, key_id, issuer_key_id, der, "  # noqa: S608 - constant fragments
            "not_after, created_at, overlap_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (serial) {conflict}",
            [r.serial, r.kind, r.state, r.key_id, r.issuer_key_id, r.der, _epoch(r.not_after),
             _epoch(r.created_at), _epoch(r.overlap_until) if r.overlap_until else None],
        )  # fmt: skip

    @staticmethod
    def _bump_ca_generation(db: Db) -> None:
        db.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
            "WHERE key = 'ca_generation'"
        )

    def save_ca_certificates(
        self, records: Sequence[CaCertificateRecord], audit: AuditEvent | None = None
    ) -> None:
        def tx(db: Db) -> None:
            for r in records:
                self._upsert_ca(db, r)
            self._bump_ca_generation(db)
            if audit is not None:
                self._append_audit(db, audit)

        self._write(tx)

    def seed_ca_certificates(
        self,
        records: Sequence[CaCertificateRecord],
        issuer: str,
        renamed_documents: Sequence[tuple[str, str]] = (),
    ) -> None:
        def tx(db: Db) -> None:
            for r in records:
                self._upsert_ca(db, r, keep=True)  # several workers may seed at once
            db.execute("UPDATE certificates SET issuer = ? WHERE issuer IS NULL", [issuer])
            db.execute("UPDATE crls SET issuer = ? WHERE issuer IS NULL", [issuer])
            for old, new in renamed_documents:
                db.execute(
                    "UPDATE signed_documents SET name = ? WHERE name = ? AND NOT EXISTS "
                    "(SELECT 1 FROM signed_documents WHERE name = ?)",
                    [new, old, new],
                )
                db.execute("DELETE FROM signed_documents WHERE name = ?", [old])
            self._bump_ca_generation(db)

        self._write(tx)

    def ca_generation(self) -> int:
        row = self._read_one("SELECT value FROM meta WHERE key = 'ca_generation'")
        return int(row[0]) if row else 0

    def unexpired_issued_by(self, issuer: str, now: dt.datetime, live_only: bool = False) -> int:
        live = " AND status = 'good'" if live_only else ""
        row = self._read_one(
            f"SELECT COUNT(*) FROM certificates WHERE issuer = ? AND not_after >= ?{live}",  # noqa: S608 - constant
            [issuer, _epoch(now)],
        )
        return int(row[0])

    # -- documents signed ahead of time ------------------------------------------------------
    def save_signed_documents(self, documents: Sequence[SignedDocument]) -> None:
        def tx(db: Db) -> None:
            for d in documents:
                db.execute(
                    "INSERT INTO signed_documents (name, der, this_update, next_update) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET der = excluded.der, "
                    "this_update = excluded.this_update, next_update = excluded.next_update",
                    [d.name, d.der, _epoch(d.this_update), _epoch(d.next_update)],
                )

        self._write(tx)

    def signed_documents(self) -> Sequence[SignedDocument]:
        rows = self._read(
            "SELECT name, der, this_update, next_update FROM signed_documents ORDER BY name"
        )
        return [
            SignedDocument(name, bytes(der), _from_epoch(this_update), _from_epoch(next_update))
            for name, der, this_update, next_update in rows
        ]

    # -- leases ------------------------------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, until: dt.datetime, now: dt.datetime) -> bool:
        def tx(db: Db) -> bool:
            row = db.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at < ? "
                "RETURNING holder",
                [name, holder, until.timestamp(), now.timestamp()],
            ).fetchone()
            return row is not None

        held: bool = self._write(tx)
        return held

    def release_lease(self, name: str, holder: str) -> None:
        self._write(
            lambda db: db.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ?", [name, holder]
            )
        )

    # -- audit ---------------------------------------------------------------------------
    @staticmethod
    def _append_audit(db: Db, event: AuditEvent) -> None:
        db.execute(
            "INSERT INTO audit (at, action, actor, serial, detail, peer, outcome) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                _epoch(event.at),
                event.action,
                event.actor,
                event.serial,
                event.detail,
                event.peer,
                event.outcome,
            ],
        )

    def add_token(
        self, token: TokenRecord, audit: AuditEvent, request: RequestRecord | None = None
    ) -> None:
        row = {
            "token_hash": token.token_hash,
            "identity": token.identity,
            "dns_names": json.dumps(list(token.dns_names)),
            "ip_addresses": json.dumps(list(token.ip_addresses)),
            "certificate_ttl": int(token.certificate_ttl.total_seconds()),
            "expires_at": _epoch(token.expires_at),
            "created_by": token.created_by,
            "created_at": _epoch(token.created_at),
            "used_at": None,
        }

        def tx(db: Db) -> None:
            _claim_request(db, request)
            _insert(db, "bootstrap_tokens", row)
            self._append_audit(db, audit)

        self._write(tx)

    def usable_token(self, token_hash: str, now: dt.datetime) -> TokenRecord | None:
        row = self._read_one(
            "SELECT identity, dns_names, ip_addresses, certificate_ttl, expires_at, created_by, "
            "created_at FROM bootstrap_tokens "
            "WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
            [token_hash, _epoch(now)],
        )
        if row is None:
            return None
        identity, dns, ips, ttl, expires_at, created_by, created_at = row
        return TokenRecord(
            token_hash,
            identity,
            tuple(json.loads(dns)),
            tuple(json.loads(ips)),
            dt.timedelta(seconds=ttl),
            _from_epoch(expires_at),
            created_by,
            _from_epoch(created_at),
        )

    def add_enrolled_certificate(
        self,
        record: CertificateRecord,
        audit: AuditEvent,
        token_hash: str,
        now: dt.datetime,
        quota: Quota | None = None,
        request: RequestRecord | None = None,
    ) -> bool:
        row = _certificate_row(record)

        def tx(db: Db) -> bool:
            _claim_request(db, request)
            if quota is not None:  # before the token is spent: a refusal leaves it usable
                self._check_quota(db, record.identity, quota)
            spent = db.execute(
                "UPDATE bootstrap_tokens SET used_at = ? "
                "WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                [_epoch(now), token_hash, _epoch(now)],
            )
            if spent.rowcount != 1:
                raise _Unchanged(False)  # and the request record with it
            _insert(db, "certificates", row)
            self._append_audit(db, audit)
            return True

        try:
            stored: bool = self._write_certificate(record.serial, tx)
        except _Unchanged:
            return False
        return stored

    def count_enroll_failure(
        self, peer: str, now: dt.datetime, window: dt.timedelta
    ) -> tuple[int, dt.datetime]:
        at, expired = now.timestamp(), (now - window).timestamp()

        def tx(db: Db) -> tuple[int, dt.datetime]:
            count, start = db.execute(
                "INSERT INTO enroll_failures (peer, window_start, count) VALUES (?, ?, 1) "
                "ON CONFLICT (peer) DO UPDATE SET "
                "count = CASE WHEN enroll_failures.window_start <= ? THEN 1 "
                "ELSE enroll_failures.count + 1 END, "
                "window_start = CASE WHEN enroll_failures.window_start <= ? "
                "THEN excluded.window_start ELSE enroll_failures.window_start END "
                "RETURNING count, window_start",
                [peer, at, expired, expired],
            ).fetchone()
            return int(count), dt.datetime.fromtimestamp(start, dt.UTC)

        counted: tuple[int, dt.datetime] = self._write(tx)
        return counted

    def count_live(self, now: dt.datetime, within_seconds: int) -> tuple[int, int]:
        row = self._read_one(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN not_after <= ? THEN 1 ELSE 0 END), 0) "
            "FROM certificates WHERE status = 'good' AND not_after > ?",
            [_epoch(now) + within_seconds, _epoch(now)],
        )
        return int(row[0]), int(row[1])

    def prune_expired(self, expired_before: dt.datetime, limit: int) -> int:
        def tx(db: Db) -> int:
            cursor = db.execute(
                "DELETE FROM certificates WHERE serial IN (SELECT serial FROM certificates "
                "WHERE not_after < ? ORDER BY not_after LIMIT ?)",
                [_epoch(expired_before), limit],
            )
            pruned = int(cursor.rowcount)
            # Revocation events of certificates expired as long go too: after not_after a
            # revocation no longer matters to anyone. (Few rows: one per revocation.)
            db.execute(
                "DELETE FROM revocation_events WHERE not_after < ?", [_epoch(expired_before)]
            )
            return pruned

        pruned: int = self._write(tx)
        return pruned

    def prune_enroll_failures(self, before: dt.datetime) -> None:
        self._write(
            lambda db: db.execute(
                "DELETE FROM enroll_failures WHERE window_start < ?", [before.timestamp()]
            )
        )

    # -- idempotent calls' answers ---------------------------------------------------------
    def get_request(self, scope: str, request_id: str, now: dt.datetime) -> RequestRecord | None:
        row = self._read_one(
            "SELECT method, fingerprint, result, created_at, expires_at FROM request_ids "
            "WHERE scope = ? AND request_id = ? AND expires_at > ?",
            [scope, request_id, _epoch(now)],
        )
        if row is None:
            return None
        method, fingerprint, result, created_at, expires_at = row
        return RequestRecord(
            scope,
            request_id,
            method,
            fingerprint,
            result,
            _from_epoch(created_at),
            _from_epoch(expires_at),
        )

    def prune_requests(self, now: dt.datetime, limit: int) -> int:
        def tx(db: Db) -> int:
            cursor = db.execute(
                "DELETE FROM request_ids WHERE (scope, request_id) IN (SELECT scope, request_id "
                "FROM request_ids WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                [_epoch(now), limit],
            )
            return int(cursor.rowcount)

        pruned: int = self._write(tx)
        return pruned

    def append_audit(self, event: AuditEvent) -> None:
        self._write(lambda db: self._append_audit(db, event))

    def audit_events(self, limit: int = 100) -> Sequence[AuditEvent]:
        rows = self._read(
            "SELECT at, action, actor, serial, detail, peer, outcome FROM audit "
            "ORDER BY id DESC LIMIT ?",
            [limit],
        )
        return [
            AuditEvent(_from_epoch(at), a, actor, s, d or "", p or "", o or "ok")
            for at, a, actor, s, d, p, o in rows
        ]

    # -- the audit trail's hash chain --------------------------------------------------------
    def audit_records(self, query: AuditQuery) -> Sequence[AuditRecord]:
        where, params = ["id > ?"], [0 if query.newest_first else query.after_id]  # type: list[str], list[Any]
        for column, value in (
            ("action", query.action),
            ("actor", query.actor),
            ("serial", query.serial),
        ):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            where.append("at >= ?")
            params.append(_epoch(query.since))
        if query.until is not None:
            where.append("at < ?")
            params.append(_epoch(query.until))
        # Only constant fragments are joined in; every value is a bound parameter.
        order = "id DESC" if query.newest_first else "id"
        sql = f"SELECT {_AUDIT} FROM audit WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"  # noqa: S608
        return [_audit_record(r) for r in self._read(sql, [*params, query.limit])]

    def unsealed_audit(self, limit: int) -> Sequence[AuditRecord]:
        rows = self._read(
            f"SELECT {_AUDIT} FROM audit WHERE hash IS NULL ORDER BY id LIMIT ?",  # noqa: S608
            [limit],
        )
        return [_audit_record(r) for r in rows]

    def sealed_audit(self, after_seq: int, limit: int) -> Sequence[AuditRecord]:
        rows = self._read(
            f"SELECT {_AUDIT} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            [after_seq, limit],
        )
        return [_audit_record(r) for r in rows]

    def audit_head(self) -> tuple[int, str] | None:
        row = self._read_one(
            "SELECT seq, hash FROM audit WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1"
        )
        return (int(row[0]), str(row[1])) if row else None

    def seal_audit(self, seals: Sequence[Seal], head_seq: int) -> int:
        def tx(db: Db) -> int:
            row = db.execute("SELECT MAX(seq) FROM audit").fetchone()
            if (row[0] or 0) != head_seq:
                return 0  # another sealer moved the head: its seals stand, ours are void
            sealed = 0
            for seal in seals:
                cursor = db.execute(
                    "UPDATE audit SET seq = ?, prev_hash = ?, hash = ? "
                    "WHERE id = ? AND hash IS NULL",
                    [seal.seq, seal.prev_hash, seal.hash, seal.id],
                )
                sealed += cursor.rowcount
            if sealed != len(seals):
                raise _Resealed
            return sealed

        try:
            done: int = self._write(tx)
        except _Resealed:
            return 0
        return done

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _record(row: Sequence[Any]) -> CertificateRecord:
        r = dict(zip(_COLUMN_NAMES, row, strict=True))
        ocsp = None
        if r["ocsp_der"] is not None:
            ocsp = SignedStatus(
                r["ocsp_der"],
                _from_epoch(r["ocsp_this_update"]),
                _from_epoch(r["ocsp_next_update"]),
            )
        status: Status = "revoked" if r["status"] == "revoked" else "good"
        return CertificateRecord(
            serial=r["serial"],
            identity=r["identity"],
            dns_names=tuple(json.loads(r["dns_names"])),
            ip_addresses=tuple(json.loads(r["ip_addresses"])),
            not_before=_from_epoch(r["not_before"]),
            not_after=_from_epoch(r["not_after"]),
            fingerprint_sha256=r["fingerprint_sha256"],
            der=r["der"],
            requested_by=r["requested_by"] or "",
            issued_at=_from_epoch(r["issued_at"]),
            authorized_by=r["authorized_by"] or "",
            status=status,
            revoked_at=_from_epoch(r["revoked_at"]) if r["revoked_at"] is not None else None,
            reason=Reason(r["reason"]) if r["reason"] is not None else None,
            ocsp=ocsp,
            renewal_override=RenewalWindow(
                _from_epoch(r["renewal_start"]), _from_epoch(r["renewal_end"])
            )
            if r["renewal_start"] is not None
            else None,
            renewal_explanation_url=r["renewal_explanation_url"] or "",
            issuer=r["issuer"] or "",
        )


def backfill_revocation_events(db: Db) -> None:
    """Certificates revoked before events were kept: numbered up to the current epoch, in
    the order they were revoked, so the numbers go on from there."""
    db.execute(
        "INSERT INTO revocation_events "
        "(sequence, serial, kind, at, reason, revoked_at, not_after) "
        "SELECT (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'revocations') "
        "- (SELECT COUNT(*) FROM certificates WHERE status = 'revoked') "
        "+ ROW_NUMBER() OVER (ORDER BY revoked_at, serial), "
        "serial, 'revoked', revoked_at, reason, revoked_at, not_after "
        "FROM certificates WHERE status = 'revoked'"
    )
