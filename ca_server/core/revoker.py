"""Revoking certificates and releasing holds, and telling what depends on a certificate's
status (the auth cache, the OCSP responder, the CRL publisher, listeners) that it changed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from .authentication import Authenticator
from .clock import Clock, utc_seconds
from .errors import (
    AlreadyRevoked,
    Conflict,
    ErrorReason,
    InvalidRequest,
    certificate_not_found,
)
from .idempotency import Call, RequestIds, result
from .issuers import Issuers
from .ocsp import CertStatus, StatusAnswer
from .policy import Caller, check_is_admin, check_may_revoke
from .profile import parse_serial
from .responder import OcspResponder
from .revocation import Reason
from .store import AuditEvent, DuplicateRequest, RequestRecord, RevokeOutcome, Store


class Revoker:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        issuers: Issuers,
        authenticator: Authenticator,
    ) -> None:
        self._store = store
        self._clock = clock
        self._issuers = issuers
        self._authenticator = authenticator
        self._requests = RequestIds(store=store, clock=clock)
        self._revocation_listeners: list[Callable[[str], None]] = []

    def revoke(
        self,
        caller: Caller,
        serial_text: str,
        reason: Reason,
        invalidity_date: dt.datetime | None = None,
        request_id: str | None = None,
    ) -> tuple[str, dt.datetime]:
        """Revoke with an RFC 5280 reason. certificateHold is revocable later with any other
        reason, or released with removeFromCRL (admins only), as RFC 5280 5.3.1 describes.
        A retry with the same request_id is answered as the first call was."""
        serial = parse_serial(serial_text)
        if invalidity_date is not None and invalidity_date > self._clock.now():
            raise InvalidRequest(
                "invalidity_date must not be in the future (RFC 5280 5.3.2)",
                reason=ErrorReason.INVALIDITY_DATE_IN_FUTURE,
                field="invalidity_date",
            )
        invalid = utc_seconds(invalidity_date) if invalidity_date else None
        call = Call.of(
            caller.identity,
            request_id,
            "RevokeCertificate",
            serial,
            int(reason),
            invalid.isoformat() if invalid else None,
        )
        if (prior := self._requests.prior(call)) is not None:
            return _replay(prior)
        record = self._store.get_certificate(serial)
        if record is None:
            raise certificate_not_found(serial)
        check_may_revoke(caller, record.identity)
        now = utc_seconds(self._clock.now())
        # The answer comes from the certificate's own issuer (a retiring one's too).
        services = self._issuers.get(record.issuer) or self._issuers.active
        responder = services.responder
        request = call.record({"serial": serial, "at": now.isoformat()}, now) if call else None
        try:
            outcome = self._change(caller, serial, reason, now, invalid, request, responder)
        except DuplicateRequest:
            assert call is not None
            return _replay(self._requests.winner(call))
        if outcome is RevokeOutcome.NOT_FOUND:
            raise certificate_not_found(serial)
        self._authenticator.revoked(record.fingerprint_sha256)
        responder.drop_signer(int(serial, 16))  # if it was our OCSP responder's
        self._issuers.wanted.set()
        for listener in self._revocation_listeners:
            listener(serial)
        return serial, now

    def _change(
        self,
        caller: Caller,
        serial: str,
        reason: Reason,
        now: dt.datetime,
        invalidity_date: dt.datetime | None,
        request: RequestRecord | None,
        responder: OcspResponder,
    ) -> RevokeOutcome:
        """Revoke, or release a hold, in the store; the refusals a state allows raised."""
        if reason is Reason.REMOVE_FROM_CRL:
            check_is_admin(caller, "releasing a certificateHold (removeFromCRL)")
            outcome = self._store.release_hold(
                serial,
                AuditEvent(now, "release-hold", caller.identity, serial, peer=caller.peer),
                responder.sign(StatusAnswer(int(serial, 16), CertStatus.GOOD)),
                request,
            )
            if outcome is RevokeOutcome.NOT_HELD:
                raise Conflict(
                    f"certificate {serial} is not on certificateHold; removeFromCRL only "
                    "releases a hold",
                    reason=ErrorReason.NOT_ON_HOLD,
                    metadata={"serial_number": serial},
                )
        else:
            outcome = self._store.revoke(
                serial,
                now,
                reason,
                AuditEvent(now, "revoke", caller.identity, serial, reason.name, caller.peer),
                responder.sign(StatusAnswer(int(serial, 16), CertStatus.REVOKED, now, reason)),
                invalidity_date,
                request,
            )
            if outcome is RevokeOutcome.ALREADY_REVOKED:
                raise AlreadyRevoked(
                    f"certificate {serial} is already revoked",
                    reason=ErrorReason.ALREADY_REVOKED,
                    metadata={"serial_number": serial},
                )
        return outcome

    def on_revocation(self, listener: Callable[[str], None]) -> None:
        """Call listener(serial) after each revocation this process makes (cache invalidation)."""
        self._revocation_listeners.append(listener)


def _replay(prior: RequestRecord) -> tuple[str, dt.datetime]:
    """The answer the first call with this request_id got (its effects are already done)."""
    answer = result(prior)
    return str(answer["serial"]), dt.datetime.fromisoformat(answer["at"])
