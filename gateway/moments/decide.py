"""Deciding, in plain code: a moment and the time in, a `Plan` out; no I/O but the reads.

`decide` runs on the store's read thread (`AsyncStore.read`): it reads the consent and the
frequency caps over the read connection (a commit in progress never blocks it), scores, and
renders (`render`) what the decision will post or print. The journey commits the plan on the
store thread, then posts. Nothing here knows a device, a queue or an event loop.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from gateway.codecs.ids import uuid7
from gateway.codecs.payloads import Card, Suggestion, encode_card, offer_json
from gateway.codecs.topics import Topics
from gateway.decision import Context
from gateway.decision.catalog import CatalogVersion
from gateway.decision.engine import DecisionEngine, Outcome
from gateway.decision.experiments import Assignment, ExperimentTest, assign, in_holdout
from gateway.decision.features import CustomerFacts, FeatureContext, context_to_json
from gateway.decision.log import record_decisions
from gateway.moments import render
from gateway.moments.moment import AppMoment, CheckoutMoment, Moment, TabletMoment
from gateway.moments.render import UplinkRow
from gateway.pos import checkout
from gateway.store import Decision, Offer, OutboxRow, PrintJobRow, Reader, Store

__all__ = ["Decided", "Plan", "commit", "decide", "decide_each"]

log = structlog.get_logger("gateway.journey")


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a decision reads from the store before it decides."""

    customer: str | None  # the customer's ref, with a personalisation consent; else None
    segment: str | None  # the consenting customer's segment
    seen: dict[str, int]  # offer -> times shown to this customer today: at the cap only
    here: dict[str, int]  # offer -> times shown at this touchpoint this hour: at the cap only
    app_messages: bool  # the consenting customer takes in-app messages


def _read_facts(
    reader: Reader,
    ref: str | None,
    touchpoint: str,
    now: float,
    caps: tuple[int, int],
    *,
    earlier: Sequence[Decision],
) -> _Facts:
    """The consent, then the offers at their caps (day, hour) for who it lets us know, in one
    snapshot. earlier: decisions not committed yet (the same batch's), counted in too."""
    with reader.snapshot():
        consent = reader.consent(ref) if ref else None
        personal = consent is not None and consent.personalisation
        customer = ref if personal else None  # no consent, no record of who it was
        theirs = [
            d.offer_id
            for d in earlier
            if d.offer_id is not None and customer is not None and d.customer_ref == customer
        ]
        here_too = [
            d.offer_id for d in earlier if d.offer_id is not None and d.touchpoint == touchpoint
        ]
        # An offer under its cap by more than the batch's own decisions stays under it.
        at_least = (caps[0] - len(theirs), caps[1] - len(here_too))
        seen, here = reader.offer_counts(customer, touchpoint, now, at_least)
    for counts, offer_ids in ((seen, theirs), (here, here_too)):
        for offer_id in offer_ids:
            counts[offer_id] = counts.get(offer_id, 0) + 1
    segment = consent.segment if consent is not None and personal else None
    app_messages = consent is not None and personal and consent.app_messages
    return _Facts(customer, segment, seen, here, app_messages)


