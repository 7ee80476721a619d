"""WatchRevocations' source: the store's revocation events, and a wake-up when there may be new
ones. Events are read from the store (never buffered here), so every worker and replica gives
the same sequence, a consumer resumes after a reconnect without a gap, and a slow consumer
costs no memory. Waiters wake at once for this process's revocations and within the
maintenance poll for other processes' (the revocation epoch moving)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .store import RevocationEvent, Store

PAGE = 500  # events read per query


class RevocationFeed:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = threading.Condition()
        self._generation = 0
        self._closed = False

    def changed(self, *_: object) -> None:
        """There may be new events (a revocation here, or the epoch moved elsewhere)."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def close(self) -> None:
        """Shutdown: waiters return at once, and from then on never wait."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def pause(self, seconds: float) -> None:
        """Wait up to `seconds`, or less: until a change here, or shutdown."""
        with self._changed:
            if not self._closed:
                self._changed.wait(seconds)

    def after(self, sequence: int, wait: float) -> tuple[int, Sequence[RevocationEvent]]:
        """(head, events): events after `sequence` (at most PAGE), and the newest sequence
        read before them, so that with no events the reader has everything up to head. When
        there are none, wait up to `wait` seconds for a change and look once more."""
        with self._changed:
            generation = self._generation
        head = self.head()
        events = self._store.revocation_events(sequence, PAGE)
        if events or wait <= 0:
            return head, events
        with self._changed:
            # A change between the read and here moved the generation: read again at once.
            if not self._closed and self._generation == generation:
                self._changed.wait(wait)
        head = self.head()
        return head, self._store.revocation_events(sequence, PAGE)

    def head(self) -> int:
        """The newest sequence number (0 when nothing was ever revoked)."""
        return self._store.revocation_epoch()
