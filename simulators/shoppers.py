"""Synthetic shoppers with hidden, context-dependent preferences: the ground truth of the NBA.

Pure Python + numpy (+ onnxruntime for the model policy, a daemon dependency): no training library,
so the daemon's tests and `scripts/bench.py` can import it.

The world
    `catalog()` is a fixed list of offers over every category in `CATEGORIES`; `Simulator(seed)`
    draws *moments*: a shopper meets a touchpoint (kiosk, screen, receipt at the till, associate's
    tablet) at a time of day and week, in some weather, zone and dwell, with a basket and what sells
    in the store this hour. Only an identified shopper who consented is visible to the features
    (`FeatureContext.customer`); everyone still has a (hidden) segment that shapes what they buy.

The truth
    `conversion_probability(moment, offer)` is a logistic of effects the model has to discover:
    hot weather -> drinks, cold or rain -> coffee and bakery, morning -> coffee and bakery, lunch
    time -> lunch and deli, evening -> pasta and sauce, the basket's complements (`COMPLEMENTS`),
    the zone, segment affinities, the discount (twice as strong for the value segment), the price
    band, what is trending. Rates land between about 1 % and 40 %, most of them 3-20 %. The oracle,
    knowing all of it (hidden segments included), picks the offer with the highest probability.

Policies
    Each maps a moment to `(offer, propensity)` and exposes its whole `distribution(moment)` over
    the moment's eligible offers, so off-policy estimators can use it: `RandomPolicy`,
    `PopularityPolicy` (a fixed ranking by overall conversion), `RulesPolicy` (the daemon's
    `gateway.decision.rules`), `ModelPolicy` (one onnxruntime call on `featurize(...)`, argmax,
    optional epsilon-greedy), `EpsilonGreedy` (around any policy) and `OraclePolicy`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.decision.features import (
    CATEGORIES,
    FEATURES,
    SPEC,
    SPEC_HASH,
    CustomerFacts,
    FeatureContext,
    Weather,
    featurize,
)
from gateway.decision.model import ModelError, Scorer
from gateway.decision.rules import Context, choose
from gateway.decision.rules import eligible as rules_eligible
from gateway.store import Offer

__all__ = [
    "F32",
    "F64",
    "MODEL_METADATA_KEYS",
    "EpsilonGreedy",
    "ModelContractError",
    "ModelPolicy",
    "Moment",
    "ObservableOraclePolicy",
    "OnnxScorer",
    "OraclePolicy",
    "Policy",
    "PopularityPolicy",
    "RandomPolicy",
    "RulesPolicy",
    "Shopper",
    "Simulator",
    "catalog",
    "conversion_probabilities",
    "conversion_probability",
    "eligible",
    "epsilon_mix",
    "population",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

ALL_CHANNELS = ("kiosk", "screen", "receipt", "tablet")
PERSONAL = ("kiosk", "receipt", "tablet")  # where a customer can be identified: targeted offers
NOT_RECEIPT = ("kiosk", "screen", "tablet")
NEXT_VISIT = ("receipt", "kiosk", "tablet")  # coupons for a later visit


def _offer(  # noqa: PLR0917 (the catalog reads as a table)
    id: str,
    title: str,
    category: str,
    discount: float,
    band: str,
    margin: float,
    *,
    channels: tuple[str, ...] = ALL_CHANNELS,
    segments: tuple[str, ...] = (),
    dayparts: tuple[str, ...] = (),
    priority: int = 0,
    inventory: int | None = None,
) -> Offer:
    return Offer(
        id=id,
        title=title,
        body=f"{title} ({discount:g}% off)",
        category=category,
        discount_pct=discount,
        channels=channels,
        segments=segments,
        dayparts=dayparts,
        priority=priority,
        inventory=inventory,
        price_band=band,
        margin=margin,
    )


# fmt: off
_CATALOG: tuple[Offer, ...] = (
    # coffee
    _offer("coffee-latte", "Any latte", "coffee", 20, "mid", 0.62, dayparts=("morning",),
           priority=5, channels=NOT_RECEIPT),
    _offer("coffee-espresso", "Double espresso", "coffee", 10, "low", 0.70,
           dayparts=("morning", "afternoon"), priority=2),
    _offer("coffee-beans", "Whole beans 1 kg", "coffee", 15, "high", 0.35, priority=1,
           inventory=40),
    _offer("coffee-capsules", "Coffee capsules x30", "coffee", 25, "mid", 0.30,
           channels=NEXT_VISIT, inventory=120),
    _offer("coffee-club", "Coffee club: any coffee", "coffee", 30, "mid", 0.40,
           segments=("coffee-lovers",), channels=PERSONAL, priority=6),
    # bakery
    _offer("bakery-croissants", "Two croissants", "bakery", 25, "low", 0.55, dayparts=("morning",),
           priority=4),
    _offer("bakery-sourdough", "Sourdough loaf", "bakery", 10, "mid", 0.45, priority=1,
           inventory=30),
    _offer("bakery-cinnamon", "Cinnamon bun", "bakery", 20, "low", 0.60,
           dayparts=("afternoon",), priority=3),
    _offer("bakery-cake", "Celebration cake", "bakery", 15, "high", 0.40, dayparts=("evening",),
           priority=1, inventory=8),
    _offer("bakery-fans", "Bakery fans: any pastry", "bakery", 35, "low", 0.45,
           segments=("bakery-fans",), channels=PERSONAL, priority=6),
    # lunch
    _offer("lunch-meal-deal", "Meal deal", "lunch", 20, "mid", 0.35, dayparts=("midday",),
           priority=5, channels=NOT_RECEIPT),
    _offer("lunch-soup", "Soup of the day", "lunch", 15, "low", 0.50, dayparts=("midday",),
           priority=3, channels=NOT_RECEIPT),
    _offer("lunch-salad-bowl", "Salad bowl", "lunch", 10, "mid", 0.45, dayparts=("midday",),
           priority=2),
    _offer("lunch-sushi", "Sushi box", "lunch", 10, "high", 0.30, dayparts=("midday",),
           priority=2, inventory=0),  # sold out today: never eligible
    # deli
    _offer("deli-cheese", "Aged cheese", "deli", 20, "high", 0.40, priority=2, inventory=25),
    _offer("deli-ham", "Sliced ham", "deli", 15, "mid", 0.35, priority=1),
    _offer("deli-olives", "Olive bar", "deli", 25, "low", 0.55, dayparts=("evening",),
           priority=2),
    _offer("deli-platter", "Deli platter", "deli", 10, "high", 0.30,
           dayparts=("afternoon", "evening"), priority=3, inventory=12),
    # produce
    _offer("produce-berries", "Berries", "produce", 20, "mid", 0.30, priority=2, inventory=60),
    _offer("produce-apples", "Apples 2 kg", "produce", 30, "low", 0.25, priority=1),
    _offer("produce-avocado", "Ripe avocados", "produce", 15, "mid", 0.30, priority=1),
    _offer("produce-salad", "Salad heads", "produce", 10, "low", 0.35, dayparts=("evening",),
           priority=1),
    _offer("produce-veg-box", "Healthy veg box", "produce", 25, "mid", 0.30,
           segments=("health",), channels=PERSONAL, priority=6),
    # drinks
    _offer("drinks-lemonade", "Cold lemonade", "drinks", 20, "low", 0.60,
           dayparts=("afternoon",), priority=3),
    _offer("drinks-iced-coffee", "Iced coffee", "drinks", 15, "mid", 0.55,
           dayparts=("afternoon",), priority=2, channels=NOT_RECEIPT),
    _offer("drinks-water", "Sparkling water 6-pack", "drinks", 30, "low", 0.30, priority=1),
    _offer("drinks-juice", "Fresh orange juice", "drinks", 15, "mid", 0.45,
           dayparts=("morning",), priority=2),
    _offer("drinks-craft", "Craft soda selection", "drinks", 10, "high", 0.50,
           dayparts=("evening",), priority=1),
    # pasta
    _offer("pasta-fresh", "Fresh pasta", "pasta", 20, "mid", 0.40, dayparts=("evening",),
           priority=4),
    _offer("pasta-dried", "Dried pasta 3 for 2", "pasta", 33, "low", 0.25, priority=1),
    _offer("pasta-gnocchi", "Gnocchi", "pasta", 10, "mid", 0.40, dayparts=("evening",),
           priority=2),
    _offer("pasta-families", "Family pasta night", "pasta", 30, "low", 0.30,
           segments=("families",), channels=PERSONAL, priority=6),
    # sauce
    _offer("sauce-pesto", "Fresh pesto", "sauce", 20, "mid", 0.45, dayparts=("evening",),
           priority=3),
    _offer("sauce-tomato", "Tomato & basil sauce", "sauce", 25, "low", 0.40, priority=2),
    _offer("sauce-arrabbiata", "Arrabbiata", "sauce", 15, "mid", 0.45, priority=1),
    _offer("sauce-truffle", "Truffle sauce", "sauce", 10, "high", 0.50, priority=1,
           inventory=15),
    # snacks
    _offer("snacks-crisps", "Crisps", "snacks", 25, "low", 0.45, dayparts=("evening",),
           priority=2),
    _offer("snacks-chocolate", "Chocolate bar", "snacks", 20, "mid", 0.50,
           dayparts=("afternoon",), priority=3),
    _offer("snacks-nuts", "Mixed nuts", "snacks", 15, "high", 0.40, priority=1),
    _offer("snacks-family", "Family snack pack", "snacks", 30, "low", 0.35,
           segments=("families",), channels=PERSONAL, priority=5),
    # household
    _offer("household-detergent", "Laundry detergent", "household", 30, "mid", 0.25,
           channels=NEXT_VISIT, priority=2),
    _offer("household-paper", "Kitchen paper x8", "household", 20, "low", 0.20, priority=1),
    _offer("household-eco", "Eco cleaner", "household", 15, "high", 0.35, priority=1),
    _offer("household-value", "Value bundle", "household", 40, "low", 0.15,
           segments=("value",), channels=PERSONAL, priority=5),
)
# fmt: on


def catalog() -> list[Offer]:
    """The simulator's fixed catalog: 44 offers over all categories, 6 of them segment-targeted."""
    return list(_CATALOG)


