"""The fleet simulation (tests/fleet.py): 10,000 agents whose 24-hour certificates were all
issued in the same minute, scheduled by the agent's own code against the CA's own windows.

- without an outage, the busiest minute is at most 1.3x the mean of the window;
- after renew-now for all of them, 99% renew within two retry_after periods;
- after a 10-minute CA outage anywhere in the window, the busiest minute after the CA returns
  is at most 2x that mean (retries are spread over retry_after, not bunched by backoff);
- a CA without windows (an older server) gets the 2/3-minus-jitter rule, spread as before.

Figures are printed (pytest -s); `python scripts/renewal_sim.py` sweeps every outage placement."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.fleet import MINUTE, T0, Fleet, Scenario, fleet_span, outage_sweep

AGENTS = 10_000


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(Scenario(agents=AGENTS))


def test_a_fleet_issued_in_one_minute_renews_evenly_also_after_renew_now_and_an_outage(
    fleet: Fleet,
) -> None:
    renew_now_at = T0 + dt.timedelta(hours=6)  # polls have drifted apart by then
    fleet.run(until=renew_now_at)
    pulled = fleet.fork(renew_now_at=renew_now_at).run()
    period = pulled.retry_after
    within = sum(1 for t in pulled.renewed if t < renew_now_at + 2 * period) / AGENTS
    print(f"\nrenew-now: {within:.2%} renewed within 2 x retry_after ({period})")
    assert len(pulled.renewed) == AGENTS
    assert within >= 0.99

    span_start, span_end = fleet_span(fleet.scenario)
    last = span_end - dt.timedelta(minutes=10)
    starts = [span_start, span_start + (last - span_start) / 2, last]
    mean = AGENTS / ((span_end - span_start) / MINUTE)  # what the window spreads them over
    outages = outage_sweep(fleet, starts, mean)
    calm = fleet.run()  # the fleet itself runs on without an outage
    assert len(calm.renewed) == AGENTS
    ratio = calm.busiest() / calm.mean()
    print(f"no outage: busiest minute {calm.busiest()}, mean {calm.mean():.1f}, {ratio:.2f}x")
    assert ratio <= 1.3
    for o in outages:
        print(f"outage from {o.start:%H:%M}: busiest minute after it {o.ratio:.2f}x the mean")
        assert o.ratio <= 2.0


def test_a_ca_without_windows_gets_the_two_thirds_rule() -> None:
    old = Fleet(Scenario(agents=AGENTS, ca_has_windows=False)).run()
    lifetime = dt.timedelta(hours=24)
    for t in old.renewed:  # 2/3 of the lifetime, minus up to 1/20 of it, from issuance
        assert T0 + lifetime * (2 / 3 - 1 / 20) <= t <= T0 + MINUTE + lifetime * 2 / 3
    ratio = old.busiest() / old.mean()
    print(f"\nolder CA (the 2/3 rule): busiest minute {ratio:.2f}x the mean")
    assert ratio <= 1.3
