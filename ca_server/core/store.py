"""The storage port: the interface the core receives and the records that cross it, defined here
so that the core imports nothing from ``ca_server.store``, which implements it. Implementations
keep certificates, the audit trail and CRL numbers; they make no decisions (the core does) but
make each change atomic."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .ocsp import SignedStatus
from .renewal_window import RenewalWindow
from .revocation import Reason, RevokedEntry

Status = Literal["good", "revoked"]
# The CA's own certificates: roots (self-signed), intermediates (they issue leaves) and
# cross-certificates (a newer root's key and name, signed by an older root, so that clients
# that trust only the older root still verify chains under the newer one).
CaKind = Literal["root", "intermediate", "cross"]
# active: the root that signs new intermediates / the intermediate that issues; retiring: still
# published (a root, during its overlap) or still answering OCSP and CRL for what it issued (an
# intermediate); retired: nothing it vouches for is live any more, so it is no longer published.
CaState = Literal["active", "retiring", "retired"]


class DuplicateSerial(Exception):
    """A certificate with this serial is already stored (the caller picks a new serial)."""


class DuplicateRequest(Exception):
    """A live record of this caller's request_id is already stored (by a concurrent call):
    nothing was written; the caller answers with that record's result."""


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    serial: str  # canonical lowercase hex
    identity: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint_sha256: str
    der: bytes
    requested_by: str
    issued_at: dt.datetime
    # Whose authority granted the names: the requester for SignCertificate, carried over on
    # renewal, so a renewal can be re-checked against what that authority may grant today.
    authorized_by: str = ""
    status: Status = "good"
    revoked_at: dt.datetime | None = None
    reason: Reason | None = None
    # The current pre-signed OCSP response (SHA-1 CertID, no nonce), if one was made.
    ocsp: SignedStatus | None = None
    # A renewal window an operator set (renew-now), which replaces the default one.
    renewal_override: RenewalWindow | None = None
    renewal_explanation_url: str = ""
    # The key id (subjectKeyIdentifier, hex) of the intermediate that issued it.
    issuer: str = ""


@dataclass(frozen=True, slots=True)
class StatusRow:
    """The part of a record that status answers need (the OCSP hot path reads only this)."""

    status: Status
    revoked_at: dt.datetime | None
    reason: Reason | None
    ocsp: SignedStatus | None
    serial: str = ""
    issuer: str = ""  # key id of the issuing intermediate


@dataclass(frozen=True, slots=True)
class OcspUpdate:
    """A re-signed response, to be stored only if the certificate is still in the state it
    was signed for (status, reason and revocation time): a refresh never undoes a revocation."""

    serial: str
    ocsp: SignedStatus
    status: Status
    reason: Reason | None
    revoked_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    at: dt.datetime
    action: str  # "issue", "renew", "revoke", "init", ...
    actor: str  # the caller's identity
    serial: str | None = None
    detail: str = ""
    peer: str = ""  # the caller's network address, when it came over the network
    outcome: str = "ok"  # "ok", or why it was refused


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An audit row as stored: the event, its append order (id) and, once sealed into the
    hash chain (see audit_chain), its position there and the hashes."""

    id: int
    at: dt.datetime
    action: str
    actor: str
    serial: str | None
    detail: str
    peer: str
    outcome: str
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    """One change of a certificate's revocation state, in the order every process sees them:
    `sequence` is the store's revocation epoch after the change (gap-free, commit-ordered)."""

    sequence: int
    serial: str
    kind: Literal["revoked", "released"]
    at: dt.datetime  # when the change was made
    reason: Reason | None  # for "revoked"
    revoked_at: dt.datetime | None  # for "revoked"
    not_after: dt.datetime  # the certificate's: after it, the event no longer matters


@dataclass(frozen=True, slots=True)
class Seal:
    """A row's place in the hash chain, given when it is sealed."""

    id: int
    seq: int
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditQuery:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    action: str | None = None
    actor: str | None = None
    serial: str | None = None
    after_id: int = 0  # keyset cursor (ignored when newest_first)
    limit: int = 100
    newest_first: bool = False


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A bootstrap token, kept only as the SHA-256 of its text."""

    token_hash: str
    identity: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    certificate_ttl: dt.timedelta
    expires_at: dt.datetime
    created_by: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The answer given to one idempotent call (see core.idempotency), written in the same
    transaction as the change it answers. (scope, request_id) is unique while the record lives:
    scope is the caller (its identity, or for Enroll its token's hash); fingerprint a hash of
    the call's method and fields; result what the answer is rebuilt from (JSON)."""

    scope: str
    request_id: str
    method: str
    fingerprint: str
    result: str
    created_at: dt.datetime
    expires_at: dt.datetime


class RevokeOutcome(enum.Enum):
    REVOKED = "revoked"
    ALREADY_REVOKED = "already_revoked"
    RELEASED = "released"  # a certificateHold lifted
    NOT_HELD = "not_held"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class ListQuery:
    status: Status | None = None
    expiring_before: dt.datetime | None = None
    limit: int = 100
    after: tuple[int, str] | None = None  # keyset cursor: (issued_at epoch, serial)


