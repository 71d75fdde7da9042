"""Shoppers of a simulated world meet the gateway's own decision path, and the gateway logs.

`log_through_gateway` turns simulator moments into the gateway's moments (a kiosk, a screen, a
till's receipt, an associate's tablet), decides each with the real `decide` (consent and caps
read from a real SQLite store, the real engine, its exploration) and commits the plan as the
journey does; the shopper's reward is then drawn from the world's hidden truth for the offer
the gateway chose and joined to the decision. What the gateway sees is only what it would see
in a store: its own features (no trend, no weather forecast, a consenting customer's segment),
not the simulator's. `store-gateway export-decisions` then reads that log like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import ClassVar, Protocol

import numpy as np

from gateway.codecs.topics import Topics
from gateway.decision.catalog import save_catalog
from gateway.decision.engine import DecisionEngine
from gateway.decision.features import CustomerFacts, FeatureContext
from gateway.decision.offers import load_offers, upsert_offers
from gateway.moments.decide import commit, decide
from gateway.moments.moment import KioskMoment, Moment, ZoneMoment
from gateway.store import Consent, Offer, Store
from simulators.shoppers import Moment as SimMoment
from simulators.shoppers import Shopper

__all__ = ["World", "customer_ref", "gateway_view", "log_through_gateway", "seed_store"]

_TOPICS = Topics("sim-store")


class World(Protocol):
    """What a shopper world offers the loop (simulators.shoppers.Simulator, simulators.world2)."""

    catalog: list[Offer]
    shoppers: list[Shopper]

    def moments(self, n: int) -> list[SimMoment]: ...

    def conversion_probability(self, moment: SimMoment, offer: Offer) -> float: ...


class _AtTheTill(KioskMoment):
    """A receipt coupon, decided like a kiosk's (no printer in the loop)."""

    channel: ClassVar[str] = "receipt"


class _OnATablet(KioskMoment):
    """One suggestion on an associate's tablet (the first of the card)."""

    channel: ClassVar[str] = "tablet"


def customer_ref(shopper_id: int) -> str:
    return f"c_{shopper_id:032x}"


def seed_store(store: Store, world: World, shoppers: Sequence[Shopper], now: float) -> None:
    """The world's catalog and its consenting shoppers' consents, as bundles would bring them."""
    upsert_offers(store, world.catalog, now)
    consents = [
        Consent(customer_ref(s.id), True, s.segment) for s in shoppers if s.member and s.consent
    ]
    store.upsert_consents(consents, now)


def gateway_view(moment: SimMoment) -> FeatureContext:
    """What the gateway's `decide` builds for this moment (with no forecast in its config
    bundle): no trend, the default weather, a consenting customer's segment only. The loop's
    benchmark scores with it, so a model is measured on what it would see when it serves
    (tests/test_world2.py checks it against the rows the gateway logged)."""
    ctx = moment.ctx
    customer = CustomerFacts(segment=moment.segment) if moment.segment is not None else None
    return FeatureContext(
        local_time=ctx.local_time,
        touchpoint=ctx.touchpoint,
        zone=ctx.zone,
        dwell_s=ctx.dwell_s,
        basket=ctx.basket,
        customer=customer,
    )


def _gateway_moment(moment: SimMoment, index: int) -> Moment:
    ctx = moment.ctx
    ref = customer_ref(moment.shopper.id) if moment.identified else None
    touchpoint = ctx.touchpoint
    if touchpoint == "screen":
        return ZoneMoment(
            touchpoint="screen-1",
            kind="dwell",
            customer_ref=ref,
            zone=ctx.zone,
            dwell_s=ctx.dwell_s,
            basket=ctx.basket,
        )
    kind = {"receipt": _AtTheTill, "tablet": _OnATablet}.get(touchpoint, KioskMoment)
    return kind(
        touchpoint=f"{touchpoint}-1",
        customer_ref=ref,
        zone=ctx.zone,
        dwell_s=ctx.dwell_s,
        basket=ctx.basket,
        request_id=f"sim-{index}",
    )


def log_through_gateway(
    store: Store,
    world: World,
    engine: DecisionEngine,
    n: int,
    *,
    seed: int = 0,
    on_chunk: Callable[[int], None] | None = None,
    chunk: int = 2000,
) -> int:
    """`n` of the world's moments, in time order, decided and logged by the gateway; rewards
    drawn from the world's truth and joined at once. Returns the decisions with an offer."""
    rewards = np.random.default_rng([seed, 17])
    offers = load_offers(store)
    save_catalog(store, offers, 0.0)
    done = decided = 0
    while done < n:
        moments = sorted(world.moments(min(chunk, n - done)), key=lambda m: m.now)
        for moment in moments:
            # The gateway's clock reads the moment's local time (decide takes local time).
            now = datetime.timestamp(moment.ctx.local_time)
            plan = decide(
                store,
                _gateway_moment(moment, done),
                engine=engine,
                offers=offers,
                now=now,
                time_trusted=True,
                topics=_TOPICS,
                uplink=None,
            )
            commit(store, [plan])
            done += 1
            first = plan.decided[0] if plan.decided else None
            if first is None or first.outcome.offer is None:
                continue
            truth = world.conversion_probability(moment, first.outcome.offer)
            reward = float(rewards.random() < truth)
            store.conn.execute(
                "UPDATE decisions SET reward = ?, reward_at = ? WHERE id = ?",
                (reward, now, first.decision.id),
            )
            decided += 1
        if on_chunk is not None:
            on_chunk(done)
    return decided
