"""ca_client.schedule.RenewalPlan alone, with a seeded source and no clock: the CA's window
is followed, the 2/3 rule is the fallback, a pulled-forward window renews at once, and
retries are spread but never pass expiry."""

from __future__ import annotations

import datetime as dt
import random

from ca_client.schedule import Advice, RenewalPlan

T = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)
HOUR = dt.timedelta(hours=1)


def _plan(advice: Advice | None, fraction: float | None = None, seed: int = 1) -> RenewalPlan:
    return RenewalPlan(
        start=T, not_after=T + DAY, now=T, rng=random.Random(seed), fraction=fraction,
        advice=advice,
    )  # fmt: skip


WINDOW = Advice(T + DAY * 0.7, T + DAY * 0.71, HOUR)


def test_without_a_window_the_two_thirds_rule_and_no_polls() -> None:
    for seed in range(50):
        plan = _plan(None, seed=seed)
        assert T + DAY * (2 / 3 - 1 / 20) <= plan.renew_at <= T + DAY * 2 / 3
        assert plan.poll_at is None and plan.next_event()[1] == "renew"


def test_in_the_window_polling_at_retry_after_and_an_older_ca_stops_the_polls() -> None:
    plan = _plan(WINDOW)
    assert WINDOW.start <= plan.renew_at <= WINDOW.end
    assert plan.poll_at is not None and T + HOUR <= plan.poll_at <= T + HOUR * 1.5
    instant = plan.renew_at
    plan.advised(WINDOW, T + HOUR)  # the same window: the same instant
    assert plan.renew_at == instant
    plan.unsupported()
    assert plan.poll_at is None and plan.renew_at == instant


def test_a_window_in_the_past_renews_at_once_even_with_a_later_fraction() -> None:
    plan = _plan(WINDOW, fraction=0.9)
    assert plan.renew_at <= WINDOW.end  # the CA's window is earlier than 0.9
    now = T + 3 * HOUR
    plan.advised(Advice(now - dt.timedelta(minutes=1), now, HOUR, "https://x/why"), now)
    assert plan.next_event() == (plan.renew_at, "renew") and plan.renew_at <= now
    early = _plan(WINDOW, fraction=0.5)
    assert early.renew_at <= T + DAY * 0.5  # an earlier fraction stands


def test_retries_spread_over_retry_after_and_never_past_expiry() -> None:
    plan = _plan(WINDOW)
    now = WINDOW.start
    retries = [plan.failed(now) - now for _ in range(200)]
    assert all(dt.timedelta(0) < r <= HOUR for r in retries)
    assert max(retries) > HOUR / 2  # spread, not the first backoff step's second
    late = T + DAY - dt.timedelta(minutes=10)
    assert all(late < plan.failed(late) < T + DAY for _ in range(50))
