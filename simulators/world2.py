"""A second shopper world, built unlike the first (simulators/shoppers.py) to check that what the
gateway learns from its own log generalises, rather than fits the world it was tuned on.

How it differs from the first world
    - Hidden types, not the CRM's segments: every shopper is a `bargain` hunter (discounts pull
      hard, high prices push away), `premium` (a discount *lowers* the chance: it cheapens the
      product; high prices pull) or `routine` (buys the categories they always buy, a favourite
      pair drawn per shopper, whatever the offer). The gateway sees at most a consenting
      customer's CRM segment, which says little about the type (drawn mostly at random).
    - Interactions, not additive effects: the weather, the daypart and the category combine
      (drinks pull when it is hot *in the afternoon*, soup and bakery when it is cold *in the
      morning*, neither effect alone).
    - Dwell: a long visit favours high-priced offers, a short one low-priced ones.
    - Other complements than the spec's (produce -> deli, coffee -> snacks, household -> drinks):
      the spec's `complements_basket` column points at the wrong pairs here.
    - Drift: week by week produce and drinks gain, coffee and bakery lose.
    - Sparse conversion: around 3 % on average.
    - Prices and margins vary by offer: the `margin` objective ranks differently.

Time runs forward: `moments(n)` continues from where the last call stopped, about
`per_week` moments a week, so the first weeks can train and later ones test. `Moment` is the
first world's (context, time, shopper, identified, eligible offers); its `truth` property is the
first world's: ask `conversion_probabilities` here instead.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from gateway.decision.features import CATEGORIES, SEGMENTS, FeatureContext, Weather
from gateway.store import Offer
from simulators.shoppers import Moment, Shopper, catalog, eligible

__all__ = ["TYPES", "SecondWorld"]

F64 = npt.NDArray[np.float64]
TYPES = ("bargain", "premium", "routine")
_TYPE_SHARES = (0.4, 0.3, 0.3)
_START = datetime(2027, 3, 1)  # a Monday
_PRICE = {"low": 2.5, "mid": 6.0, "high": 15.0}
_CAT = {c: i for i, c in enumerate(CATEGORIES)}
_COMPLEMENTS = {"produce": ("deli",), "coffee": ("snacks",), "household": ("drinks",)}
_DRIFT_PER_WEEK = {"produce": 0.05, "drinks": 0.04, "coffee": -0.05, "bakery": -0.04}
_BASE = -4.4
_TOUCHPOINTS = {"screen": 0.35, "kiosk": 0.25, "receipt": 0.3, "tablet": 0.1}
_ZONES = {
    "screen": ("entrance", "coffee", "bakery", "produce", "deli", "checkout"),
    "kiosk": ("entrance", "other"),
    "receipt": ("checkout",),
    "tablet": ("deli", "produce", "bakery", "other"),
}


def _priced(offers: Sequence[Offer], seed: int) -> list[Offer]:
    """The first world's offers with a price and a margin of this world's own."""
    rng = random.Random(seed)
    return [
        dataclasses.replace(
            o,
            price=round(_PRICE[o.price_band] * rng.uniform(0.7, 1.4), 2),
            margin=round(rng.uniform(0.08, 0.55), 2),
        )
        for o in offers
    ]


class SecondWorld:
    """Moments and the hidden truth of the second world; the same seed, the same stream."""

    def __init__(
        self, seed: int = 11, shoppers: int = 4000, per_week: int = 2500, stream: int = 0
    ) -> None:
        """seed: the shoppers and the catalog; stream: the draws of moments (another stream
        meets the same shoppers at other times)."""
        self.seed = seed
        self.catalog = _priced(catalog(), seed)
        self._rng = random.Random(seed * 31 + 7 + 1_000_003 * stream)
        rng = random.Random(seed)
        self.shoppers: list[Shopper] = []
        self.types: dict[int, str] = {}
        self.habits: dict[int, tuple[str, str]] = {}
        for i in range(shoppers):
            member = rng.random() < 0.6
            self.shoppers.append(
                Shopper(
                    id=i,
                    segment=rng.choice(SEGMENTS),  # the CRM's label: barely related to the type
                    member=member,
                    consent=member and rng.random() < 0.7,
                    recency_days=round(rng.expovariate(1 / 20), 1),
                    frequency=round(rng.uniform(0.5, 12), 1),
                    monetary=round(rng.uniform(20, 400), 2),
                )
            )
            self.types[i] = rng.choices(TYPES, _TYPE_SHARES)[0]
            pair = rng.sample(CATEGORIES, 2)
            self.habits[i] = (pair[0], pair[1])
        self._gap_s = 7 * 86400 / per_week
        self.clock = _START

    def skip_weeks(self, weeks: float) -> None:
        """Move the clock on: the next moments happen that much later."""
        self.clock += timedelta(weeks=weeks)

    # Moments ---------------------------------------------------------------------------------

    def moments(self, n: int) -> list[Moment]:
        return [self.moment() for _ in range(n)]

    def moment(self) -> Moment:
        rng = self._rng
        self.clock += timedelta(seconds=rng.expovariate(1 / self._gap_s))
        local_time = self._open_hours(self.clock)
        touchpoint = rng.choices(list(_TOUCHPOINTS), list(_TOUCHPOINTS.values()))[0]
        shopper = rng.choice(self.shoppers)
        identified = shopper.member and rng.random() < (0.15 if touchpoint == "screen" else 0.7)
        temp = _mean_temp(local_time) + rng.gauss(0, _TEMP_SD)
        weather = Weather(round(temp, 1), rng.random() < _RAIN)
        habits = self.habits[shopper.id]
        basket = tuple(
            c
            for c in CATEGORIES
            if rng.random() < (_HABIT_CHANCE if c in habits else _OTHER_CHANCE)
        )
        ctx = FeatureContext(
            local_time=local_time,
            touchpoint=touchpoint,
            zone=rng.choice(_ZONES[touchpoint]),
            dwell_s=round(min(rng.expovariate(1 / 180), 1800.0), 0),
            weather=weather,
            basket=basket,
            customer=shopper.facts() if identified and shopper.consent else None,
            trend={},
        )
        segment = shopper.segment if identified and shopper.consent else None
        offers = tuple(eligible(self.catalog, touchpoint, local_time, segment))
        now = local_time.timestamp()
        return Moment(ctx=ctx, now=now, shopper=shopper, identified=identified, offers=offers)

    @staticmethod
    def _open_hours(t: datetime) -> datetime:
        """Map the running clock onto the store's opening hours, 07:00-22:00."""
        minute_of_day = t.hour * 60 + t.minute
        return t.replace(hour=7, minute=0, second=0, microsecond=0) + timedelta(
            minutes=minute_of_day * 15 / 24
        )

    # Truth -----------------------------------------------------------------------------------

    def conversion_probabilities(self, moment: Moment, offers: Sequence[Offer]) -> F64:
        ctx = moment.ctx
        kind = self.types[moment.shopper.id]
        habits = self.habits[moment.shopper.id]
        hot, cold = ctx.weather.temp_c >= 22, ctx.weather.temp_c <= 6
        out = np.empty(len(offers), dtype=np.float64)
        for i, offer in enumerate(offers):
            logit = _logit(
                ctx, offer, hot, cold, ctx.weather.raining, kind, offer.category in habits
            )
            out[i] = 1 / (1 + math.exp(-logit))
        return out

    def observable_probabilities(self, moment: Moment, offers: Sequence[Offer]) -> F64:
        """The truth averaged over what the gateway cannot see: the shopper's type (its prior
        shares: the CRM segment says nothing of it), their habits (the posterior of the pair
        given the basket) and the weather (its distribution at that date and hour: the gateway
        has no forecast). The argmax is the *observable oracle*: the best any policy can do
        from the gateway's view (per-customer memory aside). For the benchmark, never the
        gateway: it reads the world's hidden parameters."""
        ctx = moment.ctx
        habitual = _habit_posterior(ctx.basket)
        mean = _mean_temp(ctx.local_time)
        p_hot = 1 - _normal_cdf((22 - mean) / _TEMP_SD)
        p_cold = _normal_cdf((6 - mean) / _TEMP_SD)
        classes = (
            (p_hot, True, False),
            (p_cold, False, True),
            (1 - p_hot - p_cold, False, False),
        )
        rain = ((_RAIN, True), (1 - _RAIN, False))
        weathers = [(p * q, h, c, r) for p, h, c in classes for q, r in rain]
        out = np.zeros(len(offers), dtype=np.float64)
        for i, offer in enumerate(offers):
            h = habitual[offer.category]
            for pw, hot, cold, raining in weathers:
                for kind, share in zip(TYPES, _TYPE_SHARES, strict=True):
                    if kind == "routine":
                        p = h * _sigmoid(_logit(ctx, offer, hot, cold, raining, kind, True))
                        p += (1 - h) * _sigmoid(_logit(ctx, offer, hot, cold, raining, kind, False))
                    else:
                        p = _sigmoid(_logit(ctx, offer, hot, cold, raining, kind, False))
                    out[i] += pw * share * p
        return out

    def conversion_probability(self, moment: Moment, offer: Offer) -> float:
        return float(self.conversion_probabilities(moment, [offer])[0])


