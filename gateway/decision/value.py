"""What a conversion is worth under the store's objective (`decision.objective`).

conversion  1 for every offer: the engine ranks by P(convert).
revenue     the price paid: price x (1 - discount).
margin      what the store keeps: price x margin (the offer's `margin`, a share of the price).
An offer without a price is worth its conversion (1): a catalog without prices ranks as before.
The engine ranks by expected value, P(convert) x value.
"""

from __future__ import annotations

from typing import Literal

from gateway.store import Offer

__all__ = ["OBJECTIVES", "Objective", "offer_value"]

Objective = Literal["conversion", "revenue", "margin"]
OBJECTIVES: tuple[Objective, ...] = ("conversion", "revenue", "margin")


def offer_value(offer: Offer, objective: str) -> float:
    """The value of one conversion on `offer` (see the module's docstring)."""
    if objective == "conversion" or offer.price is None:
        return 1.0
    if objective == "revenue":
        return offer.price * (1 - offer.discount_pct / 100)
    if objective == "margin":
        return offer.price * offer.margin
    raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
