"""Idempotent calls, as AIP-155 and Google CAS have them: a caller names one logical call by a
`request_id` (a UUID) and sends the same id with every retry of it. A retry of a call already
answered gets the original answer (the same certificate, not a second one) from the store, in
any worker or replica, for RETENTION.

The record of an answer is written in the transaction that makes the change it answers (see
Store), so there is never a certificate without its record nor the reverse; of two concurrent
calls with one id the store's unique key lets one win, and the other answers with the winner's
result. A record is scoped by the caller (its identity, or for Enroll its token) so that no
caller can read another's answer, and keeps a SHA-256 of the call's method and canonical
fields: the same id with another request is refused (RequestIdReused), never answered with the
first call's result. Refusals are not recorded: a retry of a refused call is tried afresh."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .errors import ErrorReason, InvalidRequest, RequestIdReused, Unavailable
from .store import RequestRecord, Store

# How long an answer is kept for retries (AIP-155 asks for at least an hour).
RETENTION = dt.timedelta(hours=1)
_LONGEST = 45  # "urn:uuid:" + 36: anything longer is no UUID


def parse_request_id(text: str) -> str | None:
    """The canonical (lowercase, hyphenated) form of a request_id, or None when it is unset."""
    if not text:
        return None
    try:
        if len(text) > _LONGEST:
            raise ValueError
        parsed = uuid.UUID(text)
    except ValueError:
        raise InvalidRequest(
            f"request_id {text[:_LONGEST]!r} is not a UUID (e.g. "
            "123e4567-e89b-42d3-a456-426614174000); leave it unset for a call that is not retried",
            reason=ErrorReason.REQUEST_ID_INVALID,
            field="request_id",
        ) from None
    if parsed.int == 0:
        raise InvalidRequest(
            "request_id is the nil UUID (all zeros); send a random one (UUID version 4) per call",
            reason=ErrorReason.REQUEST_ID_INVALID,
            field="request_id",
        )
    return str(parsed)


@dataclass(frozen=True, slots=True)
class Call:
    """One logical call: whose, under which id, and a fingerprint of what it asked."""

    scope: str
    request_id: str
    method: str
    fingerprint: str

    @staticmethod
    def of(scope: str, request_id: str | None, method: str, *fields: Any) -> Call | None:
        """The Call for a request with this id (None without one). `fields` are the request's
        values that decide its answer, in a fixed order, as JSON types."""
        if request_id is None:
            return None
        canonical = json.dumps([method, *fields], separators=(",", ":"))
        return Call(scope, request_id, method, hashlib.sha256(canonical.encode()).hexdigest())

    def record(self, result: dict[str, Any], now: dt.datetime) -> RequestRecord:
        """The record of this call's answer, to be written with the change it answers."""
        text = json.dumps(result, sort_keys=True, separators=(",", ":"))
        return RequestRecord(
            self.scope, self.request_id, self.method, self.fingerprint, text, now, now + RETENTION
        )


def result(record: RequestRecord) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(record.result)
    return loaded


class RequestIds:
    """Finds the answer a call already got (prior) or the one a concurrent twin stored (winner)."""

    def __init__(self, *, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def prior(self, call: Call | None) -> RequestRecord | None:
        """The stored answer to this call; None for a new id (or no id); RequestIdReused when
        the caller used the id for a different request."""
        if call is None:
            return None
        found = self._store.get_request(call.scope, call.request_id, self._clock.now())
        if found is None:
            return None
        if found.method != call.method or found.fingerprint != call.fingerprint:
            same = found.method == call.method
            what = "a different request" if same else f"a {found.method} call"
            raise RequestIdReused(
                f"request_id {call.request_id} was already used for {what} at "
                f"{found.created_at.isoformat()}; a retry must repeat the request exactly, and "
                "a new request needs a new request_id",
                reason=ErrorReason.REQUEST_ID_REUSED,
                field="request_id",
            )
        return found

    def winner(self, call: Call) -> RequestRecord:
        """After DuplicateRequest: the record of the concurrent call that stored first."""
        found = self.prior(call)
        if found is None:  # it expired in between: as good as impossible within an hour
            raise Unavailable(
                f"request_id {call.request_id} is being answered; retry shortly",
                reason=ErrorReason.REQUEST_IN_PROGRESS,
            )
        return found
