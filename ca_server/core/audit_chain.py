"""The audit trail as a hash chain: each sealed row carries the SHA-256 of its canonical form,
which includes the previous row's hash and its own position, so an edited, deleted or
reordered row breaks the chain at that row.

Rows are appended without a hash, in whatever transaction records what they describe (no
lock shared by every replica on the issuance path), and sealed shortly after, in order, by the
one process holding the maintenance lease. A row's position in the chain (``seq``) is given
when it is sealed. Rows removed from the end of the trail leave no trace in the chain itself;
keep an anchor (the head's seq and hash, which `ca-server audit verify` prints) elsewhere to
catch that too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .store import AuditRecord, Seal, Store

GENESIS = "0" * 64  # the "previous hash" of the first sealed row


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    sealed: int  # rows checked
    head_seq: int
    head_hash: str
    first_bad: AuditRecord | None = None
    problem: str = ""


def canonical(row: AuditRecord, seq: int, prev_hash: str) -> bytes:
    """The bytes a row's hash covers: every field, its position and its predecessor's hash."""
    return json.dumps(
        {
            "id": row.id,
            "seq": seq,
            "prev": prev_hash,
            "at": int(row.at.timestamp()),
            "action": row.action,
            "actor": row.actor,
            "peer": row.peer,
            "serial": row.serial,
            "outcome": row.outcome,
            "detail": row.detail,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def row_hash(row: AuditRecord, seq: int, prev_hash: str) -> str:
    return hashlib.sha256(canonical(row, seq, prev_hash)).hexdigest()


def seal(rows: Iterable[AuditRecord], head_seq: int, head_hash: str) -> list[Seal]:
    """Seals for unsealed rows, in the order given, continuing the chain from its head."""
    seals = []
    for row in rows:
        head_seq += 1
        digest = row_hash(row, head_seq, head_hash)
        seals.append(Seal(row.id, head_seq, head_hash, digest))
        head_hash = digest
    return seals


def verify(rows: Iterable[AuditRecord]) -> Verdict:
    """Walk sealed rows in seq order; name the first that does not follow from the one before
    (edited: its hash; deleted or reordered: its seq or its predecessor's hash)."""
    expected_seq, prev, count = 1, GENESIS, 0
    for row in rows:
        if row.seq != expected_seq:
            return Verdict(
                False, count, expected_seq - 1, prev, row, f"expected seq {expected_seq}"
            )
        if row.prev_hash != prev:
            return Verdict(False, count, row.seq - 1, prev, row, "previous hash does not match")
        if row.hash != row_hash(row, row.seq, prev):
            return Verdict(False, count, row.seq - 1, prev, row, "hash does not match its fields")
        prev, expected_seq, count = row.hash, expected_seq + 1, count + 1
    return Verdict(True, count, expected_seq - 1, prev)


def seal_pending(store: Store, batch: int = 500) -> int:
    """Seal up to `batch` unsealed rows onto the chain's head (the maintenance lease holder
    calls this; a second sealer racing it seals nothing)."""
    rows = store.unsealed_audit(batch)
    if not rows:
        return 0
    head_seq, head_hash = store.audit_head() or (0, GENESIS)
    return store.seal_audit(seal(rows, head_seq, head_hash), head_seq)


def verify_store(store: Store, page: int = 1000) -> Verdict:
    """verify() over every sealed row of the store, a page at a time."""

    def rows() -> Iterator[AuditRecord]:
        after = 0
        while True:
            chunk = store.sealed_audit(after, page)
            yield from chunk
            if len(chunk) < page:
                return
            after = chunk[-1].seq or after

    return verify(rows())
