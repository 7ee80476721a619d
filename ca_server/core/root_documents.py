"""What the roots sign ahead of time, so that their keys can stay offline: each root's CRL
(which relying parties such as nginx ``ssl_crl`` need for every CA of the chain) and its OCSP
answers about the CA certificates it issued (intermediates, cross-certificates: for nginx
``ssl_ocsp on``, which asks about every certificate of the chain).

They are long-lived and kept in the store, so every process and replica serves the same bytes.
They are re-signed when two thirds of their life has passed, or when a root has issued a CA
certificate it has no answer about yet, wherever that root's key is at hand (``ca-server
serve`` with the key in the data directory, or ``ca-server root sign`` run where the key is
kept), and the server warns when they near expiry with no key to re-sign them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .clock import Clock, utc_seconds
from .crl import build_crl
from .hierarchy import CaCert, Hierarchy, key_id
from .ocsp import (
    CertStatus,
    OcspQuery,
    SignedStatus,
    StatusAnswer,
    build_ocsp_response,
    issuer_hashes,
)
from .profile import Issuer, serial_hex
from .revocation import RevokedEntry
from .store import SignedDocument, Store

# Names in the store: a root's CRL by the root's key id, an answer by the certificate's serial.
ROOT_CRL = "root-crl:"
CA_OCSP = "ocsp:"
# What CAs from before rotations called the documents of their one root and intermediate.
LEGACY_ROOT_CRL, LEGACY_INTERMEDIATE_OCSP = "root-crl", "intermediate-ocsp"
RENEW_AT = 2 / 3  # of their life: re-signed then, where the root key is


def _due(d: SignedDocument, now: dt.datetime) -> bool:
    return now >= d.this_update + (d.next_update - d.this_update) * RENEW_AT


@dataclass(frozen=True, slots=True)
class RootDocuments:
    """One root's: its CRL and its answers about the CA certificates it issued, by serial."""

    crl: SignedDocument
    answers: Mapping[int, SignedDocument]

    @property
    def intermediate_ocsp(self) -> SignedDocument:
        """The answer about its first CA certificate (a CA before rotations has one)."""
        return next(iter(self.answers.values()))

    @property
    def next_update(self) -> dt.datetime:
        """When the first of them expires."""
        return min(d.next_update for d in (self.crl, *self.answers.values()))

    def due(self, now: dt.datetime) -> bool:
        """Whether they should be re-signed (two thirds of the shorter life has passed)."""
        return any(_due(d, now) for d in (self.crl, *self.answers.values()))

    def documents(self) -> list[SignedDocument]:
        return [self.crl, *self.answers.values()]


def sign_root_documents(
    root: Issuer,
    issued: x509.Certificate | Sequence[x509.Certificate],
    now: dt.datetime,
    validity: dt.timedelta,
    revoked: Sequence[RevokedEntry] = (),
) -> RootDocuments:
    """The root's CRL (entries: the CA certificates it revoked) and its OCSP responses about
    the CA certificates it issued, all valid for `validity` from `now`. The CRL number is the
    signing time in seconds: it only grows, with no counter to keep where the root key lives."""
    now = utc_seconds(now)
    until = min(now + validity, root.certificate.not_valid_after_utc)
    crl = build_crl(root, revoked, int(now.timestamp()), now, until)
    gone = {e.serial: e for e in revoked}
    answers: dict[int, SignedDocument] = {}
    for cert in [issued] if isinstance(issued, x509.Certificate) else issued:
        entry = gone.get(cert.serial_number)
        answer = (
            StatusAnswer(cert.serial_number, CertStatus.GOOD)
            if entry is None
            else StatusAnswer(entry.serial, CertStatus.REVOKED, entry.revoked_at, entry.reason)
        )
        response = build_ocsp_response(root, answer, now, until)  # SHA-1 CertID, by the root
        name = CA_OCSP + serial_hex(cert.serial_number)
        answers[cert.serial_number] = SignedDocument(name, response, now, until)
    return RootDocuments(
        SignedDocument(ROOT_CRL + key_id(root.certificate), crl, now, until), answers
    )


