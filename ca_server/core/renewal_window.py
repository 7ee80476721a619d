"""When a certificate should be renewed, as the CA suggests it: the idea of ACME Renewal
Information (RFC 9773) for gRPC. The CA answers a window, its holder renews at a uniformly
random instant inside it and asks again after ``retry_after``.

The default window is a pure function of the certificate (when it was issued, its expiry, its
serial), so every worker and replica computes the same one: the fleet's renewals span the
first 1/20 of each certificate's last third (from 2/3 of the lifetime, where the agent's own
rule renews), cut in SLOTS equal windows, and the serial picks one. Equal slots side by side
add up to an even load over the span (windows that overlap would pile up in the middle), and
a client that renews at the start of its window rather than at a random instant is spread
over the slots. An operator who pulls windows forward (renew-now) stores a window in the past,
which the store keeps for every process; a revoked certificate is due at once too."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

START = 2 / 3  # of the lifetime, where the span of windows begins
SPAN = 1 / 20  # of the lifetime, the span every serial's window lies in
SLOTS = 4
# How long a holder waits before asking again: how soon an operator's renew-now is heard.
RETRY_AFTER_SHARE = 1 / 24  # of the lifetime...
MAX_RETRY_AFTER = dt.timedelta(hours=1)  # ...at most (a key compromise cannot wait a day)
MIN_RETRY_AFTER = dt.timedelta(seconds=1)
# A window "in the past" ends at the moment it was set and is this long.
IMMEDIATE = dt.timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class RenewalWindow:
    start: dt.datetime
    end: dt.datetime


@dataclass(frozen=True, slots=True)
class RenewalInfo:
    window: RenewalWindow
    retry_after: dt.timedelta
    explanation_url: str = ""


def _slot(serial: str) -> int:
    # Hashed rather than taken from the serial's low bits: serials need not be random.
    return hashlib.sha256(serial.encode()).digest()[0] % SLOTS


def default_window(issued_at: dt.datetime, not_after: dt.datetime, serial: str) -> RenewalWindow:
    """The window of a certificate nobody has pulled forward. Counted from when it was issued,
    not from its backdated not_before: the backdate is slack for clocks, not lifetime used."""
    lifetime = not_after - issued_at
    width = lifetime * (SPAN / SLOTS)
    start = issued_at + lifetime * START + width * _slot(serial)
    return RenewalWindow(start, start + width)


def immediate(at: dt.datetime) -> RenewalWindow:
    """A window that is over by `at`: its holder renews as soon as it hears of it."""
    return RenewalWindow(at - IMMEDIATE, at)


def retry_after(issued_at: dt.datetime, not_after: dt.datetime) -> dt.timedelta:
    share = (not_after - issued_at) * RETRY_AFTER_SHARE
    return max(MIN_RETRY_AFTER, min(MAX_RETRY_AFTER, share))


def renewal_info(
    *,
    serial: str,
    issued_at: dt.datetime,
    not_after: dt.datetime,
    override: RenewalWindow | None = None,
    explanation_url: str = "",
    revoked_at: dt.datetime | None = None,
) -> RenewalInfo:
    """The window to answer: an operator's override, else at once for a revoked certificate,
    else the default."""
    if override is not None:
        window = override
    elif revoked_at is not None:
        window = immediate(revoked_at)
    else:
        window = default_window(issued_at, not_after, serial)
    return RenewalInfo(window, retry_after(issued_at, not_after), explanation_url)
