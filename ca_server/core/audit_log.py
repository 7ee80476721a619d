"""Reading the audit trail, for admins, a page at a time (ListAuditEvents). The page token is
an opaque cursor, the last event's append order, and is read back strictly."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ErrorReason, InvalidRequest
from .policy import Caller, check_is_admin
from .profile import parse_serial
from .store import AuditQuery, AuditRecord, Store

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
_CURSOR = re.compile(rb"audit:([0-9]{1,18})")
MAX_FILTER = 1024  # characters of a text filter; longer ones cannot match anything stored


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: Sequence[AuditRecord]
    next_page_token: str


def _encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(b"audit:%d" % last_id).decode().rstrip("=")


def _bad_token() -> InvalidRequest:
    return InvalidRequest(
        "page_token is not one this server returned",
        reason=ErrorReason.PAGE_TOKEN_INVALID,
        field="page_token",
    )


def _decode(token: str) -> int:
    if len(token) > 64:
        raise _bad_token()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _bad_token() from None
    match = _CURSOR.fullmatch(raw)
    if match is None:
        raise _bad_token()
    return int(match.group(1))


class AuditTrail:
    def __init__(self, *, store: Store) -> None:
        self._store = store

    def list_events(
        self,
        caller: Caller,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        action: str = "",
        identity: str = "",
        serial: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> AuditPage:
        check_is_admin(caller, "ListAuditEvents")
        if page_size < 0:
            raise InvalidRequest(
                "page_size must not be negative",
                reason=ErrorReason.PAGE_SIZE_INVALID,
                field="page_size",
            )
        for name, value in (("action", action), ("identity", identity)):
            if len(value) > MAX_FILTER:
                raise InvalidRequest(
                    f"{name} is longer than {MAX_FILTER} characters",
                    reason=ErrorReason.FILTER_TOO_LONG,
                    field=name,
                    metadata={"limit": str(MAX_FILTER)},
                )
        if since is not None and until is not None and until <= since:
            raise InvalidRequest(
                "until must be after since", reason=ErrorReason.TIME_RANGE_INVALID, field="until"
            )

        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        records = self._store.audit_records(
            AuditQuery(
                since=since,
                until=until,
                action=action or None,
                actor=identity or None,
                serial=parse_serial(serial) if serial else None,
                after_id=_decode(page_token) if page_token else 0,
                limit=limit + 1,
            )
        )
        more = len(records) > limit
        records = records[:limit]
        return AuditPage(records, _encode(records[-1].id) if more else "")
