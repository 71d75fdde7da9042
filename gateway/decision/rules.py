"""The rule-based policy: hard eligibility rules, then a deterministic score.

Pure and synchronous: it takes the catalog and the context and returns a choice, so the
decision can be replayed and tested without any device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.store import Offer

__all__ = ["POLICY", "Choice", "Context", "choose", "daypart", "eligible"]

POLICY = "rules/1"


def daypart(moment: datetime) -> str:
    hour = moment.hour
    if 5 <= hour < 11:
        return "morning"
    if 11 <= hour < 14:
        return "midday"
    if 14 <= hour < 18:
        return "afternoon"
    if 18 <= hour < 22:
        return "evening"
    return "night"


@dataclass(frozen=True, slots=True)
class Context:
    now: float  # seconds since the epoch
    local_time: datetime
    channel: str  # kiosk, screen, receipt, tablet
    segment: str | None  # only for an identified customer who consented
    # False when the wall clock is known to be wrong: an offer's end can't be checked.
    time_trusted: bool = True


@dataclass(frozen=True, slots=True)
class Choice:
    offer: Offer | None
    propensity: float  # probability this policy had of choosing it (1.0: deterministic)
    reason: str


def eligible(offer: Offer, ctx: Context) -> bool:
    """The hard rules: channel, validity window, inventory, dayparts, segment targeting
    (consent). An offer without dayparts is for any time of day."""
    if ctx.channel not in offer.channels:
        return False
    if offer.valid_from is not None and ctx.now < offer.valid_from:
        return False
    if offer.valid_to is not None and (not ctx.time_trusted or ctx.now >= offer.valid_to):
        return False  # with untrusted time, an offer that may have ended is not served
    if offer.inventory is not None and offer.inventory <= 0:
        return False
    if offer.dayparts and daypart(ctx.local_time) not in offer.dayparts:
        return False  # a morning-only offer is not for the evening, whatever its rank
    # A targeted offer is only for customers of its segments who consented to personalisation.
    return not offer.segments or (ctx.segment is not None and ctx.segment in offer.segments)


def choose(offers: Iterable[Offer], ctx: Context) -> Choice:
    """The best eligible offer: segment match, then daypart, then priority, then id."""
    part = daypart(ctx.local_time)

    def rank(offer: Offer) -> tuple[int, int, int, str]:
        targeted = int(ctx.segment is not None and ctx.segment in offer.segments)
        timely = int(part in offer.dayparts)
        return (-targeted, -timely, -offer.priority, offer.id)

    candidates = [o for o in offers if eligible(o, ctx)]
    if not candidates:
        return Choice(offer=None, propensity=1.0, reason="no eligible offer")
    best = min(candidates, key=rank)
    targeted, timely, _, _ = rank(best)
    reason = "segment" if targeted else ("daypart" if timely else "priority")
    return Choice(offer=best, propensity=1.0, reason=reason)