# --------------------------------------------------------------------------------------------
# Shoppers and moments


@dataclass(frozen=True, slots=True)
class Shopper:
    id: int
    segment: str | None  # always shapes preferences; visible only with consent
    member: bool  # has a loyalty account, so can be identified
    consent: bool  # consented to personalisation
    recency_days: float
    frequency: float  # visits a month
    monetary: float  # spend a month

    def facts(self) -> CustomerFacts:
        return CustomerFacts(self.segment, self.recency_days, self.frequency, self.monetary)


SEGMENT_SHARES: Mapping[str | None, float] = {
    "coffee-lovers": 0.18,
    "bakery-fans": 0.14,
    "families": 0.22,
    "health": 0.14,
    "value": 0.16,
    None: 0.16,
}


def population(seed: int, size: int = 5000) -> list[Shopper]:
    """The store's shoppers: segments, membership, consent, recency / frequency / monetary."""
    rng = random.Random(seed)
    segments = list(SEGMENT_SHARES)
    weights = list(SEGMENT_SHARES.values())
    shoppers = []
    for i in range(size):
        segment = rng.choices(segments, weights)[0]
        member = rng.random() < 0.7
        frequency = min(rng.gammavariate(2.0, 3.0), 30.0)
        recency = min(rng.expovariate((1 + frequency / 4) / 30), 365.0)
        monetary = math.exp(rng.gauss(math.log(60 + 15 * frequency), 0.5))
        shoppers.append(
            Shopper(
                id=i,
                segment=segment,
                member=member,
                consent=member and rng.random() < 0.65,
                recency_days=round(recency, 1),
                frequency=round(frequency, 1),
                monetary=round(monetary, 2),
            )
        )
    return shoppers


