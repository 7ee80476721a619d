"""A lease in the store: which one of the processes sharing it (workers of one server, or
replicas on several machines) does the background work that must happen once. The holder
renews it while alive; when it dies, the lease expires and another process takes it over."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket

from .clock import Clock
from .store import Store

DEFAULT_TTL = dt.timedelta(seconds=10)


def holder_id() -> str:
    """Unique to this process and run: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        name: str = "maintenance",
        *,
        ttl: dt.timedelta = DEFAULT_TTL,
        holder: str | None = None,
    ) -> None:
        self._store, self._clock, self.name, self._ttl = store, clock, name, ttl
        self.holder = holder or holder_id()
        self._held_until: dt.datetime | None = None
        self.error: Exception | None = None  # why the last attempt to take or renew failed

    def hold(self) -> bool:
        """Take or renew the lease if due (at a third of its term); True while ours. A store
        that cannot be reached means not held: two holders must never both think they are."""
        now = self._clock.now()
        if self._held_until is not None and now < self._held_until - self._ttl * 2 / 3:
            return True
        try:
            held = self._store.acquire_lease(self.name, self.holder, now + self._ttl, now)
            self.error = None
        except Exception as exc:
            held, self.error = False, exc
        self._held_until = now + self._ttl if held else None
        return held

    def release(self) -> None:
        if self._held_until is not None:
            self._held_until = None
            self._store.release_lease(self.name, self.holder)
