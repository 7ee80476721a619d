"""A fleet of simulated agents on one simulated clock, driving the agent's own schedule code
(ca_client.schedule.RenewalPlan: what Agent.run waits for, and what it is told after a poll or
a renewal) against the server's own window (ca_server.core.renewal_window.renewal_info). Only
the network is left out: a call succeeds unless the CA is in an outage.

Used by tests/test_renewal_sim.py (bounded, asserted) and scripts/renewal_sim.py (printed)."""

from __future__ import annotations

import datetime as dt
import heapq
import pickle
import random
from collections import Counter
from dataclasses import dataclass, field, replace

from ca_client.schedule import DEFAULT_FRACTION, Advice, RenewalPlan, jitter_for
from ca_server.core.renewal_window import SPAN, START, RenewalWindow, immediate, renewal_info

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Scenario:
    agents: int = 10_000
    lifetime: dt.timedelta = dt.timedelta(hours=24)
    outage: tuple[dt.datetime, dt.datetime] | None = None  # the CA answers nothing in [a, b)
    renew_now_at: dt.datetime | None = None  # an operator pulls every window forward then
    ca_has_windows: bool = True  # False: an older CA (UNIMPLEMENTED): the 2/3 rule
    seed: int = 12


@dataclass
class Outcome:
    renewed: list[dt.datetime] = field(default_factory=list)  # each agent's first renewal
    retry_after: dt.timedelta = dt.timedelta(0)

    def per_minute(self, since: dt.datetime | None = None) -> Counter[int]:
        return Counter(int((t - T0) / MINUTE) for t in self.renewed if since is None or t >= since)

    def busiest(self, since: dt.datetime | None = None) -> int:
        counts = self.per_minute(since)
        return max(counts.values()) if counts else 0

    def mean(self) -> float:
        """Renewals per minute over the minutes from the first renewal to the last."""
        minutes = self.per_minute()
        return len(self.renewed) / (max(minutes) - min(minutes) + 1)


class Fleet:
    """The agents, their plans and what is queued; run() moves time on, copy() forks the fleet
    so that scenarios which share a past (every outage placement shares the hours of polls
    before it) simulate that past once."""

    def __init__(self, s: Scenario) -> None:
        self.scenario = s
        self.rng = random.Random(s.seed)
        self.outcome = Outcome()
        rng = self.rng
        self.issued = [T0 + dt.timedelta(seconds=rng.uniform(0, 60)) for _ in range(s.agents)]
        self.serials = [f"{rng.getrandbits(128):032x}" for _ in range(s.agents)]
        self.overrides: dict[int, RenewalWindow] = {}
        self._answers: dict[int, Advice] = {}  # the CA's answer is a pure function: computed once
        self.plans: list[RenewalPlan] = []
        self.queue: list[tuple[dt.datetime, int]] = []
        jitter = jitter_for(DEFAULT_FRACTION)
        for i in range(s.agents):
            plan = RenewalPlan(
                start=self.issued[i],
                not_after=self.issued[i] + s.lifetime,
                now=self.issued[i],
                rng=rng,
                jitter=jitter,
                advice=self._advice(i, self.issued[i]) if s.ca_has_windows else None,
            )
            self.plans.append(plan)
            heapq.heappush(self.queue, (plan.next_event()[0], i))

    def _advice(self, i: int, now: dt.datetime) -> Advice:
        s = self.scenario
        if s.renew_now_at is not None and now >= s.renew_now_at and i not in self.overrides:
            self.overrides[i] = immediate(s.renew_now_at)
            self._answers.pop(i, None)
        if i not in self._answers:
            info = renewal_info(
                serial=self.serials[i],
                issued_at=self.issued[i],
                not_after=self.issued[i] + s.lifetime,
                override=self.overrides.get(i),
            )
            self.outcome.retry_after = info.retry_after
            w = info.window
            self._answers[i] = Advice(w.start, w.end, info.retry_after, info.explanation_url)
        return self._answers[i]

    def _down(self, at: dt.datetime) -> bool:
        outage = self.scenario.outage
        return outage is not None and outage[0] <= at < outage[1]

    def run(self, until: dt.datetime | None = None) -> Outcome:
        """Process every event before `until` (all of them when None), as Agent.run would."""
        queue, plans = self.queue, self.plans
        while queue and (until is None or queue[0][0] < until):
            now, i = heapq.heappop(queue)
            plan = plans[i]
            at, event = plan.next_event()
            now = max(now, at)  # the agent waits max(0, at - now)
            if event == "poll":
                if self._down(now):
                    plan.unanswered(now)
                else:
                    plan.advised(self._advice(i, now), now)
            elif self._down(now):
                plan.failed(now)
            else:
                self.outcome.renewed.append(now)
                continue  # it holds a new certificate: its first renewal is what counts
            heapq.heappush(queue, (max(now, plan.next_event()[0]), i))
        return self.outcome

    def fork(self, **changes: object) -> Fleet:
        twin: Fleet = pickle.loads(pickle.dumps(self))  # noqa: S301 - our own bytes
        # (a deep copy, three times faster than copy.deepcopy)
        twin.scenario = replace(self.scenario, **changes)  # type: ignore[arg-type]
        return twin


def simulate(s: Scenario) -> Outcome:
    return Fleet(s).run()


def fleet_span(s: Scenario) -> tuple[dt.datetime, dt.datetime]:
    """From the earliest window's start to the latest's end, over the fleet issued in [T0,
    T0 + 1 min): where an outage "in the window" can fall."""
    return T0 + s.lifetime * START, T0 + MINUTE + s.lifetime * (START + SPAN)


@dataclass(frozen=True)
class OutageResult:
    start: dt.datetime
    busiest_after: int
    ratio: float  # busiest minute after the CA returns / the mean of the window


def outage_sweep(fleet: Fleet, starts: list[dt.datetime], mean: float) -> list[OutageResult]:
    """Ten-minute outages starting at each of `starts`, each in a fork of `fleet` (which must
    not have run past the first of them); `fleet` itself runs on, without an outage."""
    results = []
    for start in sorted(starts):
        fleet.run(until=start)
        end = start + dt.timedelta(minutes=10)
        out = fleet.fork(outage=(start, end)).run()
        busiest = out.busiest(since=end)
        results.append(OutageResult(start, busiest, busiest / mean))
    return results
