"""Human durations for config and flags: "90s", "15m", "24h", "30d", or combinations "1h30m"."""

from __future__ import annotations

import datetime as dt
import re

_PART = re.compile(r"(\d+)(d|h|m|s)")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> dt.timedelta:
    """Parse a duration such as "24h" or "1h30m"; raise ValueError naming the accepted form."""
    s = text.strip().lower()
    if not s or _PART.sub("", s) != "":
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit (s, m, h, d), e.g. 24h"
        )
    try:
        return dt.timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in _PART.findall(s)))
    except OverflowError:
        raise ValueError(f"duration {text!r} is too large") from None


def format_duration(delta: dt.timedelta) -> str:
    """The shortest form parse_duration reads back to the same value."""
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "-" + format_duration(-delta)
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in _UNITS.items():
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
