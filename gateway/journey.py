"""Moments of a visit -> decisions -> content.

Moments: a customer identifies at a kiosk (content on the kiosk and its screens); someone enters
or dwells in a zone (BLE presence: content on that zone's screens, personal for an identified
customer with consent, else for the anonymous audience); a POS lane totals a basket (a coupon
printed on the lane's printer: decision, coupon and print job committed together).

The journey is core: it gets typed events, a store, a publisher and a clock, and never touches a
device. Decisions are committed to the store before their content is published.

A decision takes three steps, each on a thread of its own kind: read the consent and the
frequency caps (the store's read thread), score and plan (the journey's decide thread), commit
the plan (the store thread, SQLite only). Reading and scoring never queue behind a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.ble.presence import ZoneEvent
from gateway.clock import Clock
from gateway.config import KioskConfig, LaneConfig, ScreenConfig
from gateway.decision import Context
from gateway.decision.engine import DecisionEngine, Outcome
from gateway.decision.features import CustomerFacts, FeatureContext, context_to_json
from gateway.identity import TokenError, customer_ref, verify_token
from gateway.ids import uuid7
from gateway.metrics import Metrics
from gateway.payloads import (
    STORAGE_FULL,
    Content,
    ContentOffer,
    KioskIdentify,
    PayloadError,
    decode_kiosk_identify,
    encode_content,
    encode_error,
)
from gateway.printing import Coupon, new_coupon_code
from gateway.store import (
    AsyncStore,
    Decision,
    Offer,
    OutboxRow,
    PrintJobRow,
    Reader,
    Store,
    StoreClosed,
    is_storage_full,
)
from gateway.supervisor import Handle
from gateway.sync.outbox import Outbox
from gateway.topics import Topics

__all__ = ["Journey", "Publisher"]

log = structlog.get_logger("gateway.journey")

PERSONAL_MESSAGE = "Welcome back! Picked for you today"
ANONYMOUS_MESSAGE = "Today's pick"


class Publisher(Protocol):
    """Where content goes; the MQTT link implements it."""

    def post(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Send in posting order; delivery (QoS 1, kept across reconnects) is the publisher's."""
        ...


@dataclass(frozen=True, slots=True)
class _Moment:
    name: str  # kiosk_identify, zone_enter, zone_dwell
    touchpoint: str  # the kiosk or screen id the decision is for
    channel: str  # kiosk, screen
    zone: str | None
    dwell_s: float
    request_id: str | None
    screens: tuple[str, ...]  # screens that show the content (besides the kiosk itself)
    basket: tuple[str, ...] = ()  # categories in the basket (checkout)


