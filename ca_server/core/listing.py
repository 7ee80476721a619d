"""Listing certificates for admins, a page at a time. The page token is an opaque cursor: the
(issued_at, serial) of the page's last record, which the next page starts after; the store
orders ties within a second by insertion, so the serial only names the record."""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ErrorReason, InvalidRequest
from .policy import Caller, check_is_admin
from .store import CertificateRecord, ListQuery, Status, Store

_HEX = re.compile(r"[0-9a-f]+")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class Page:
    records: Sequence[CertificateRecord]
    next_page_token: str


# Token: base64url (unpadded) of a version byte, issued_at as 8 bytes big-endian, then the
# serial's lowercase hex. Fixed layout, no JSON: decoding does a bounded amount of work and
# every malformed token is an InvalidRequest (a JSON token nested deep enough once raised
# RecursionError and answered INTERNAL).
_VERSION = b"\x01"
_MAX_SERIAL_HEX = 40  # RFC 5280 4.1.2.2: at most 20 octets
_TOKEN = re.compile(r"[A-Za-z0-9_-]{12,86}")  # 10..49 bytes (64 in the old format)
# Tokens of the previous format, base64url of json.dumps([issued_at, serial]), read without a
# JSON parser so a paging client survives an upgrade.
_LEGACY = re.compile(r'\[(0|[1-9][0-9]{0,17}), "([0-9a-f]{1,40})"\]')


def _encode_cursor(record: CertificateRecord) -> str:
    raw = _VERSION + int(record.issued_at.timestamp()).to_bytes(8, "big") + record.serial.encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[int, str]:
    bad = InvalidRequest(
        "page_token is not one this server returned",
        reason=ErrorReason.PAGE_TOKEN_INVALID,
        field="page_token",
    )
    if not _TOKEN.fullmatch(token):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise bad from None
    # Only the canonical encoding: no second spelling of a token (stray low bits).
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
        raise bad
    if legacy := _LEGACY.fullmatch(raw.decode("ascii", "replace")):
        return int(legacy[1]), legacy[2]
    version, issued_at, serial = raw[:1], raw[1:9], raw[9:].decode("ascii", "replace")
    if version != _VERSION or len(issued_at) != 8 or not _HEX.fullmatch(serial):
        raise bad
    if len(serial) > _MAX_SERIAL_HEX or issued_at[0] >= 0x40:  # issued_at < 2**62
        raise bad
    return int.from_bytes(issued_at, "big"), serial


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
            raise InvalidRequest(
                "page_size must not be negative",
                reason=ErrorReason.PAGE_SIZE_INVALID,
                field="page_size",
            )

        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_cursor(page_token) if page_token else None
        records = self._store.list_certificates(
            ListQuery(status=status, expiring_before=expiring_before, limit=limit + 1, after=after)
        )
        more = len(records) > limit
        records = records[:limit]
        return Page(records, _encode_cursor(records[-1]) if more else "")