class RootPublisher:
    """The roots' documents as this process serves them: loaded from the store, re-signed
    when due for each root whose key this process has (only the maintenance lease holder
    asks)."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        hierarchy: Callable[[], Hierarchy],
        validity: dt.timedelta,
    ) -> None:
        self._store = store
        self._clock = clock
        self._hierarchy = hierarchy
        self.validity = validity
        self._lock = threading.Lock()
        self._current: dict[str, RootDocuments] = {}  # root key id -> its documents
        self._sha1 = hashes.SHA1()  # noqa: S303 - CertID matching, what the stored answer uses

    @property
    def has_key(self) -> bool:
        return any(r.key is not None for r in self._hierarchy().roots)

    def current(self) -> RootDocuments | None:
        """The active root's documents."""
        return self.of(self._hierarchy().active_root.key_id)

    def of(self, root_key_id: str) -> RootDocuments | None:
        with self._lock:
            return self._current.get(root_key_id)

    def reload(self) -> RootDocuments | None:
        """Take up what the store holds (another process or `ca-server root sign` may have
        re-signed them)."""
        stored = {d.name: d for d in self._store.signed_documents()}
        found: dict[str, RootDocuments] = {}
        for root in self._hierarchy().roots:
            crl = stored.get(ROOT_CRL + root.key_id)
            answers = {
                e.certificate.serial_number: stored[CA_OCSP + e.serial]
                for e in self._hierarchy().issued_by(root)
                if CA_OCSP + e.serial in stored
            }
            if crl is not None and answers:
                found[root.key_id] = RootDocuments(crl, answers)
        with self._lock:
            self._current = found
        return self.current()

    def sign(self, also: Sequence[x509.Certificate] = ()) -> RootDocuments:
        """Sign them now for every root whose key is here and keep them in the store; `also`:
        CA certificates not yet in the hierarchy (an intermediate signed in a ceremony, about to
        be activated) that a root here issued."""
        hierarchy = self._hierarchy()
        signed = False
        for root in hierarchy.roots:
            if root.key is None:
                continue
            issued = [e.certificate for e in hierarchy.issued_by(root)]
            issued += [c for c in also if _issued_by_key(c, root)]
            docs = sign_root_documents(
                Issuer(root.certificate, root.key, ()), issued, self._clock.now(), self.validity
            )
            self._store.save_signed_documents(docs.documents())
            with self._lock:
                self._current[root.key_id] = docs
            signed = True
        if not signed:
            raise RuntimeError("the root key is not loaded: run `ca-server root sign` where it is")
        active = self.current()
        assert active is not None or hierarchy.active_root.key is None
        return active if active is not None else docs

    def refresh(self) -> RootDocuments | None:
        """Re-sign if missing, due or short of an answer, where a root key is; else what
        there is."""
        self.reload()
        if self.needs_signing() and self.has_key:
            return self.sign()
        return self.current()

    def needs_signing(self) -> bool:
        """Some published root's documents are missing, due, or lack an answer about a CA
        certificate it issued."""
        hierarchy, now = self._hierarchy(), self._clock.now()
        for root in hierarchy.roots:
            docs = self.of(root.key_id)
            if docs is None or docs.due(now):
                return True
            if any(
                e.certificate.serial_number not in docs.answers for e in hierarchy.issued_by(root)
            ):
                return True
        return False

    def next_update(self) -> dt.datetime | None:
        """When the first of the published roots' documents expires."""
        with self._lock:
            times = [d.next_update for d in self._current.values()]
        return min(times) if times else None

    def crls(self) -> list[SignedDocument]:
        """Every published root's CRL, the active root's first."""
        out = []
        for root in self._hierarchy().roots:
            docs = self.of(root.key_id)
            if docs is not None:
                out.append(docs.crl)
        return out

    def ocsp_answer(self, query: OcspQuery) -> SignedStatus | None:
        """A root's stored answer about a CA certificate it issued, for a query it fits: a
        SHA-1 CertID under that root for that certificate's serial. A nonce cannot be echoed
        (the root signs ahead of time), so it is left out, as RFC 8954 allows. None for
        anything else."""
        for root in self._hierarchy().roots:
            if (query.issuer_name_hash, query.issuer_key_hash) != issuer_hashes(
                root.certificate, self._sha1
            ):
                continue  # the root's SHA-1 name and key hashes: another hash gives other bytes
            docs = self.of(root.key_id)
            d = None if docs is None else docs.answers.get(query.serial)
            if d is not None:
                return SignedStatus(d.der, d.this_update, d.next_update)
        return None


def _issued_by_key(cert: x509.Certificate, root: CaCert) -> bool:
    from .hierarchy import authority_key_id

    return authority_key_id(cert) == root.key_id