@dataclass(frozen=True, eq=False)
class Moment:
    """A decision point: what the gateway sees (`ctx`) plus the hidden truth (`shopper`)."""

    ctx: FeatureContext
    now: float  # seconds since the epoch (local time taken as UTC)
    shopper: Shopper  # the person in front of the touchpoint, identified or not
    identified: bool
    offers: tuple[Offer, ...]  # eligible offers, catalog order

    @property
    def customer(self) -> Shopper | None:
        """The identified customer, if any (consenting or not)."""
        return self.shopper if self.identified else None

    @property
    def segment(self) -> str | None:
        """The segment the gateway may use: only an identified customer's who consented."""
        return self.shopper.segment if self.identified and self.shopper.consent else None

    @cached_property
    def features(self) -> F32:
        """`featurize(ctx, offers)`: one row per eligible offer."""
        return featurize(self.ctx, self.offers)

    @cached_property
    def truth(self) -> F64:
        """The true conversion probability of each eligible offer."""
        return conversion_probabilities(self, self.offers, self.features)


def eligible(
    offers: Sequence[Offer], channel: str, local_time: datetime, segment: str | None
) -> list[Offer]:
    """The hard rules the daemon applies first: the daemon's own (`gateway.decision.rules`)."""
    now = local_time.replace(tzinfo=UTC).timestamp()
    ctx = Context(now, local_time, channel, segment)
    return [offer for offer in offers if rules_eligible(offer, ctx)]


# --------------------------------------------------------------------------------------------
# The hidden truth

_COL = {name: i for i, name in enumerate(FEATURES)}
_OFFER_COLS = [_COL[f"offer_{c}"] for c in CATEGORIES]
_BASKET_COLS = [_COL[f"basket_{c}"] for c in CATEGORIES]
_CAT = {c: i for i, c in enumerate(CATEGORIES)}
BASE_LOGIT = -4.7


def _bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-(((hour - centre) / width) ** 2))