@dataclass(frozen=True, slots=True)
class StoredCrl:
    """A published CRL, kept in the store so that every process sharing it serves the one the
    background builder made (one number, one set of bytes)."""

    der: bytes
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    epoch: int  # the store's revocation epoch it reflects
    issuer: str = ""  # key id of the intermediate that signed it (each has its own CRL)


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """A document signed ahead of time and kept for every process: the root's CRL and its OCSP
    response about the intermediate (see root_documents)."""

    name: str
    der: bytes
    this_update: dt.datetime
    next_update: dt.datetime


@dataclass(frozen=True, slots=True)
class CaCertificateRecord:
    """One of the CA's own certificates and its place in the hierarchy, kept in the store so
    that every process and replica sees a rotation (their keys stay files on each machine)."""

    serial: str
    kind: CaKind
    state: CaState
    key_id: str  # subjectKeyIdentifier, hex: what CertIDs, AKIs and URLs name it by
    issuer_key_id: str  # the signer's key id (its own for a self-signed root)
    der: bytes
    not_after: dt.datetime
    created_at: dt.datetime
    # A retiring root stays published at least until then (the overlap the operator chose).
    overlap_until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Quota:
    """Limits on one identity, checked in the transaction that stores its new certificate
    (so they hold exactly, also across processes): at most `max_issued` issued since `since`,
    at most `max_live` unrevoked and unexpired at `now`. 0 means no limit."""

    since: dt.datetime
    max_issued: int
    now: dt.datetime
    max_live: int


class QuotaExceeded(Exception):
    """Nothing was stored: the identity is at a limit of its Quota until `until`."""

    def __init__(self, kind: Literal["rate", "live"], count: int, until: dt.datetime) -> None:
        super().__init__(kind)
        self.kind, self.count, self.until = kind, count, until


