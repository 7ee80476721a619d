"""Certificate status for relying parties: the GetStatus answer and raw OCSP, both served from
the responses kept in the store through the OCSP responder. Responses it has to re-sign are
written back off the caller's thread, and a periodic refresh keeps the stored ones fresh."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from .clock import Clock
from .issuance import IssuanceSettings
from .ocsp import (
    CertStatus,
    MalformedOcspRequest,
    OcspQuery,
    SignedStatus,
    StatusAnswer,
    issuer_hashes,
    parse_ocsp_request,
    unsuccessful_response,
)
from .profile import Issuer, parse_serial, serial_hex
from .responder import OcspResponder
from .store import OcspUpdate, Store

# The responder's answer to a CertID of another issuer: then the root's own answers are looked at.
_UNAUTHORIZED = unsuccessful_response(ocsp.OCSPResponseStatus.UNAUTHORIZED)
RootAnswer = Callable[[OcspQuery], SignedStatus | None]


@dataclass(frozen=True, slots=True)
class StatusResult:
    answer: StatusAnswer
    this_update: dt.datetime
    next_update: dt.datetime
    ocsp_response: bytes


def _update(answer: StatusAnswer, signed: SignedStatus) -> OcspUpdate:
    revoked = answer.status is CertStatus.REVOKED
    return OcspUpdate(
        serial_hex(answer.serial),
        signed,
        "revoked" if revoked else "good",
        answer.reason if revoked else None,
        answer.revoked_at if revoked else None,
    )


class StatusService:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        issuer: Issuer,
        responder: OcspResponder,
        settings: IssuanceSettings,
        root_answer: RootAnswer | None = None,
    ) -> None:
        """root_answer: the root's answer, signed ahead of time, for a query about a CA
        certificate it issued (the intermediate), or None."""
        self._root_answer = root_answer
        self._store = store
        self._clock = clock
        self._issuer = issuer
        self._responder = responder
        self.settings = settings
        self._writeback = ThreadPoolExecutor(1, thread_name_prefix="ocsp-writeback")
        self._sha1 = hashes.SHA1()  # noqa: S303 - CertID matching, what most clients send
        self._sha1_hashes = issuer_hashes(issuer.certificate, self._sha1)

    def status(self, serial_text: str) -> StatusResult:
        """Status and the OCSP response an RFC 6960 client sending a SHA-1 CertID and no nonce
        would get from the HTTP responder: the same bytes."""
        serial = int(parse_serial(serial_text), 16)
        epoch = self._store.revocation_epoch()  # before the lookup, as ocsp_answer reads it
        found = self._lookup(serial)  # read once: the status and the DER must agree
        answer = found[0] if found else StatusAnswer(serial, CertStatus.UNKNOWN)
        signed = self._responder.answer(self._plain_query(serial), found, self._store_back, epoch)
        return StatusResult(answer, signed.this_update, signed.next_update, signed.der)

    def ocsp_response(self, request_der: bytes) -> bytes:
        """Answer a DER OCSPRequest with a DER OCSPResponse; never raises for bad input."""
        reply = self.ocsp_answer(request_der)
        return reply.der if isinstance(reply, SignedStatus) else reply

    def ocsp_answer(self, request_der: bytes) -> SignedStatus | bytes:
        """As ocsp_response, keeping the validity window of a signed answer (for HTTP caching
        headers) instead of the bare bytes of an unsuccessful one."""
        epoch = self._store.revocation_epoch()  # read first: a later revocation is never missed
        reply = self._responder.respond(request_der, self._lookup, self._store_back, epoch)
        if reply == _UNAUTHORIZED and self._root_answer is not None:
            try:
                root = self._root_answer(parse_ocsp_request(request_der))
            except MalformedOcspRequest:  # cannot be: the responder parsed it
                root = None
            if root is not None:
                return root
        return reply

    def refresh_ocsp(self, limit: int = 500) -> int:
        """Re-sign up to `limit` stored responses no longer fresh (see OcspResponder.is_fresh),
        in one transaction; return how many were found."""
        now = self._clock.now()
        stale = self._store.stale_ocsp(now + self.settings.ocsp_validity / 2, now, limit)
        updates = []
        for row in stale:
            serial = int(row.serial, 16)
            if row.status == "revoked":
                answer = StatusAnswer(serial, CertStatus.REVOKED, row.revoked_at, row.reason)
            else:
                answer = StatusAnswer(serial, CertStatus.GOOD)
            updates.append(_update(answer, self._responder.sign(answer)))
        if updates:
            self._store.update_ocsp(updates)
        return len(stale)

    def wait_for_writebacks(self) -> None:
        """Block until on-demand re-signed responses queued so far are stored (for tests and
        tools that read the store right after)."""
        self._writeback.submit(lambda: None).result()

    def _plain_query(self, serial: int) -> OcspQuery:
        name_hash, key_hash = self._sha1_hashes
        return OcspQuery(serial, self._sha1, name_hash, key_hash, None, plain=True)

    def _lookup(self, serial: int) -> tuple[StatusAnswer, SignedStatus | None] | None:
        row = self._store.get_status(serial_hex(serial))
        if row is None:
            return None
        if row.status == "revoked":
            return StatusAnswer(serial, CertStatus.REVOKED, row.revoked_at, row.reason), row.ocsp
        return StatusAnswer(serial, CertStatus.GOOD), row.ocsp

    def _store_back(self, answer: StatusAnswer, signed: SignedStatus) -> None:
        """Keep an on-demand re-signed response, best effort and off the caller's thread: the
        caller may be an event loop that must not wait for the database's write lock."""
        self._writeback.submit(self._store.update_ocsp, [_update(answer, signed)])