def _time_weather_effects(ctx: FeatureContext) -> list[float]:
    """Per-category logit effects of the hour, the day of week and the weather."""
    e = [0.0] * len(CATEGORIES)
    t = ctx.local_time
    hour = t.hour + t.minute / 60
    morning = _bump(hour, 8.0, 1.6)
    lunch = _bump(hour, 12.5, 1.2)
    afternoon = _bump(hour, 15.5, 1.3)
    evening = _bump(hour, 18.5, 1.5)
    e[_CAT["coffee"]] += 1.5 * morning + 0.5 * afternoon
    e[_CAT["bakery"]] += 1.1 * morning + 0.6 * afternoon
    e[_CAT["drinks"]] += 0.2 * morning + 0.4 * lunch
    e[_CAT["lunch"]] += 1.8 * lunch
    e[_CAT["deli"]] += 0.6 * lunch + 0.4 * evening
    e[_CAT["snacks"]] += 0.5 * afternoon + (0.6 if hour >= 20 else 0.0)
    e[_CAT["pasta"]] += 1.3 * evening
    e[_CAT["sauce"]] += 0.9 * evening
    e[_CAT["produce"]] += 0.5 * evening
    if t.weekday() >= 5:
        e[_CAT["bakery"]] += 0.4
        e[_CAT["household"]] += 0.5
        e[_CAT["deli"]] += 0.3
    temp = ctx.weather.temp_c
    hot = min(max((temp - 18) / 10, 0.0), 1.6)
    cold = min(max((10 - temp) / 12, 0.0), 1.2)
    e[_CAT["drinks"]] += 1.6 * hot
    e[_CAT["snacks"]] += 0.2 * hot
    e[_CAT["lunch"]] += 0.2 * hot + 0.3 * cold
    e[_CAT["coffee"]] += -0.6 * hot + 0.9 * cold
    e[_CAT["bakery"]] += 0.4 * cold
    if ctx.weather.raining:
        e[_CAT["coffee"]] += 0.5
        e[_CAT["bakery"]] += 0.3
        e[_CAT["household"]] += 0.2
        e[_CAT["produce"]] -= 0.3
    return e


_ZONE_EFFECTS: Mapping[str, Mapping[str, float]] = {
    "coffee": {"coffee": 0.7, "bakery": 0.2},
    "bakery": {"bakery": 0.7, "coffee": 0.2},
    "produce": {"produce": 0.7},
    "deli": {"deli": 0.7, "lunch": 0.3},
    "checkout": {"snacks": 0.5, "drinks": 0.4},
}
_SEGMENT_EFFECTS: Mapping[str, Mapping[str, float]] = {
    "coffee-lovers": {"coffee": 1.2, "bakery": 0.3},
    "bakery-fans": {"bakery": 1.2, "coffee": 0.3},
    "families": {"pasta": 0.7, "sauce": 0.5, "snacks": 0.7, "household": 0.5, "drinks": 0.3},
    "health": {"produce": 1.1, "snacks": -0.7, "bakery": -0.4},
    "value": {"household": 0.3},
}
_TOUCHPOINT_SHIFT: Mapping[str, float] = {
    "kiosk": 0.25,  # the shopper walked up to it
    "screen": -0.2,  # glanced at in passing
    "receipt": 0.0,
    "tablet": 0.5,  # an associate suggests it
}


def _category_effects(moment: Moment) -> tuple[list[float], float]:
    """Per-category effects and the shift common to every offer in this moment."""
    ctx = moment.ctx
    e = _time_weather_effects(ctx)
    for category, value in _ZONE_EFFECTS.get(ctx.zone or "", {}).items():
        e[_CAT[category]] += value
    shopper = moment.shopper
    for category, value in _SEGMENT_EFFECTS.get(shopper.segment or "", {}).items():
        e[_CAT[category]] += value
    if ctx.touchpoint == "receipt":  # a coupon for the next visit: stock-up categories
        e[_CAT["household"]] += 0.5
    shift = BASE_LOGIT + _TOUCHPOINT_SHIFT.get(ctx.touchpoint, 0.0)
    shift += 0.4 * min(ctx.dwell_s / 300, 1.0)
    if shopper.member:
        shift += 0.4 * min(shopper.frequency / 20, 1.0) - 0.3 * min(shopper.recency_days / 90, 1)
    return e, shift


def conversion_probabilities(moment: Moment, offers: Sequence[Offer], features: F32) -> F64:
    """The hidden truth for `offers` in `moment`; `features` is `featurize(moment.ctx, offers)`."""
    effects, shift = _category_effects(moment)
    x = features.astype(np.float64)
    segment = moment.shopper.segment
    value = segment == "value"
    logit = shift + x[:, _OFFER_COLS] @ np.asarray(effects)
    logit += (5.0 if value else 2.6) * x[:, _COL["discount"]]
    logit += (-1.1 if value else -0.35) * x[:, _COL["price_high"]]
    logit += 0.15 * x[:, _COL["price_low"]]
    logit += 1.3 * x[:, _COL["complements_basket"]]
    logit += 2.0 * x[:, _COL["category_trend"]]
    logit -= 0.7 * np.sum(x[:, _OFFER_COLS] * x[:, _BASKET_COLS], axis=1)  # already has it
    if segment is not None:
        logit += 0.4 * np.asarray([segment in o.segments for o in offers], dtype=np.float64)
    return np.asarray(1.0 / (1.0 + np.exp(-logit)), dtype=np.float64)


