"""Keeping the CRL current without building it on the request path.

A build happens when revocations change the store (any process's: the store's revocation
epoch tells) and at half the CRL's validity. A background thread does the builds
(``run_pending``), coalescing revocations that arrive together; readers get the last CRL, and
a reader that knows it is out of date waits for the next build rather than starting one.
Without a background thread (tools, tests) a stale reader builds it itself."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

from .clock import Clock, utc_seconds
from .crl import build_crl
from .profile import Issuer
from .store import Store


@dataclass(frozen=True, slots=True)
class CrlResult:
    der: bytes
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    epoch: int  # the store's revocation epoch it reflects


class CrlPublisher:
    def __init__(self, *, store: Store, clock: Clock, issuer: Issuer, validity: dt.timedelta):
        self._store, self._clock, self._issuer, self._validity = store, clock, issuer, validity
        self._current: CrlResult | None = None
        self._changed = threading.Condition()
        self._build_lock = threading.Lock()
        self.wanted = threading.Event()  # set when a build is due; the background thread waits
        self.background = False  # a thread calls run_pending(); readers then only wait

    def _is_current(self, crl: CrlResult | None, epoch: int) -> bool:
        """Reflects every revocation up to `epoch` (a newer build reflects more) and is not
        past half its validity."""
        return (
            crl is not None
            and crl.epoch >= epoch
            and self._clock.now() < crl.this_update + self._validity / 2
        )

    def current(self, wait: float = 10.0) -> CrlResult:
        """The CRL reflecting every revocation committed before this call."""
        epoch = self._store.revocation_epoch()
        with self._changed:
            if self._is_current(self._current, epoch):
                assert self._current is not None
                return self._current
            if self.background:
                self.wanted.set()
                if self._changed.wait_for(lambda: self._is_current(self._current, epoch), wait):
                    assert self._current is not None
                    return self._current
        return self.build()  # no background builder, or it is stuck: do not serve stale

    def run_pending(self) -> bool:
        """Build if the store changed or half the validity passed; True if it built."""
        if self._is_current(self._current, self._store.revocation_epoch()):
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
            der = build_crl(
                self._issuer, self._store.revoked_unexpired(now), number, now, next_update
            )
            crl = CrlResult(der, number, now, next_update, epoch)
            with self._changed:
                self._current = crl
                self._changed.notify_all()
            return crl
