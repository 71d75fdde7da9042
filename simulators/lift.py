"""A world with a known answer: shoppers whose personalisation has a true causal effect.

Each customer has hidden traits: how often they come (at most one visit a day, with
probability `visit_p`), their usual basket (`basket`), how much offers appeal to them
(`affinity`). Personalisation (every customer outside the gateway's own hashed holdout) changes,
per visit:

- the basket, by `basket_uplift` (a share);
- the offer's chance to convert, by `offer_uplift` (a share); a converted offer adds `offer_value`;
- with probability `assist_p` an associate serves the customer (a tablet decision): a personalised
  one adds `assist_value` in store, and a follow-up e-mail converts online with probability
  `followup_p`, days later (`followup_delay_days`), for `online_value` on average.

So each customer's expected revenue per visit, treated and not, is known exactly:

    treated = basket * (1 + basket_uplift) + affinity * (1 + offer_uplift) * offer_value
              + assist_p * (assist_value + followup_p * online_value)
    control = basket + affinity * offer_value

and the true lift of revenue per visit (what the readout estimates: per-visit means, visits
weighted) is sum(visit_p * treated) / sum(visit_p * control) - 1 over the customers.

`write_log` writes what the gateway would have logged (checkout decisions with the lane's total,
kiosk and tablet decisions with their rewards, anonymous screen decisions in switchback slots)
into a real store, and returns the online outcomes the cloud would send back, attributed to the
tablet decisions; `gateway.decision.outcomes.join_outcomes` joins them.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.decision.experiments import in_holdout, switchback_arm
from gateway.decision.outcomes import ReportedOutcome
from gateway.decision.report import Readout, read
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Decision, Store
from gateway.sync.bundles import BundleApplier
from gateway.sync.outbox import Outbox
from simulators.cloud import BundleSigner

__all__ = ["LiftWorld", "Measured", "Shopper", "World", "join_bundle", "measure", "write_log"]

DAY = 86400.0
_SPEND_SIGMA = 0.4  # a visit's basket around the customer's usual one (log-normal, mean 1)


@dataclass(frozen=True, slots=True)
class World:
    """The effects of personalisation, and the store's shape."""

    customers: int = 4000
    days: int = 28
    holdout_share: float = 0.1
    basket_uplift: float = 0.02
    offer_uplift: float = 0.4
    offer_value: float = 6.0
    assist_p: float = 0.15
    assist_value: float = 4.0
    followup_p: float = 0.2
    online_value: float = 30.0
    followup_delay_days: tuple[float, float] = (1.0, 12.0)
    kiosk_p: float = 0.4  # a visit uses a kiosk
    screen_per_day: int = 0  # anonymous screen decisions a day (a hypermarket's signage)
    start: float = 1_790_000_000.0


@dataclass(frozen=True, slots=True)
class Shopper:
    ref: str
    visit_p: float
    basket: float
    affinity: float
    held_out: bool

    def expected(self, world: World, treated: bool) -> float:
        """Expected revenue of one visit, in store and online."""
        if not treated:
            return self.basket + self.affinity * world.offer_value
        return (
            self.basket * (1 + world.basket_uplift)
            + min(1.0, self.affinity * (1 + world.offer_uplift)) * world.offer_value
            + world.assist_p * (world.assist_value + world.followup_p * world.online_value)
        )


@dataclass(frozen=True, slots=True)
class LiftWorld:
    world: World
    shoppers: tuple[Shopper, ...]

    @classmethod
    def draw(cls, world: World, seed: int) -> LiftWorld:
        rng = random.Random(seed)
        shoppers = []
        for _ in range(world.customers):
            ref = f"c_{rng.getrandbits(128):032x}"
            shoppers.append(
                Shopper(
                    ref=ref,
                    visit_p=min(0.9, rng.gammavariate(0.8, 0.15 / 0.8)),
                    basket=math.exp(rng.gauss(math.log(35.0), 0.5)),
                    affinity=rng.betavariate(2, 10),
                    held_out=in_holdout(ref, world.holdout_share),
                )
            )
        return cls(world, tuple(shoppers))

    def true_lift(self) -> float:
        """Revenue per visit, everyone personalised vs no one, visits weighted: exact."""
        treated = sum(s.visit_p * s.expected(self.world, True) for s in self.shoppers)
        control = sum(s.visit_p * s.expected(self.world, False) for s in self.shoppers)
        return treated / control - 1

    @property
    def report_now(self) -> float:
        """When to read: the last follow-up has had time to convert online."""
        return self.world.start + (self.world.days + self.world.followup_delay_days[1] + 1) * DAY

    @property
    def report_days(self) -> float:
        return (self.report_now - self.world.start) / DAY


