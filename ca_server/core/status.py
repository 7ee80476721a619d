"""Certificate status for relying parties: the GetStatus answer and raw OCSP, both served from
the responses kept in the store through the OCSP responder of the certificate's own issuer
(the CertID's name and key hashes pick it; the issuing intermediate is asked first, as nearly
every query is about its certificates). Responses it has to re-sign are written back off the
caller's thread, and a periodic refresh keeps the stored ones fresh."""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from .clock import Clock
from .issuance import IssuanceSettings
from .issuers import Issuers, IssuerServices
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
from .profile import parse_serial, serial_hex
from .store import OcspUpdate, StatusRow, Store

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
        issuers: Issuers,
        settings: IssuanceSettings,
        root_answer: RootAnswer | None = None,
    ) -> None:
        """root_answer: the root's answer, signed ahead of time, for a query about a CA
        certificate it issued (the intermediate), or None."""
        self._root_answer = root_answer
        self._store = store
        self._clock = clock
        self._issuers = issuers
        self.settings = settings
        self._writeback = ThreadPoolExecutor(1, thread_name_prefix="ocsp-writeback")
        self._sha1 = hashes.SHA1()  # noqa: S303 - CertID matching, what most clients send

    def status(self, serial_text: str) -> StatusResult:
        """Status and the OCSP response an RFC 6960 client sending a SHA-1 CertID and no nonce
        would get from the HTTP responder: the same bytes."""
        serial = int(parse_serial(serial_text), 16)
        epoch = self._store.revocation_epoch()  # before the lookup, as ocsp_answer reads it
        row = self._store.get_status(serial_hex(serial))  # read once: status and DER agree
        services = (row and self._issuers.get(row.issuer)) or self._issuers.active
        found = self._found(serial, row, services.key_id)
        answer = found[0] if found else StatusAnswer(serial, CertStatus.UNKNOWN)
        query = self._plain_query(services, serial)
        signed = services.responder.answer(query, found, self._store_back, epoch)
        return StatusResult(answer, signed.this_update, signed.next_update, signed.der)

    def ocsp_response(self, request_der: bytes) -> bytes:
        """Answer a DER OCSPRequest with a DER OCSPResponse; never raises for bad input."""
        reply = self.ocsp_answer(request_der)
        return reply.der if isinstance(reply, SignedStatus) else reply

    def ocsp_answer(self, request_der: bytes) -> SignedStatus | bytes:
        """As ocsp_response, keeping the validity window of a signed answer (for HTTP caching
        headers) instead of the bare bytes of an unsuccessful one."""
        epoch = self._store.revocation_epoch()  # read first: a later revocation is never missed
        active = self._issuers.active
        reply = active.responder.respond(
            request_der, self._lookup_for(active.key_id), self._store_back, epoch
        )
        if reply != _UNAUTHORIZED:
            return reply
        try:
            query = parse_ocsp_request(request_der)
        except MalformedOcspRequest:  # cannot be: the responder parsed it
            return reply
        other = self._issuers.by_cert_id(
            query.algorithm.name, query.issuer_name_hash, query.issuer_key_hash
        )
        if other is not None and other is not active:
            lookup = self._lookup_for(other.key_id)
            return other.responder.respond(request_der, lookup, self._store_back, epoch)
        root = self._root_answer(query) if self._root_answer is not None else None
        return root if root is not None else reply

    def refresh_ocsp(self, limit: int = 500) -> int:
        """Re-sign up to `limit` stored responses no longer fresh (see OcspResponder.is_fresh),
        in one transaction; return how many were found."""
        now = self._clock.now()
        stale = self._store.stale_ocsp(now + self.settings.ocsp_validity / 2, now, limit)
        updates = []
        by_issuer: dict[str, list[StatusAnswer]] = defaultdict(list)
        for row in stale:
            serial = int(row.serial, 16)
            if row.status == "revoked":
                answer = StatusAnswer(serial, CertStatus.REVOKED, row.revoked_at, row.reason)
            else:
                answer = StatusAnswer(serial, CertStatus.GOOD)
            by_issuer[row.issuer].append(answer)
        for issuer, answers in by_issuer.items():
            services = self._issuers.get(issuer)
            if services is None:
                continue  # no key for that issuer here: another process re-signs them
            updates += [_update(a, services.responder.sign(a)) for a in answers]
        if updates:
            self._store.update_ocsp(updates)
        return len(stale)

    def wait_for_writebacks(self) -> None:
        """Block until on-demand re-signed responses queued so far are stored (for tests and
        tools that read the store right after)."""
        self._writeback.submit(lambda: None).result()

    def _plain_query(self, services: IssuerServices, serial: int) -> OcspQuery:
        name_hash, key_hash = issuer_hashes(services.issuer.certificate, self._sha1)
        return OcspQuery(serial, self._sha1, name_hash, key_hash, None, plain=True)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a few issuers, for the service's life
    def _lookup_for(
        self, issuer: str
    ) -> Callable[[int], tuple[StatusAnswer, SignedStatus | None] | None]:
        def lookup(serial: int) -> tuple[StatusAnswer, SignedStatus | None] | None:
            return self._found(serial, self._store.get_status(serial_hex(serial)), issuer)

        return lookup

    @staticmethod
    def _found(
        serial: int, row: StatusRow | None, issuer: str
    ) -> tuple[StatusAnswer, SignedStatus | None] | None:
        """What the store holds about `serial` as a certificate of `issuer`; None (unknown) if
        it holds nothing, or a certificate of another issuer (RFC 6960: a CertID names one)."""
        if row is None or (row.issuer and row.issuer != issuer):
            return None
        if row.status == "revoked":
            return StatusAnswer(serial, CertStatus.REVOKED, row.revoked_at, row.reason), row.ocsp
        return StatusAnswer(serial, CertStatus.GOOD), row.ocsp

    def _store_back(self, answer: StatusAnswer, signed: SignedStatus) -> None:
        """Keep an on-demand re-signed response, best effort and off the caller's thread: the
        caller may be an event loop that must not wait for the database's write lock."""
        self._writeback.submit(self._store.update_ocsp, [_update(answer, signed)])
