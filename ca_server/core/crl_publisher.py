"""Keeping the CRL current without building it on the request path, once for every process.

A build happens when revocations change the store (any process's: the store's revocation
epoch tells) and at half the CRL's validity. One process builds (``builder``: the one whose
background thread holds the maintenance lease), coalescing revocations that arrive together,
and keeps the CRL in the store; every process serves the newest stored CRL, so all of them
hand out one CRL with one number. A reader that knows its CRL is out of date waits for the
builder's next CRL rather than starting one; if none comes in time (the builder died and its
lease has not yet passed on), it builds one itself rather than serve a stale CRL. Without a
background thread (tools, tests) a stale reader builds it itself."""

from __future__ import annotations

import datetime as dt
import threading
import time

from cryptography import x509

from .clock import Clock, utc_seconds
from .crl import build_crl
from .profile import Issuer
from .store import Store, StoredCrl

CrlResult = StoredCrl


def _key_id(issuer: Issuer) -> str:
    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return ski.value.digest.hex()


FOLLOW_POLL = 0.02  # how often a waiting reader looks for the builder's CRL in the store


class CrlPublisher:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        issuer: Issuer,
        validity: dt.timedelta,
        key_id: str | None = None,
        wanted: threading.Event | None = None,
    ):
        """key_id: the issuer's, which its CRLs and certificates are filed under in the store
        (each intermediate has its own CRL); wanted: shared by the publishers of one CA."""
        self._store, self._clock, self._issuer, self._validity = store, clock, issuer, validity
        self.key_id = key_id if key_id is not None else _key_id(issuer)
        self._current: CrlResult | None = None
        self._changed = threading.Condition()
        self._build_lock = threading.Lock()
        # Set when a build is due; the background thread waits on it.
        self.wanted = wanted if wanted is not None else threading.Event()
        self.background = False  # a background thread runs (here or in another process)
        self.builder = False  # ...and it is this process's: readers wait for run_pending()

    def _is_current(self, crl: CrlResult | None, epoch: int) -> bool:
        """Reflects every revocation up to `epoch` (a newer build reflects more) and is not
        past half its validity."""
        return (
            crl is not None
            and crl.epoch >= epoch
            and self._clock.now() < crl.this_update + self._validity / 2
        )

    def _adopt(self, crl: CrlResult) -> None:
        with self._changed:
            if self._current is None or crl.number > self._current.number:
                self._current = crl
                self._changed.notify_all()

    def follow(self) -> CrlResult | None:
        """Take up a newer CRL from the store, if another process built one."""
        newer = self._store.latest_crl(
            self._current.number if self._current else 0, issuer=self.key_id
        )
        if newer is not None:
            self._adopt(newer)
        return self._current

    def ready(self) -> CrlResult | None:
        """The CRL reflecting every revocation committed before this call, if there is one
        without waiting for a build (else None: call current() off any event loop)."""
        epoch = self._store.revocation_epoch()
        if self._is_current(self._current, epoch) or self._is_current(self.follow(), epoch):
            return self._current
        return None

    def current(self, wait: float = 10.0) -> CrlResult:
        """The CRL reflecting every revocation committed before this call."""
        epoch = self._store.revocation_epoch()
        if self._is_current(self._current, epoch):
            assert self._current is not None
            return self._current
        if self._is_current(self.follow(), epoch):
            assert self._current is not None
            return self._current
        if self.background:
            deadline = time.monotonic() + wait
            if self.builder:
                self.wanted.set()
                with self._changed:
                    if self._changed.wait_for(lambda: self._is_current(self._current, epoch), wait):
                        assert self._current is not None
                        return self._current
            while time.monotonic() < deadline:  # another process builds: look for its CRL
                if self._is_current(self.follow(), epoch):
                    assert self._current is not None
                    return self._current
                time.sleep(FOLLOW_POLL)
        return self.build()  # no background builder, or it is stuck: do not serve stale

    def run_pending(self) -> bool:
        """Build if the store changed or half the validity passed; True if it built."""
        epoch = self._store.revocation_epoch()
        if self._is_current(self._current, epoch) or self._is_current(self.follow(), epoch):
            return False
        self.build()
        return True

    def build(self) -> CrlResult:
        with self._build_lock:
            epoch = self._store.revocation_epoch()  # read first: later revocations re-trigger
            if self._is_current(self._current, epoch):
                assert self._current is not None
                return self._current
            now = utc_seconds(self._clock.now())
            number = self._store.next_crl_number()
            next_update = now + self._validity
            entries = self._store.revoked_unexpired(now, self.key_id)
            der = build_crl(self._issuer, entries, number, now, next_update)
            crl = CrlResult(der, number, now, next_update, epoch, self.key_id)
            self._store.save_crl(crl)
            self._adopt(crl)
            return crl