def write_log(
    lift: LiftWorld, database: Path, seed: int, *, batch: int = 20_000
) -> list[ReportedOutcome]:
    """The gateway's decision log of the world's visits, into a store (created if need be);
    returns the online outcomes for the cloud's outcomes bundle."""
    store = Store(database)
    outcomes: list[ReportedOutcome] = []
    try:
        pending: list[tuple[Decision, float]] = []
        for decision, reward in _decisions(lift, random.Random(seed + 10_000), outcomes):
            pending.append((decision, reward))
            if len(pending) >= batch:
                _flush(store, pending)
        _flush(store, pending)
    finally:
        store.close()
    return outcomes


def _flush(store: Store, rows: list[tuple[Decision, float]]) -> None:
    with store.conn:
        store.conn.execute("BEGIN")
        store.conn.executemany(
            "INSERT INTO decisions (id, ts, moment, touchpoint, customer_ref, offer_id, policy,"
            " propensity, request_id, model_version, feature_hash, context, reward, reward_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(d.id, d.ts, d.moment, d.touchpoint, d.customer_ref, d.offer_id, d.policy,
              d.propensity, d.request_id, d.model_version, d.feature_hash, d.context, r, d.ts)
             for d, r in rows],
        )  # fmt: skip
    rows.clear()


def _decisions(
    lift: LiftWorld, rng: random.Random, outcomes: list[ReportedOutcome]
) -> Iterator[tuple[Decision, float]]:
    world = lift.world
    serial = 0

    def decision(ts: float, moment: str, touchpoint: str, shopper: Shopper | None,
                 arm: str, **context: object) -> Decision:  # fmt: skip
        nonlocal serial
        serial += 1
        held = shopper is not None and shopper.held_out
        policy = "holdout" if held else ("rules" if arm == "control" else "nba")
        propensity = 1.0 if policy != "nba" else (0.96 if rng.random() < 0.95 else 0.01)
        return Decision(
            id=f"d{serial:09d}",
            ts=ts,
            moment=moment,
            touchpoint=touchpoint,
            customer_ref=None if shopper is None else shopper.ref,
            offer_id="OFF-1",
            policy=policy,
            propensity=propensity,
            request_id=None,
            context=json.dumps({"arm": "holdout" if held else arm, **context}),
        )

    for day in range(world.days):
        for shopper in lift.shoppers:
            if rng.random() >= shopper.visit_p:
                continue
            ts = world.start + day * DAY + rng.uniform(8, 20) * 3600
            treated = not shopper.held_out
            spend = shopper.basket * math.exp(rng.gauss(-(_SPEND_SIGMA**2) / 2, _SPEND_SIGMA))
            affinity = shopper.affinity * (1 + world.offer_uplift) if treated else shopper.affinity
            converted = rng.random() < min(1.0, affinity)
            total = spend * (1 + world.basket_uplift if treated else 1.0)
            total += world.offer_value if converted else 0.0
            if rng.random() < world.kiosk_p:
                yield (
                    decision(ts - 600, "kiosk_identify", "kiosk-1", shopper, "model"),
                    float(rng.random() < min(1.0, affinity)),
                )
            if rng.random() < world.assist_p:
                served = decision(ts - 300, "tablet_serve", "tablet-1", shopper, "model")
                yield served, float(rng.random() < 0.3)
                if treated:
                    total += world.assist_value
                    if rng.random() < world.followup_p:
                        delay = rng.uniform(*world.followup_delay_days) * DAY
                        amount = rng.expovariate(1 / world.online_value)
                        outcomes.append(
                            ReportedOutcome(
                                f"o{len(outcomes):08d}",
                                "online",
                                round(amount, 2),
                                ts + delay,
                                (served.id,),
                            )
                        )
            yield (
                decision(ts, "checkout", "pos-1", shopper, "model", total=round(total, 2)),
                float(converted),
            )
        for _ in range(world.screen_per_day):
            ts = world.start + day * DAY + rng.uniform(8, 20) * 3600
            arm = switchback_arm("screen-1", ts, 1800)
            p = 0.06 if arm == "model" else 0.05
            yield decision(ts, "zone_enter", "screen-1", None, arm), float(rng.random() < p)