def conversion_probability(moment: Moment, offer: Offer) -> float:
    """P(the shopper of `moment` converts on `offer`): the simulator's hidden truth."""
    return float(conversion_probabilities(moment, [offer], featurize(moment.ctx, [offer]))[0])


# --------------------------------------------------------------------------------------------
# The simulator

_START = datetime(2026, 1, 5)  # a Monday
_TOUCHPOINTS = {"screen": 0.4, "kiosk": 0.25, "receipt": 0.25, "tablet": 0.1}
_IDENTIFIED = {"screen": 0.1, "kiosk": 0.8, "receipt": 0.85, "tablet": 0.4}  # if a member
_ZONES: Mapping[str, Mapping[str, float]] = {
    "screen": {
        "entrance": 0.25,
        "coffee": 0.15,
        "bakery": 0.15,
        "produce": 0.15,
        "deli": 0.15,
        "checkout": 0.15,
    },
    "kiosk": {"entrance": 0.6, "other": 0.4},
    "receipt": {"checkout": 1.0},
    "tablet": {"deli": 0.3, "produce": 0.3, "bakery": 0.2, "other": 0.2},
}
_BASKET_BASE = {"screen": -2.3, "kiosk": -2.8, "receipt": -1.0, "tablet": -1.8}
_TREND_BASE = {
    "coffee": 0.10,
    "bakery": 0.10,
    "lunch": 0.08,
    "deli": 0.08,
    "produce": 0.14,
    "drinks": 0.10,
    "pasta": 0.07,
    "sauce": 0.06,
    "snacks": 0.10,
    "household": 0.17,
}


class Simulator:
    """Moments, rewards and the oracle; the same seed gives the same moments in the same order."""

    def __init__(self, seed: int = 7, shoppers: int = 5000) -> None:
        self.seed = seed
        self.catalog = catalog()
        self.shoppers = population(seed, shoppers)
        # Regulars come more often.
        self._cumulative = list(itertools.accumulate(1.0 + s.frequency for s in self.shoppers))
        self._rng = random.Random(seed * 7919 + 1)

    # Moments ---------------------------------------------------------------------------------

    def moments(self, n: int) -> list[Moment]:
        """The next `n` moments of this simulator's stream."""
        return [self.moment() for _ in range(n)]

    def moment(self) -> Moment:
        rng = self._rng
        touchpoint = _pick(rng, _TOUCHPOINTS)
        shopper = rng.choices(self.shoppers, cum_weights=self._cumulative)[0]
        identified = shopper.member and rng.random() < _IDENTIFIED[touchpoint]
        local_time = self._local_time(rng)
        weather = self._weather(rng, local_time)
        zone = _pick(rng, _ZONES[touchpoint])
        dwell = self._dwell(rng, touchpoint)
        probe = FeatureContext(local_time=local_time, touchpoint=touchpoint, weather=weather)
        timely = _time_weather_effects(probe)
        basket = self._basket(rng, touchpoint, shopper, timely)
        trend = self._trend(rng, timely)
        facts = shopper.facts() if identified and shopper.consent else None
        ctx = FeatureContext(
            local_time=local_time,
            touchpoint=touchpoint,
            zone=zone,
            dwell_s=dwell,
            weather=weather,
            basket=basket,
            customer=facts,
            trend=trend,
        )
        now = local_time.replace(tzinfo=UTC).timestamp()
        segment = shopper.segment if facts is not None else None
        offers = tuple(eligible(self.catalog, touchpoint, local_time, segment))
        return Moment(ctx=ctx, now=now, shopper=shopper, identified=identified, offers=offers)

    @staticmethod
    def _local_time(rng: random.Random) -> datetime:
        day = rng.randrange(364)
        weekend = (_START + timedelta(days=day)).weekday() >= 5
        peak = rng.random()
        if peak < 0.25:
            hour = rng.gauss(8.2, 1.0)
        elif peak < 0.5:
            hour = rng.gauss(12.5, 0.9)
        elif peak < 0.8:
            hour = rng.gauss(17.8, 1.2)
        else:
            hour = rng.uniform(7.0, 22.0)
        if weekend and rng.random() < 0.3:
            hour = rng.uniform(9.0, 17.0)
        hour = min(max(hour, 7.0), 21.99)
        minutes = int(hour * 60)
        return _START + timedelta(days=day, minutes=minutes)

    @staticmethod
    def _weather(rng: random.Random, t: datetime) -> Weather:
        doy = t.timetuple().tm_yday
        hour = t.hour + t.minute / 60
        seasonal = 11 + 10 * math.sin(2 * math.pi * (doy - 105) / 365)
        daily = 3 * math.sin(2 * math.pi * (hour - 9) / 24)
        temp = min(max(seasonal + daily + rng.gauss(0, 4), -8.0), 36.0)
        raining = rng.random() < (0.3 if temp < 20 else 0.12)
        return Weather(temp_c=round(temp, 1), raining=raining)

    @staticmethod
    def _dwell(rng: random.Random, touchpoint: str) -> float:
        if touchpoint == "receipt":
            return round(rng.uniform(4, 40) * 60, 0)  # the whole visit
        mean = {"screen": 40.0, "kiosk": 90.0, "tablet": 150.0}[touchpoint]
        return round(min(rng.expovariate(1 / mean), 1800.0), 0)

    @staticmethod
    def _basket(
        rng: random.Random, touchpoint: str, shopper: Shopper, timely: Sequence[float]
    ) -> tuple[str, ...]:
        chances = _basket_chances(touchpoint, shopper.segment, timely)
        return tuple(c for c, p in zip(CATEGORIES, chances, strict=True) if rng.random() < p)

    @staticmethod
    def _trend(rng: random.Random, timely: Sequence[float]) -> dict[str, float]:
        raw = {
            c: _TREND_BASE[c] * math.exp(0.5 * timely[i] + rng.gauss(0, 0.25))
            for i, c in enumerate(CATEGORIES)
        }
        total = sum(raw.values())
        return {c: round(v / total, 4) for c, v in raw.items()}

    # Truth -----------------------------------------------------------------------------------

    @staticmethod
    def conversion_probability(moment: Moment, offer: Offer) -> float:
        return conversion_probability(moment, offer)

    @staticmethod
    def reward(moment: Moment, offer: Offer, rng: np.random.Generator) -> int:
        """1 if the shopper converts on `offer` (a Bernoulli draw of the truth), else 0."""
        return int(rng.random() < conversion_probability(moment, offer))

    @staticmethod
    def oracle_choice(moment: Moment) -> Offer:
        return moment.offers[int(np.argmax(moment.truth))]


