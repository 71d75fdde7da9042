"""What a decision shows and leaves behind, rendered from its record: the screen's content,
the uplink event committed with it, a checkout's print job, an offer as a touchpoint shows it.
Pure functions: a new touchpoint adds its rendering here, its deciding in `decide`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.codecs.ids import uuid7
from gateway.codecs.payloads import Content, ContentOffer, encode_content
from gateway.decision.engine import Outcome
from gateway.flows.printing import Coupon, new_coupon_code
from gateway.moments.moment import CheckoutMoment, Moment
from gateway.store import Decision, Offer, OutboxRow, PrintJobRow

__all__ = [
    "ANONYMOUS_MESSAGE",
    "PERSONAL_MESSAGE",
    "UplinkRow",
    "content",
    "content_offer",
    "print_job",
    "uplink_row",
]

PERSONAL_MESSAGE = "Welcome back! Picked for you today"
ANONYMOUS_MESSAGE = "Today's pick"

# Builds the uplink event committed with a decision: Outbox.row (type, priority, data, ...).
UplinkRow = Callable[..., OutboxRow]


def uplink_row(
    uplink: UplinkRow,
    decision: Decision,
    outcome: Outcome,
    logged: Mapping[str, Any],
    now: float,
) -> OutboxRow:
    data = {
        "decision_id": decision.id,
        "moment": decision.moment,
        "touchpoint": decision.touchpoint,
        "customer": decision.customer_ref,
        "offer_id": decision.offer_id,
        "policy": decision.policy,
        "propensity": decision.propensity,
        "model_version": decision.model_version,
        "feature_hash": decision.feature_hash,
        "arm": outcome.arm,
        "request_id": decision.request_id,
        "context": logged,
    }
    return uplink("decision", "decision", data, event_id=decision.id, ts=now)


def print_job(moment: CheckoutMoment, offer: Offer, store_id: str, now: float) -> PrintJobRow:
    coupon = Coupon(
        code=new_coupon_code(),
        offer_id=offer.id,
        title=offer.title,
        body=offer.body,
        discount_pct=offer.discount_pct,
        store_id=store_id,
        issued_at=now,
        valid_days=moment.coupon_valid_days,
    )
    return PrintJobRow(
        id=uuid7(int(now * 1000)),
        lane=moment.touchpoint,
        printer=moment.printer,
        coupon_code=coupon.code,
        body=coupon.to_json(),
        copy=False,
        attempts=0,
    )


def content(moment: Moment, decision: Decision, offer: Offer | None) -> bytes:
    personal = decision.customer_ref is not None
    shown = Content(
        id=uuid7(),
        ts=decision.ts,
        audience="personal" if personal else "anonymous",
        touchpoint=moment.touchpoint,
        request_id=moment.request_id,
        decision_id=decision.id,
        message=PERSONAL_MESSAGE if personal else ANONYMOUS_MESSAGE,
        offer=None if offer is None else content_offer(offer),
    )
    return encode_content(shown)


def content_offer(offer: Offer | None) -> ContentOffer:
    assert offer is not None
    return ContentOffer(
        id=offer.id,
        title=offer.title,
        body=offer.body,
        category=offer.category,
        discount_pct=offer.discount_pct,
    )
