"""When to renew, and how to back off: pure functions of the certificate's validity, the
current time and a random source, so they are tested with a fake clock and a seeded RNG.

Renewal happens at a fraction of the lifetime (default 2/3, as step-ca) minus a random jitter
(up to 1/20 of the lifetime) so that a fleet issued together does not renew together.
Failures back off exponentially with full jitter, capped, and never past the certificate's
expiry: an agent must try again while the certificate still works."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, replace
from fractions import Fraction

DEFAULT_FRACTION = 2 / 3
DEFAULT_JITTER = 1 / 20
MIN_RETRY = dt.timedelta(milliseconds=250)  # never retry in a busy loop


def renewal_time(
    not_before: dt.datetime,
    not_after: dt.datetime,
    rng: random.Random,
    fraction: float = DEFAULT_FRACTION,
    jitter: float = DEFAULT_JITTER,
) -> dt.datetime:
    """When to renew a certificate valid from not_before to not_after."""
    check_timing(fraction, jitter)
    lifetime = not_after - not_before
    return not_before + lifetime * fraction - lifetime * jitter * rng.random()


def check_timing(fraction: float, jitter: float) -> None:
    """Refuse a schedule that cannot work, before anything depends on it."""
    if not 0 < fraction < 1:
        raise ValueError("fraction must be between 0 and 1 (exclusive)")
    if not 0 <= jitter < fraction:
        raise ValueError("jitter must be at least 0 and less than fraction")


def jitter_for(fraction: float, jitter: float = DEFAULT_JITTER) -> float:
    """The default jitter, shrunk for an early renewal (half of the fraction at most), so that
    every fraction in (0, 1) works and a renewal never lands at the very start of a lifetime."""
    return min(jitter, fraction / 2)


def parse_fraction(text: str) -> float:
    """A fraction of the lifetime as people write it: 2/3, 0.667 or 66.7%."""
    cleaned = text.strip()
    try:
        value = (
            Fraction(cleaned.removesuffix("%")) / 100
            if cleaned.endswith("%")
            else Fraction(cleaned)
        )
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not a fraction: write e.g. 2/3, 0.667 or 66%") from None
    if not 0 < value < 1:
        raise ValueError(f"{text!r} must be between 0 and 1 (exclusive), e.g. 2/3")
    return float(value)


@dataclass(frozen=True, slots=True)
class Backoff:
    """An immutable retry schedule: `delay()` for this attempt, `next()` for the following one.
    Reset by going back to a fresh Backoff after a success."""

    initial: dt.timedelta = dt.timedelta(seconds=1)
    factor: float = 2.0
    cap: dt.timedelta = dt.timedelta(minutes=5)
    attempt: int = 0

    def next(self) -> Backoff:
        return replace(self, attempt=self.attempt + 1)

    def delay(self, rng: random.Random) -> dt.timedelta:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, initial * factor^n)]."""
        # The exponent is capped too: factor**attempt would overflow a float after ~1000 tries.
        growth = self.factor ** min(self.attempt, 64)
        ceiling = min(self.cap.total_seconds(), self.initial.total_seconds() * growth)
        return dt.timedelta(seconds=rng.uniform(0, ceiling))

    def retry_at(
        self, now: dt.datetime, not_after: dt.datetime | None, rng: random.Random
    ) -> dt.datetime:
        """When to try again: now plus the delay, but never past expiry (a retry must come
        while the current certificate still authenticates us)."""
        at = now + max(self.delay(rng), MIN_RETRY)
        if not_after is not None and not_after > now and at >= not_after:
            # Halfway to expiry: later tries still fit before it, each one closer (but never a
            # busy loop: at least MIN_RETRY apart, which may then fall at expiry itself).
            at = now + max((not_after - now) / 2, min(MIN_RETRY, not_after - now))
        return at