_TEMP_SD = 5.0
_RAIN = 0.25
_HABIT_CHANCE, _OTHER_CHANCE = 0.35, 0.06  # a category in the basket: habitual or not


def _mean_temp(local_time: datetime) -> float:
    """The temperature's mean at that date and hour (`moment` adds N(0, _TEMP_SD))."""
    week = (local_time - _START).days / 7
    temp = 9 + 9 * math.sin(2 * math.pi * (week - 6) / 52)
    return temp + 4 * math.sin(2 * math.pi * (local_time.hour - 9) / 24)


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _habit_posterior(basket: Sequence[str]) -> dict[str, float]:
    """P(category is one of the shopper's two habits | the basket), every pair a priori alike."""
    weights = {}
    for pair in itertools.combinations(CATEGORIES, 2):
        w = 1.0
        for c in CATEGORIES:
            chance = _HABIT_CHANCE if c in pair else _OTHER_CHANCE
            w *= chance if c in basket else 1 - chance
        weights[pair] = w
    total = sum(weights.values())
    return {c: sum(w for pair, w in weights.items() if c in pair) / total for c in CATEGORIES}


def _logit(  # noqa: PLR0917 - the truth's inputs, hidden ones included
    ctx: FeatureContext,
    offer: Offer,
    hot: bool,
    cold: bool,
    raining: bool,
    kind: str,
    habitual: bool,
) -> float:
    """The second world's hidden truth for one offer, as a logit."""
    hour = ctx.local_time.hour + ctx.local_time.minute / 60
    week = (ctx.local_time - _START).days / 7
    afternoon, morning = 13 <= hour < 18, hour < 11
    long_visit = min(ctx.dwell_s / 600, 1.0)
    complements = {c for item in ctx.basket for c in _COMPLEMENTS.get(item, ())}
    c = offer.category
    logit = _BASE + _DRIFT_PER_WEEK.get(c, 0.0) * week
    if hot and afternoon and c in ("drinks", "snacks"):
        logit += 1.8
    if cold and morning and c in ("bakery", "lunch", "coffee"):
        logit += 1.5
    if raining and c == "household" and ctx.touchpoint == "receipt":
        logit += 1.0
    if c in complements:
        logit += 1.2
    if c in ctx.basket:
        logit -= 0.5
    discount = offer.discount_pct / 100
    if kind == "bargain":
        logit += 5.0 * discount - (0.8 if offer.price_band == "high" else 0.0)
    elif kind == "premium":
        logit += -4.0 * discount + (0.9 if offer.price_band == "high" else 0.0)
    elif habitual:  # routine
        logit += 1.6
    band = {"low": -1.0, "mid": 0.0, "high": 1.0}[offer.price_band]
    logit += 0.8 * band * (long_visit - 0.4)
    logit += {"tablet": 0.6, "kiosk": 0.3, "screen": -0.3}.get(ctx.touchpoint, 0.0)
    return logit
