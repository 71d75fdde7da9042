"""The rule-based policy: hard rules first, then segment, daypart, priority, id."""

from __future__ import annotations

from datetime import datetime

from gateway.decision import Context, choose, daypart
from gateway.store import Offer

MORNING = datetime(2026, 11, 23, 8, 30)
EVENING = datetime(2026, 11, 23, 19, 0)


def _ctx(local: datetime = MORNING, segment: str | None = None, channel: str = "kiosk") -> Context:
    return Context(now=1_800_000_000.0, local_time=local, channel=channel, segment=segment)


def test_dayparts() -> None:
    hours = {h: daypart(datetime(2026, 1, 1, h)) for h in (4, 5, 11, 14, 18, 22)}
    assert hours == {
        4: "night",
        5: "morning",
        11: "midday",
        14: "afternoon",
        18: "evening",
        22: "night",
    }


def test_hard_rules_exclude_expired_future_sold_out_wrong_channel_and_targeted() -> None:
    offers = [
        Offer("expired", "x", priority=9, valid_to=1_700_000_000.0),
        Offer("future", "x", priority=9, valid_from=1_900_000_000.0),
        Offer("sold-out", "x", priority=9, inventory=0),
        Offer("receipt-only", "x", priority=9, channels=("receipt",)),
        Offer("members", "x", priority=9, segments=("vip",)),
        Offer("plain", "x", priority=1, inventory=3),
    ]
    choice = choose(offers, _ctx())
    assert choice.offer is not None
    assert choice.offer.id == "plain"
    assert choice.propensity == 1.0


def test_segment_beats_daypart_beats_priority_then_id_breaks_ties() -> None:
    offers = [
        Offer("b-high", "x", priority=5),
        Offer("a-high", "x", priority=5),
        Offer("coffee-am", "x", priority=1, dayparts=("morning",)),
        Offer("vip", "x", priority=0, segments=("vip",)),
    ]
    assert choose(offers, _ctx(segment="vip")).offer.id == "vip"  # type: ignore[union-attr]
    morning = choose(offers, _ctx())
    assert (morning.offer.id, morning.reason) == ("coffee-am", "daypart")  # type: ignore[union-attr]
    evening = choose(offers, _ctx(EVENING))
    assert (evening.offer.id, evening.reason) == ("a-high", "priority")  # type: ignore[union-attr]


def test_an_offer_outside_its_dayparts_is_excluded_not_ranked_lower() -> None:
    """A morning-only coffee offer was shown and printed at night when nothing else was left."""
    morning_only = [Offer("coffee-am", "x", priority=9, dayparts=("morning",))]
    night = _ctx(datetime(2026, 1, 1, 23, 30))
    assert choose(morning_only, night).offer is None
    assert choose(morning_only, _ctx()).offer is not None  # in the morning it is served


def test_nothing_eligible_is_a_choice_too() -> None:
    choice = choose([Offer("members", "x", segments=("vip",))], _ctx())
    assert choice.offer is None
    assert choice.reason == "no eligible offer"