def _basket_chances(touchpoint: str, segment: str | None, timely: Sequence[float]) -> list[float]:
    """P(category in the basket) for each category."""
    affinity = _SEGMENT_EFFECTS.get(segment or "", {})
    base = _BASKET_BASE[touchpoint]
    return [
        1 / (1 + math.exp(-(base + 0.8 * affinity.get(c, 0.0) + 0.5 * timely[i])))
        for i, c in enumerate(CATEGORIES)
    ]


def _pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


# --------------------------------------------------------------------------------------------
# Policies


class Policy:
    """A policy: `policy(moment) -> (offer, propensity)`, and its whole distribution."""

    name = "policy"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def distribution(self, moment: Moment) -> F64:
        """P(choose offer i) for each of `moment.offers`; sums to one."""
        raise NotImplementedError

    def distributions(self, moments: Sequence[Moment]) -> list[F64]:
        return [self.distribution(m) for m in moments]

    def __call__(self, moment: Moment) -> tuple[Offer, float]:
        p = self.distribution(moment)
        i = sample_index(p, self._rng)
        return moment.offers[i], float(p[i])


def sample_index(p: F64, rng: np.random.Generator) -> int:
    """An index drawn with probabilities `p` (a one-hot `p` draws no random number)."""
    best = int(np.argmax(p))
    if p[best] >= 1.0:
        return best
    cumulative = np.cumsum(p)
    i = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(i, len(p) - 1)


def _one_hot(n: int, i: int) -> F64:
    p = np.zeros(n, dtype=np.float64)
    p[i] = 1.0
    return p


def epsilon_mix(greedy: F64, epsilon: float) -> F64:
    """Epsilon-greedy: with probability epsilon, uniform over all eligible offers."""
    n = len(greedy)
    return np.asarray((1.0 - epsilon) * greedy + epsilon / n, dtype=np.float64)


class RandomPolicy(Policy):
    name = "random"

    def distribution(self, moment: Moment) -> F64:
        n = len(moment.offers)
        return np.full(n, 1.0 / n, dtype=np.float64)