@dataclass(frozen=True, slots=True)
class Measured:
    readout: Readout
    true_lift: float
    outcomes: int
    join_s: float  # the outcomes bundle's handling, wall time

    @property
    def covered(self) -> bool:
        revenue = self.readout.touchpoints[-1].revenue
        return (
            revenue is not None
            and revenue.low is not None
            and revenue.high is not None
            and revenue.low <= self.true_lift <= revenue.high
        )


async def measure(world: World, seed: int, directory: Path) -> Measured:
    """One world: its log written, its online outcomes joined through a signed outcomes bundle
    (the gateway's applier, on a real store), the readout beside the true lift."""
    lift = LiftWorld.draw(world, seed)
    database = directory / f"lift-{seed}.sqlite3"
    outcomes = write_log(lift, database, seed)
    join_s, _ = await join_bundle(database, outcomes, lift.report_now)
    readout = await asyncio.to_thread(
        read, database, since_days=lift.report_days, now=lift.report_now
    )
    return Measured(readout, lift.true_lift(), len(outcomes), join_s)


async def join_bundle(
    database: Path, outcomes: Sequence[ReportedOutcome], now: float, *, version: int = 1
) -> tuple[float, float]:
    """Sign the outcomes as the cloud would and apply the bundle with the gateway's applier;
    (seconds it took, the event loop's longest stall meanwhile, in seconds)."""
    signer = BundleSigner()
    body = {"outcomes": [_outcome_json(o) for o in outcomes]}
    message = signer.make("outcomes", version, body, store="lift", created_at=now)
    db = AsyncStore(database)
    await db.open()
    clock = _Fixed(now)
    outbox = Outbox(db, "lift", clock, Metrics())
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    stalls = [0.0]
    ticker = asyncio.create_task(_tick(stalls))
    try:
        applier = BundleApplier(
            db=db, store_id="lift", public_key=signer.public_key, models_dir=database.parent,
            fetch=_no_fetch, outbox=outbox, clock=clock, metrics=Metrics(), reactions={},
        )  # fmt: skip
        started = time.perf_counter()
        outcome = await applier.handle("outcomes", message)
        took = time.perf_counter() - started
        if outcome != "applied":
            raise RuntimeError(f"outcomes bundle {outcome}")
    finally:
        ticker.cancel()
        writer.cancel()
        await db.close()
    return took, stalls[0]


async def _tick(longest: list[float], every_s: float = 0.005) -> None:
    """How late the loop wakes a sleeper: a join on the loop would show as a long stall."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(every_s)
        longest[0] = max(longest[0], time.perf_counter() - before - every_s)


def _outcome_json(o: ReportedOutcome) -> dict[str, object]:
    return {"id": o.id, "channel": o.channel, "amount": o.amount, "ts": o.ts,
            "decision_ids": list(o.decision_ids)}  # fmt: skip


async def _no_fetch(url: str, limit: int) -> bytes:
    raise OSError("no artifacts in the lift world")


class _Fixed:
    """The world's clock: always the readout's time."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return time.monotonic()

    def stamped_ago(self, seconds: float) -> float:
        return self._now - seconds

    def trusted(self) -> bool:
        return True


def main() -> None:
    """`python -m simulators.lift [SEED]`: one world's readout beside its true lift."""
    import sys
    import tempfile

    from gateway.decision.report_text import render

    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with tempfile.TemporaryDirectory(prefix="lift-") as tmp:
        measured = asyncio.run(measure(World(), seed, Path(tmp)))
    print(render(measured.readout))
    print(f"\n{beside_the_truth(measured)}")


def beside_the_truth(measured: Measured) -> str:
    """The world's true lift of revenue per visit beside the readout's estimate."""
    revenue = measured.readout.touchpoints[-1].revenue
    estimate = "n/a" if revenue is None or revenue.lift is None else f"{revenue.lift:+.1%}"
    return (
        f"the world's true lift of revenue per visit: {measured.true_lift:+.1%}"
        f" (the readout: {estimate}, {'inside' if measured.covered else 'outside'} its interval)"
    )


if __name__ == "__main__":
    main()