@dataclass(frozen=True, slots=True)
class Checkout:
    """A POS lane totalled a basket: the moment to print a coupon."""

    lane: str
    customer_ref: str | None  # from the lane's loyalty scan, already a keyed hash
    basket: tuple[str, ...]
    request_id: str | None  # the transaction event's id

    def to_json(self) -> str:
        """The pending checkout committed with its total (the event id is its key)."""
        body = {"lane": self.lane, "customer_ref": self.customer_ref, "basket": self.basket}
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str, event_id: str) -> Checkout:
        data = json.loads(body)
        return cls(data["lane"], data.get("customer_ref"), tuple(data["basket"]), event_id)


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a decision reads from the store before it decides."""

    customer: str | None  # the customer's ref, with a personalisation consent; else None
    segment: str | None  # the consenting customer's segment
    seen: dict[str, int]  # offer -> times shown to this customer today (consenting only)
    here: dict[str, int]  # offer -> times shown at this touchpoint this hour


def _read_facts(reader: Reader, ref: str | None, touchpoint: str, now: float) -> _Facts:
    """Runs on the store's read thread: the consent, then the caps of who it lets us know."""
    with reader.snapshot():
        consent = reader.consent(ref) if ref else None
        personal = consent is not None and consent.personalisation
        customer = ref if personal else None  # no consent, no record of who it was
        seen, here = reader.offer_counts(customer, touchpoint, now)
    segment = consent.segment if consent is not None and personal else None
    return _Facts(customer, segment, seen, here)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A decision taken, and what commits it: all in one transaction on the store thread."""

    decision: Decision
    outcome: Outcome
    uplink: OutboxRow | None  # its event for the cloud
    job: PrintJobRow | None  # the coupon to print (a checkout that chose an offer)
    settles: str | None  # the pending checkout (the total's event id) it answers

    def commit(self, store: Store) -> None:
        """Runs on the store thread."""
        if self.job is not None:
            store.record_checkout(self.decision, self.uplink, self.job)
        else:
            store.record_decision(self.decision, self.uplink, settles=self.settles)


class Journey:
    name = "journey"
    requires = ("store",)

    def __init__(
        self,
        *,
        topics: Topics,
        kiosks: Mapping[str, KioskConfig],
        store: AsyncStore,
        publisher: Publisher,
        hash_key: bytes,
        token_key: Ed25519PublicKey | None,
        token_leeway_s: int,
        metrics: Metrics,
        clock: Clock,
        engine: DecisionEngine,
        outbox: Outbox | None = None,
        queue_size: int = 1000,
        screens: Mapping[str, ScreenConfig] | None = None,
        screen_hold_s: float = 30.0,
        lanes: Mapping[str, LaneConfig] | None = None,
        on_print_job: Callable[[str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._topics = topics
        self._kiosks = kiosks
        self._store = store
        self._publisher = publisher
        self._hash_key = hash_key
        self._token_key = token_key
        self._token_leeway_s = token_leeway_s
        self._metrics = metrics
        self._clock = clock
        self._queue: asyncio.Queue[tuple[KioskIdentify | ZoneEvent | Checkout, float]] = (
            asyncio.Queue(queue_size)
        )
        self._lanes = lanes or {}
        self._on_print_job = on_print_job
        self._offers: list[Offer] = []
        self._screens_in: dict[str, list[str]] = {}
        for screen_id, screen in (screens or {}).items():
            self._screens_in.setdefault(screen.zone, []).append(screen_id)
        self._screen_hold_s = screen_hold_s
        # screen -> (when it last got content, for whom: a customer ref or None)
        self._screen_last: dict[str, tuple[float, str | None]] = {}
        # Scoring (onnxruntime) off the loop and off the store thread; one decision at a time.
        self._decide_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decide")

    def on_kiosk_identify(self, topic: str, payload: bytes) -> None:
        """Route handler: decode, then queue; raises `PayloadError` for the link to answer."""
        kiosk_id = self._topics.device_id(topic, "kiosk")
        if kiosk_id is None:
            raise PayloadError("topic is not a kiosk topic")
        if kiosk_id not in self._kiosks:
            # The broker's ACL lets every device user write under its own id in any kind's tree;
            # only kiosks the store declared may identify customers.
            raise PayloadError(f"unknown kiosk {kiosk_id!r}: declare it under [kiosks.{kiosk_id}]")
        event = decode_kiosk_identify(kiosk_id, payload)
        try:
            self._queue.put_nowait((event, self._clock.monotonic()))
        except asyncio.QueueFull:
            raise PayloadError("gateway overloaded, try again") from None

    def on_camera_qr(self, kiosk_id: str, token: str) -> None:
        """The kiosk's camera read an app QR code: the same path as a kiosk's qr_token."""
        if kiosk_id not in self._kiosks:
            log.warning("camera QR for an undeclared kiosk", kiosk=kiosk_id)
            return
        event = KioskIdentify(kiosk_id, "qr_token", token, request_id=None)
        try:
            self._queue.put_nowait((event, self._clock.monotonic()))
        except asyncio.QueueFull:
            log.warning("journey queue full, camera QR skipped", kiosk=kiosk_id)

    def on_zone_event(self, event: ZoneEvent) -> None:
        """Presence hook: enter and dwell reach the zone's screens (exits change nothing)."""
        if event.kind == "exit" or not self._screens_in.get(event.zone):
            return
        try:
            self._queue.put_nowait((event, self._clock.monotonic()))
        except asyncio.QueueFull:
            log.warning("journey queue full, zone event skipped", zone=event.zone)

    def on_checkout(self, checkout: Checkout) -> None:
        """A lane's total was committed: decide and print (queued; never blocks the caller).
        Lanes make checkouts only where they have a printer."""
        try:
            self._queue.put_nowait((checkout, self._clock.monotonic()))
        except asyncio.QueueFull:
            log.warning("journey queue full, no coupon for this total", lane=checkout.lane)

    async def _resume_checkouts(self) -> None:
        """Totals acknowledged before a stop or a crash whose coupon was not decided yet."""
        for event_id, body in await self._store.call(Store.pending_checkouts):
            checkout = Checkout.from_json(body, event_id)
            lane = self._lanes.get(checkout.lane)
            if lane is None or not lane.printer:  # the lane lost its printer since
                await self._store.call(Store.settle_checkout, event_id)
                continue
            log.info("resuming the checkout of an acknowledged total", lane=checkout.lane)
            self.on_checkout(checkout)

    async def reload_catalog(self) -> None:
        self._offers = await self._store.call(Store.offers)

    async def run(self, handle: Handle) -> None:
        await self.reload_catalog()
        await self._resume_checkouts()
        handle.ready(f"{len(self._offers)} offers")
        try:
            while True:
                event, received = await self._queue.get()
                try:
                    await self._handle(event, received)
                except (sqlite3.Error, StoreClosed) as exc:
                    if not is_storage_full(exc):
                        raise  # the store is in trouble: the supervisor restarts and reports it
                    self._refuse_for_space(event)
                except Exception as exc:  # noqa: BLE001 - one bad event must not stall the rest
                    log.error(
                        "journey event failed, skipped",
                        moment=type(event).__name__,
                        error=type(exc).__name__,
                    )
        except asyncio.CancelledError:
            # Drain: what was already taken in is still answered before the link goes away.
            while not self._queue.empty():
                event, received = self._queue.get_nowait()
                with contextlib.suppress(Exception):
                    await self._handle(event, received)
            raise

    def _refuse_for_space(self, event: KioskIdentify | ZoneEvent | Checkout) -> None:
        """No room to record the decision: a kiosk hears so (a checkout stays pending, and is
        decided at the next start; a zone moment passes)."""
        log.warning("storage full: moment not decided", moment=type(event).__name__)
        if isinstance(event, KioskIdentify):
            topic = self._topics.kiosk_identify(event.kiosk_id)
            body = encode_error(topic, STORAGE_FULL, self._clock.now(), event.request_id)
            self._publisher.post(self._topics.gateway_errors, body)

    async def _handle(self, event: KioskIdentify | ZoneEvent | Checkout, received: float) -> None:
        if isinstance(event, KioskIdentify):
            await self._identify(event, received)
        elif isinstance(event, Checkout):
            moment = _Moment(
                "checkout",
                event.lane,
                "receipt",
                "checkout",
                0.0,
                event.request_id,
                (),
                event.basket,
            )
            await self._act(moment, event.customer_ref, received)
        else:
            await self._zone(event, received)

    def resolve(self, method: str, value: str) -> tuple[str | None, str | None]:
        """(customer ref, problem) for an identifier shown at a kiosk or a lane; the raw value
        goes no further than this function."""
        if method != "qr_token":
            return customer_ref(self._hash_key, method, value), None
        if self._token_key is None:
            return None, "QR tokens are not accepted here (identity.token_public_key is not set)"
        try:
            claims = verify_token(self._token_key, value, self._clock.now(), self._token_leeway_s)
        except TokenError as exc:
            return None, f"QR token refused: {exc}"
        return claims.ref, None

    async def _identify(self, event: KioskIdentify, received: float) -> None:
        now = self._clock.now()
        ref, problem = self.resolve(event.method, event.value)
        if problem is not None:
            topic = self._topics.kiosk_identify(event.kiosk_id)
            log.warning("identification refused", kiosk=event.kiosk_id, reason=problem)
            self._publisher.post(
                self._topics.gateway_errors, encode_error(topic, problem, now, event.request_id)
            )
        kiosk = self._kiosks[event.kiosk_id]
        moment = _Moment(
            "kiosk_identify",
            event.kiosk_id,
            "kiosk",
            kiosk.zone or None,
            0.0,
            event.request_id,
            kiosk.screens,
        )
        await self._act(moment, ref, received)

    async def _zone(self, event: ZoneEvent, received: float) -> None:
        now = self._clock.now()
        for screen_id in self._screens_in.get(event.zone, ()):
            if not self._screen_wants(screen_id, event.customer_ref, now):
                continue
            moment = _Moment(
                f"zone_{event.kind}",
                screen_id,
                "screen",
                event.zone,
                event.dwell_s,
                None,
                (screen_id,),
            )
            await self._act(moment, event.customer_ref, received)

    def _screen_wants(self, screen_id: str, ref: str | None, now: float) -> bool:
        """A screen keeps what it shows for screen_hold_s; a new customer may take over an
        anonymous screen at once, and the same audience is not decided for twice."""
        last = self._screen_last.get(screen_id)
        if last is None:
            return True
        at, shown_for = last
        if ref is not None:
            if shown_for is None:
                return True
            if ref == shown_for:
                return False
        return now - at >= self._screen_hold_s

    async def _act(self, moment: _Moment, ref: str | None, received: float) -> None:
        now = self._clock.now()
        facts = await self._store.read(_read_facts, ref, moment.touchpoint, now)
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(self._decide_thread, self._plan, moment, facts, now)
        decision, choice = plan.decision, plan.outcome
        personal = decision.customer_ref is not None  # only with a personalisation consent
        try:
            await self._store.call(plan.commit)
        except sqlite3.IntegrityError:
            if moment.name != "checkout":
                raise
            # A re-sent transaction event (same id): its coupon was decided and queued already.
            log.info("checkout already decided for this transaction", lane=moment.touchpoint)
            if moment.request_id is not None:
                await self._store.call(Store.settle_checkout, moment.request_id)
            return
        if self._outbox is not None:
            self._outbox.appended.set()  # its event committed with it: wake the uplink
        if moment.channel == "receipt":
            if decision.offer_id is not None and self._on_print_job is not None:
                self._on_print_job(self._lanes[moment.touchpoint].printer)
        else:
            self._show(moment, decision, choice, personal)
        audience = "personal" if personal else "anonymous"
        for screen_id in moment.screens:
            self._screen_last[screen_id] = (now, decision.customer_ref)
        self._metrics.decisions.labels(moment.name, audience).inc()
        self._metrics.decision_seconds.observe(self._clock.monotonic() - received)
        log.info(
            "customer identified" if personal else "anonymous visitor",
            moment=moment.name,
            touchpoint=moment.touchpoint,
            customer=ref if personal else None,
            offer=decision.offer_id,
            reason=choice.reason,
            decision=decision.id,
        )

    def _plan(self, moment: _Moment, facts: _Facts, now: float) -> _Plan:
        """Runs on the decide thread: the features, the model call, the rows to commit."""
        customer, segment = facts.customer, facts.segment
        local = datetime.fromtimestamp(now)
        features = FeatureContext(
            local_time=local,
            touchpoint=moment.channel,
            zone=moment.zone,
            dwell_s=moment.dwell_s,
            basket=moment.basket,
            weather=self._engine.weather,
            customer=CustomerFacts(segment=segment) if customer is not None else None,
        )
        outcome = self._engine.decide(
            self._offers,
            Context(now=now, local_time=local, channel=moment.channel, segment=segment),
            features,
            customer_ref=customer,
            touchpoint_id=moment.touchpoint,
            customer_counts=facts.seen,
            touchpoint_counts=facts.here,
        )
        logged = {**context_to_json(features), "arm": outcome.arm, "reason": outcome.reason}
        if outcome.shadow is not None:
            logged["shadow"] = dict(outcome.shadow)
        decision = Decision(
            id=uuid7(int(now * 1000)),
            ts=now,
            moment=moment.name,
            touchpoint=moment.touchpoint,
            customer_ref=customer,
            offer_id=outcome.offer.id if outcome.offer else None,
            policy=outcome.policy,
            propensity=outcome.propensity,
            request_id=moment.request_id,
            model_version=outcome.model_version,
            feature_hash=outcome.feature_hash,
            context=json.dumps(logged, separators=(",", ":")),
        )
        uplink = None
        if self._outbox is not None:
            uplink = self._outbox.row(
                "decision",
                "decision",
                {
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
                },
                event_id=decision.id,
                ts=now,
            )
        job = None
        if moment.channel == "receipt" and outcome.offer is not None:
            job = self._print_job(moment, outcome.offer, now)
        settles = moment.request_id if moment.name == "checkout" else None
        return _Plan(decision, outcome, uplink, job, settles)

    def _print_job(self, moment: _Moment, offer: Offer, now: float) -> PrintJobRow:
        lane = self._lanes[moment.touchpoint]
        coupon = Coupon(
            code=new_coupon_code(),
            offer_id=offer.id,
            title=offer.title,
            body=offer.body,
            discount_pct=offer.discount_pct,
            store_id=self._topics.store_id,
            issued_at=now,
            valid_days=lane.coupon_valid_days,
        )
        return PrintJobRow(
            id=uuid7(int(now * 1000)),
            lane=moment.touchpoint,
            printer=lane.printer,
            coupon_code=coupon.code,
            body=coupon.to_json(),
            copy=False,
            attempts=0,
        )

    def _show(self, moment: _Moment, decision: Decision, choice: Outcome, personal: bool) -> None:
        offer = choice.offer
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
        payload = encode_content(content)
        topics = [self._topics.screen_content(s) for s in moment.screens]
        if moment.channel == "kiosk":
            topics.insert(0, self._topics.kiosk_content(moment.touchpoint))
        for topic in topics:
            self._publisher.post(topic, payload, retain=True)
