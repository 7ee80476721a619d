"""The OCSP responder: who signs, when a stored response is still fresh, and answering raw
RFC 6960 requests. A certificate's plain response is signed when first asked for (and at
revocation), kept in the store and re-signed by a periodic refresh, so answering it again costs
a lookup, not a signature; the rest (nonces, SHA-256 CertIDs, unknown serials) are signed on
demand."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp

from .clock import Clock, utc_seconds
from .keys import generate_key
from .ocsp import (
    CertStatus,
    MalformedOcspRequest,
    OcspQuery,
    OcspSigner,
    SignedStatus,
    StatusAnswer,
    build_ocsp_response,
    issuer_hashes,
    parse_ocsp_request,
    unsuccessful_response,
)
from .profile import Issuer

# issue_signer(public_key, lifetime) -> the delegated responder certificate, already recorded.
IssueSigner = Callable[[CertificatePublicKeyTypes, dt.timedelta], x509.Certificate]
# lookup(serial) -> (answer, stored response or None); None when the serial was never issued.
Lookup = Callable[[int], tuple[StatusAnswer, SignedStatus | None] | None]
# store_back(answer, signed): keep a response re-signed on demand so the next query reuses it.
StoreBack = Callable[[StatusAnswer, SignedStatus], None]

_UNKNOWN_CACHE_MAX = 10_000
_ANSWER_CACHE_MAX = 50_000
# An extension-free request for one CertID is ~80-120 bytes; only such short requests are
# remembered by their bytes (so the cache's memory stays bounded: ~50k x 256 bytes of keys).
_PLAIN_REQUEST_MAX = 256
SIGNER_RENEW_AT = 2 / 3
SLOT_LOOK_EVERY = 0.25  # seconds between looks for a signer another process put in the slot


class SignerSlot(Protocol):
    """Where the delegated responder's key and certificate are kept so that every process
    serving this CA signs with the same one and only one of them replaces it."""

    def changed(self) -> bool:
        """Whether the slot holds something other than what was last loaded (cheap)."""
        ...

    def load(self) -> OcspSigner | None: ...

    def replace(
        self, is_due: Callable[[OcspSigner | None], bool], make: Callable[[], OcspSigner]
    ) -> OcspSigner:
        """Exclusively: load again, and if still due, make one and keep it; return the kept."""
        ...


class OcspResponder:
    def __init__(
        self,
        *,
        issuer: Issuer,
        clock: Clock,
        validity: dt.timedelta,
        issue_signer: IssueSigner | None = None,
        signer_validity: dt.timedelta = dt.timedelta(days=3),
    ) -> None:
        """With issue_signer, responses are signed by a delegated responder certificate that is
        replaced at 2/3 of its life; without, by the issuing CA itself."""
        self.issuer = issuer
        self.clock = clock
        self.validity = validity
        self._issue_signer = issue_signer
        self._signer_validity = signer_validity
        self._signer: OcspSigner | None = None
        self._signer_renew_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._slot: SignerSlot | None = None
        self._next_look = 0.0
        self._dropped: set[int] = set()  # revoked responder certificates: never sign again
        self._lock = threading.Lock()
        # observe(status, cached) for every answer respond() gives: "good", "revoked",
        # "unknown", "malformed", "unauthorized"; cached when no store read or signature was
        # needed. A hook for the adapters' metrics (the core keeps no counters).
        self.observe: Callable[[str, bool], None] = lambda status, cached: None
        self._unknown: OrderedDict[tuple[int, str], SignedStatus] = OrderedDict()
        # (serial, hash) -> (store revocation epoch, answer): a repeated plain request costs a
        # dictionary lookup, valid while no revocation happened anywhere and it is fresh.
        self._answers: OrderedDict[tuple[int, str], tuple[int, SignedStatus, str]] = OrderedDict()
        # Same, keyed by the request's bytes: a repeated request is answered without parsing.
        self._by_bytes: OrderedDict[bytes, tuple[int, SignedStatus, str]] = OrderedDict()
        self._hashes = {
            alg.name: issuer_hashes(issuer.certificate, alg())
            for alg in (hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512)
        }

    # -- signing ----------------------------------------------------------------------------
    def signer_serial(self) -> int | None:
        """The serial of the delegated responder certificate in use, if any."""
        with self._lock:
            return None if self._signer is None else self._signer.certificate.serial_number

    def signer_certificate(self) -> x509.Certificate | None:
        """The delegated responder certificate in use, if any (none is made by asking)."""
        with self._lock:
            return None if self._signer is None else self._signer.certificate

    def share_signer(self, slot: SignerSlot) -> None:
        """Sign with the delegated responder kept in `slot`, shared with other processes."""
        with self._lock:
            self._slot = slot
            self._signer = None

    def signer(self) -> OcspSigner:
        if self._issue_signer is None:
            return OcspSigner(self.issuer.certificate, self.issuer.key, delegated=False)
        with self._lock:
            now = self.clock.now()
            if self._signer is not None and now < self._signer_renew_at:
                if self._slot is None or time.monotonic() < self._next_look:
                    return self._signer
                self._next_look = time.monotonic() + SLOT_LOOK_EVERY
                if not self._slot.changed():
                    return self._signer
            signer = self._next_signer()
            self._signer = signer
            self._signer_renew_at = self._renew_time(signer.certificate)
            return signer

    @staticmethod
    def _renew_time(cert: x509.Certificate) -> dt.datetime:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return start + (end - start) * SIGNER_RENEW_AT

    def _is_due(self, signer: OcspSigner | None) -> bool:
        return (
            signer is None
            or signer.certificate.serial_number in self._dropped
            or signer.certificate.issuer != self.issuer.certificate.subject
            or self.clock.now() >= self._renew_time(signer.certificate)
        )

    def _make_signer(self) -> OcspSigner:
        assert self._issue_signer is not None
        key = generate_key("ec-p256")
        return OcspSigner(self._issue_signer(key.public_key(), self._signer_validity), key, True)

    def _next_signer(self) -> OcspSigner:
        if self._slot is None:
            return self._make_signer()
        loaded = self._slot.load()
        if not self._is_due(loaded):
            assert loaded is not None
            return loaded
        return self._slot.replace(self._is_due, self._make_signer)

    def sign(
        self,
        answer: StatusAnswer,
        algorithm: hashes.HashAlgorithm | None = None,
        nonce: bytes | None = None,
    ) -> SignedStatus:
        signer = self.signer()
        this_update = utc_seconds(self.clock.now())
        # A response must not outlive the certificate that signs it.
        next_update = min(this_update + self.validity, signer.certificate.not_valid_after_utc)
        der = build_ocsp_response(
            self.issuer, answer, this_update, next_update, algorithm, signer=signer, nonce=nonce
        )
        return SignedStatus(der, this_update, next_update)

    def is_fresh(self, stored: SignedStatus | None) -> bool:
        """Stored responses are used while more than half the configured validity remains
        before their nextUpdate, then re-signed (also catches a nextUpdate capped by a signer
        or CA expiry, and a validity changed in the configuration)."""
        return stored is not None and self.clock.now() < stored.next_update - self.validity / 2

    # -- answering ---------------------------------------------------------------------------
    def respond(
        self, request_der: bytes, lookup: Lookup, store_back: StoreBack, epoch: int
    ) -> SignedStatus | bytes:
        """Answer a DER OCSPRequest: a signed response, or the DER of an unsuccessful one
        (malformedRequest, unauthorized). Never raises for bad input. `epoch` is the store's
        current revocation epoch: answers remembered under another one are not reused."""
        if len(request_der) <= _PLAIN_REQUEST_MAX:
            with self._lock:
                seen = self._by_bytes.get(request_der)
            if seen is not None and seen[0] == epoch and self.is_fresh(seen[1]):
                self.observe(seen[2], True)
                return seen[1]
        try:
            query = parse_ocsp_request(request_der)
        except MalformedOcspRequest:
            self.observe("malformed", False)
            return unsuccessful_response(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if self._hashes.get(query.algorithm.name) != (
            query.issuer_name_hash,
            query.issuer_key_hash,
        ):
            # RFC 6960 2.3: not a CA we answer for.
            self.observe("unauthorized", False)
            return unsuccessful_response(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        # Requests without extensions depend only on (serial, CertID hash): remember those
        # answers, bounded, under the epoch they were read at.
        key = (query.serial, query.algorithm.name)
        if query.plain:
            with self._lock:
                hit = self._answers.get(key)
            if hit is not None and hit[0] == epoch and self.is_fresh(hit[1]):
                self.observe(hit[2], True)
                return hit[1]
        found = lookup(query.serial)
        status = found[0].status.value if found is not None else CertStatus.UNKNOWN.value
        signed, reusable = self._answer(query, found, store_back)
        self.observe(status, False)
        if reusable and query.plain:
            with self._lock:
                self._answers[key] = (epoch, signed, status)
                if len(self._answers) > _ANSWER_CACHE_MAX:
                    self._answers.popitem(last=False)
                if len(request_der) <= _PLAIN_REQUEST_MAX:
                    self._by_bytes[request_der] = (epoch, signed, status)
                    if len(self._by_bytes) > _ANSWER_CACHE_MAX:
                        self._by_bytes.popitem(last=False)
        return signed

    def answer(
        self,
        query: OcspQuery,
        found: tuple[StatusAnswer, SignedStatus | None] | None,
        store_back: StoreBack,
        epoch: int | None = None,
    ) -> SignedStatus:
        """The signed answer for what `lookup` found (None: never issued). With the store's
        revocation `epoch` (read before the lookup), a good certificate's plain answer is the
        one respond() gave and keeps: a response signed on demand is written back later, and
        until then gRPC and HTTP must still hand out the same bytes."""
        good = found is not None and found[0].status is CertStatus.GOOD
        key = (query.serial, query.algorithm.name)
        if epoch is not None and good and query.plain:
            with self._lock:
                hit = self._answers.get(key)
            if hit is not None and hit[0] == epoch and self.is_fresh(hit[1]):
                return hit[1]
        signed, reusable = self._answer(query, found, store_back)
        if epoch is not None and good and reusable and query.plain:
            with self._lock:
                self._answers[key] = (epoch, signed, CertStatus.GOOD.value)
                if len(self._answers) > _ANSWER_CACHE_MAX:
                    self._answers.popitem(last=False)
        return signed

    def _answer(
        self,
        query: OcspQuery,
        found: tuple[StatusAnswer, SignedStatus | None] | None,
        store_back: StoreBack,
    ) -> tuple[SignedStatus, bool]:
        """The answer, and whether it may be reused for the same (serial, hash): not with a
        nonce, not for unknown serials (they have their own cache, which issuance clears)."""
        if found is None:
            if query.nonce is None:
                return self._unknown_answer(query), False
            return self._sign_for(query, None), False
        answer, stored = found
        # Only the common form (SHA-1 CertID, no nonce) is pre-signed; the rest cost a signature.
        if query.nonce is not None or not isinstance(query.algorithm, hashes.SHA1):
            return self._sign_for(query, answer), query.nonce is None
        if self.is_fresh(stored):
            assert stored is not None
            return stored, True
        signed = self._sign_for(query, answer)  # the refresh has not reached it yet
        store_back(answer, signed)
        return signed, True

    def _sign_for(self, query: OcspQuery, answer: StatusAnswer | None) -> SignedStatus:
        answer = answer or StatusAnswer(query.serial, CertStatus.UNKNOWN)
        return self.sign(answer, query.algorithm, query.nonce)

    def _unknown_answer(self, query: OcspQuery) -> SignedStatus:
        """Serials we never issued, signed once and kept a while (bounded): a flood of random
        serials must not cost a signature each. Serials are 128 random bits, so one of them
        turning into an issued certificate while cached is not a practical concern."""
        key = (query.serial, query.algorithm.name)
        with self._lock:
            cached = self._unknown.get(key)
        if self.is_fresh(cached):
            assert cached is not None
            return cached
        signed = self._sign_for(query, None)
        with self._lock:
            self._unknown[key] = signed
            while len(self._unknown) > _UNKNOWN_CACHE_MAX:
                self._unknown.popitem(last=False)
        return signed

    def drop_signer(self, serial: int) -> None:
        """Our delegated responder certificate was revoked: never sign with it again."""
        with self._lock:
            if self._signer is not None and self._signer.certificate.serial_number == serial:
                self._dropped.add(serial)  # also when it comes back from the shared slot
                self._signer = None

    def forget_unknown(self, serial: int) -> None:
        """A serial was just issued here: drop any cached 'unknown' for it."""
        with self._lock:
            for name in self._hashes:
                self._unknown.pop((serial, name), None)
