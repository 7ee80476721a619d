"""GetRenewalInfo and renew-now: answering a certificate's renewal window (see renewal_window),
and letting an operator pull the windows of chosen certificates into the past, the tool for a
key compromise, a mis-issued batch or a rollover. The override is kept in the store, so every
worker and replica answers the same, and each use is an audit event."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509

from .clock import Clock, utc_seconds
from .errors import Conflict, ErrorReason, InvalidRequest, NotFound, certificate_not_found
from .names import spiffe_pattern_matches
from .policy import Caller, check_is_admin
from .profile import fingerprint_sha256, parse_serial
from .renewal_window import RenewalInfo, RenewalWindow, immediate, renewal_info
from .store import AuditEvent, CertificateRecord, ListQuery, Store

MAX_URL = 1024
MAX_PATTERN = 1024
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
PAGE = 1000


@dataclass(frozen=True, slots=True)
class RenewalSelector:
    """Which certificates renew-now pulls forward: those matching every criterion given."""

    serial: str = ""
    identity: str = ""  # a SPIFFE ID pattern, as in the policy ('*' one segment, '**' more)
    issued_before: dt.datetime | None = None
    issuer_fingerprint: str = ""  # SHA-256 of the issuing CA certificate
    explanation_url: str = ""

    def describe(self) -> str:
        parts = [
            f"serial={self.serial}" if self.serial else "",
            f"identity={self.identity}" if self.identity else "",
            f"issued_before={self.issued_before.isoformat()}" if self.issued_before else "",
            f"issuer={self.issuer_fingerprint}" if self.issuer_fingerprint else "",
        ]
        return " ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class RenewNowResult:
    count: int
    window: RenewalWindow


def info_for(record: CertificateRecord) -> RenewalInfo:
    return renewal_info(
        serial=record.serial,
        issued_at=record.issued_at,
        not_after=record.not_after,
        override=record.renewal_override,
        explanation_url=record.renewal_explanation_url,
        revoked_at=record.revoked_at if record.status == "revoked" else None,
    )


def _check_url(url: str) -> None:
    if not url:
        return
    if len(url) > MAX_URL:
        raise InvalidRequest(
            f"explanation_url is longer than {MAX_URL} characters",
            reason=ErrorReason.URL_INVALID,
            field="explanation_url",
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        raise InvalidRequest(
            f"explanation_url {url[:MAX_URL]!r} is not an http(s) URL",
            reason=ErrorReason.URL_INVALID,
            field="explanation_url",
        )


class Renewals:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        ca_certificates: Callable[[], Sequence[x509.Certificate]],
    ):
        """ca_certificates(): the CA's certificates now (they change with a rotation), which
        --issuer names by fingerprint."""
        self._store = store
        self._clock = clock
        self._ca_certificates = ca_certificates

    def info(self, serial_text: str) -> RenewalInfo:
        serial = parse_serial(serial_text)
        record = self._store.get_certificate(serial)
        if record is None:
            raise certificate_not_found(serial)
        return info_for(record)

    def renew_now(self, caller: Caller, selector: RenewalSelector) -> RenewNowResult:
        """Move the window of every matching certificate (good, unexpired) into the past."""
        check_is_admin(caller, "RenewNow")
        selected = list(self._select(selector))
        now = utc_seconds(self._clock.now())
        window = immediate(now)
        detail = f"{selector.describe()}: {len(selected)} certificates"
        audit = AuditEvent(
            now,
            "renew-now",
            caller.identity,
            selected[0] if selector.serial and selected else None,
            detail,
            caller.peer,
        )
        count = self._store.override_renewal(selected, window, selector.explanation_url, audit)
        return RenewNowResult(count, window)

    def _select(self, s: RenewalSelector) -> Iterator[str]:
        if not (s.serial or s.identity or s.issued_before or s.issuer_fingerprint):
            raise InvalidRequest(
                "say which certificates: a serial_number, an identity pattern, issued_before "
                "or an issuer fingerprint (all that are given must match)",
                reason=ErrorReason.SELECTOR_EMPTY,
            )
        _check_url(s.explanation_url)
        if len(s.identity) > MAX_PATTERN:
            raise InvalidRequest(
                f"identity is longer than {MAX_PATTERN} characters",
                reason=ErrorReason.FILTER_TOO_LONG,
                field="identity",
                metadata={"limit": str(MAX_PATTERN)},
            )
        if s.identity and not s.identity.startswith("spiffe://"):
            raise InvalidRequest(
                f"identity {s.identity!r} is not a SPIFFE ID pattern",
                reason=ErrorReason.NAME_INVALID,
                field="identity",
                metadata={"name": s.identity},
            )
        issuer_key_id = self._issuer_key_id(s.issuer_fingerprint) if s.issuer_fingerprint else None
        now = self._clock.now()
        for record in self._candidates(s.serial):
            if record.status != "good" or record.not_after <= now:
                if s.serial:  # asked for by name: say why nothing happens
                    state = "revoked" if record.status != "good" else "expired"
                    raise Conflict(
                        f"certificate {record.serial} is {state}: nothing to renew",
                        reason=ErrorReason.CERTIFICATE_NOT_LIVE,
                        metadata={"serial_number": record.serial},
                    )
                continue
            if s.identity and not spiffe_pattern_matches(s.identity, record.identity):
                continue
            if s.issued_before is not None and record.issued_at >= s.issued_before:
                continue
            if issuer_key_id is not None and _authority_key_id(record) != issuer_key_id:
                continue
            yield record.serial

    def _candidates(self, serial_text: str) -> Iterator[CertificateRecord]:
        if serial_text:
            serial = parse_serial(serial_text)
            record = self._store.get_certificate(serial)
            if record is None:
                raise certificate_not_found(serial)
            yield record
            return
        after: tuple[int, str] | None = None
        while True:
            page = self._store.list_certificates(ListQuery(status="good", limit=PAGE, after=after))
            yield from page
            if len(page) < PAGE:
                return
            last = page[-1]
            after = (int(last.issued_at.timestamp()), last.serial)

    def _issuer_key_id(self, fingerprint: str) -> bytes:
        cleaned = fingerprint.strip().lower().replace(":", "")
        if not _FINGERPRINT.fullmatch(cleaned):
            raise InvalidRequest(
                f"issuer fingerprint {fingerprint[:100]!r} is not a SHA-256 fingerprint "
                "(64 hex digits)",
                reason=ErrorReason.FINGERPRINT_INVALID,
                field="issuer_fingerprint_sha256",
            )
        issuer = {fingerprint_sha256(c): c for c in self._ca_certificates()}.get(cleaned)
        if issuer is None:
            raise NotFound(
                f"no CA certificate of this CA has the fingerprint {cleaned}",
                reason=ErrorReason.CERTIFICATE_NOT_FOUND,
                field="issuer_fingerprint_sha256",
            )
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return ski.value.digest


def _authority_key_id(record: CertificateRecord) -> bytes | None:
    cert = x509.load_der_x509_certificate(record.der)
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return aki.value.key_identifier
