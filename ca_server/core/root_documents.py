"""What the root signs ahead of time, so that its key can stay offline: its CRL (which relying
parties such as nginx ``ssl_crl`` need for every CA of the chain) and the OCSP response for the
intermediate (for nginx ``ssl_ocsp on``, which asks about every certificate of the chain).

Both are long-lived and kept in the store, so every process and replica serves the same bytes.
They are re-signed when two thirds of their life has passed wherever the root key is at hand
(``ca-server serve`` with the key in the data directory, or ``ca-server root sign`` run where
the key is kept), and the server warns when they near expiry with no key to re-sign them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .clock import Clock, utc_seconds
from .crl import build_crl
from .keys import SigningKey
from .ocsp import (
    CertStatus,
    OcspQuery,
    SignedStatus,
    StatusAnswer,
    build_ocsp_response,
    issuer_hashes,
)
from .profile import Issuer
from .revocation import RevokedEntry
from .store import SignedDocument, Store

ROOT_CRL = "root-crl"
INTERMEDIATE_OCSP = "intermediate-ocsp"
RENEW_AT = 2 / 3  # of their life: re-signed then, where the root key is


@dataclass(frozen=True, slots=True)
class RootDocuments:
    crl: SignedDocument
    intermediate_ocsp: SignedDocument

    @property
    def next_update(self) -> dt.datetime:
        """When the first of them expires."""
        return min(self.crl.next_update, self.intermediate_ocsp.next_update)

    def due(self, now: dt.datetime) -> bool:
        """Whether they should be re-signed (two thirds of the shorter life has passed)."""
        return any(
            now >= d.this_update + (d.next_update - d.this_update) * RENEW_AT
            for d in (self.crl, self.intermediate_ocsp)
        )


def sign_root_documents(
    root: Issuer,
    intermediate: x509.Certificate,
    now: dt.datetime,
    validity: dt.timedelta,
    revoked: Sequence[RevokedEntry] = (),
) -> RootDocuments:
    """The root's CRL (entries: the CA certificates it revoked) and its OCSP response about
    the intermediate, both valid for `validity` from `now`. The CRL number is the signing time
    in seconds: it only grows, with no counter to keep where the root key lives."""
    now = utc_seconds(now)
    until = min(now + validity, root.certificate.not_valid_after_utc)
    crl = build_crl(root, revoked, int(now.timestamp()), now, until)
    gone = {e.serial: e for e in revoked}
    entry = gone.get(intermediate.serial_number)
    answer = (
        StatusAnswer(intermediate.serial_number, CertStatus.GOOD)
        if entry is None
        else StatusAnswer(entry.serial, CertStatus.REVOKED, entry.revoked_at, entry.reason)
    )
    response = build_ocsp_response(root, answer, now, until)  # SHA-1 CertID, signed by the root
    return RootDocuments(
        SignedDocument(ROOT_CRL, crl, now, until),
        SignedDocument(INTERMEDIATE_OCSP, response, now, until),
    )


class RootPublisher:
    """The root's documents as this process serves them: loaded from the store, re-signed
    when due if this process has the root key (only the maintenance lease holder asks)."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        root: x509.Certificate,
        intermediate: x509.Certificate,
        root_key: SigningKey | None,
        validity: dt.timedelta,
    ) -> None:
        self._store = store
        self._clock = clock
        self._root = root
        self._intermediate = intermediate
        self._root_key = root_key
        self.validity = validity
        self._lock = threading.Lock()
        self._current: RootDocuments | None = None
        self._sha1 = hashes.SHA1()  # noqa: S303 - CertID matching, what the stored answer uses
        self._hashes = issuer_hashes(root, self._sha1)

    @property
    def has_key(self) -> bool:
        return self._root_key is not None

    def current(self) -> RootDocuments | None:
        with self._lock:
            return self._current

    def reload(self) -> RootDocuments | None:
        """Take up what the store holds (another process or `ca-server root sign` may have
        re-signed them)."""
        stored = {d.name: d for d in self._store.signed_documents()}
        crl, response = stored.get(ROOT_CRL), stored.get(INTERMEDIATE_OCSP)
        docs = RootDocuments(crl, response) if crl and response else None
        with self._lock:
            self._current = docs
        return docs

    def sign(self) -> RootDocuments:
        """Sign both now and keep them in the store (needs the root key)."""
        if self._root_key is None:
            raise RuntimeError("the root key is not loaded: run `ca-server root sign` where it is")
        docs = sign_root_documents(
            Issuer(self._root, self._root_key, ()),
            self._intermediate,
            self._clock.now(),
            self.validity,
        )
        self._store.save_signed_documents([docs.crl, docs.intermediate_ocsp])
        with self._lock:
            self._current = docs
        return docs

    def refresh(self) -> RootDocuments | None:
        """Re-sign if missing or due and the key is here; else what there is."""
        docs = self.reload()
        if self._root_key is not None and (docs is None or docs.due(self._clock.now())):
            return self.sign()
        return docs

    def ocsp_answer(self, query: OcspQuery) -> SignedStatus | None:
        """The root's stored answer about the intermediate, for a query it fits: a SHA-1 CertID
        under the root for the intermediate's serial. A nonce cannot be echoed (the root signs
        ahead of time), so it is left out, as RFC 8954 allows. None for anything else."""
        docs = self.current()
        if (
            docs is None
            # the root's SHA-1 name and key hashes: another hash gives other bytes
            or (query.issuer_name_hash, query.issuer_key_hash) != self._hashes
            or query.serial != self._intermediate.serial_number
        ):
            return None
        d = docs.intermediate_ocsp
        return SignedStatus(d.der, d.this_update, d.next_update)
