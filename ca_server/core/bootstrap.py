"""Bootstrap tokens: how they look and how they are kept (a hash only)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

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
