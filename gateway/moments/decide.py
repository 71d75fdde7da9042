"""Deciding, in plain code: a moment and the time in, a `Plan` out; no I/O but the reads.

`decide` runs on the store's read thread (`AsyncStore.read`): it reads the consent and the
frequency caps over the read connection (a commit in progress never blocks it), scores, and
renders what the decision will post or print. The journey commits the plan on the store thread,
then posts. Nothing here knows a device, a queue or an event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.decision import Context
from gateway.decision.engine import DecisionEngine, Outcome
from gateway.decision.features import CustomerFacts, FeatureContext, context_to_json
from gateway.ids import uuid7
from gateway.moments.moment import CheckoutMoment, Moment
from gateway.payloads import Content, ContentOffer, encode_content
from gateway.printing import Coupon, new_coupon_code
from gateway.store import Decision, Offer, OutboxRow, PrintJobRow, Reader, Store
from gateway.topics import Topics

__all__ = ["ANONYMOUS_MESSAGE", "PERSONAL_MESSAGE", "Plan", "UplinkRow", "decide"]

PERSONAL_MESSAGE = "Welcome back! Picked for you today"
ANONYMOUS_MESSAGE = "Today's pick"

# Builds the uplink event committed with a decision: Outbox.row (type, priority, data, ...).
UplinkRow = Callable[..., OutboxRow]


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a decision reads from the store before it decides."""

    customer: str | None  # the customer's ref, with a personalisation consent; else None
    segment: str | None  # the consenting customer's segment
    seen: dict[str, int]  # offer -> times shown to this customer today (consenting only)
    here: dict[str, int]  # offer -> times shown at this touchpoint this hour


def _read_facts(reader: Reader, ref: str | None, touchpoint: str, now: float) -> _Facts:
    """The consent, then the caps of who it lets us know, in one snapshot."""
    with reader.snapshot():
        consent = reader.consent(ref) if ref else None
        personal = consent is not None and consent.personalisation
        customer = ref if personal else None  # no consent, no record of who it was
        seen, here = reader.offer_counts(customer, touchpoint, now)
    segment = consent.segment if consent is not None and personal else None
    return _Facts(customer, segment, seen, here)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A decision taken, and what it does: committed in one transaction, then posted."""

    moment: Moment
    decision: Decision
    outcome: Outcome
    uplink: OutboxRow | None  # its event for the cloud
    job: PrintJobRow | None  # the coupon to print (a checkout that chose an offer)
    posts: tuple[tuple[str, bytes], ...]  # (topic, content) to post, retained, once committed

    @property
    def personal(self) -> bool:
        return self.decision.customer_ref is not None  # only with a personalisation consent

    def commit(self, store: Store) -> None:
        """Runs on the store thread; a checkout's decision settles its pending checkout."""
        if self.job is not None:
            store.record_checkout(self.decision, self.uplink, self.job)
        else:
            settles = self.moment.request_id if isinstance(self.moment, CheckoutMoment) else None
            store.record_decision(self.decision, self.uplink, settles=settles)


def decide(
    reader: Reader,
    moment: Moment,
    *,
    engine: DecisionEngine,
    offers: Sequence[Offer],
    now: float,
    time_trusted: bool,
    topics: Topics,
    uplink: UplinkRow | None,
) -> Plan:
    """The features, the model call, the rows to commit and the content to post."""
    facts = _read_facts(reader, moment.customer_ref, moment.touchpoint, now)
    local = datetime.fromtimestamp(now)
    basket = moment.basket if isinstance(moment, CheckoutMoment) else ()
    features = FeatureContext(
        local_time=local,
        touchpoint=moment.channel,
        zone=moment.zone,
        dwell_s=moment.dwell_s,
        basket=basket,
        weather=engine.weather,
        customer=CustomerFacts(segment=facts.segment) if facts.customer is not None else None,
    )
    outcome = engine.decide(
        offers,
        Context(now, local, moment.channel, facts.segment, time_trusted),
        features,
        customer_ref=facts.customer,
        touchpoint_id=moment.touchpoint,
        customer_counts=facts.seen,
        touchpoint_counts=facts.here,
    )
    logged: dict[str, Any] = {
        **context_to_json(features),
        "arm": outcome.arm,
        "reason": outcome.reason,
    }
    if outcome.shadow is not None:
        logged["shadow"] = dict(outcome.shadow)
    decision = Decision(
        id=uuid7(int(now * 1000)),
        ts=now,
        moment=moment.name,
        touchpoint=moment.touchpoint,
        customer_ref=facts.customer,
        offer_id=outcome.offer.id if outcome.offer else None,
        policy=outcome.policy,
        propensity=outcome.propensity,
        request_id=moment.request_id,
        model_version=outcome.model_version,
        feature_hash=outcome.feature_hash,
        context=json.dumps(logged, separators=(",", ":")),
    )
    row = None if uplink is None else _uplink_row(uplink, decision, outcome, logged, now)
    job = None
    if isinstance(moment, CheckoutMoment) and outcome.offer is not None:
        job = _print_job(moment, outcome.offer, topics.store_id, now)
    targets = moment.content_topics(topics)
    content = _content(moment, decision, outcome.offer) if targets else b""
    posts = tuple((topic, content) for topic in targets)
    return Plan(moment=moment, decision=decision, outcome=outcome, uplink=row, job=job, posts=posts)


def _uplink_row(
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


def _print_job(moment: CheckoutMoment, offer: Offer, store_id: str, now: float) -> PrintJobRow:
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


def _content(moment: Moment, decision: Decision, offer: Offer | None) -> bytes:
    personal = decision.customer_ref is not None
    content = Content(
        id=uuid7(),
        ts=decision.ts,
        audience="personal" if personal else "anonymous",
        touchpoint=moment.touchpoint,
        request_id=moment.request_id,
        decision_id=decision.id,
        message=PERSONAL_MESSAGE if personal else ANONYMOUS_MESSAGE,
        offer=None
        if offer is None
        else ContentOffer(
            id=offer.id,
            title=offer.title,
            body=offer.body,
            category=offer.category,
            discount_pct=offer.discount_pct,
        ),
    )
    return encode_content(content)
