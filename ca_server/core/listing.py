"""Listing certificates for admins, a page at a time. The page token is an opaque cursor: the
(issued_at, serial) of the page's last record, which the next page starts after; the store
orders ties within a second by insertion, so the serial only names the record."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InvalidRequest
from .policy import Caller, check_is_admin
from .store import CertificateRecord, ListQuery, Status, Store

_HEX = re.compile(r"[0-9a-f]+")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class Page:
    records: Sequence[CertificateRecord]
    next_page_token: str


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


class Listing:
    def __init__(self, *, store: Store) -> None:
        self._store = store

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
        records = self._store.list_certificates(
            ListQuery(status=status, expiring_before=expiring_before, limit=limit + 1, after=after)
        )
        more = len(records) > limit
        records = records[:limit]
        return Page(records, _encode_cursor(records[-1]) if more else "")
