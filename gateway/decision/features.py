"""The feature spec: one row per candidate offer = context features + offer features.

Declared as data and versioned; its hash goes into every model file's metadata and every
decision's log, so a model trained on another spec is refused rather than fed the wrong columns.
Customer features are filled only for an identified customer who consented; otherwise zeros.

numpy is imported by `featurize` and `row_hash`, which only a loaded model calls: a gateway
that decides by the rules never pays its memory.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.store import Offer

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "CATEGORIES",
    "COMPLEMENTS",
    "FEATURES",
    "LIVE_UNAVAILABLE",
    "PRICE_BANDS",
    "SEGMENTS",
    "SPEC",
    "SPEC_HASH",
    "TOUCHPOINTS",
    "ZONES",
    "CustomerFacts",
    "FeatureContext",
    "Weather",
    "context_from_json",
    "context_to_json",
    "drop_unavailable",
    "featurize",
    "row_hash",
    "unknown_vocabulary",
]

SPEC_NAME = "nba-features"
SPEC_VERSION = 1
CATEGORIES = (
    "coffee",
    "bakery",
    "lunch",
    "deli",
    "produce",
    "drinks",
    "pasta",
    "sauce",
    "snacks",
    "household",
)
ZONES = ("entrance", "coffee", "bakery", "produce", "deli", "checkout", "other")
TOUCHPOINTS = ("kiosk", "screen", "receipt", "tablet")
SEGMENTS = ("coffee-lovers", "bakery-fans", "families", "health", "value")
PRICE_BANDS = ("low", "mid", "high")
# Category in the basket -> categories that go with it (pasta -> sauce, ...).
COMPLEMENTS: Mapping[str, tuple[str, ...]] = {
    "pasta": ("sauce",),
    "sauce": ("pasta",),
    "coffee": ("bakery",),
    "bakery": ("coffee",),
    "lunch": ("drinks", "snacks"),
    "deli": ("drinks", "bakery"),
    "snacks": ("drinks",),
}


def _names() -> tuple[str, ...]:
    names = ["hour_sin", "hour_cos", "dow_sin", "dow_cos", "temp_c_30", "raining"]
    names += [f"zone_{z}" for z in ZONES]
    names += ["dwell_min_30"]
    names += [f"touchpoint_{t}" for t in TOUCHPOINTS]
    names += [f"basket_{c}" for c in CATEGORIES]
    names += ["identified"]
    names += [f"segment_{s}" for s in SEGMENTS]
    names += ["recency_90", "frequency_20", "monetary_500"]
    names += [f"offer_{c}" for c in CATEGORIES]
    names += ["discount"]
    names += [f"price_{b}" for b in PRICE_BANDS]
    names += ["margin", "inventory_100", "complements_basket", "category_trend"]
    return tuple(names)


FEATURES = _names()
# Features the live gateway does not fill (yet): zero whenever it serves. Training zeroes them
# too (`drop_unavailable`), so no model learns to rely on what it will never see: the store's
# sales trend and a customer's recency / frequency / value (issue 17, "no skew"). Not part of
# the spec's hash: filling one later is a change of this set, not of the columns.
LIVE_UNAVAILABLE = frozenset({"recency_90", "frequency_20", "monetary_500", "category_trend"})
CONTEXT_WIDTH = FEATURES.index(f"offer_{CATEGORIES[0]}")
SPEC = {
    "name": SPEC_NAME,
    "version": SPEC_VERSION,
    "features": list(FEATURES),
    "categories": list(CATEGORIES),
    "zones": list(ZONES),
    "touchpoints": list(TOUCHPOINTS),
    "segments": list(SEGMENTS),
    "price_bands": list(PRICE_BANDS),
    "complements": {k: list(v) for k, v in sorted(COMPLEMENTS.items())},
}
SPEC_HASH = hashlib.sha256(json.dumps(SPEC, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Weather:
    temp_c: float = 15.0
    raining: bool = False


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """Known only with consent: the segment and recency / frequency / monetary value."""

    segment: str | None = None
    recency_days: float | None = None
    frequency: float | None = None
    monetary: float | None = None


@dataclass(frozen=True, slots=True)
class FeatureContext:
    local_time: datetime
    touchpoint: str
    zone: str | None = None
    dwell_s: float = 0.0
    weather: Weather = field(default_factory=Weather)
    basket: tuple[str, ...] = ()  # categories in the basket
    customer: CustomerFacts | None = None  # None: anonymous or no consent
    trend: Mapping[str, float] = field(default_factory=dict)  # category -> share of sales now


def _one_hot(value: str | None, vocabulary: Sequence[str]) -> list[float]:
    return [1.0 if value == v else 0.0 for v in vocabulary]


def _context_row(ctx: FeatureContext) -> list[float]:
    t = ctx.local_time
    hour = t.hour + t.minute / 60
    dow = t.weekday()
    zone = ctx.zone if ctx.zone in ZONES else ("other" if ctx.zone else None)
    customer = ctx.customer
    row = [
        math.sin(2 * math.pi * hour / 24),
        math.cos(2 * math.pi * hour / 24),
        math.sin(2 * math.pi * dow / 7),
        math.cos(2 * math.pi * dow / 7),
        ctx.weather.temp_c / 30,
        1.0 if ctx.weather.raining else 0.0,
        *_one_hot(zone, ZONES),
        min(ctx.dwell_s / 60, 30) / 30,
        *_one_hot(ctx.touchpoint, TOUCHPOINTS),
        *[1.0 if c in ctx.basket else 0.0 for c in CATEGORIES],
        1.0 if customer is not None else 0.0,
        *_one_hot(customer.segment if customer else None, SEGMENTS),
        min((customer.recency_days or 0) if customer else 0, 90) / 90,
        min((customer.frequency or 0) if customer else 0, 20) / 20,
        min((customer.monetary or 0) if customer else 0, 500) / 500,
    ]
    assert len(row) == CONTEXT_WIDTH
    return row


def _offer_columns(offer: Offer) -> tuple[float, ...]:
    """The columns an offer fixes whatever the context (all but the last two)."""
    inventory = 1.0 if offer.inventory is None else min(offer.inventory, 100) / 100
    return (
        *_one_hot(offer.category, CATEGORIES),
        offer.discount_pct / 100,
        *_one_hot(offer.price_band, PRICE_BANDS),
        offer.margin,
        inventory,
    )


# Every decision featurizes the whole catalog: an offer's fixed columns are built once per
# offer object (keyed by identity, the object kept to prove it), not per decision (issue 11:
# they were a third of a decision's time on the store's read thread).
_FIXED: dict[int, tuple[Offer, tuple[float, ...]]] = {}
_FIXED_MAX = 10_000


def _fixed(offer: Offer) -> tuple[float, ...]:
    kept = _FIXED.get(id(offer))
    if kept is not None and kept[0] is offer:
        return kept[1]
    if len(_FIXED) >= _FIXED_MAX:
        _FIXED.clear()  # catalogs come and go; the one in use refills it
    columns = _offer_columns(offer)
    _FIXED[id(offer)] = (offer, columns)
    return columns


def featurize(ctx: FeatureContext, offers: Sequence[Offer]) -> npt.NDArray[np.float32]:
    """The model's input: one float32 row per offer, columns in `FEATURES` order."""
    import numpy as np

    matrix = np.empty((len(offers), len(FEATURES)), dtype=np.float32)
    if not offers:
        return matrix
    matrix[:, :CONTEXT_WIDTH] = _context_row(ctx)
    matrix[:, CONTEXT_WIDTH:-2] = [_fixed(offer) for offer in offers]
    # The two columns the context sets per offer: a complement of the basket, the trend.
    complements = frozenset(c for item in ctx.basket for c in COMPLEMENTS.get(item, ()))
    matrix[:, -2] = [1.0 if offer.category in complements else 0.0 for offer in offers]
    matrix[:, -1] = [float(ctx.trend.get(offer.category, 0.0)) for offer in offers]
    return matrix


