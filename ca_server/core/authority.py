"""The certificate authority: signs, renews, revokes, answers status, builds CRLs and
authenticates callers. It receives its store, clock, keys and policy; it knows nothing of
gRPC or SQL, and raises only the errors in ``errors``."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import ipaddress
import json
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ..store.base import (
    AuditEvent,
    CertificateRecord,
    DuplicateSerial,
    ListQuery,
    OcspUpdate,
    RevokeOutcome,
    Status,
    Store,
    TokenRecord,
)
from .bootstrap import (
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_TTL,
    FailureLimiter,
    new_token,
    token_hash,
)
from .clock import Clock, utc_seconds
from .crl_publisher import CrlPublisher, CrlResult
from .csr import parse_csr
from .durations import format_duration
from .errors import (
    AlreadyRevoked,
    Conflict,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    Unauthenticated,
)
from .names import IPAddress, normalize_dns_name, parse_spiffe_id
from .ocsp import CertStatus, OcspQuery, SignedStatus, StatusAnswer, issuer_hashes
from .policy import (
    Caller,
    Policy,
    RequestedNames,
    check_is_admin,
    check_may_revoke,
    check_request,
)
from .profile import (
    Issuer,
    LeafRequest,
    PublicUrls,
    build_leaf,
    build_ocsp_responder,
    certificate_names,
    fingerprint_sha256,
    pem,
    random_serial,
    serial_hex,
)
from .responder import OcspResponder
from .revocation import Reason

_HEX = re.compile(r"[0-9a-f]+")
MAX_PAGE_SIZE = 1000
_CA_ACTOR = "signet:ca"
_AUTH_CACHE_MAX = 50_000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class IssuanceSettings:
    default_validity: dt.timedelta = dt.timedelta(hours=24)
    max_validity: dt.timedelta = dt.timedelta(days=30)
    min_validity: dt.timedelta = dt.timedelta(minutes=5)
    backdate: dt.timedelta = dt.timedelta(minutes=1)
    crl_validity: dt.timedelta = dt.timedelta(hours=24)
    ocsp_validity: dt.timedelta = dt.timedelta(hours=4)
    # How long a caller's "not revoked" answer is reused before the store is asked again.
    # Revocations made through this process invalidate it at once.
    auth_cache_ttl: dt.timedelta = dt.timedelta(seconds=2)
    public_urls: PublicUrls | None = None
    # OCSP responses signed by a short-lived delegated responder certificate (True) or by the
    # issuing CA itself (False).
    ocsp_delegated: bool = True
    ocsp_signer_validity: dt.timedelta = dt.timedelta(days=3)


@dataclass(frozen=True, slots=True)
class Issued:
    certificate: x509.Certificate
    chain_pem: str
    serial: str
    fingerprint_sha256: str

    @property
    def certificate_pem(self) -> str:
        return pem(self.certificate)

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class StatusResult:
    answer: StatusAnswer
    this_update: dt.datetime
    next_update: dt.datetime
    ocsp_response: bytes


@dataclass(frozen=True, slots=True)
class Page:
    records: Sequence[CertificateRecord]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class _PeerCertificate:
    serial: str
    fingerprint: str
    identity: str | None
    not_after: dt.datetime
    issuer: x509.Name


@functools.lru_cache(maxsize=4096)
def _parse_peer(cert_pem: bytes) -> _PeerCertificate:
    cert = x509.load_pem_x509_certificate(cert_pem)
    identity, _, _ = certificate_names(cert)
    return _PeerCertificate(
        serial_hex(cert.serial_number),
        fingerprint_sha256(cert),
        identity,
        cert.not_valid_after_utc,
        cert.issuer,
    )


def _update(answer: StatusAnswer, signed: SignedStatus) -> OcspUpdate:
    revoked = answer.status is CertStatus.REVOKED
    return OcspUpdate(
        serial_hex(answer.serial),
        signed,
        "revoked" if revoked else "good",
        answer.reason if revoked else None,
        answer.revoked_at if revoked else None,
    )


def _answer_of(record: CertificateRecord) -> StatusAnswer:
    serial = int(record.serial, 16)
    if record.status == "revoked":
        return StatusAnswer(serial, CertStatus.REVOKED, record.revoked_at, record.reason)
    return StatusAnswer(serial, CertStatus.GOOD)


def parse_serial(text: str) -> str:
    """Accept hex in any case, with optional colons or 0x; return the canonical form."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not cleaned:
        raise InvalidRequest("serial_number is required (hex, as in the certificate)")
    if len(cleaned) > 40:
        raise InvalidRequest("serial_number is longer than 20 octets (RFC 5280 allows at most 20)")
    if not _HEX.fullmatch(cleaned):  # int(x, 16) alone would also take "-1" and "1_0"
        raise InvalidRequest(f"serial_number {text!r} is not hexadecimal")
    return serial_hex(int(cleaned, 16))


