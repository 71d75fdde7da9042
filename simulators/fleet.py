"""A chain's fleet of cloud links reconnecting after a regional outage, on a simulated clock.

Each store runs the cloud link's reconnect loop with the gateway's own `Backoff` (not a copy):
it loses the cloud at some moment of the outage's start (`loss_spread_s`: keepalives find a dead
link at different times; 0 is a broker that resets every connection at once), waits
`backoff.next()`, tries, and while the cloud is away fails at once (a refused connection) and
waits again. The first try after the cloud's return connects. Pure and deterministic for a seed:
no sockets, no sleeping, an event queue of next tries.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass

from gateway.runtime.supervisor import Backoff

__all__ = ["FleetRun", "simulate_outage"]


@dataclass(frozen=True, slots=True)
class FleetRun:
    stores: int
    outage_s: float
    # Seconds from the cloud's return to each store's connect, ascending.
    returns_s: list[float]
    # Connects in each whole second after the return: index 0 is [0 s, 1 s).
    per_second: list[int]
    # Connection attempts while the cloud was away, all stores together.
    failed_attempts: int

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of `returns_s`."""
        rank = max(1, math.ceil(q / 100 * len(self.returns_s)))
        return self.returns_s[rank - 1]

    @property
    def max_connect_share(self) -> float:
        """The largest share of the fleet connecting in one second."""
        return max(self.per_second) / self.stores


def simulate_outage(
    *,
    stores: int,
    outage_s: float,
    minimum_s: float,
    maximum_s: float,
    loss_spread_s: float,
    seed: int,
) -> FleetRun:
    rng = random.Random(seed)
    # (time of the next try, store, its backoff); a store's index breaks ties.
    queue: list[tuple[float, int, Backoff]] = []
    for store in range(stores):
        backoff = Backoff(minimum_s, maximum_s, random.Random(rng.getrandbits(64)))
        lost_at = rng.uniform(0, loss_spread_s)
        queue.append((lost_at + backoff.next(), store, backoff))
    heapq.heapify(queue)
    returns: list[float] = []
    failed = 0
    while queue:
        at, store, backoff = heapq.heappop(queue)
        if at >= outage_s:
            returns.append(at - outage_s)
            continue
        failed += 1
        heapq.heappush(queue, (at + backoff.next(), store, backoff))
    returns.sort()
    counts = Counter(int(r) for r in returns)
    per_second = [counts.get(s, 0) for s in range(int(returns[-1]) + 1)]
    return FleetRun(stores, outage_s, returns, per_second, failed)