def row_hash(row: npt.NDArray[np.float32]) -> str:
    """A short, stable fingerprint of one feature row, logged with the decision."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(row, dtype=np.float32).tobytes()).hexdigest()[:16]


def context_to_json(ctx: FeatureContext) -> dict[str, object]:
    """What a decision logs of its context: enough to replay it (and to train on it)."""
    customer = ctx.customer
    return {
        "local_time": ctx.local_time.isoformat(),
        "touchpoint": ctx.touchpoint,
        "zone": ctx.zone,
        "dwell_s": ctx.dwell_s,
        "weather": {"temp_c": ctx.weather.temp_c, "raining": ctx.weather.raining},
        "basket": list(ctx.basket),
        "customer": None
        if customer is None
        else {
            "segment": customer.segment,
            "recency_days": customer.recency_days,
            "frequency": customer.frequency,
            "monetary": customer.monetary,
        },
        "trend": dict(ctx.trend),
    }


def context_from_json(data: Mapping[str, Any]) -> FeatureContext:
    customer = data.get("customer")
    weather = data.get("weather") or {}
    return FeatureContext(
        local_time=datetime.fromisoformat(data["local_time"]),
        touchpoint=data["touchpoint"],
        zone=data.get("zone"),
        dwell_s=float(data.get("dwell_s", 0.0)),
        weather=Weather(float(weather.get("temp_c", 15.0)), bool(weather.get("raining", False))),
        basket=tuple(data.get("basket", ())),
        customer=None if customer is None else CustomerFacts(**customer),
        trend=dict(data.get("trend", {})),
    )


def unknown_vocabulary(ctx: FeatureContext, offers: Sequence[Offer]) -> list[str]:
    """Values the spec has no column for ('zone:mezzanine', 'category:wine', ...): featurize
    turns them into zeros (a zone into 'other'), so training reports them instead."""
    misses = []
    if ctx.zone and ctx.zone not in ZONES:
        misses.append(f"zone:{ctx.zone}")
    if ctx.touchpoint not in TOUCHPOINTS:
        misses.append(f"touchpoint:{ctx.touchpoint}")
    misses += [f"basket:{c}" for c in ctx.basket if c not in CATEGORIES]
    misses += [f"trend:{c}" for c in ctx.trend if c not in CATEGORIES]
    segment = ctx.customer.segment if ctx.customer else None
    if segment is not None and segment not in SEGMENTS:
        misses.append(f"segment:{segment}")
    for offer in offers:
        if offer.category not in CATEGORIES:
            misses.append(f"category:{offer.category}")
        if offer.price_band not in PRICE_BANDS:
            misses.append(f"price_band:{offer.price_band}")
    return misses


def drop_unavailable(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The same rows with the columns of `LIVE_UNAVAILABLE` zeroed (a copy)."""
    out = matrix.copy()
    out[..., [FEATURES.index(name) for name in sorted(LIVE_UNAVAILABLE)]] = 0.0
    return out
