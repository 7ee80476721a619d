"""When to renew, and how to back off: functions of the certificate's validity, what the CA
advises, the current time and a random source, so they are tested with a fake clock and a
seeded RNG, and the fleet simulation (tests/test_renewal_sim.py) runs exactly this code.

The CA answers a renewal window (GetRenewalInfo, and with every certificate it issues): the
agent renews at a uniformly random instant inside it (RFC 9773 4.2; at once when the window is
over) and asks again after retry_after, plus up to half as long again so that a fleet's polls
drift apart. When the CA gives no window (an older server), renewal happens at a fraction of
the lifetime (default 2/3, as step-ca) minus a random jitter (up to 1/20 of the lifetime).
Failures back off exponentially with full jitter, capped, and never past the certificate's
expiry: an agent must try again while the certificate still works. While the certificate has
time, the jitter spans at least a spread (retry_after, or the rule's jitter), so that the
agents an outage failed do not all come back in the minute the CA does."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal

DEFAULT_FRACTION = 2 / 3
DEFAULT_JITTER = 1 / 20
MIN_RETRY = dt.timedelta(milliseconds=250)  # never retry in a busy loop
POLL_JITTER = 1 / 2  # a poll comes after retry_after and up to this share of it more
# How often to ask when the CA has not said (a failed first ask): as the CA's own default.
POLL_SHARE, MAX_POLL, MIN_POLL = 1 / 24, dt.timedelta(hours=1), dt.timedelta(seconds=1)


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

    def delay(self, rng: random.Random, spread: dt.timedelta = dt.timedelta(0)) -> dt.timedelta:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, initial * factor^n)],
        or in [0, spread] when that is longer."""
        # The exponent is capped too: factor**attempt would overflow a float after ~1000 tries.
        growth = self.factor ** min(self.attempt, 64)
        ceiling = min(self.cap.total_seconds(), self.initial.total_seconds() * growth)
        return dt.timedelta(seconds=rng.uniform(0, max(ceiling, spread.total_seconds())))

    def retry_at(
        self,
        now: dt.datetime,
        not_after: dt.datetime | None,
        rng: random.Random,
        spread: dt.timedelta = dt.timedelta(0),
    ) -> dt.datetime:
        """When to try again: now plus the delay, but never past expiry (a retry must come
        while the current certificate still authenticates us)."""
        at = now + max(self.delay(rng, spread), MIN_RETRY)
        if not_after is not None and not_after > now and at >= not_after:
            # Halfway to expiry: later tries still fit before it, each one closer (but never a
            # busy loop: at least MIN_RETRY apart, which may then fall at expiry itself).
            at = now + max((not_after - now) / 2, min(MIN_RETRY, not_after - now))
        return at


@dataclass(frozen=True, slots=True)
class Advice:
    """What the CA said about when to renew a certificate (GetRenewalInfo, or the response
    that issued it)."""

    start: dt.datetime
    end: dt.datetime
    retry_after: dt.timedelta
    explanation_url: str = ""


def instant_in(start: dt.datetime, end: dt.datetime, rng: random.Random) -> dt.datetime:
    """A uniformly random instant of [start, end] (in the past when the window is over)."""
    return start + (end - start) * rng.random()


def next_poll(now: dt.datetime, retry_after: dt.timedelta, rng: random.Random) -> dt.datetime:
    return now + retry_after * (1 + POLL_JITTER * rng.random())


Event = Literal["poll", "renew"]


class RenewalPlan:
    """When to renew the certificate held and when to ask the CA about it again; one per
    certificate, so its backoff starts afresh with each new one. The agent waits for
    next_event(), does it and tells the plan how it went.

    fraction: None follows the CA's window (the 2/3 rule when there is none); a fraction the
    operator chose renews there, or earlier if the CA's window says so (a renew-now)."""

    def __init__(
        self,
        *,
        start: dt.datetime,
        not_after: dt.datetime,
        now: dt.datetime,
        rng: random.Random,
        fraction: float | None = None,
        jitter: float = DEFAULT_JITTER,
        advice: Advice | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.not_after = not_after
        self._rng = rng
        self._lifetime = not_after - start
        self._fraction = fraction
        self._jitter = jitter
        self._rule_at = renewal_time(start, not_after, rng, fraction or DEFAULT_FRACTION, jitter)
        self._backoff = backoff or Backoff()
        self._retry_at: dt.datetime | None = None
        self.advice: Advice | None = None
        self._window_at: dt.datetime | None = None
        self.poll_at: dt.datetime | None = None
        if advice is not None:
            self.advised(advice, now)

    @property
    def renew_at(self) -> dt.datetime:
        """When to renew next: a retry after a failure, else the chosen instant."""
        if self._retry_at is not None:
            return self._retry_at
        if self._window_at is None:
            return self._rule_at
        if self._fraction is None:
            return self._window_at
        return min(self._window_at, self._rule_at)

    def next_event(self) -> tuple[dt.datetime, Event]:
        renew_at = self.renew_at
        if self.poll_at is not None and self.poll_at < renew_at:
            return self.poll_at, "poll"
        return renew_at, "renew"

    def advised(self, advice: Advice, now: dt.datetime) -> None:
        """The CA answered: a new window gets a new instant; the same one keeps its instant
        (drawing again at every poll would pull renewals early)."""
        if self.advice is None or (advice.start, advice.end) != (
            self.advice.start,
            self.advice.end,
        ):
            self._window_at = instant_in(advice.start, advice.end, self._rng)
            if self._retry_at is not None:  # a retry pending: the sooner of the two
                self._retry_at = min(self._retry_at, self._window_at)
        self.advice = advice
        self.poll_at = next_poll(now, advice.retry_after, self._rng)

    def unanswered(self, now: dt.datetime) -> None:
        """The CA did not answer the poll: keep the plan and ask again later."""
        self.poll_at = next_poll(now, self._poll_interval(), self._rng)

    def unsupported(self) -> None:
        """The CA has no GetRenewalInfo (an older server): keep the plan, stop asking."""
        self.poll_at = None

    def failed(self, now: dt.datetime) -> dt.datetime:
        """A renewal attempt failed: when to try again (and after that, later still)."""
        self._retry_at = self._backoff.retry_at(now, self.not_after, self._rng, self._spread())
        self._backoff = self._backoff.next()
        return self._retry_at

    @property
    def attempt(self) -> int:
        return self._backoff.attempt

    def _spread(self) -> dt.timedelta:
        if self.advice is not None:
            return self.advice.retry_after
        return self._lifetime * self._jitter

    def _poll_interval(self) -> dt.timedelta:
        if self.advice is not None:
            return self.advice.retry_after
        return max(MIN_POLL, min(MAX_POLL, self._lifetime * POLL_SHARE))