@dataclass(frozen=True, slots=True)
class Decided:
    """One decision of a plan, with its outcome and its event for the cloud."""

    decision: Decision
    outcome: Outcome
    uplink: OutboxRow | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A moment decided, and what it does: committed in one transaction, then posted."""

    moment: Moment
    decided: tuple[Decided, ...]  # one, or an associate's suggestions (best first)
    job: PrintJobRow | None = None  # the coupon to print (a checkout that chose an offer)
    posts: tuple[tuple[str, bytes, bool], ...] = ()  # (topic, payload, retained), once committed
    messages: tuple[OutboxRow, ...] = ()  # events the decision causes (an in-app message)
    assisted_by: str | None = None  # a checkout's customer served by this associate (hash)

    @property
    def personal(self) -> bool:
        # Only with a personalisation consent; the same for every decision of the moment.
        return self.decided[0].decision.customer_ref is not None


def commit(store: Store, plans: Sequence[Plan]) -> None:
    """Runs on the store thread: plans decided together, their decisions and events in one
    transaction; a checkout's alone, with its coupon, print job and the pending checkout it
    settles (`checkout.record`)."""
    if isinstance(plans[0].moment, CheckoutMoment):
        (plan,) = plans  # the journey decides a checkout alone: its coupon commits durably
        first = plan.decided[0]
        checkout.record(store, first.decision, first.uplink, plan.job)
        return
    decided = [(d.decision, d.uplink) for plan in plans for d in plan.decided]
    record_decisions(store, decided, events=[e for plan in plans for e in plan.messages])


def decide_each(
    reader: Reader, moments: Sequence[Moment], decide_one: Callable[..., Plan]
) -> list[Plan]:
    """`decide_one` (`decide` with its settings) for each moment, in order, each counting the
    decisions before it in its caps: moments decided together take one hop to the read thread,
    not one each. A moment that fails is logged and left out, as it is alone."""
    plans: list[Plan] = []
    earlier: list[Decision] = []
    for moment in moments:
        try:
            plan = decide_one(reader, moment, earlier=earlier)
        except sqlite3.Error:
            raise  # the store is in trouble: for the journey to handle, as alone
        except Exception as exc:  # noqa: BLE001 - one bad moment must not stall the rest
            log.error(
                "journey moment failed, skipped", moment=moment.name, error=type(exc).__name__
            )
            continue
        plans.append(plan)
        earlier += (d.decision for d in plan.decided)
    return plans


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
    tests: Sequence[ExperimentTest] = (),
    earlier: Sequence[Decision] = (),
) -> Plan:
    """The features, the model call, the rows to commit and what to post or print.
    tests: the marketing tests running (an experiments bundle); the holdout takes no part.
    earlier: decisions made but not committed yet (the same batch's): the caps count them."""
    cfg = engine.config
    caps = (cfg.cap_customer_per_day, cfg.cap_touchpoint_per_hour)
    facts = _read_facts(reader, moment.customer_ref, moment.touchpoint, now, caps, earlier=earlier)
    local = datetime.fromtimestamp(now)
    features = FeatureContext(
        local_time=local,
        touchpoint=moment.channel,
        zone=moment.zone,
        dwell_s=moment.dwell_s,
        basket=moment.basket,
        weather=engine.weather,
        customer=CustomerFacts(segment=facts.segment) if facts.customer is not None else None,
    )
    context = Context(now, local, moment.channel, facts.segment, time_trusted)
    experiment = None
    held_out = facts.customer is not None and in_holdout(
        facts.customer, engine.config.holdout_share
    )
    if tests and not held_out:
        experiment = assign(
            tests,
            channel=moment.channel,
            touchpoint_id=moment.touchpoint,
            customer_ref=facts.customer,
            now=now,
        )
    deciding = _Deciding(
        moment, facts, engine, context, features, uplink, engine.catalog(offers), experiment
    )
    if isinstance(moment, AppMoment):
        return _message(reader, moment, deciding, offers)
    if isinstance(moment, TabletMoment):
        return _suggest(reader, moment, deciding, offers, topics)
    assisted_by = None
    extra: dict[str, Any] = {}
    if isinstance(moment, CheckoutMoment) and facts.customer is not None:
        since = now - engine.config.reward_window_s
        assisted_by = reader.served_by(facts.customer, since)
        if assisted_by is not None:
            extra["assisted_by"] = assisted_by  # a sale after an associate's serve
    if isinstance(moment, CheckoutMoment) and moment.total is not None:
        extra["total"] = moment.total  # in-store revenue, for the readout
    outcome = deciding.choose(offers)
    decided = deciding.record(outcome, **extra)
    job = None
    if isinstance(moment, CheckoutMoment) and outcome.offer is not None:
        job = render.print_job(moment, outcome.offer, topics.store_id, now)
    targets = moment.content_topics(topics)
    content = render.content(moment, decided.decision, outcome.offer) if targets else b""
    posts = tuple((topic, content, True) for topic in targets)
    return Plan(moment=moment, decided=(decided,), job=job, posts=posts, assisted_by=assisted_by)


@dataclass(frozen=True, slots=True)
class _Deciding:
    """One moment's inputs, read and built once: every choice the moment makes uses them."""

    moment: Moment
    facts: _Facts
    engine: DecisionEngine
    context: Context
    features: FeatureContext
    uplink: UplinkRow | None
    catalog: CatalogVersion | None = None  # the candidates are logged against it (issue 17)
    experiment: Assignment | None = None  # this moment's arm of a marketing test

    def choose(self, offers: Sequence[Offer]) -> Outcome:
        if self.experiment is not None and self.experiment.arm.offers:
            arm_offers = self.experiment.arm.offers
            offers = [o for o in offers if o.id in arm_offers]
        return self.engine.decide(
            offers,
            self.context,
            self.features,
            customer_ref=self.facts.customer,
            touchpoint_id=self.moment.touchpoint,
            customer_counts=self.facts.seen,
            touchpoint_counts=self.facts.here,
        )

    def record(self, outcome: Outcome, **extra: Any) -> Decided:
        """The decision row (with what it was made of) and its event for the cloud."""
        now = self.context.now
        logged = {
            **context_to_json(self.features),
            **extra,
            "arm": outcome.arm,
            "reason": outcome.reason,
        }
        if outcome.shadow is not None:
            logged["shadow"] = dict(outcome.shadow)
        if self.catalog is not None:
            logged.update(self.catalog.log_fields(outcome))
        if self.experiment is not None:
            logged["experiment"] = self.experiment.as_json()
        decision = Decision(
            id=uuid7(int(now * 1000)),
            ts=now,
            moment=self.moment.name,
            touchpoint=self.moment.touchpoint,
            customer_ref=self.facts.customer,
            offer_id=outcome.offer.id if outcome.offer else None,
            policy=outcome.policy,
            propensity=outcome.propensity,
            request_id=self.moment.request_id,
            model_version=outcome.model_version,
            feature_hash=outcome.feature_hash,
            context=json.dumps(logged, separators=(",", ":")),
        )
        row = None
        if self.uplink is not None:
            row = render.uplink_row(self.uplink, decision, outcome, logged, now)
        return Decided(decision, outcome, row)


_SUGGESTIONS = 3


def _suggest(
    reader: Reader,
    moment: TabletMoment,
    deciding: _Deciding,
    offers: Sequence[Offer],
    topics: Topics,
) -> Plan:
    """An associate's card: the top suggestions, each its own decision (the offers already
    chosen leave the candidates; what the customer asks about is tried first)."""
    facts = deciding.facts
    remaining = list(offers)
    decided: list[Decided] = []
    for rank in range(1, _SUGGESTIONS + 1):
        asked = [o for o in remaining if o.category in moment.asks]
        outcome = deciding.choose(asked or remaining)
        if outcome.offer is None and asked:
            outcome = deciding.choose(remaining)
        if outcome.offer is None and decided:
            break  # nothing more to suggest; the log keeps a decision only for an empty card
        decided.append(
            deciding.record(outcome, session=moment.session, associate=moment.associate, rank=rank)
        )
        if outcome.offer is None:
            break
        chosen = outcome.offer.id
        remaining = [o for o in remaining if o.id != chosen]
    categories = None
    if facts.customer is not None:
        categories = tuple(reader.categories_bought(facts.customer)[:5])
    card = Card(
        id=uuid7(),
        ts=deciding.context.now,
        session=moment.session,
        request_id=moment.request_id,
        audience="personal" if facts.customer is not None else "anonymous",
        segment=facts.segment,
        categories=categories,
        suggestions=tuple(
            Suggestion(
                rank, d.decision.id, d.decision.propensity, render.content_offer(d.outcome.offer)
            )
            for rank, d in enumerate(decided, 1)
            if d.outcome.offer is not None
        ),
    )
    post = (topics.tablet_card(moment.touchpoint), encode_card(card), False)  # never retained
    return Plan(moment=moment, decided=tuple(decided), posts=(post,))


_COUPON_REMINDED_S = 30 * 86400.0  # coupons older than this are not recalled


def _message(
    reader: Reader, moment: AppMoment, deciding: _Deciding, offers: Sequence[Offer]
) -> Plan:
    """An in-app message for a customer with a personalisation consent: a reminder of a coupon
    not yet redeemed, else a welcome with one personal offer; nothing past the daily cap."""
    nothing = Plan(moment=moment, decided=())
    customer, now, uplink = deciding.facts.customer, deciding.context.now, deciding.uplink
    if customer is None or uplink is None or not deciding.facts.app_messages:
        return nothing  # no consent, or opted out of messages
    if reader.app_messages_since(customer, now - 86400) >= moment.per_day:
        return nothing
    coupon = reader.unredeemed_coupon(customer, now - _COUPON_REMINDED_S)
    offer = next((o for o in offers if o.id == coupon), None)
    if offer is not None:
        kind, outcome = "reminder", Outcome(offer, 1.0, "reminder", "unredeemed coupon")
    else:
        kind, outcome = "welcome", deciding.choose(offers)
        if outcome.offer is None:
            return nothing
    decided = deciding.record(outcome, kind=kind, trigger=moment.trigger)
    data = {
        "decision_id": decided.decision.id,
        "customer": customer,  # a keyed ref: the cloud knows the app it belongs to
        "kind": kind,
        "offer": offer_json(render.content_offer(outcome.offer)),
        "expires_at": now + moment.ttl_s,
    }
    message = uplink("app.message", "transaction", data, ts=now, expires=now + moment.ttl_s)
    return Plan(moment=moment, decided=(decided,), messages=(message,))
