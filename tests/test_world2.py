"""The second shopper world: built unlike the first, so learning is checked, not fitted."""

from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path

import numpy as np

from gateway.decision.engine import DecisionEngine
from gateway.decision.export import export_decisions, read_export
from gateway.decision.features import featurize
from gateway.runtime.config import DecisionConfig
from gateway.store import Offer, Store
from simulators import world2
from simulators.gateway_log import gateway_view, log_through_gateway, seed_store
from simulators.shoppers import Moment
from simulators.world2 import SecondWorld


def test_time_runs_forward_and_conversion_is_sparse() -> None:
    world = SecondWorld(3)
    moments = world.moments(3000)
    times = [m.now for m in moments]
    assert times == sorted(times)
    assert 0.9 < (times[-1] - times[0]) / (7 * 86400 * 3000 / 2500) < 1.1  # 2,500 a week
    truth = [world.conversion_probabilities(m, m.offers) for m in moments if m.offers]
    assert 0.01 < float(np.mean([t.mean() for t in truth])) < 0.05
    assert all(o.price is not None and o.price > 0 for o in world.catalog)
    assert len({o.margin for o in world.catalog}) > 10
    later, again = SecondWorld(3, stream=1), SecondWorld(3)
    assert [m.now for m in again.moments(50)] == times[:50]  # the same seed, the same stream
    assert [m.now for m in later.moments(50)] != times[:50]


def test_hidden_types_answer_a_discount_in_opposite_ways() -> None:
    world = SecondWorld(3)
    moment = world.moments(1)[0]
    offer = next(o for o in world.catalog if o.discount_pct >= 30)
    undiscounted = dataclasses.replace(offer, discount_pct=0.0)
    by_type = {}
    for kind in ("bargain", "premium"):
        world.types[moment.shopper.id] = kind
        p = world.conversion_probabilities(moment, [offer, undiscounted])
        by_type[kind] = p[0] - p[1]
    assert by_type["bargain"] > 0 > by_type["premium"]


def test_preferences_drift_week_by_week() -> None:
    world = SecondWorld(3)
    moment = world.moments(1)[0]
    produce = next(o for o in world.catalog if o.category == "produce")
    coffee = next(o for o in world.catalog if o.category == "coffee")
    later_ctx = dataclasses.replace(
        moment.ctx, local_time=moment.ctx.local_time.replace(year=moment.ctx.local_time.year + 1)
    )
    later = dataclasses.replace(moment, ctx=later_ctx)
    now = world.conversion_probabilities(moment, [produce, coffee])
    then = world.conversion_probabilities(later, [produce, coffee])
    assert then[0] > now[0]  # produce gains
    assert then[1] < now[1]  # coffee loses


def test_the_observable_oracle_sees_only_what_the_gateway_sees() -> None:
    """observable_probabilities: the truth averaged over the hidden type, habits and weather;
    changing any of them for the moment leaves it unchanged, and a Monte Carlo average of the
    truth over their distribution agrees with it."""
    import itertools

    from gateway.decision.features import CATEGORIES, Weather
    from simulators.world2 import TYPES

    world = SecondWorld(5)
    moments = [m for m in world.moments(3000) if m.offers]
    for moment in moments[::75]:  # every hour of the day
        sid = moment.shopper.id
        seen = world.observable_probabilities(moment, moment.offers)
        kind, habits = world.types[sid], world.habits[sid]
        world.types[sid] = next(t for t in TYPES if t != kind)
        world.habits[sid] = ("household", "pasta")
        assert np.allclose(seen, world.observable_probabilities(moment, moment.offers))
        world.types[sid], world.habits[sid] = kind, habits
        for weather in (Weather(35.0, raining=True), Weather(-5.0, raining=False)):
            other = dataclasses.replace(
                moment, ctx=dataclasses.replace(moment.ctx, weather=weather)
            )
            assert np.allclose(seen, world.observable_probabilities(other, moment.offers))
    # A morning with a basket: the cold-morning effect and the habits both count.
    moment = next(m for m in moments if m.ctx.basket and m.ctx.local_time.hour < 11)
    sid = moment.shopper.id
    seen = world.observable_probabilities(moment, moment.offers)
    rng = np.random.default_rng(0)
    pairs = list(itertools.combinations(CATEGORIES, 2))
    weights = np.array(
        [
            np.prod(
                [
                    (0.35 if c in p else 0.06)
                    if c in moment.ctx.basket
                    else 1 - (0.35 if c in p else 0.06)
                    for c in CATEGORIES
                ]
            )
            for p in pairs
        ]
    )
    week = (moment.ctx.local_time - world2._START).days / 7
    mean_temp = 9 + 9 * np.sin(2 * np.pi * (week - 6) / 52)
    mean_temp += 4 * np.sin(2 * np.pi * (moment.ctx.local_time.hour - 9) / 24)
    total = np.zeros(len(moment.offers))
    draws = 3000
    for _ in range(draws):
        world.types[sid] = TYPES[rng.choice(3, p=(0.4, 0.3, 0.3))]
        world.habits[sid] = pairs[rng.choice(len(pairs), p=weights / weights.sum())]
        weather = Weather(float(mean_temp + rng.normal(0, 5)), bool(rng.random() < 0.25))
        drawn = dataclasses.replace(moment, ctx=dataclasses.replace(moment.ctx, weather=weather))
        total += world.conversion_probabilities(drawn, moment.offers)
    assert np.allclose(total / draws, seen, rtol=0.1, atol=0.002)


def test_the_benchmarks_view_is_what_the_gateway_scored(tmp_path: Path) -> None:
    """scripts/bench.py learn scores models with `gateway_view(moment)`: the rows the gateway
    logged (rebuilt by the export) must be exactly those, or the lift measures another input
    than the one the model serves on."""
    world = SecondWorld(7)
    seen: dict[float, list[Moment]] = {}

    class Recording:
        catalog, shoppers = world.catalog, world.shoppers

        def moments(self, n: int) -> list[Moment]:
            out = world.moments(n)
            for m in out:
                seen.setdefault(m.now, []).append(m)
            return out

        def conversion_probability(self, moment: Moment, offer: Offer) -> float:
            return world.conversion_probability(moment, offer)

    store = Store(tmp_path / "gateway.sqlite3")
    seed_store(store, world, world.shoppers, 0.0)
    log_through_gateway(store, Recording(), DecisionEngine(DecisionConfig(), random.Random(1)), 300)
    out = io.StringIO()
    export_decisions(store.path, out, since=0.0, now=0.0)
    store.close()
    records = list(read_export(out.getvalue().splitlines()))
    identified = compared = 0
    assert len(records) > 250
    for record in records:
        if len(seen[record.ts]) > 1:
            continue  # two moments in the same second of the store's clock: which one?
        moment = seen[record.ts][0]
        compared += 1
        identified += moment.segment is not None
        assert {o.id for o in record.offers} <= {o.id for o in moment.offers}
        rows = featurize(gateway_view(moment), record.offers)
        np.testing.assert_array_equal(rows, record.features)
    assert compared > 150
    assert identified > 10  # the customer's segment is part of what is compared
