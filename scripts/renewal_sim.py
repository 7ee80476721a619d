"""Print the fleet simulation's figures (tests/fleet.py: the agent's own schedule code against
the CA's own windows): the busiest minute against the mean of the window without an outage,
after a 10-minute outage at every placement in the window, and how fast renew-now is heard.

    .venv/bin/python scripts/renewal_sim.py [--agents 10000] [--step 3] [--old-ca]"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fleet import MINUTE, T0, Fleet, Scenario, fleet_span, outage_sweep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--step", type=int, default=3, help="minutes between outage placements")
    p.add_argument("--old-ca", action="store_true", help="a CA without windows: the 2/3 rule")
    args = p.parse_args()
    scenario = Scenario(agents=args.agents, ca_has_windows=not args.old_ca)
    fleet = Fleet(scenario)
    if not args.old_ca:
        at = T0 + dt.timedelta(hours=6)
        fleet.run(until=at)
        pulled = fleet.fork(renew_now_at=at).run()
        period = pulled.retry_after
        within = sum(1 for t in pulled.renewed if t < at + 2 * period) / args.agents
        slowest = max(pulled.renewed) - at
        print(f"renew-now: {within:.2%} within 2 x retry_after ({period}); last after {slowest}")
        start, end = fleet_span(scenario)
    else:
        start = T0 + scenario.lifetime * (2 / 3 - 1 / 20)
        end = T0 + MINUTE + scenario.lifetime * 2 / 3
    mean = args.agents / ((end - start) / MINUTE)
    starts = []
    at = start - dt.timedelta(minutes=10)
    while at < end:
        starts.append(at)
        at += dt.timedelta(minutes=args.step)
    outages = outage_sweep(fleet, starts, mean)
    calm = fleet.run()
    print(f"no outage: busiest minute {calm.busiest()}, mean {calm.mean():.1f}, "
          f"{calm.busiest() / calm.mean():.2f}x")  # fmt: skip
    for o in outages:
        print(f"outage {o.start - T0} .. +10 min: busiest minute after it {o.ratio:.2f}x the mean")
    print(f"worst outage placement: {max(o.ratio for o in outages):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