class PopularityPolicy(Policy):
    """The eligible offer ranked highest by overall conversion (a fixed ranking)."""

    name = "popularity"

    def __init__(self, ranking: Sequence[str], seed: int = 0) -> None:
        super().__init__(seed)
        self.ranking = tuple(ranking)
        self._rank = {offer_id: i for i, offer_id in enumerate(self.ranking)}

    def distribution(self, moment: Moment) -> F64:
        worst = len(self._rank)
        ranks = [self._rank.get(o.id, worst) for o in moment.offers]
        return _one_hot(len(ranks), int(np.argmin(ranks)))

    @classmethod
    def from_rates(cls, rates: Mapping[str, float]) -> PopularityPolicy:
        return cls(sorted(rates, key=lambda offer_id: (-rates[offer_id], offer_id)))

    @classmethod
    def from_logs(
        cls, offer_ids: Sequence[str], rewards: Sequence[float], propensities: Sequence[float]
    ) -> PopularityPolicy:
        """Ranked by each offer's self-normalised, propensity-weighted conversion in the logs."""
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        for offer_id, reward, propensity in zip(offer_ids, rewards, propensities, strict=True):
            num[offer_id] = num.get(offer_id, 0.0) + reward / propensity
            den[offer_id] = den.get(offer_id, 0.0) + 1.0 / propensity
        return cls.from_rates({k: num[k] / den[k] for k in num})

    @classmethod
    def from_simulator(cls, seed: int, n: int = 4000) -> PopularityPolicy:
        """Ranked by each offer's mean true conversion over `n` moments where it was eligible:
        the best fixed ranking, free of sampling noise."""
        sim = Simulator(seed)
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        for moment in sim.moments(n):
            for offer, p in zip(moment.offers, moment.truth, strict=True):
                num[offer.id] = num.get(offer.id, 0.0) + float(p)
                den[offer.id] = den.get(offer.id, 0.0) + 1.0
        return cls.from_rates({k: num[k] / den[k] for k in num})


class RulesPolicy(Policy):
    """The daemon's rule-based fallback, `gateway.decision.rules.choose`."""

    name = "rules"

    def distribution(self, moment: Moment) -> F64:
        return _one_hot(len(moment.offers), self.index(moment))

    @staticmethod
    def index(moment: Moment) -> int:
        ctx = Context(
            now=moment.now,
            local_time=moment.ctx.local_time,
            channel=moment.ctx.touchpoint,
            segment=moment.segment,  # only with consent
        )
        chosen = choose(moment.offers, ctx).offer
        if chosen is None:  # cannot happen: the moment's offers passed the same hard rules
            raise RuntimeError("the rules chose nothing among eligible offers")
        return moment.offers.index(chosen)


class OraclePolicy(Policy):
    """Knows the hidden truth: the offer most likely to convert."""

    name = "oracle"

    def distribution(self, moment: Moment) -> F64:
        return _one_hot(len(moment.offers), int(np.argmax(moment.truth)))


class ObservableOraclePolicy(Policy):
    """The best any policy can do from what the features show: the truth averaged over the
    hidden segment's posterior (prior shares times the likelihood of the basket), exact for a
    consenting customer. `oracle - observable` is the lift no model can reach."""

    name = "oracle-observable"

    def distribution(self, moment: Moment) -> F64:
        return _one_hot(len(moment.offers), int(np.argmax(self.expected(moment))))

    @staticmethod
    def posterior(moment: Moment) -> dict[str | None, float]:
        if moment.segment is not None:
            return {moment.segment: 1.0}
        ctx = moment.ctx
        timely = _time_weather_effects(ctx)  # reads only the hour and the weather
        weights: dict[str | None, float] = {}
        for segment, share in SEGMENT_SHARES.items():
            likelihood = share
            for category, p in zip(
                CATEGORIES, _basket_chances(ctx.touchpoint, segment, timely), strict=True
            ):
                likelihood *= p if category in ctx.basket else 1 - p
            weights[segment] = likelihood
        total = sum(weights.values())
        return {k: v / total for k, v in weights.items()}

    @staticmethod
    def expected(moment: Moment) -> F64:
        """E[P(convert)] per eligible offer over the hidden segment's posterior."""
        out = np.zeros(len(moment.offers), dtype=np.float64)
        for segment, weight in ObservableOraclePolicy.posterior(moment).items():
            shopper = dataclasses.replace(moment.shopper, segment=segment)
            variant = dataclasses.replace(moment, shopper=shopper)
            out += weight * conversion_probabilities(variant, moment.offers, moment.features)
        return out


class EpsilonGreedy(Policy):
    """`base` with probability 1 - epsilon, else uniform over the eligible offers."""

    def __init__(self, base: Policy, epsilon: float, seed: int = 0) -> None:
        super().__init__(seed)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], not {epsilon}")
        self.base = base
        self.epsilon = epsilon
        self.name = f"{base.name}+eps{epsilon:g}"

    def distribution(self, moment: Moment) -> F64:
        return epsilon_mix(self.base.distribution(moment), self.epsilon)

    def distributions(self, moments: Sequence[Moment]) -> list[F64]:
        return [epsilon_mix(p, self.epsilon) for p in self.base.distributions(moments)]


