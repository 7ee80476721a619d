"""Bootstrap tokens: how they look, how they are kept (a hash only), and the limiter that
slows down a peer guessing them."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
from collections import OrderedDict

from .clock import Clock
from .errors import LimitExceeded

# Signet bootstrap token: recognisable in a config file or a leak scan.
TOKEN_PREFIX = "sgt_"  # noqa: S105 - a prefix, not a secret
TOKEN_BYTES = 32  # 256 bits from the OS CSPRNG
DEFAULT_TOKEN_TTL = dt.timedelta(minutes=15)
MAX_TOKEN_TTL = dt.timedelta(hours=24)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the store keeps and looks tokens up by. Looking up a hash (rather than comparing
    token text) also leaves nothing for a timing side channel to measure."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class FailureLimiter:
    """At most `limit` failures per key (a peer address) within `window`; past that, the key
    is refused until its old failures age out."""

    def __init__(
        self,
        clock: Clock,
        limit: int = 10,
        window: dt.timedelta = dt.timedelta(minutes=1),
        max_keys: int = 10_000,
    ) -> None:
        self._clock, self._limit, self._window, self._max_keys = clock, limit, window, max_keys
        self._failures: OrderedDict[str, list[dt.datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: dt.datetime) -> list[dt.datetime]:
        recent = [t for t in self._failures.get(key, []) if now - t < self._window]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return recent

    def check(self, key: str) -> None:
        with self._lock:
            if len(self._recent(key, self._clock.now())) >= self._limit:
                raise LimitExceeded(
                    "too many failed enrollment attempts from this address; wait a minute"
                )

    def failed(self, key: str) -> None:
        with self._lock:
            now = self._clock.now()
            self._failures[key] = [*self._recent(key, now), now]
            self._failures.move_to_end(key)
            while len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
