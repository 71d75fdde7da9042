"""The second shopper world: built unlike the first, so learning is checked, not fitted."""

from __future__ import annotations

import dataclasses

import numpy as np

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
