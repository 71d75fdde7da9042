"""`scripts/bench.py fleet`: 1,000 stores reconnecting to the cloud after a regional outage.

A simulation on a simulated clock (`simulators/fleet.py`) driving the gateway's own `Backoff`
with the shipped defaults (`cloud.reconnect_min_s`, `cloud.reconnect_max_s`): the cloud is away
for 10 minutes, the stores lost it at random moments of its first 90 s (a 60 s keepalive finds a
dead link within 1.5 keepalives), and each retries with its own jitter. Figures over `RUNS` seeds,
the worst run's:

- `fleet_reconnect_p95_s`: seconds from the cloud's return to a store's reconnect, p95.
- `fleet_max_connect_share`: the largest share of the fleet connecting in one second.

The same with every store losing the cloud in the same instant (a broker that resets every
connection) as `fleet_sync_*`. Connects per second after the return are printed for one run.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.runtime.config import CloudConfig  # noqa: E402
from simulators.fleet import FleetRun, simulate_outage  # noqa: E402

STORES = 1000
OUTAGE_S = 600.0
LOSS_SPREAD_S = 90.0


def _runs(count: int, loss_spread_s: float) -> list[FleetRun]:
    defaults = CloudConfig()
    return [
        simulate_outage(
            stores=STORES,
            outage_s=OUTAGE_S,
            minimum_s=defaults.reconnect_min_s,
            maximum_s=defaults.reconnect_max_s,
            loss_spread_s=loss_spread_s,
            seed=seed,
        )
        for seed in range(count)
    ]


def _timeline(run: FleetRun) -> str:
    """Connects per second after the return, ten seconds a line."""
    rows = []
    for start in range(0, len(run.per_second), 10):
        counts = " ".join(f"{c:3d}" for c in run.per_second[start : start + 10])
        rows.append(f"  {start:3d}-{start + 9:3d} s: {counts}")
    return "\n".join(rows)


def bench_fleet(quick: bool) -> dict[str, float]:
    count = 5 if quick else 30
    defaults = CloudConfig()
    print(
        f"{STORES} stores, cloud away {OUTAGE_S:.0f} s, backoff {defaults.reconnect_min_s:g}"
        f"..{defaults.reconnect_max_s:g} s, {count} seeds each"
    )
    figures: dict[str, float] = {}
    for prefix, spread in (("fleet", LOSS_SPREAD_S), ("fleet_sync", 0.0)):
        runs = _runs(count, spread)
        p95 = [r.percentile(95) for r in runs]
        share = [r.max_connect_share for r in runs]
        over = sum(s > 0.05 for s in share)
        print(
            f"{prefix}: links lost over {spread:g} s; p95 median {statistics.median(p95):.1f} s,"
            f" busiest second median {statistics.median(share):.1%}; runs over 5 %: {over}/{count}"
        )
        figures[f"{prefix}_reconnect_p95_s"] = max(p95)
        figures[f"{prefix}_reconnect_max_s"] = max(r.returns_s[-1] for r in runs)
        figures[f"{prefix}_max_connect_share"] = max(share)
        figures[f"{prefix}_max_connect_share_median"] = statistics.median(share)
        figures[f"{prefix}_failed_attempts_per_store_min"] = statistics.median(
            r.failed_attempts / STORES / (OUTAGE_S / 60) for r in runs
        )
        if prefix == "fleet":
            print(f"connects per second after the return (seed 0):\n{_timeline(runs[0])}")
    return figures