# --------------------------------------------------------------------------------------------
# The model: the ONNX contract, checked as the gateway's scorer checks it

MODEL_METADATA_KEYS = (
    "feature_spec",
    "feature_spec_version",
    "feature_spec_hash",
    "model_version",
    "trained_at",
    "score_output",
    "score_column",
    "producer",
)


class ModelContractError(ValueError):
    """The model file does not honour the contract (see scripts/train_model.py)."""


class OnnxScorer:
    """The gateway's own scorer, plus the training contract's stricter checks.

    Loading goes through `gateway.decision.model.Scorer` (same session options, same checks
    the daemon applies), so a model that passes here is one the gateway serves.
    """

    def __init__(self, model: str | Path | bytes) -> None:
        origin = Path("<bytes>") if isinstance(model, bytes) else Path(model)
        try:
            data = model if isinstance(model, bytes) else origin.read_bytes()
            scorer = Scorer.from_bytes(data, origin)
        except (OSError, ModelError) as e:
            raise ModelContractError(str(e)) from e
        problems = contract_problems(scorer.metadata, scorer.session)
        if problems:
            raise ModelContractError("; ".join(problems))
        self._scorer = scorer

    @property
    def session(self) -> Any:
        return self._scorer.session

    @property
    def metadata(self) -> dict[str, str]:
        return self._scorer.metadata

    @property
    def version(self) -> str:
        return self._scorer.info.version  # the contract requires model_version

    def scores(self, features: F32) -> F64:
        """P(convert) for each row of `features` ([N, len(FEATURES)] float32), one call."""
        return self._scorer.score(features)


def contract_problems(metadata: Mapping[str, str], session: Any) -> list[str]:
    """Everything wrong with a loaded model against the contract; empty when it honours it."""
    problems = [f"metadata {k!r} missing" for k in MODEL_METADATA_KEYS if k not in metadata]
    expected = {
        "feature_spec": str(SPEC["name"]),
        "feature_spec_version": str(SPEC["version"]),
        "feature_spec_hash": SPEC_HASH,
    }
    problems += [
        f"metadata {k!r} is {metadata[k]!r}, the code has {v!r}"
        for k, v in expected.items()
        if k in metadata and metadata[k] != v
    ]
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != "features":
        problems.append(f"want one input 'features', got {[i.name for i in inputs]}")
    else:
        shape = list(inputs[0].shape)
        if inputs[0].type != "tensor(float)":
            problems.append(f"input 'features' is {inputs[0].type}, want tensor(float)")
        if len(shape) != 2 or shape[1] != len(FEATURES) or isinstance(shape[0], int):
            problems.append(f"input shape {shape}, want [None, {len(FEATURES)}]")
    outputs = {o.name: o for o in session.get_outputs()}
    name = metadata.get("score_output", "")
    if name and name not in outputs:
        problems.append(f"score_output {name!r} is not an output ({sorted(outputs)})")
    elif name:
        shape = list(outputs[name].shape)
        if not outputs[name].type.startswith("tensor(float"):
            problems.append(f"score output {name!r} is {outputs[name].type}, want a float tensor")
        column = metadata.get("score_column", "")
        if len(shape) == 2 and shape[1] != 1 and not column.isdigit():
            problems.append(f"score output {name!r} is 2-D but score_column is {column!r}")
    return problems


class ModelPolicy(Policy):
    """Scores all eligible offers with one onnxruntime call, takes the argmax (epsilon-greedy)."""

    def __init__(self, scorer: OnnxScorer, epsilon: float = 0.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.scorer = scorer
        self.epsilon = epsilon
        self.name = "model" if epsilon == 0 else f"model+eps{epsilon:g}"

    @classmethod
    def load(cls, path: str | Path, epsilon: float = 0.0, seed: int = 0) -> ModelPolicy:
        return cls(OnnxScorer(path), epsilon, seed)

    def _from_scores(self, scores: F64) -> F64:
        greedy = _one_hot(len(scores), int(np.argmax(scores)))
        return epsilon_mix(greedy, self.epsilon) if self.epsilon > 0 else greedy

    def distribution(self, moment: Moment) -> F64:
        return self._from_scores(self.scorer.scores(moment.features))

    def distributions(self, moments: Sequence[Moment]) -> list[F64]:
        """Batched for evaluation: one call for many moments (the same choices as one by one)."""
        if not moments:
            return []
        scores = self.scorer.scores(np.concatenate([m.features for m in moments]))
        bounds = np.cumsum([0] + [len(m.offers) for m in moments])
        return [self._from_scores(scores[a:b]) for a, b in itertools.pairwise(bounds)]
