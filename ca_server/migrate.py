"""``ca-server migrate --from sqlite:///…/ca.db --to postgresql://…``: move a CA's whole history
(certificates with their revocations and OCSP responses, the audit trail, bootstrap tokens, the
CRL number and the latest CRLs, the CA's own roots, intermediates and cross-certificates) into
a new database, for a move to replicas.

Rows are copied in batches, each batch one transaction, and every insert skips a row that is
already there, so an interrupted run is resumed by running it again, and a finished one can be
rerun harmlessly. The target must be empty, or hold an unfinished migration from the same
source: a database that holds anything else is refused. The source is only read."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from .core.errors import ConfigurationError
from .store.sql import Db, SqlStore

# (table, key column(s) its rows are read in order of, columns)
TABLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "certificates",
        "serial",
        (
            "serial", "identity", "dns_names", "ip_addresses", "not_before", "not_after",
            "status", "revoked_at", "reason", "fingerprint_sha256", "der", "requested_by",
            "issued_at", "authorized_by", "ocsp_der", "ocsp_this_update", "ocsp_next_update",
            "invalidity_date", "renewal_start", "renewal_end", "renewal_explanation_url",
            "issuer",
        ),
    ),
    (
        "audit",
        "id",
        (
            "id", "at", "action", "actor", "serial", "detail", "peer", "outcome", "seq",
            "prev_hash", "hash",
        ),
    ),
    (
        "bootstrap_tokens",
        "token_hash",
        (
            "token_hash", "identity", "dns_names", "ip_addresses", "certificate_ttl",
            "expires_at", "created_by", "created_at", "used_at",
        ),
    ),
    ("crls", "number", ("number", "der", "this_update", "next_update", "epoch", "issuer")),
    ("signed_documents", "name", ("name", "der", "this_update", "next_update")),
    (
        "revocation_events",
        "sequence",
        ("sequence", "serial", "kind", "at", "reason", "revoked_at", "not_after"),
    ),
    (
        "request_ids",
        "scope, request_id",
        (
            "scope", "request_id", "method", "fingerprint", "result", "created_at",
            "expires_at",
        ),
    ),
    (
        "ca_certificates",
        "serial",
        (
            "serial", "kind", "state", "key_id", "issuer_key_id", "der", "not_after",
            "created_at", "overlap_until",
        ),
    ),
)  # fmt: skip
COUNTERS = ("crl_number", "revocations", "ca_generation")
BATCH = 500

Progress = Callable[[str, int, int], None]  # (table, rows copied so far in all, total)


@dataclass(frozen=True, slots=True)
class Summary:
    copied: dict[str, int]
    already_done: bool


def _count(store: SqlStore, table: str) -> int:
    return int(store._read_one(f"SELECT COUNT(*) FROM {table}")[0])  # noqa: S608 - constant


def _meta(store: SqlStore, key: str) -> str | None:
    row = store._read_one("SELECT value FROM meta WHERE key = ?", [key])
    return None if row is None else str(row[0])


def _set_meta(db: Db, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


def _claim(source_name: str, target: SqlStore) -> bool:
    """Whether the target already holds this finished migration; refuse any other content."""
    state, origin = _meta(target, "migration_state"), _meta(target, "migrated_from")
    if origin == source_name and state == "done":
        return True
    if origin == source_name and state == "copying":
        return False  # resume
    if any(_count(target, table) for table, _, _ in TABLES):
        raise ConfigurationError(
            "the target database is not empty (it holds certificates, audit events, tokens or "
            "CRLs); migrate only into a new, empty database"
        )

    def claim(db: Db) -> None:
        _set_meta(db, "migrated_from", source_name)
        _set_meta(db, "migration_state", "copying")

    target._write(claim)
    return False


def migrate(
    source: SqlStore,
    target: SqlStore,
    source_name: str,
    progress: Progress | None = None,
    batch: int = BATCH,
) -> Summary:
    if _claim(source_name, target):
        return Summary({table: _count(target, table) for table, _, _ in TABLES}, True)
    total = sum(_count(source, table) for table, _, _ in TABLES)
    done = 0
    copied: dict[str, int] = {}
    for table, key, columns in TABLES:
        # Certificates keep the order they were written in (ListCertificates' tiebreak within
        # a second): read in that order, and given to the target's column for it.
        ordered = table == "certificates"
        read_key = source.insertion_order if ordered else key
        written = (
            [*columns, target.insertion_order]
            if ordered and target.insertion_order != ("rowid")
            else list(columns)
        )
        names = ", ".join(columns)
        marks = ", ".join("?" * len(written))
        insert = (
            f"INSERT INTO {table} ({', '.join(written)}) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT ({key}) DO NOTHING"
        )
        copied[table] = 0
        width_of_key = read_key.count(",") + 1  # a composite key is compared as a row value
        last: list[Any] | None = None
        while True:
            marks_of_key = ", ".join("?" * width_of_key)
            where = f"WHERE ({read_key}) > ({marks_of_key}) " if last is not None else ""
            rows = source._read(
                f"SELECT {names}, {read_key} FROM {table} {where}"  # noqa: S608 - constants
                f"ORDER BY {read_key} LIMIT ?",
                [*(last or []), batch],
            )
            if not rows:
                break

            def copy(
                db: Db, rows: list[Any] = rows, insert: str = insert, width: int = len(written)
            ) -> None:
                for row in rows:
                    db.execute(insert, list(row)[:width])

            target._write(copy)
            last = list(rows[-1][-width_of_key:])
            copied[table] += len(rows)
            done += len(rows)
            if progress is not None:
                progress(table, done, total)

    counters = {name: int(_meta(source, name) or 0) for name in COUNTERS}
    top_audit = int(source._read_one("SELECT COALESCE(MAX(id), 0) FROM audit")[0])
    top_order = int(
        source._read_one(
            f"SELECT COALESCE(MAX({source.insertion_order}), 0) FROM certificates"  # noqa: S608
        )[0]
    )

    def finish(db: Db) -> None:
        for name, value in counters.items():
            # Never backwards: CRL numbers must keep increasing (RFC 5280 5.2.3).
            current = db.execute("SELECT value FROM meta WHERE key = ?", [name]).fetchone()
            _set_meta(db, name, str(max(value, int(current[0]) if current else 0)))
        target.after_bulk_insert(db, "audit", "id", top_audit)
        if target.insertion_order != "rowid":
            target.after_bulk_insert(db, "certificates", target.insertion_order, top_order)
        _set_meta(db, "migration_state", "done")

    target._write(finish)
    return Summary(copied, False)


def terminal_progress(out: TextIO = sys.stderr) -> Progress:
    """Rows copied of total: rewritten in place on a terminal, a line per table otherwise."""
    tty = out.isatty()
    seen: set[str] = set()

    def show(table: str, done: int, total: int) -> None:
        if tty:
            out.write(f"\rmigrating: {done:,} of {total:,} rows ({table})   ")
            if done == total:
                out.write("\n")
        elif table not in seen or done == total:
            seen.add(table)
            out.write(f"migrating: {done:,} of {total:,} rows ({table})\n")
        out.flush()

    return show
