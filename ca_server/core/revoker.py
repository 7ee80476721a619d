"""Revoking certificates and releasing holds, and telling what depends on a certificate's
status (the auth cache, the OCSP responder, the CRL publisher, listeners) that it changed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from .authentication import Authenticator
from .clock import Clock, utc_seconds
from .errors import AlreadyRevoked, Conflict, InvalidRequest, NotFound
from .issuers import Issuers
from .ocsp import CertStatus, StatusAnswer
from .policy import Caller, check_is_admin, check_may_revoke
from .profile import parse_serial
from .revocation import Reason
from .store import AuditEvent, RevokeOutcome, Store


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
        self._revocation_listeners: list[Callable[[str], None]] = []

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
        if invalidity_date is not None and invalidity_date > self._clock.now():
            raise InvalidRequest("invalidity_date must not be in the future (RFC 5280 5.3.2)")
        record = self._store.get_certificate(serial)
        if record is None:
            raise NotFound(f"no certificate with serial {serial} was issued by this CA")
        check_may_revoke(caller, record.identity)
        now = utc_seconds(self._clock.now())
        # The answer comes from the certificate's own issuer (a retiring one's too).
        services = self._issuers.get(record.issuer) or self._issuers.active
        responder = services.responder
        if reason is Reason.REMOVE_FROM_CRL:
            check_is_admin(caller, "releasing a certificateHold (removeFromCRL)")
            outcome = self._store.release_hold(
                serial,
                AuditEvent(now, "release-hold", caller.identity, serial, peer=caller.peer),
                responder.sign(StatusAnswer(int(serial, 16), CertStatus.GOOD)),
            )
            if outcome is RevokeOutcome.NOT_HELD:
                raise Conflict(
                    f"certificate {serial} is not on certificateHold; removeFromCRL only "
                    "releases a hold"
                )
        else:
            outcome = self._store.revoke(
                serial,
                now,
                reason,
                AuditEvent(now, "revoke", caller.identity, serial, reason.name, caller.peer),
                responder.sign(StatusAnswer(int(serial, 16), CertStatus.REVOKED, now, reason)),
                utc_seconds(invalidity_date) if invalidity_date else None,
            )
            if outcome is RevokeOutcome.ALREADY_REVOKED:
                raise AlreadyRevoked(f"certificate {serial} is already revoked")
        if outcome is RevokeOutcome.NOT_FOUND:
            raise NotFound(f"no certificate with serial {serial} was issued by this CA")
        self._authenticator.revoked(record.fingerprint_sha256)
        responder.drop_signer(int(serial, 16))  # if it was our OCSP responder's
        self._issuers.wanted.set()
        for listener in self._revocation_listeners:
            listener(serial)
        return serial, now

    def on_revocation(self, listener: Callable[[str], None]) -> None:
        """Call listener(serial) after each revocation this process makes (cache invalidation)."""
        self._revocation_listeners.append(listener)
