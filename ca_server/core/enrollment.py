"""Bootstrap enrollment: an admin mints a one-time token for an identity and its names; whoever
holds it gets a first certificate for a key of its own. Only the token's hash is stored, and
refused attempts are counted per peer in the store (so the limit holds across workers and
replicas), summarised in the audit trail and, past a limit, refused outright."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from .bootstrap import (
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_TTL,
    new_token,
    token_hash,
)
from .clock import Clock, utc_seconds
from .csr import parse_csr
from .durations import format_duration
from .errors import ErrorReason, InvalidRequest, LimitExceeded, RequestIdReused, Unauthenticated
from .idempotency import Call, result
from .issuance import (
    Issuance,
    IssuanceSettings,
    Issued,
    TokenSpent,
    check_name_count,
    checked_lifetime,
)
from .names import normalize_dns_name, parse_spiffe_id
from .policy import Caller, Policy, RequestedNames, check_is_admin, check_request, grantor
from .store import AuditEvent, DuplicateRequest, RequestRecord, Store, TokenRecord

_NOBODY = "unauthenticated"  # the actor of a refused enrollment: its peer says where from
FAILURE_LIMIT = 10  # bad tokens per peer per window, answered UNAUTHENTICATED; then refused
FAILURE_WINDOW = dt.timedelta(minutes=1)
_OVER_LIMIT_MAX = 10_000
_T = TypeVar("_T")

_TOO_MANY = "too many failed enrollment attempts from this address; wait a minute"


class Enrollment:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        policy: Policy,
        settings: IssuanceSettings,
        issuance: Issuance,
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self.settings = settings
        self._issuance = issuance
        # peer -> end of its window, once it is over the limit: refused without a store write
        self._over_limit: OrderedDict[str, dt.datetime] = OrderedDict()
        self._lock = threading.Lock()

    def create_token(
        self,
        caller: Caller,
        identity: str,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str],
        token_ttl: dt.timedelta | None,
        certificate_ttl: dt.timedelta | None,
        request_id: str | None = None,
    ) -> tuple[str, dt.datetime]:
        """A one-time token for `identity` and the names given; returns (token, expires_at).
        The token itself is never stored or logged, so a retry with the request_id of a call
        that made one is refused (see _not_again), never answered with a second token."""
        check_is_admin(caller, "CreateBootstrapToken")
        call = Call.of(
            caller.identity,
            request_id,
            "CreateBootstrapToken",
            identity,
            list(dns_names),
            list(ip_addresses),
            None if token_ttl is None else token_ttl.total_seconds(),
            None if certificate_ttl is None else certificate_ttl.total_seconds(),
        )
        if (prior := self._issuance.requests.prior(call)) is not None:
            _not_again(prior)
        sid = str(_field_value("identity", parse_spiffe_id, identity))
        dns = tuple(
            dict.fromkeys(_field_value("dns_names", normalize_dns_name, n) for n in dns_names)
        )
        ips = tuple(
            dict.fromkeys(
                _field_value("ip_addresses", ipaddress.ip_address, i) for i in ip_addresses
            )
        )
        scoped = [str(ip) for ip in ips if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id]
        if scoped:  # a certificate's IP SAN has no zone: the token would promise what it cannot
            raise InvalidRequest(
                f"IP address {scoped[0]} has a zone (%...): give the address alone",
                reason=ErrorReason.NAME_INVALID,
                field="ip_addresses",
                metadata={"name": scoped[0]},
            )
        names = RequestedNames(sid, dns, ips)
        check_name_count(self.settings, names, "the token", "dns_names")
        check_request(self._policy, caller, names)
        # Unset means the default; a zero (or negative) TTL is a mistake, not "the default".
        ttl = DEFAULT_TOKEN_TTL if token_ttl is None else token_ttl
        if not dt.timedelta(0) < ttl <= MAX_TOKEN_TTL:
            raise InvalidRequest(
                f"token_ttl {format_duration(ttl)} is out of range: it must be more than 0s and "
                f"at most {format_duration(MAX_TOKEN_TTL)} (leave it unset for "
                f"{format_duration(DEFAULT_TOKEN_TTL)})",
                reason=ErrorReason.TOKEN_TTL_OUT_OF_RANGE,
                field="token_ttl",
                metadata={"max": format_duration(MAX_TOKEN_TTL)},
            )
        lifetime = checked_lifetime(
            self.settings, certificate_ttl, self.settings.default_validity, "certificate_ttl"
        )
        now = utc_seconds(self._clock.now())
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
        answer = {"token": record.token_hash[:12], "expires_at": record.expires_at.isoformat()}
        try:
            self._store.add_token(
                record,
                AuditEvent(now, "token-create", caller.identity, None, detail, caller.peer),
                call.record(answer, now) if call else None,
            )
        except DuplicateRequest:
            assert call is not None
            _not_again(self._issuance.requests.winner(call))
        return token, record.expires_at

    def enroll(self, token: str, csr_pem: str, peer: str, request_id: str | None = None) -> Issued:
        """A first certificate for whoever holds a valid, unused token; the names are the
        token's, the key the CSR's. A valid token always works, however many bad ones came
        from the same address (behind NAT that is everyone); bad ones are counted per peer
        for every process sharing the store and, past FAILURE_LIMIT a window, refused with
        LimitExceeded. The audit trail gets a row when a peer's window of refusals opens and
        when it goes over the limit, not one per attempt. A retry with the request_id of a call
        that enrolled is answered with its certificate (the token is spent by then): the
        answer is scoped by the token, which only its holder knows."""
        digest = token_hash(token)
        once = Call.of(f"token:{digest}", request_id, "Enroll", csr_pem) if token else None
        if (prior := self._issuance.requests.prior(once)) is not None:
            return self._issuance.replay(prior)
        csr = parse_csr(csr_pem)  # a bad CSR must not burn the token
        now = utc_seconds(self._clock.now())
        record = self._store.usable_token(digest, now) if token else None
        if record is None:
            self._refused(peer, now)
        names = RequestedNames(
            record.identity,
            record.dns_names,
            tuple(ipaddress.ip_address(i) for i in record.ip_addresses),
        )
        # Tokens live up to a day: what their minter may grant is checked again now.
        check_name_count(self.settings, names, "the token")
        check_request(self._policy, grantor(self._policy, record.created_by), names)
        try:
            return self._issuance.issue(
                public_key=csr.public_key,
                names=names,
                common_name=record.dns_names[0] if record.dns_names else None,
                lifetime=min(record.certificate_ttl, self.settings.max_validity),
                actor=f"token:{record.token_hash[:12]}",
                authorized_by=record.created_by,
                action="enroll",
                peer=peer,
                spend_token=(digest, now),  # spent with the certificate stored, or not at all
                call=once,
            )
        except TokenSpent:
            self._refused(peer, now)

    def _refused(self, peer: str, now: dt.datetime) -> NoReturn:
        with self._lock:
            until = self._over_limit.get(peer)
        if until is not None and now < until:  # known over the limit here: no write per attempt
            raise LimitExceeded(
                _TOO_MANY, (until - now).total_seconds(), reason=ErrorReason.ENROLL_RATE_LIMITED
            )
        count, started = self._store.count_enroll_failure(peer, now, FAILURE_WINDOW)
        if count == 1:
            detail = "bad token; more from this address within a minute are only counted"
            self._store.append_audit(
                AuditEvent(now, "enroll-refused", _NOBODY, None, detail, peer, "bad token")
            )
        if count > FAILURE_LIMIT:
            if count == FAILURE_LIMIT + 1:
                detail = f"rate-limited: more than {FAILURE_LIMIT} bad tokens within a minute"
                self._store.append_audit(
                    AuditEvent(now, "enroll-refused", _NOBODY, None, detail, peer, "rate-limited")
                )
            with self._lock:
                self._over_limit[peer] = started + FAILURE_WINDOW
                self._over_limit.move_to_end(peer)
                while len(self._over_limit) > _OVER_LIMIT_MAX:
                    self._over_limit.popitem(last=False)
            raise LimitExceeded(
                _TOO_MANY,
                (started + FAILURE_WINDOW - now).total_seconds(),
                reason=ErrorReason.ENROLL_RATE_LIMITED,
            )
        # One answer for unknown, spent and expired alike, as the message says: the store's
        # read does not tell them apart, and a guesser learns nothing from it.
        raise Unauthenticated(
            "the bootstrap token is unknown, already used or expired",
            reason=ErrorReason.TOKEN_INVALID,
            field="token",
        )


def _field_value(field: str, parse: Callable[[str], _T], text: str) -> _T:
    """parse(text), or InvalidRequest naming the field and the name at fault."""
    try:
        return parse(text)
    except ValueError as exc:
        raise InvalidRequest(
            str(exc), reason=ErrorReason.NAME_INVALID, field=field, metadata={"name": text[:256]}
        ) from None


def _not_again(prior: RequestRecord) -> NoReturn:
    """A token is shown once: the CA keeps only its hash, so it cannot give the same answer
    again, and minting a second token for a retry would leave two live where one was meant."""
    answer = result(prior)
    raise RequestIdReused(
        f"request_id {prior.request_id} already created a bootstrap token ({answer['token']}..., "
        f"expires {answer['expires_at']}) at {prior.created_at.isoformat()}; a token is shown "
        "only once and not kept, so that answer cannot be given again: if it was lost, create "
        "another with a new request_id (the first expires unused)",
        reason=ErrorReason.ANSWER_NOT_KEPT,
        field="request_id",
    )