def _encode_cursor(record: CertificateRecord) -> str:
    raw = json.dumps([int(record.issued_at.timestamp()), record.serial]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        issued_at, serial = json.loads(raw)
        if not isinstance(issued_at, int) or not 0 <= issued_at < 2**62:
            raise ValueError
        if not isinstance(serial, str) or not _HEX.fullmatch(serial):
            raise ValueError
        return issued_at, serial
    except (ValueError, TypeError):
        raise InvalidRequest("page_token is not one this server returned") from None


class CertificateAuthority:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        issuer: Issuer,
        root: x509.Certificate,
        policy: Policy,
        settings: IssuanceSettings | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.issuer = issuer
        self.root = root
        self.policy = policy
        self.settings = settings or IssuanceSettings()
        self.responder = OcspResponder(
            issuer=issuer,
            clock=clock,
            validity=self.settings.ocsp_validity,
            issue_signer=self._issue_ocsp_signer if self.settings.ocsp_delegated else None,
            signer_validity=self.settings.ocsp_signer_validity,
        )
        self._writeback = ThreadPoolExecutor(1, thread_name_prefix="ocsp-writeback")
        self._enroll_failures = FailureLimiter(clock)
        self.crls = CrlPublisher(
            store=store, clock=clock, issuer=issuer, validity=self.settings.crl_validity
        )
        # fingerprint -> when the store last said that certificate is ours and not revoked
        self._auth_ok: dict[str, dt.datetime] = {}
        self._auth_generation = 0  # bumped by every revocation this process makes
        self._auth_lock = threading.Lock()
        self._revocation_listeners: list[Callable[[str], None]] = []

    # -- issuance -----------------------------------------------------------------------------
    def sign(self, caller: Caller, csr_pem: str, validity: dt.timedelta | None) -> Issued:
        csr = parse_csr(csr_pem)
        if len(csr.uris) != 1:
            raise InvalidRequest(
                "the CSR must carry exactly one URI SAN, the SPIFFE ID "
                f"spiffe://{self.policy.trust_domain}/<path>; it has {len(csr.uris)}"
            )
        names = RequestedNames(csr.uris[0], csr.dns_names, csr.ip_addresses)
        check_request(self.policy, caller, names)
        lifetime = self._lifetime(validity, self.settings.default_validity)
        return self._issue(
            public_key=csr.public_key,
            names=names,
            common_name=csr.common_name,
            lifetime=lifetime,
            actor=caller.identity,
            action="issue",
        )

    def renew(
        self,
        caller: Caller,
        csr_pem: str,
        validity: dt.timedelta | None,
        revoke_previous: bool = False,
    ) -> Issued:
        """A new certificate for the caller's identity and names, for the CSR's (new) key;
        with revoke_previous, the caller's certificate is then revoked as superseded."""
        issued = self._renew(caller, csr_pem, validity)
        if revoke_previous:
            # A concurrent revocation may get there first: the outcome is the same.
            with contextlib.suppress(AlreadyRevoked):
                self.revoke(caller, caller.serial, Reason.SUPERSEDED)
        return issued

    def _renew(self, caller: Caller, csr_pem: str, validity: dt.timedelta | None) -> Issued:
        csr = parse_csr(csr_pem)  # only its key counts: names come from the current certificate
        current = self.store.get_certificate(caller.serial)
        if current is None:
            raise Unauthenticated("the certificate you authenticated with is not known to this CA")
        if current.status == "revoked":
            raise Unauthenticated(
                f"the certificate {caller.serial} you authenticated with is revoked"
            )
        old = x509.load_der_x509_certificate(current.der)
        if old.public_key() == csr.public_key:
            raise InvalidRequest("renewal needs a new key: the CSR carries the current one")
        names = RequestedNames(
            current.identity,
            current.dns_names,
            tuple(ipaddress.ip_address(ip) for ip in current.ip_addresses),
        )
        # Re-check the names against what their grantor may grant today, so that narrowing
        # policy (or removing an admin) takes effect at the next renewal, not never.
        check_request(self.policy, self._grantor(current.authorized_by), names)
        cns = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        old_lifetime = current.not_after - current.not_before - self.settings.backdate
        default = min(max(old_lifetime, self.settings.min_validity), self.settings.max_validity)
        return self._issue(
            public_key=csr.public_key,
            names=names,
            common_name=str(cns[0].value) if cns else None,
            lifetime=self._lifetime(validity, default),
            actor=caller.identity,
            authorized_by=current.authorized_by,
            action="renew",
            detail=f"renews {caller.serial}",
        )

    def _grantor(self, authorized_by: str) -> Caller:
        """The authority behind a certificate's names, as a Caller for the policy checks. The
        CA's own grants (init's admin credentials, the serving certificate) count as admin."""
        if not authorized_by.startswith("spiffe://"):
            return Caller(authorized_by, "", is_admin=True)
        return Caller(authorized_by, "", is_admin=self.policy.is_admin(authorized_by))

    # -- bootstrap ------------------------------------------------------------------------------
    def create_token(
        self,
        caller: Caller,
        identity: str,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str],
        token_ttl: dt.timedelta | None,
        certificate_ttl: dt.timedelta | None,
    ) -> tuple[str, dt.datetime]:
        """A one-time token for `identity` and the names given; returns (token, expires_at).
        The token itself is never stored or logged."""
        check_is_admin(caller, "CreateBootstrapToken")
        try:
            sid = str(parse_spiffe_id(identity))
            dns = tuple(dict.fromkeys(normalize_dns_name(n) for n in dns_names))
            ips = tuple(dict.fromkeys(ipaddress.ip_address(i) for i in ip_addresses))
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        check_request(self.policy, caller, RequestedNames(sid, dns, ips))
        ttl = token_ttl or DEFAULT_TOKEN_TTL
        if not dt.timedelta(0) < ttl <= MAX_TOKEN_TTL:
            raise InvalidRequest(f"token_ttl must be more than 0 and at most {MAX_TOKEN_TTL}")
        lifetime = self._lifetime(certificate_ttl, self.settings.default_validity)
        now = utc_seconds(self.clock.now())
        token = new_token()
        record = TokenRecord(
            token_hash(token),
            sid,
            dns,
            tuple(str(i) for i in ips),
            lifetime,
            now + ttl,
            caller.identity,
            now,
        )
        detail = f"token for {sid} ({record.token_hash[:12]}), expires {record.expires_at}"
        self.store.add_token(record, AuditEvent(now, "token-create", caller.identity, None, detail))
        return token, record.expires_at

    def enroll(self, token: str, csr_pem: str, peer: str) -> Issued:
        """A first certificate for whoever holds a valid, unused token; the names are the
        token's, the key the CSR's. Refusals are audited and rate-limited per peer."""
        try:
            self._enroll_failures.check(peer)
        except LimitExceeded:
            now = utc_seconds(self.clock.now())
            self.store.append_audit(AuditEvent(now, "enroll-refused", peer, None, "rate-limited"))
            raise
        csr = parse_csr(csr_pem)  # a bad CSR must not burn the token
        now = utc_seconds(self.clock.now())
        record = self.store.consume_token(token_hash(token), now) if token else None
        if record is None:
            self._enroll_failures.failed(peer)
            self.store.append_audit(AuditEvent(now, "enroll-refused", peer, None, "bad token"))
            raise Unauthenticated("the bootstrap token is unknown, already used or expired")
        names = RequestedNames(
            record.identity,
            record.dns_names,
            tuple(ipaddress.ip_address(i) for i in record.ip_addresses),
        )
        # Tokens live up to a day: what their minter may grant is checked again now.
        check_request(self.policy, self._grantor(record.created_by), names)
        return self._issue(
            public_key=csr.public_key,
            names=names,
            common_name=record.dns_names[0] if record.dns_names else None,
            lifetime=min(record.certificate_ttl, self.settings.max_validity),
            actor=f"token:{record.token_hash[:12]}",
            authorized_by=record.created_by,
            action="enroll",
            detail=f"peer {peer}",
        )

    def root_fingerprint(self) -> str:
        return fingerprint_sha256(self.root)

    def issue_for(
        self,
        *,
        public_key: CertificatePublicKeyTypes,
        identity: str,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[IPAddress] = (),
        lifetime: dt.timedelta,
        actor: str,
        action: str,
    ) -> Issued:
        """Issue without a CSR or policy check: for the CA's own certificates (the serving
        certificate, the admin credentials written by init)."""
        names = RequestedNames(identity, tuple(dns_names), tuple(ip_addresses))
        cn = dns_names[0] if dns_names else None
        return self._issue(
            public_key=public_key,
            names=names,
            common_name=cn,
            lifetime=lifetime,
            actor=actor,
            action=action,
        )

    def _lifetime(self, requested: dt.timedelta | None, default: dt.timedelta) -> dt.timedelta:
        if requested is None:
            return default
        s = self.settings
        if requested > s.max_validity:
            raise InvalidRequest(
                f"validity {format_duration(requested)} is longer than this CA's cap of "
                f"{format_duration(s.max_validity)}"
            )
        if requested < s.min_validity:
            raise InvalidRequest(
                f"validity {format_duration(requested)} is shorter than the minimum "
                f"{format_duration(s.min_validity)}"
            )
        return requested

    def _issue(
        self,
        *,
        public_key: CertificatePublicKeyTypes,
        names: RequestedNames,
        common_name: str | None,
        lifetime: dt.timedelta,
        actor: str,
        action: str,
        authorized_by: str = "",
        detail: str = "",
    ) -> Issued:
        now = utc_seconds(self.clock.now())
        for _ in range(5):  # a 128-bit collision is as good as impossible; a loop costs nothing
            serial = random_serial()
            cert = build_leaf(
                self.issuer,
                LeafRequest(
                    public_key=public_key,
                    identity=names.identity,
                    dns_names=names.dns_names,
                    ip_addresses=names.ip_addresses,
                    common_name=common_name,
                    not_before=now - self.settings.backdate,
                    not_after=now + lifetime,
                    serial=serial,
                ),
                self.settings.public_urls,
            )
            self.responder.forget_unknown(serial)
            record = CertificateRecord(
                serial=serial_hex(serial),
                identity=names.identity,
                dns_names=names.dns_names,
                ip_addresses=tuple(str(ip) for ip in names.ip_addresses),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                fingerprint_sha256=fingerprint_sha256(cert),
                der=cert.public_bytes(Encoding.DER),
                requested_by=actor,
                issued_at=now,
                authorized_by=authorized_by or actor,
                # Pre-signed now, so that answering for it costs no signature later.
                ocsp=self.responder.sign(StatusAnswer(serial, CertStatus.GOOD)),
            )
            try:
                # Stored (durably) before anyone sees it: nothing is handed out unrecorded.
                self.store.add_certificate(
                    record, AuditEvent(now, action, actor, record.serial, detail)
                )
            except DuplicateSerial:
                continue
            return Issued(cert, self.issuer.chain_pem, record.serial, record.fingerprint_sha256)
        raise RuntimeError("could not find an unused serial number")

    # -- revocation -----------------------------------------------------------------------------
    def revoke(
        self,
        caller: Caller,
        serial_text: str,
        reason: Reason,
        invalidity_date: dt.datetime | None = None,
    ) -> tuple[str, dt.datetime]:
        """Revoke with an RFC 5280 reason. certificateHold is revocable later with any other
        reason, or released with removeFromCRL (admins only), as RFC 5280 5.3.1 describes."""
        serial = parse_serial(serial_text)
        if invalidity_date is not None and invalidity_date > self.clock.now():
            raise InvalidRequest("invalidity_date must not be in the future (RFC 5280 5.3.2)")
        record = self.store.get_certificate(serial)
        if record is None:
            raise NotFound(f"no certificate with serial {serial} was issued by this CA")
        check_may_revoke(caller, record.identity)
        now = utc_seconds(self.clock.now())
        if reason is Reason.REMOVE_FROM_CRL:
            check_is_admin(caller, "releasing a certificateHold (removeFromCRL)")
            outcome = self.store.release_hold(
                serial,
                AuditEvent(now, "release-hold", caller.identity, serial),
                self.responder.sign(StatusAnswer(int(serial, 16), CertStatus.GOOD)),
            )
            if outcome is RevokeOutcome.NOT_HELD:
                raise Conflict(
                    f"certificate {serial} is not on certificateHold; removeFromCRL only "
                    "releases a hold"
                )
        else:
            outcome = self.store.revoke(
                serial,
                now,
                reason,
                AuditEvent(now, "revoke", caller.identity, serial, reason.name),
                self.responder.sign(StatusAnswer(int(serial, 16), CertStatus.REVOKED, now, reason)),
                utc_seconds(invalidity_date) if invalidity_date else None,
            )
            if outcome is RevokeOutcome.ALREADY_REVOKED:
                raise AlreadyRevoked(f"certificate {serial} is already revoked")
        if outcome is RevokeOutcome.NOT_FOUND:
            raise NotFound(f"no certificate with serial {serial} was issued by this CA")
        with self._auth_lock:
            self._auth_generation += 1  # also voids "good" answers read before this point
            self._auth_ok.pop(record.fingerprint_sha256, None)
        self.responder.drop_signer(int(serial, 16))  # if it was our OCSP responder's
        self.crls.wanted.set()
        for listener in self._revocation_listeners:
            listener(serial)
        return serial, now

    def on_revocation(self, listener: Callable[[str], None]) -> None:
        """Call listener(serial) after each revocation this process makes (cache invalidation)."""
        self._revocation_listeners.append(listener)

    # -- status ---------------------------------------------------------------------------------
    def status(self, serial_text: str) -> StatusResult:
        """Status and the OCSP response an RFC 6960 client sending a SHA-1 CertID and no nonce
        would get from the HTTP responder: the same bytes."""
        serial = int(parse_serial(serial_text), 16)
        found = self._lookup(serial)  # read once: the status and the DER must agree
        answer = found[0] if found else StatusAnswer(serial, CertStatus.UNKNOWN)
        signed = self.responder.answer(self._plain_query(serial), found, self._store_back)
        return StatusResult(answer, signed.this_update, signed.next_update, signed.der)

    def ocsp_response(self, request_der: bytes) -> bytes:
        """Answer a DER OCSPRequest with a DER OCSPResponse; never raises for bad input."""
        reply = self.ocsp_answer(request_der)
        return reply.der if isinstance(reply, SignedStatus) else reply

    def ocsp_answer(self, request_der: bytes) -> SignedStatus | bytes:
        """As ocsp_response, keeping the validity window of a signed answer (for HTTP caching
        headers) instead of the bare bytes of an unsuccessful one."""
        epoch = self.store.revocation_epoch()  # read first: a later revocation is never missed
        return self.responder.respond(request_der, self._lookup, self._store_back, epoch)

    def refresh_ocsp(self, limit: int = 500) -> int:
        """Re-sign up to `limit` stored responses no longer fresh (see OcspResponder.is_fresh),
        in one transaction; return how many were found."""
        now = self.clock.now()
        stale = self.store.stale_ocsp(now + self.settings.ocsp_validity / 2, now, limit)
        updates = []
        for row in stale:
            serial = int(row.serial, 16)
            if row.status == "revoked":
                answer = StatusAnswer(serial, CertStatus.REVOKED, row.revoked_at, row.reason)
            else:
                answer = StatusAnswer(serial, CertStatus.GOOD)
            updates.append(_update(answer, self.responder.sign(answer)))
        if updates:
            self.store.update_ocsp(updates)
        return len(stale)

    def _plain_query(self, serial: int) -> OcspQuery:
        name_hash, key_hash = issuer_hashes(self.issuer.certificate, hashes.SHA1())  # noqa: S303
        return OcspQuery(serial, hashes.SHA1(), name_hash, key_hash, None)  # noqa: S303

    def _lookup(self, serial: int) -> tuple[StatusAnswer, SignedStatus | None] | None:
        row = self.store.get_status(serial_hex(serial))
        if row is None:
            return None
        if row.status == "revoked":
            return StatusAnswer(serial, CertStatus.REVOKED, row.revoked_at, row.reason), row.ocsp
        return StatusAnswer(serial, CertStatus.GOOD), row.ocsp

    def wait_for_writebacks(self) -> None:
        """Block until on-demand re-signed responses queued so far are stored (for tests and
        tools that read the store right after)."""
        self._writeback.submit(lambda: None).result()

    def _store_back(self, answer: StatusAnswer, signed: SignedStatus) -> None:
        """Keep an on-demand re-signed response, best effort and off the caller's thread: the
        caller may be an event loop that must not wait for the database's write lock."""
        self._writeback.submit(self.store.update_ocsp, [_update(answer, signed)])

    def _issue_ocsp_signer(
        self, public_key: CertificatePublicKeyTypes, lifetime: dt.timedelta
    ) -> x509.Certificate:
        """Issue and record a delegated OCSP responder certificate (no OCSP of its own: it
        carries id-pkix-ocsp-nocheck)."""
        now = utc_seconds(self.clock.now())
        identity = f"spiffe://{self.policy.trust_domain}/signet/ocsp-responder"
        for _ in range(5):
            serial = random_serial()
            cert = build_ocsp_responder(
                self.issuer, public_key, now - self.settings.backdate, now + lifetime, serial
            )
            record = CertificateRecord(
                serial=serial_hex(serial),
                identity=identity,
                dns_names=(),
                ip_addresses=(),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                fingerprint_sha256=fingerprint_sha256(cert),
                der=cert.public_bytes(Encoding.DER),
                requested_by=_CA_ACTOR,
                issued_at=now,
                authorized_by=_CA_ACTOR,
            )
            try:
                self.store.add_certificate(
                    record, AuditEvent(now, "issue-ocsp-signer", _CA_ACTOR, record.serial)
                )
            except DuplicateSerial:
                continue
            return cert
        raise RuntimeError("could not find an unused serial number")

    def crl(self) -> CrlResult:
        """The current CRL (see CrlPublisher: never built on the request path when a
        background publisher runs)."""
        return self.crls.current()

    def trust_bundle(self) -> tuple[str, str]:
        return pem(self.root), self.issuer.chain_pem

    # -- listing --------------------------------------------------------------------------------
    def list_certificates(
        self,
        caller: Caller,
        status: Status | None,
        expiring_before: dt.datetime | None,
        page_size: int,
        page_token: str,
    ) -> Page:
        check_is_admin(caller, "ListCertificates")
        if page_size < 0:
            raise InvalidRequest("page_size must not be negative")
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_cursor(page_token) if page_token else None
        records = self.store.list_certificates(
            ListQuery(status=status, expiring_before=expiring_before, limit=limit + 1, after=after)
        )
        more = len(records) > limit
        records = records[:limit]
        return Page(records, _encode_cursor(records[-1]) if more else "")

    # -- authentication -------------------------------------------------------------------------
    def authenticate(self, peer_certificate_pem: bytes) -> Caller:
        """Turn the TLS-verified peer certificate into a Caller, or raise Unauthenticated.

        TLS already checked the chain and validity window at the handshake; here we check what
        it cannot: the certificate is one we issued, it is not revoked, and (for long-lived
        connections) it has not expired since.
        """
        try:
            peer = _parse_peer(peer_certificate_pem)
        except ValueError:
            raise Unauthenticated("the client certificate could not be parsed") from None
        if peer.issuer != self.issuer.certificate.subject:
            raise Unauthenticated("the client certificate was not issued by this CA")
        if peer.identity is None:
            raise Unauthenticated("the client certificate carries no SPIFFE ID (URI SAN)")
        now = self.clock.now()
        if now > peer.not_after:  # RFC 5280: not_after itself is still within validity
            raise Unauthenticated(f"the client certificate {peer.serial} has expired")
        if not self._recently_good(peer.fingerprint, now):
            with self._auth_lock:
                generation = self._auth_generation
            record = self.store.get_certificate(peer.serial)
            # The very certificate we stored, not merely one with the same issuer name and serial.
            if record is None or record.fingerprint_sha256 != peer.fingerprint:
                raise Unauthenticated(f"the client certificate {peer.serial} is unknown to this CA")
            if record.status == "revoked":
                raise Unauthenticated(f"the client certificate {peer.serial} has been revoked")
            with self._auth_lock:
                if generation == self._auth_generation:  # no revocation raced our store read
                    if len(self._auth_ok) >= _AUTH_CACHE_MAX:
                        self._auth_ok.clear()  # cheap to rebuild; memory must stay bounded
                    self._auth_ok[peer.fingerprint] = now
        return Caller(peer.identity, peer.serial, self.policy.is_admin(peer.identity))

    def _recently_good(self, fingerprint: str, now: dt.datetime) -> bool:
        with self._auth_lock:
            checked = self._auth_ok.get(fingerprint)
            if checked is None:
                return False
            if now - checked > self.settings.auth_cache_ttl or now < checked:
                del self._auth_ok[fingerprint]
                return False
            return True