class Store(Protocol):
    def add_certificate(
        self,
        record: CertificateRecord,
        audit: AuditEvent,
        quota: Quota | None = None,
        request: RequestRecord | None = None,
    ) -> None:
        """Store a new certificate and its audit event in one transaction, durably, with the
        record of the request it answers if given. Raise DuplicateSerial if the serial exists,
        QuotaExceeded if its identity is at a limit of `quota`, DuplicateRequest if a live
        record of `request`'s scope and id exists (each writes nothing)."""
        ...

    def check_quota(self, identity: str, quota: Quota) -> None:
        """Raise QuotaExceeded if `identity` is at a limit of `quota` now (a read: what
        add_certificate would refuse, for validate_only)."""
        ...

    def get_request(self, scope: str, request_id: str, now: dt.datetime) -> RequestRecord | None:
        """The live (unexpired at `now`) record of this caller's request_id."""
        ...

    def prune_requests(self, now: dt.datetime, limit: int) -> int:
        """Delete up to `limit` request records expired at `now`; return how many."""
        ...

    def get_certificate(self, serial: str) -> CertificateRecord | None: ...

    def override_renewal(
        self,
        serials: Sequence[str],
        window: RenewalWindow,
        explanation_url: str,
        audit: AuditEvent,
    ) -> int:
        """Give these certificates (those still good) `window` in place of their default
        renewal window, with the audit event, in one transaction; return how many changed."""
        ...

    def get_status(self, serial: str) -> StatusRow | None: ...

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
        """Mark a certificate revoked, with its audit event, atomically: a good one, or one on
        certificateHold whose revocation becomes final (any reason but hold). The request
        record, if given, is stored only with a revocation (else DuplicateRequest as
        add_certificate)."""
        ...

    def release_hold(
        self,
        serial: str,
        audit: AuditEvent,
        ocsp: SignedStatus | None = None,
        request: RequestRecord | None = None,
    ) -> RevokeOutcome:
        """Make a certificate on certificateHold good again (RELEASED), atomically; the
        request record as revoke."""
        ...

    def update_ocsp(self, updates: Sequence[OcspUpdate]) -> int:
        """Store re-signed responses in one transaction (see OcspUpdate); return how many."""
        ...

    def stale_ocsp(
        self, next_update_before: dt.datetime, now: dt.datetime, limit: int
    ) -> Sequence[StatusRow]:
        """Unexpired certificates whose stored response's nextUpdate is before the given
        time, soonest first."""
        ...

    def list_certificates(self, query: ListQuery) -> Sequence[CertificateRecord]:
        """Certificates ordered by issued_at, then in the order they were written, after the
        cursor, at most query.limit."""
        ...

    def revoked_unexpired(
        self, now: dt.datetime, issuer: str | None = None
    ) -> Sequence[RevokedEntry]:
        """Revoked certificates not yet expired (not_after >= now): what a CRL lists; only
        those of the intermediate with key id `issuer` when given."""
        ...

    def revocation_events(self, after: int, limit: int) -> Sequence[RevocationEvent]:
        """Events with sequence > after, oldest first. Events of certificates removed by
        retention are gone with them."""
        ...

    def revocation_epoch(self) -> int:
        """A counter that grows with every revocation by any process sharing the store."""
        ...

    def next_crl_number(self) -> int:
        """Atomically increment and return the persisted CRL number (monotonic, from 1)."""
        ...

    def add_token(
        self, token: TokenRecord, audit: AuditEvent, request: RequestRecord | None = None
    ) -> None:
        """Store a new bootstrap token (its hash) with its audit event, and the request record
        (DuplicateRequest as add_certificate)."""
        ...

    def usable_token(self, token_hash: str, now: dt.datetime) -> TokenRecord | None:
        """The token if it is known, unused and unexpired (a read: it spends nothing)."""
        ...

    def add_enrolled_certificate(
        self,
        record: CertificateRecord,
        audit: AuditEvent,
        token_hash: str,
        now: dt.datetime,
        quota: Quota | None = None,
        request: RequestRecord | None = None,
    ) -> bool:
        """Spend the token and store the certificate it bought, in one transaction: of
        concurrent attempts with one token exactly one stores its certificate. False (nothing
        written) if the token is no longer usable; DuplicateSerial, DuplicateRequest as
        add_certificate."""
        ...

    def count_enroll_failure(
        self, peer: str, now: dt.datetime, window: dt.timedelta
    ) -> tuple[int, dt.datetime]:
        """Count one refused enrollment from `peer`, atomically for every process sharing the
        store: (failures in the peer's current window, when that window began). A window
        begins at the first failure after the previous one ended."""
        ...

    def count_live(self, now: dt.datetime, within_seconds: int) -> tuple[int, int]:
        """(unrevoked and unexpired at `now`, of those how many expire within the seconds)."""
        ...

    def prune_expired(self, expired_before: dt.datetime, limit: int) -> int:
        """Delete up to `limit` certificates whose not_after is before `expired_before` (their
        audit events stay); return how many."""
        ...

    def prune_enroll_failures(self, before: dt.datetime) -> None:
        """Forget windows that began before `before` (they are over)."""
        ...

    def append_audit(self, event: AuditEvent) -> None:
        """Record an event that changes no certificate (e.g. the CA's creation)."""
        ...

    def audit_events(self, limit: int = 100) -> Sequence[AuditEvent]:
        """The newest audit events, newest first."""
        ...

    def audit_records(self, query: AuditQuery) -> Sequence[AuditRecord]:
        """Rows matching the query, oldest first (by id), after query.after_id."""
        ...

    def unsealed_audit(self, limit: int) -> Sequence[AuditRecord]:
        """Rows not yet in the hash chain, oldest first."""
        ...

    def sealed_audit(self, after_seq: int, limit: int) -> Sequence[AuditRecord]:
        """Sealed rows in chain order, after position after_seq."""
        ...

    def audit_head(self) -> tuple[int, str] | None:
        """(seq, hash) of the last sealed row, or None when nothing is sealed."""
        ...

    def seal_audit(self, seals: Sequence[Seal], head_seq: int) -> int:
        """Write seals in one transaction if the chain's head is still at head_seq (else
        nothing: another sealer moved it); return how many rows were sealed."""
        ...

    def save_crl(self, crl: StoredCrl) -> None:
        """Keep a newly built CRL as the latest (older ones may be dropped)."""
        ...

    def latest_crl(self, newer_than: int = 0, issuer: str | None = None) -> StoredCrl | None:
        """The stored CRL with the highest number (of `issuer`'s, when given), if that number
        is above newer_than. CRL numbers come from one counter: each issuer's only grow."""
        ...

    # -- the CA's own certificates ------------------------------------------------------------
    def ca_certificates(self) -> Sequence[CaCertificateRecord]:
        """Every root, intermediate and cross-certificate, oldest first."""
        ...

    def save_ca_certificates(
        self, records: Sequence[CaCertificateRecord], audit: AuditEvent | None = None
    ) -> None:
        """Insert or update these (by serial) in one transaction, with the audit event, and
        move the CA generation so that every process reloads them."""
        ...

    def seed_ca_certificates(
        self,
        records: Sequence[CaCertificateRecord],
        issuer: str,
        renamed_documents: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A CA from before rotations: record its root and intermediate (keeping any already
        recorded), give every certificate and CRL without an issuer the key id `issuer`, and
        rename the root's documents (old, new) — idempotent, in one transaction."""
        ...

    def ca_generation(self) -> int:
        """A counter that moves with every change to the CA's own certificates."""
        ...

    def unexpired_issued_by(self, issuer: str, now: dt.datetime, live_only: bool = False) -> int:
        """How many certificates the intermediate `issuer` issued that expire at or after now
        (revoked ones included, they still need its CRL and OCSP answers, unless live_only)."""
        ...

    def save_signed_documents(self, documents: Sequence[SignedDocument]) -> None:
        """Keep these (replacing any of the same name), in one transaction."""
        ...

    def signed_documents(self) -> Sequence[SignedDocument]: ...

    def acquire_lease(self, name: str, holder: str, until: dt.datetime, now: dt.datetime) -> bool:
        """Take or extend the lease `name` for `holder` until `until`, atomically: granted if
        it is free, expired (before `now`) or already the holder's. True if held now."""
        ...

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once, if `holder` holds it."""
        ...

    def close(self) -> None: ...
